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
    ("settings.amplitude=0.1", "is not below the attack budget epsilon 0.5"),
    ("settings.size=4", "size 4 px leaves no room for the bar"),
    ("settings.n_train=8", "need at least 32 images"),
    ("settings.seeds=1", "the interval over seeds needs at least 2"),
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


# ---- the pipeline's own test: finding 1 is seen where it is true, and the construction's breakages fail it --------
# End to end at the shipped settings (5 seeds x 2 arms of 28 px training): about 11 s per arm and seed on idle 2-core
# CPU (166 s for the two breakages); the verdict logic is also checked on fixed numbers below.
@pytest.fixture(scope="module")
def shipped():
    """The shipped control's settings and its pattern arm, run once for the tests below."""
    from studies.positive_control import run

    settings = load(CONFIG).settings
    return settings, run(settings, arms=("pattern",))


def _broken(how):
    """constructions.build, broken one way: the new labels dropped, or the perturbation dropped."""
    from constructions import build
    from studies.positive_control import to_float

    def broken_build(kind, source, images, labels, num_classes, settings, **kw):
        made = build(kind, source, images, labels, num_classes, settings, **kw)
        if how == "labels left as the originals":
            made.labels = labels.clone()
        else:
            made.images = to_float(images)
        return made

    return broken_build


def test_the_shipped_positive_control_passes(shipped):
    from studies.positive_control import failures, run

    settings, pattern = shipped
    arms = {**pattern, **run(settings, arms=("control",))}
    assert failures(arms) == [], failures(arms)
    test = arms["pattern"]["summary"]["d_rand"]["test"]
    assert test["seeds"] == settings.seeds and test["low"] > 0.5


def test_the_positive_control_fails_when_the_perturbation_is_dropped(shipped):
    """Clean images with random labels: nothing to learn, so finding 1 must not be seen."""
    from studies.positive_control import failures, run

    settings, _ = shipped
    arms = run(settings, arms=("pattern",), build=_broken("perturbation dropped"))
    assert any("not above chance" in f for f in failures(arms)), failures(arms)


def test_the_positive_control_fails_when_labels_are_left_as_the_originals(shipped):
    """Original labels on perturbed images: the AUROCs can still pass (the bar predicts only 3 of 4 test labels, so a
    model of the bar stays below the pattern arm), so the labels' agreement with the originals is what fails."""
    from studies.positive_control import failures, run

    settings, pattern = shipped
    arms = {**pattern, **run(settings, arms=("control",), build=_broken("labels left as the originals"))}
    assert any("equal the original labels" in f for f in failures(arms)), failures(arms)


def test_reproduce_writes_results_and_says_whether_it_passed(tmp_path, monkeypatch, shipped):
    """The study command's files, from a run whose arms are the module fixture's (no second training)."""
    import json

    from studies import positive_control

    settings, pattern = shipped
    monkeypatch.setattr(positive_control, "run", lambda s, log=None: {**pattern, "control": pattern["pattern"]})
    positive_control.reproduce(positive_control.Study("pc", settings, CONFIG), tmp_path, log=lambda _: None)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["passed"] is False and "does not come from the nonrobust pattern" in saved["failures"][0]
    assert "**Failed**" in (tmp_path / "results.md").read_text()
    assert (tmp_path / "results.csv").read_text().count("\n") == 1 + 2 * settings.seeds * 3


def _arms(pattern_test, pattern_probe, control_test, agree=0.5):
    """Arm results as positive_control.run returns them, from per-seed AUROCs and the share of D_rand labels equal to
    the originals."""
    from studies.positive_control import over_seeds

    def arm(test, probe):
        seeds = [{"seed": i, "d_rand": {"construction": {"labels_agree_with_original": agree}}} for i in range(len(test))]
        return {"summary": {"d_rand": {"test": over_seeds(test, 0.95), "pattern_only": over_seeds(probe, 0.95),
                                       "bar_only": over_seeds([0.5] * len(test), 0.95)}}, "level": 0.95,
                "seeds": seeds, "n_train": 512}

    return {"pattern": arm(pattern_test, pattern_probe), "control": arm(control_test, [0.5] * len(control_test))}


MEASURED = ([0.722, 1.000, 0.989, 0.942, 0.945], [0.741, 1.0, 1.0, 0.998, 0.750], [0.422, 0.529, 0.717, 0.698, 0.581])


@pytest.mark.parametrize("pattern_test, pattern_probe, control_test, agree, expected", [
    # measured at the shipped settings (runs/study/positive_control, README): passes
    (*MEASURED, 0.49, []),
    # perturbation dropped: nothing learned
    ([0.52, 0.47, 0.55, 0.49, 0.51], [0.50, 0.48, 0.53, 0.52, 0.49], [0.50, 0.52, 0.47, 0.55, 0.49], 0.5,
     ["test AUROC", "pattern-only probes", "does not come from the nonrobust pattern"]),
    # labels left as the originals: the AUROCs alone can still pass (measured with -m slow), the labels cannot
    (*MEASURED, 1.0, ["equal the original labels on 100.0%"] * 10),
])
def test_the_verdicts_read_seeds_and_the_paired_gain(pattern_test, pattern_probe, control_test, agree, expected):
    from studies.positive_control import failures

    got = failures(_arms(pattern_test, pattern_probe, control_test, agree))
    assert len(got) == len(expected) and all(any(e in f for f in got) for e in expected), got
