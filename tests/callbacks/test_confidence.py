"""Confidence and calibration in the RobustnessCallback: per-epoch keys, test-report sections, the keys it says it
logs, and no extra forward pass (counted images through the model, confidence on against off)."""
from __future__ import annotations

import json
import math

import lightning as L
import pytest

from bench.confidence_cost import counted_forward as counted
from callbacks.robustness import RobustnessCallback
from evaluation.evaluators import EvaluationRun
from evaluation.scoring import predict
from lightning_modules.calibration import CONFIDENCE_METRICS, confidence_measures


def _trainer(callback, tmp_path):
    return L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False, callbacks=[callback],
                     default_root_dir=str(tmp_path), accelerator="cpu")


def _settings(tmp_path, **kwargs):
    return dict(epsilons=["4/255"], val_samples=48, val_steps=3, test_steps=3, test_restarts=1, autoattack_samples=16,
                autoattack_attacks=["apgd-ce"], corruptions=["brightness_down"], corruption_severities=[1, 5],
                corruption_val_samples=16, corruption_cache=str(tmp_path / "cache"), **kwargs)


def test_every_epoch_logs_the_measures_it_lists_for_clean_adversarial_and_corrupted(tiny_erm, tmp_path):
    model, dm = tiny_erm.model, tiny_erm.datamodule
    callback = RobustnessCallback(**_settings(tmp_path))
    trainer = _trainer(callback, tmp_path)
    trainer.validate(model, datamodule=dm, verbose=False)
    logged = {k: float(v) for k, v in trainer.callback_metrics.items()}
    keys = callback.logged_keys(dm)
    expected = {f"val/{kind}_{name}{at}" for kind, at in (("clean", "@subset"), ("adv", "@4_255"), ("corr", ""))
                for name in CONFIDENCE_METRICS}
    assert expected <= keys["val"] and expected <= set(logged)
    assert {"val/adv_ece@4_255", "val/corr_conf", "val/clean_nll@subset"} <= keys["val"]
    assert set(logged) - {"val/clean_bacc", "val/clean_loss", "val/clean_acc", "val/clean_auroc"} <= keys["val"]
    assert 0.5 <= logged["val/clean_conf@subset"] <= 1 and 0 <= logged["val/adv_ece@4_255"] <= 1
    # the attack lowers the confidence in the true class: the NLL rises
    assert logged["val/adv_nll@4_255"] > logged["val/clean_nll@subset"]
    off = RobustnessCallback(**_settings(tmp_path, confidence=False)).logged_keys(dm)
    assert not any(k.split("/")[1].split("@")[0].endswith(("_conf", "_ece", "_nll", "_brier"))
                   for k in off["val"] | off["test"])
    assert keys["val"] - off["val"] == expected


def test_test_report_carries_the_measures_of_the_probabilities_it_scored(tiny_erm, tmp_path):
    model, dm = tiny_erm.model, tiny_erm.datamodule
    baseline = tmp_path / "erm.robustness.json"  # a hand-made baseline report: balanced error 0.5 everywhere
    baseline.write_text(json.dumps({"corruptions": {
        "flag": "breastmnist", "size": 28, "protocol": "upsample224-corrupt-box", "severities": [1, 2, 3, 4, 5],
        "bacc": {"brightness_down": [0.5] * 5}}}))
    callback = RobustnessCallback(**_settings(tmp_path, autoattack=False, corruption_baseline=str(baseline)))
    result = _trainer(callback, tmp_path).test(model, datamodule=dm, verbose=False)[0]
    report = json.loads((tmp_path / "robustness.json").read_text())
    split = dm.split("test")
    probs = predict(model, split.images, dm.task, dm.num_classes)  # an independent scoring pass
    expected = confidence_measures(probs, split.targets, dm.task)
    for name in CONFIDENCE_METRICS:
        if math.isnan(expected[name]):
            assert math.isnan(report["clean"][name])
        else:
            assert report["clean"][name] == pytest.approx(expected[name], abs=1e-6), name
    assert report["clean"]["n"] == 64 and report["confidence"]["bins"] == 15
    test_keys = callback.logged_keys(dm)["test"]
    for key in ("test/clean_ece", "test/adv_ece@4_255", "test/corr_conf", "test/corr_ece_wrong"):
        assert key in test_keys and key in result, key
    assert result["test/adv_ece@4_255"] == pytest.approx(report["pgd"]["4_255"]["ece"])
    pooled = report["corruptions"]["confidence"]
    assert result["test/corr_conf"] == pytest.approx(pooled["all"]["conf"])
    assert pooled["all"]["n"] == 64 * 5  # one corruption, all five test severities
    assert set(pooled["per_severity"]) == {"1", "2", "3", "4", "5"}
    assert report["pgd"]["4_255"]["n_wrong"] >= report["clean"]["n_wrong"]
    # mCE against the baseline: the model's summed balanced errors over 5 x 0.5
    errors = sum(1 - b for b in report["corruptions"]["bacc"]["brightness_down"])
    assert report["corruptions"]["mce"]["mce"] == pytest.approx(errors / 2.5)
    assert result["test/corr_mce"] == pytest.approx(errors / 2.5) and "test/corr_mce" in test_keys
    assert {k for k in result if k.startswith("test/")} - {"test/clean_bacc", "test/clean_acc", "test/clean_auroc",
                                                          "test/clean_loss"} <= test_keys


def test_autoattack_sections_are_logged_under_aa_keys_it_lists(tiny_erm, tmp_path):
    """AutoAttack's scores pass through the same Scorer (so carry the measures); the calibration evaluator's logging
    of the report, with a stand-in module and report instead of a 100 s AutoAttack run."""
    callback = RobustnessCallback(**_settings(tmp_path))
    measures = {name: 0.25 + i / 100 for i, name in enumerate(CONFIDENCE_METRICS)}
    report = {"clean": measures, "pgd": {"4_255": {**measures, "epsilon": 4 / 255}},
              "autoattack": {"4_255": {**measures, "epsilon": 4 / 255}},
              "corruptions": {"confidence": {"all": measures}}}

    class Module:
        logged = {}

        def log(self, key, value, **kwargs):
            self.logged[key] = value

    module = Module()
    callback.calibration.report_section(EvaluationRun(module, None, callback.scorer), report)
    assert module.logged["test/aa_ece@4_255"] == measures["ece"]
    assert module.logged["test/corr_brier"] == measures["brier"]
    assert set(module.logged) <= callback.logged_keys(tiny_erm.datamodule)["test"]
    assert len(module.logged) == 4 * len(CONFIDENCE_METRICS)


def test_confidence_adds_no_forward_pass(tiny_erm, tmp_path):
    """Counted images through the model, confidence on against off: equal for the per-epoch check (clean, PGD,
    corrupted) and the test report (clean, PGD); AutoAttack's and the corrupted test table's measures come from the
    same Scorer / from the table's probabilities (bench/confidence_cost.py counts those runs too)."""
    model, dm = tiny_erm.model, tiny_erm.datamodule
    counts = {}
    for confidence in (True, False):
        callback = RobustnessCallback(**_settings(tmp_path, confidence=confidence, corruption_report=False,
                                                  autoattack=False))
        with counted(model) as seen:
            _trainer(callback, tmp_path / str(confidence)).validate(model, datamodule=dm, verbose=False)
            _trainer(callback, tmp_path / str(confidence)).test(model, datamodule=dm, verbose=False)
        counts[confidence] = (len(seen), sum(seen))
    assert counts[True] == counts[False]
    assert counts[True][1] > 10 * 64  # the count saw the attacks


def test_bad_bins_are_a_config_error():
    from core.errors import ConfigError

    with pytest.raises(ConfigError, match="confidence_bins"):
        RobustnessCallback(confidence_bins=0)
    with pytest.raises(ConfigError, match="needs corruption_report"):
        RobustnessCallback(corruption_report=False, corruption_baseline="base.json")


@pytest.mark.parametrize("flag, corruption, message", [
    ("pneumoniamnist", "brightness_down", "is of pneumoniamnist"), ("breastmnist", "pixelate", "no scores for"),
    (None, None, "not found")])
def test_a_baseline_that_cannot_serve_fails_before_any_work(tiny_erm, tmp_path, flag, corruption, message):
    from core.errors import ConfigError

    baseline = tmp_path / "base.json"
    if flag:
        baseline.write_text(json.dumps({"corruptions": {"flag": flag, "size": 28, "bacc": {corruption: [0.5] * 5}}}))
    callback = RobustnessCallback(**_settings(tmp_path, corruption_baseline=str(baseline)))
    with counted(tiny_erm.model) as seen, pytest.raises(ConfigError, match=message):
        _trainer(callback, tmp_path).validate(tiny_erm.model, datamodule=tiny_erm.datamodule, verbose=False)
    assert seen == []


@pytest.mark.slow  # two spawned processes start torch and Lightning
def test_two_process_ddp_gives_the_single_process_measures(tiny_erm, monkeypatch):
    """The per-example states are gathered across ranks: 17 + 16 images under DDP give the 33-image numbers."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    metrics = {}
    for name, extra in (("single", dict(devices=1)), ("ddp", dict(devices=2, strategy="ddp_spawn"))):
        callback = RobustnessCallback(epsilons=[], val_samples=33, corruption_epoch=False, corruption_report=False)
        trainer = L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False, accelerator="cpu",
                            callbacks=[callback], **extra)
        trainer.validate(tiny_erm.model, datamodule=tiny_erm.datamodule, verbose=False)
        metrics[name] = {k: float(v) for k, v in trainer.callback_metrics.items()}
    for name in CONFIDENCE_METRICS:
        key = f"val/clean_{name}@subset"
        if math.isnan(metrics["single"][key]):
            assert math.isnan(metrics["ddp"][key]), key
        else:
            assert metrics["ddp"][key] == pytest.approx(metrics["single"][key], abs=1e-6), key
