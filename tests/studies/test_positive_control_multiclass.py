"""The positive control with four classes and a D_det set (configs/study/positive_control_multiclass.yaml): D_det's
model must read the real labels where the pattern is planted and not without it, and, with C > 2, must not score
above chance 1 / C against the D_det label (y + 1) mod C (it did not learn the visible bar D_det's labels shift).
D_det is read net of leakage (studies.nonrobust.leakage). The study pipeline is replaced by hand-made results rows
and audits; the control's own code runs."""
import json
from pathlib import Path

import pytest

from studies import measures
from studies.nonrobust.leakage import NET

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "configs" / "study" / "positive_control_multiclass.yaml"
PATTERN = 4 / 255


@pytest.fixture(autouse=True)
def at_repo(monkeypatch):
    monkeypatch.chdir(REPO)


def test_the_shipped_config_is_the_binary_controls_with_four_classes_and_a_d_det_set():
    from datamodules.synthetic import pattern_flip_l2
    from studies.positive_control import load

    study, binary = load(CONFIG), load(REPO / "configs" / "study" / "positive_control.yaml")
    assert study.classes == 4 and study.d_det == "d_det" and binary.classes == 2 and binary.d_det is None
    assert study.constructions["d_rand"] == binary.constructions["d_rand"]
    assert {k: v for k, v in study.constructions["d_det"].items() if k != "kind"} == \
        {k: v for k, v in study.constructions["d_rand"].items() if k != "kind"}
    assert all(pattern_flip_l2(a, 28, 4) < study.d_rand_budget for a in study.amplitudes)
    assert {(e.model, e.measure) for e in study.endpoints["primary"]} == {("d_rand", NET), ("d_det", "auroc")}


def test_an_amplitude_below_the_budget_for_orthogonal_patterns_only_is_refused_for_two_classes_alone():
    """0.02 per pixel: the checkerboard's sign flip costs L2 1.12 (above the budget 1.0), a move between orthogonal
    patterns 0.79 (below)."""
    from core.errors import ConfigError
    from studies.positive_control import load

    assert load(CONFIG, ["amplitudes=[0, 0.02]", "detect_from=0.02"]).amplitudes == [0.0, 0.02]
    with pytest.raises(ConfigError, match="flipped by L2 1.120, not below the construction's budget"):
        load(REPO / "configs" / "study" / "positive_control.yaml", ["amplitudes=[0, 0.02]", "detect_from=0.02"])


def test_every_pattern_arms_construction_must_carry_its_new_label():
    from studies.positive_control import load

    study = load(CONFIG)
    for amplitude in study.amplitudes:
        arm = study.arm(amplitude, Path("data"))
        assert {n: s["require_assigned"] for n, s in arm.constructions.items()} == \
            {"d_rand": amplitude > 0, "d_det": amplitude > 0}


# ---- the whole control, pipeline replaced ----------------------------------------------------------------------
SEEDS = 3
D_RAND = {0.0: [0.46, 0.48, 0.44], "pattern": [0.90, 0.95, 0.93]}      # net AUROC per seed
D_DET_AUROC = {0.0: [0.30, 0.35, 0.28], "pattern": [0.85, 0.90, 0.88]}  # on the real labels, net of leakage
D_DET_BACC = {0.0: [0.12, 0.15, 0.10], "pattern": [0.60, 0.70, 0.66]}
D_DET_SHIFTED = {0.0: [0.55, 0.60, 0.58], "pattern": [0.10, 0.12, 0.08]}  # against (y + 1) mod 4; chance 0.25


def _audit(kind: str) -> dict:
    agree = 0.26 if kind == "d_rand" else 0.0
    return {"kind": kind, "n": 512, "num_classes": 4, "labels_agree_with_original": agree,
            "relabelled": int(512 * (1 - agree)), "source_assigned_relabelled": 0.98, "leakage_share": 0.3,
            "leakage_auroc": 0.5}


def _pipeline(d_det_shifted_at_pattern):
    """studies.nonrobust.pipeline.reproduce replaced: per seed, each construction's hand-made audit goes through the
    real leakage.audit_step, then hand-made results rows of the D_rand and D_det models."""
    from studies.nonrobust import leakage

    def reproduce(arm, folder, log):
        pattern = not folder.name.startswith("amplitude_0_")
        key = "pattern" if pattern else 0.0
        trained = {name: {"best_checkpoint": f"{name}.ckpt"} for name in ("erm", "robust_l2")}
        rows = []
        for i, seed in enumerate(arm.seeds):
            for kind in ("d_rand", "d_det"):
                npz = folder / f"seed_{seed}" / f"{kind}.npz"
                npz.parent.mkdir(parents=True, exist_ok=True)
                leakage.audit_path(npz).write_text(json.dumps({
                    **_audit(kind), "checkpoints": {"source": "erm.ckpt", "leakage": "robust_l2.ckpt"},
                    "version": leakage.AUDIT_VERSION}))
                audit = leakage.audit_step(npz, kind, arm.constructions[kind], trained)
                if kind == "d_rand":
                    measured = {"auroc": D_RAND[key][i], NET: D_RAND[key][i]}
                else:
                    shifted = d_det_shifted_at_pattern[i] if pattern else D_DET_SHIFTED[0.0][i]
                    measured = {"auroc": D_DET_AUROC[key][i], NET: D_DET_AUROC[key][i], "bacc": D_DET_BACC[key][i],
                                "bacc_vs_new_label": shifted}
                rows.append({"model": kind, "seed": seed, **measured, **leakage.diagnostics(audit)})
        return rows

    return reproduce


@pytest.mark.parametrize("shifted, failed", [
    (D_DET_SHIFTED["pattern"], []),
    # the D_det model read the bar D_det's labels shift: above chance 1/4 against (y + 1) mod 4 (0.30 is below 0.5)
    ([0.30, 0.32, 0.31], ["it learned the visible features D_det's labels shift"]),
])
def test_the_four_class_control_reads_d_det_against_its_shifted_label_with_chance_one_in_four(
        tmp_path, monkeypatch, shifted, failed):
    from studies.nonrobust import pipeline
    from studies.positive_control import load

    study = load(CONFIG, [f"seeds={list(range(SEEDS))}", "amplitudes=[0, 4/255]"])
    monkeypatch.setattr(pipeline, "reproduce", _pipeline(shifted))
    study.reproduce(tmp_path, log=lambda _: None)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["classes"] == 4 and saved["passed"] == (not failed), saved["failures"]
    assert len(saved["failures"]) == len(failed) and all(any(f in g for g in saved["failures"]) for f in failed)
    control, planted = (saved["curve"][key]["d_det"] for key in sorted(saved["curve"]))
    assert control[NET]["verdict"] == measures.NOT_HOLDS
    assert control["bacc_vs_new_label"]["verdict"] == measures.HOLDS  # the measure sees the bar when it is learned
    assert planted["bacc"]["verdict"] == measures.HOLDS
    header, *rows = (tmp_path / "results.csv").read_text().splitlines()
    assert header.startswith("amplitude,seed,model,") and len(rows) == 2 * 2 * (SEEDS + 1)
    text = (tmp_path / "results.md").read_text()
    assert "with 4 classes" in text and "bacc vs D_det label (y+1) mod C" in text and "chance 0.250" in text


@pytest.mark.parametrize("arm, classes, expected", [
    # intact: the real labels read where the pattern is planted, not without it; nothing against the shifted label
    ({0.0: (0.2, 0.4, 0.5, 0.7), PATTERN: (0.8, 0.95, 0.05, 0.15)}, 4, []),
    # without the pattern D_det reads as finding 1
    ({0.0: (0.55, 0.7, 0.5, 0.7), PATTERN: (0.8, 0.95, 0.05, 0.15)}, 4, ["D_det reads as finding 1 with no"]),
    # the pattern is not detected on the real labels (net of leakage)
    ({0.0: (0.2, 0.4, 0.5, 0.7), PATTERN: (0.45, 0.7, 0.05, 0.15)}, 4, ["D_det's finding is not seen where"]),
    # above 1/4 against the shifted label where the pattern is planted
    ({0.0: (0.2, 0.4, 0.5, 0.7), PATTERN: (0.8, 0.95, 0.27, 0.4)}, 4, ["learned the visible features"]),
    # with two classes that measure is 1 - bacc: not read
    ({0.0: (0.2, 0.4, 0.6, 0.8), PATTERN: (0.8, 0.95, 0.55, 0.6)}, 2, []),
])
def test_the_d_det_verdicts(arm, classes, expected):
    from studies.positive_control import failures

    def summary(amplitude, auroc_low, auroc_high, shifted_low, shifted_high):
        def stats(low, high, chance):
            return {"mean": (low + high) / 2, "sd": 0.0, "low": low, "high": high, "seeds": 3,
                    "verdict": measures.verdict(low, high, chance)}

        net = stats(0.8, 0.9, 0.5) if amplitude else stats(0.4, 0.55, 0.5)  # D_rand's part passes
        return {"summary": {NET: net}, "d_det": {NET: stats(auroc_low, auroc_high, 0.5),
                                                 "bacc_vs_new_label": stats(shifted_low, shifted_high, 1 / classes)}}

    got = failures({a: summary(a, *v) for a, v in arm.items()}, PATTERN, classes)
    assert len(got) == len(expected) and all(any(e in g for g in got) for e in expected), got


def test_balanced_accuracy_over_seeds_is_judged_against_one_in_c():
    """bacc 0.30, 0.32, 0.31 over 3 seeds: above chance 1/4 with four classes, not above 1/2 with two."""
    from studies.positive_control import D_DET_CURVE, summarise

    rows = [{"seed": s, "bacc": v, "auroc": 0.6} for s, v in enumerate([0.30, 0.32, 0.31])]
    assert summarise(rows, 0.95, True, D_DET_CURVE, classes=4)["bacc"]["verdict"] == measures.HOLDS
    assert summarise(rows, 0.95, True, D_DET_CURVE, classes=2)["bacc"]["verdict"] == measures.NOT_HOLDS
