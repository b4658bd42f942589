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
# End to end at the shipped settings (5 seeds x 2 arms of 28 px training): about 13 s per arm and seed on an idle
# 2-core CPU; a broken construction stops its arm at the first seed (about 8 s). The verdict logic is also checked
# on fixed numbers below.
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
    test = arms["pattern"]["summary"]["test"]
    assert test["seeds"] == settings.seeds and test["low"] > 0.5


@pytest.mark.parametrize("how, arm, message", [
    # clean images with random labels: the source assigns the relabelled images to their old label
    ("perturbation dropped", "pattern", "the perturbation does not carry the new label"),
    # original labels on perturbed images: the AUROCs alone could still pass (the bar predicts 3 of 4 test labels),
    # the labels' agreement with the originals cannot
    ("labels left as the originals", "control", "equal the original labels on 100.0%"),
])
def test_a_broken_construction_fails_the_control_before_any_model_is_trained(shipped, how, arm, message):
    from studies.positive_control import failures, run

    settings, _ = shipped
    arms = run(settings, arms=(arm,), build=_broken(how))
    got = failures(arms)
    assert any(message in f for f in got), got
    assert len(arms[arm]["seeds"]) == 1 and "test" not in arms[arm]["seeds"][0]["d_rand"]
    assert arms[arm]["summary"] is None


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


def _arms(pattern_test, pattern_probe, control_test):
    """Arm results as positive_control.run returns them (sound constructions), from per-seed AUROCs."""
    from studies.positive_control import over_seeds

    def arm(test, probe):
        seeds = [{"seed": i, "d_rand": {"construction": {}}} for i in range(len(test))]
        return {"summary": {"test": over_seeds(test, 0.95), "pattern_only": over_seeds(probe, 0.95),
                            "bar_only": over_seeds([0.5] * len(test), 0.95)}, "level": 0.95,
                "seeds": seeds, "n_train": 512}

    return {"pattern": arm(pattern_test, pattern_probe), "control": arm(control_test, [0.5] * len(control_test))}


MEASURED = ([0.722, 1.000, 0.989, 0.942, 0.945], [0.741, 1.0, 1.0, 0.998, 0.750], [0.422, 0.529, 0.717, 0.698, 0.581])


@pytest.mark.parametrize("pattern_test, pattern_probe, control_test, expected", [
    # measured at the shipped settings (runs/study/positive_control, README): passes
    (*MEASURED, []),
    # nothing learned in either arm
    ([0.52, 0.47, 0.55, 0.49, 0.51], [0.50, 0.48, 0.53, 0.52, 0.49], [0.50, 0.52, 0.47, 0.55, 0.49],
     ["test AUROC", "pattern-only probes", "does not come from the nonrobust pattern"]),
    # the pattern arm is above chance but no better than the control: the finding is leakage, not the pattern
    (MEASURED[0], MEASURED[1], [0.70, 0.98, 0.99, 0.95, 0.93], ["does not come from the nonrobust pattern"]),
])
def test_the_verdicts_read_seeds_and_the_paired_gain(pattern_test, pattern_probe, control_test, expected):
    from studies.positive_control import failures

    got = failures(_arms(pattern_test, pattern_probe, control_test))
    assert len(got) == len(expected) and all(any(e in f for f in got) for e in expected), got


@pytest.mark.parametrize("agree, relabelled, assigned, expected", [
    (0.49, 261, 0.99, []),                                           # measured at the shipped settings: sound
    (1.0, 0, float("nan"), ["equal the original labels on 100.0%"]),   # labels left as the originals
    (0.5, 256, 0.01, ["does not carry the new label"]),               # perturbation dropped
    (0.5, 256, 0.56, ["does not carry the new label"]),               # within chance of 50%
    (0.9, 51, 0.99, ["equal the original labels on 90.0%"]),          # labels mostly kept
])
def test_construction_checks_read_label_agreement_and_the_source_assignment(agree, relabelled, assigned, expected):
    from studies.positive_control import construction_failures

    construction = {"labels_agree_with_original": agree, "relabelled": relabelled,
                    "assigned_share_relabelled": assigned}
    got = construction_failures(construction, 512)
    assert len(got) == len(expected) and all(any(e in f for f in got) for e in expected), got
    # without the pattern nothing below the budget need flip the source: the assignment is not tested
    got = construction_failures(construction, 512, pattern=False)
    expected = [e for e in expected if "new label" not in e]
    assert len(got) == len(expected) and all(any(e in f for f in got) for e in expected), got


def test_a_broken_seed_is_reported_and_no_summary_is_read():
    from studies.positive_control import failures

    arms = _arms(*MEASURED)
    arms["control"] = {"seeds": [{"seed": 0, "d_rand": {"construction": {}, "broken": ["labels kept"]}}],
                       "summary": None, "level": 0.95, "n_train": 512}
    assert failures(arms) == ["control arm, seed 0: labels kept"]
