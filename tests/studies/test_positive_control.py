"""The positive control's settings: a control that cannot be built ends in one error line, exit 2, nothing written."""
from pathlib import Path

import pytest

from studies.cli import main
from studies.positive_control import Settings, load

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "configs" / "study" / "positive_control.yaml"


def test_shipped_config_loads_and_its_pattern_is_below_the_budget():
    study = load(CONFIG)
    assert study.settings.flip_l2 < study.settings.epsilon and study.settings.size >= 8


@pytest.mark.parametrize("override, message", [
    ("settings.amplitude=0.1", "is not below the attack budget epsilon 1.0"),
    ("settings.size=4", "size 4 px leaves no room for the bar"),
    ("settings.n_train=8", "need at least 32 images"),
    ("settings.epsilon=0", "epsilon must be a positive number"),
    ("settings.shape_agreement=0.2", "shape_agreement must lie in [0.5, 1]"),
    ("settings.colour=red", "unknown setting(s) colour"),
    ("settings.bootstrap=10", "at least 100 draws"),
])
def test_a_control_that_cannot_be_built_is_one_error_line_and_exit_2(tmp_path, capsys, override, message):
    out = tmp_path / "out"
    code = main(["reproduce", str(CONFIG), "--out", str(out), "--set", override])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: positive control") and message in err[0], err
    assert not out.exists()


def test_settings_defaults_are_buildable():
    assert Settings().check().flip_l2 < Settings().epsilon
