"""The positive control: the nonrobust study's own pipeline on synthetic data with a planted nonrobust pattern. It
passes when intact, and fails when the pattern is removed, when the construction leaves the labels as the originals,
and when the perturbation is dropped. One tiny control (one seed, two amplitudes) is run once for the file; the broken
constructions are built from its source models and caught by the audit before any model is trained on them."""
import json
import math
from pathlib import Path

import numpy as np
import pytest
import yaml

from studies import measures
from studies.cli import main
from studies.nonrobust.leakage import NET

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "configs" / "study" / "positive_control.yaml"
PATTERN = 4 / 255
# the shipped config at one seed (intervals over test examples) and two amplitudes
TINY = ["seeds=[0]", "amplitudes=[0, 4/255]", "detect_from=4/255", "synthetic.n_test=128", "statistics.bootstrap=200",
        "statistics.interval=examples", "train.trainer.callbacks.init_args.test_steps=2"]


@pytest.fixture(autouse=True)
def at_repo(monkeypatch):
    monkeypatch.chdir(REPO)  # the config names training configs relative to the repository


def test_the_shipped_control_runs_the_quick_study_construction_with_an_l2_leakage_model_at_its_budget():
    from studies.nonrobust import load as load_study
    from studies.positive_control import load

    control, quick = load(CONFIG), load_study(REPO / "configs" / "study" / "quick.yaml")
    budget = {k: quick.constructions["d_rand"][k] for k in ("epsilon", "step", "steps", "scale")}
    assert {k: control.constructions["d_rand"][k] for k in budget} == budget
    robust = control.models[control.constructions["d_rand"]["leakage"]]
    assert yaml.safe_load(Path(robust["config"]).read_text())["model"]["class_path"].endswith("PGDAT")
    assert robust["overrides"]["model.init_args.norm"] == "l2"
    assert robust["overrides"]["model.init_args.epsilon"] == budget["epsilon"]
    assert control.amplitudes[0] == 0 and len(control.amplitudes) >= 3 and len(control.seeds) >= 3
    assert all(2 * a * 28 < budget["epsilon"] for a in control.amplitudes)
    assert control.train["data.augment"] is False  # a shifted checkerboard is the other class's


@pytest.mark.parametrize("override, message", [
    ("amplitudes=[1/255, 2/255]", "amplitudes needs 0 (the control"),
    ("amplitudes=[0]", "amplitudes needs 0 (the control"),
    ("amplitudes=[0, 0.1]", "not below the construction's budget 1.0"),
    ("detect_from=3/255", "detect_from must be one of the amplitudes above 0"),
    ("synthetic.n_train=8", "needs at least 32 images"),
    ("synthetic.colour=red", "synthetic takes"),
    ("constructions.d_rand.leakage=nobody", "leakage must name one of the models"),
    ("datasets=[{flag: dermamnist}]", "grey with one label per image; dermamnist is not"),
    ("datasets=[{flag: chestmnist}]", "chestmnist is multi-label"),
])
def test_a_control_that_cannot_be_built_is_one_error_line_and_exit_2(tmp_path, capsys, override, message):
    out = tmp_path / "out"
    code = main(["reproduce", str(CONFIG), "--out", str(out), "--set", override])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert not out.exists()


# The end-to-end control trains 2 x 3 models (about 4 minutes on one thread): slow. The default suite guards the same
# verdicts below, with the study pipeline replaced by hand-made results rows and audits (the control's own code runs).
END_TO_END = pytest.mark.slow


# ---- the tiny control, run once --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The tiny control's study and out folder, run once (every step kept there for the tests below)."""
    import os

    from studies.positive_control import load

    here = os.getcwd()
    os.chdir(REPO)
    try:
        study = load(CONFIG, TINY)
        out = tmp_path_factory.mktemp("positive_control")
        study.reproduce(out, log=lambda _: None)
    finally:
        os.chdir(here)
    return study, out, json.loads((out / "results.json").read_text())


def _curve(saved: dict) -> dict:
    """results.json's curve by amplitude (its keys are written to 6 decimals: 4/255 reads back as 0.015686)."""
    return {a: arm for a in (0.0, PATTERN) for key, arm in saved["curve"].items() if abs(float(key) - a) < 1e-6}


@END_TO_END
def test_the_intact_control_passes_through_the_study_pipeline(tiny):
    from studies.positive_control import arm_folder

    study, out, saved = tiny
    assert saved["passed"], saved["failures"]
    curve = _curve(saved)
    pattern, control = curve[PATTERN]["summary"], curve[0.0]["summary"]
    assert pattern[NET]["verdict"] == measures.HOLDS and control[NET]["verdict"] != measures.HOLDS
    # the net measure is the AUROC less the leakage model's excess over chance on the constructed set
    for arm in (pattern, control):
        assert arm[NET]["mean"] == pytest.approx(arm["auroc"]["mean"] - (arm["leakage_auroc"]["mean"] - 0.5))
        assert 0 <= arm["leakage_share"]["mean"] <= 1
    assert pattern["source_assigned_relabelled"]["mean"] > 0.9  # the pattern is flipped within the budget
    # the study's own steps and tables: a real-pipeline run per amplitude, D_rand scored at its last epoch
    base = arm_folder(out, PATTERN) / "pneumoniamnist_28" / "seed_0"
    result = json.loads((base / "train_d_rand" / "result.json").read_text())
    assert result["best_epoch"] == study.constructed_training["overrides"]["trainer.max_epochs"] - 1
    audit = json.loads((base / "constructed" / "d_rand.audit.json").read_text())
    assert abs(audit["labels_agree_with_original"] - 0.5) < 0.15 and audit["leakage_model"] == "robust_l2"
    assert "AUROC net of leakage" in (arm_folder(out, PATTERN) / "results.md").read_text()
    rows = (out / "results.csv").read_text().splitlines()
    assert rows[0].startswith("amplitude,seed,auroc,auroc_low,auroc_high,auroc_net_of_leakage") and len(rows) == 5
    assert "**Passed**" in (out / "results.md").read_text()


@END_TO_END
def test_the_control_fails_when_the_pattern_is_removed(tiny):
    """The arm that must detect the pattern, run on data without it (the amplitude-0 arm's study)."""
    from studies.positive_control import failures

    _, _, saved = tiny
    got = failures({PATTERN: _curve(saved)[0.0]}, PATTERN)
    assert len(got) == 1 and "finding 1 is not seen where it is true" in got[0], got


def _break(how):
    """constructions.construct_file, broken one way after the real build: labels left as the originals, or the
    perturbation dropped (the original images under the new labels)."""
    import constructions
    from constructions.dataset import sidecar_path

    build = constructions.construct_file

    def broken(kind, ckpt, flag, out, **kw):
        sidecar = build(kind, ckpt, flag, out, **kw)
        with np.load(out) as made, np.load(json.loads(sidecar_path(out).read_text())["official_file"]) as official:
            arrays = {key: made[key] for key in made.files}
            n = len(arrays["train_labels"])
            key = "train_labels" if how == "labels" else "train_images"
            arrays[key] = official[key][:n]
        np.savez(out, **arrays)
        return sidecar

    return broken


@END_TO_END
@pytest.mark.parametrize("how, message", [
    ("labels", "D_rand's labels equal the original labels on 100.0%"),
    ("images", "the perturbation does not carry the new label"),
])
def test_a_broken_construction_fails_the_control_before_a_model_is_trained_on_it(tiny, monkeypatch, how, message):
    """A second D_rand from the tiny control's own source (every earlier step reused), broken: the audit ends that
    amplitude's study before training on it, and the control fails."""
    import constructions
    from studies.positive_control import arm_folder, failures, load, run_arm

    _, out, _ = tiny
    monkeypatch.setattr(constructions, "construct_file", _break(how))
    study = load(CONFIG, [*TINY, f"constructions.d_{how}={{kind: d_rand, source: erm, epsilon: 1.0, step: 0.2, "
                                 "steps: 20, scale: false, require_assigned: true}"])
    arm = run_arm(study, PATTERN, out, log=lambda _: None)
    assert message in arm["broken"], arm
    assert not (arm_folder(out, PATTERN) / "pneumoniamnist_28" / "seed_0" / f"train_d_{how}").exists()
    got = failures({PATTERN: arm}, PATTERN)
    assert len(got) == 1 and message in got[0]


# ---- the whole control with the study pipeline replaced: hand-made results rows and audits --------------------------
SOUND = {"kind": "d_rand", "n": 512, "num_classes": 2, "labels_agree_with_original": 0.49, "relabelled": 261,
         "source_assigned_relabelled": 1.0, "leakage_share": 0.38, "leakage_auroc": 0.5}
DETECTED, CHANCE = [0.88, 0.95, 0.97], [0.44, 0.48, 0.43]  # per-seed net AUROC of a D_rand model (hand-made)


def _pipeline(auroc_at, audit_at):
    """A stand-in for studies.nonrobust.pipeline.reproduce: per seed, the arm's hand-made audit goes through the real
    leakage.audit_step (kept beside a constructed set that is never built), then hand-made D_rand results rows."""
    from studies.nonrobust import leakage

    def reproduce(arm, folder, log):
        amplitude = next(a for a in auroc_at if folder.name.startswith(f"amplitude_{a * 255:g}_"))
        rows = []
        for i, seed in enumerate(arm.seeds):
            npz = folder / f"seed_{seed}" / "d_rand.npz"
            npz.parent.mkdir(parents=True, exist_ok=True)
            checkpoints = {"source": "erm.ckpt", "leakage": "robust_l2.ckpt"}
            leakage.audit_path(npz).write_text(json.dumps({**audit_at.get(amplitude, SOUND), "checkpoints": checkpoints,
                                                           "version": leakage.AUDIT_VERSION}))
            trained = {name: {"best_checkpoint": f"{name}.ckpt"} for name in ("erm", "robust_l2")}
            result = leakage.audit_step(npz, "d_rand", arm.constructions["d_rand"], trained)
            net = auroc_at[amplitude][i]
            rows.append({"model": "d_rand", "seed": seed, "auroc": net, NET: net,
                         **leakage.diagnostics(result)})
        return rows

    return reproduce


@pytest.mark.parametrize("broken, message", [
    (None, None),
    # (a) the pattern removed: the pattern arms' D_rand models read what the amplitude-0 arm's read
    ({"auroc": CHANCE}, "finding 1 is not seen where it is true"),
    # (b) the construction leaves the labels as the originals
    ({"audit": {**SOUND, "labels_agree_with_original": 1.0, "relabelled": 0}}, "equal the original labels on 100.0%"),
    # (c) the perturbation dropped: the source assigns the relabelled images to their old label
    ({"audit": {**SOUND, "source_assigned_relabelled": 0.0}}, "the perturbation does not carry the new label"),
])
def test_the_control_passes_intact_and_fails_when_the_pattern_the_labels_or_the_perturbation_are_broken(
        tmp_path, monkeypatch, broken, message):
    """The shipped config's control (its 3 seeds, t interval over seeds), every step but the study pipeline its own:
    intact it passes; each breakage, at every pattern amplitude, fails it with its own line."""
    from studies.nonrobust import pipeline
    from studies.positive_control import load

    study = load(CONFIG)
    pattern = [a for a in study.amplitudes if a > 0]
    auroc_at = {0.0: CHANCE, **{a: (broken or {}).get("auroc", DETECTED) for a in pattern}}
    audit_at = {a: broken["audit"] for a in pattern} if broken and "audit" in broken else {}
    monkeypatch.setattr(pipeline, "reproduce", _pipeline(auroc_at, audit_at))
    study.reproduce(tmp_path, log=lambda _: None)
    saved = json.loads((tmp_path / "results.json").read_text())
    if message is None:
        assert saved["passed"] and not saved["failures"], saved["failures"]
        assert "**Passed**" in (tmp_path / "results.md").read_text()
    else:
        checked = pattern if "audit" in broken else [a for a in pattern if a >= study.detect_from]
        assert not saved["passed"] and len(saved["failures"]) == len(checked), saved["failures"]
        assert all(message in f for f in saved["failures"]), saved["failures"]
        assert "**Failed**" in (tmp_path / "results.md").read_text()


# ---- the verdicts and the audit on fixed numbers ----------------------------------------------------------------
def _summary(net, auroc=None):
    low, high = net
    return {"summary": {NET: {"mean": (low + high) / 2, "sd": 0.0, "low": low, "high": high, "seeds": 3,
                              "verdict": measures.verdict(low, high, 0.5)},
                        "auroc": {"mean": 0.6, "sd": 0.0, "low": 0.55, "high": 0.65, "seeds": 3,
                                  "verdict": measures.HOLDS}}}


@pytest.mark.parametrize("curve, expected", [
    ({0.0: _summary((0.45, 0.56)), PATTERN: _summary((0.8, 0.95))}, []),
    # the control arm still reads as finding 1 after the correction
    ({0.0: _summary((0.52, 0.61)), PATTERN: _summary((0.8, 0.95))}, ["leakage correction does not remove"]),
    # the pattern is not detected
    ({0.0: _summary((0.45, 0.56)), PATTERN: _summary((0.48, 0.7))}, ["not seen where it is true"]),
    # below detect_from the curve is reported, not tested
    ({0.0: _summary((0.45, 0.56)), 1 / 255: _summary((0.4, 0.6)), PATTERN: _summary((0.8, 0.95))}, []),
    ({0.0: {"broken": "constructions.d_rand is broken: labels kept"}, PATTERN: _summary((0.8, 0.95))},
     ["amplitude 0.0000: constructions.d_rand is broken"]),
])
def test_the_verdicts_read_the_net_auroc_against_chance(curve, expected):
    from studies.positive_control import failures

    got = failures(curve, PATTERN)
    assert len(got) == len(expected) and all(any(e in f for f in got) for e in expected), got


@pytest.mark.parametrize("agree, relabelled, assigned, require, expected", [
    (0.49, 130, 0.99, True, []),                                              # sound
    (1.0, 0, math.nan, True, ["equal the original labels on 100.0%"]),        # labels left as the originals
    (0.5, 128, 0.01, True, ["does not carry the new label"]),                 # perturbation dropped
    (0.5, 128, 0.56, True, ["does not carry the new label"]),                 # within chance of 50%
    (0.5, 128, 0.01, False, []),                                              # the control arm: not required
    (0.9, 26, 0.99, True, ["equal the original labels on 90.0%"]),            # labels mostly kept
])
def test_the_audit_reads_label_agreement_and_the_source_assignment(agree, relabelled, assigned, require, expected):
    from studies.nonrobust.leakage import failures

    result = {"kind": "d_rand", "n": 256, "num_classes": 2, "labels_agree_with_original": agree,
              "relabelled": relabelled, "source_assigned_relabelled": assigned}
    got = failures(result, require)
    assert len(got) == len(expected) and all(any(e in f for f in got) for e in expected), got
