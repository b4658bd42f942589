"""RobustnessCallback on the session's tiny trained ERM (tests/conftest.py): per-epoch checks and the test report."""
import json

import lightning as L
import pytest

from callbacks.robustness import RobustnessCallback
from core.errors import ConfigError


@pytest.fixture
def trained(tiny_erm):
    return tiny_erm.model, tiny_erm.datamodule


def _validate(model, dm, callback):
    trainer = L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False, callbacks=[callback])
    trainer.validate(model, datamodule=dm, verbose=False)
    return {k: float(v) for k, v in trainer.callback_metrics.items()}


def test_epsilon_zero_equals_clean_and_accuracy_never_rises_with_epsilon(trained):
    model, dm = trained
    epsilons = [0, "2/255", "8/255", "32/255", "64/255"]
    metrics = _validate(model, dm, RobustnessCallback(epsilons=epsilons, val_samples=None, val_steps=10,
                                                      corruption_epoch=False))
    assert metrics["val/clean_bacc@subset"] > 0.8
    assert metrics["val/adv_bacc@0"] == pytest.approx(metrics["val/clean_bacc@subset"])
    curve = [metrics[f"val/adv_bacc@{e}"] for e in ("0", "2_255", "8_255", "32_255", "64_255")]
    assert all(later <= earlier + 1e-9 for earlier, later in zip(curve, curve[1:])), curve
    assert curve[-1] < curve[0] - 0.3  # a large budget breaks a non-robust model


def test_validation_subset_is_fixed_and_seeded(trained):
    model, dm = trained
    first = _validate(model, dm, RobustnessCallback(epsilons=["8/255"], val_samples=32, seed=3, corruption_epoch=False))
    again = _validate(model, dm, RobustnessCallback(epsilons=["8/255"], val_samples=32, seed=3, corruption_epoch=False))
    assert first["val/adv_bacc@8_255"] == again["val/adv_bacc@8_255"]


def test_test_report_is_complete_and_not_stronger_than_clean(trained, tmp_path):
    model, dm = trained
    callback = RobustnessCallback(epsilons=["4/255", "16/255"], test_steps=5, test_restarts=2,
                                  autoattack_attacks=["apgd-ce"], autoattack_samples=16,
                                  corruption_report=False)
    trainer = L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False, callbacks=[callback],
                        default_root_dir=str(tmp_path))
    result = trainer.test(model, datamodule=dm, verbose=False)[0]
    report = json.loads((tmp_path / "robustness.json").read_text())
    assert report["threat_model"]["epsilons"] == pytest.approx([4 / 255, 16 / 255])
    assert report["dataset"] == {"flag": "breastmnist", "size": 28, "task": "binary", "split": "test", "n_examples": 64}
    assert report["seed"] == 0 and report["versions"]["torch"]
    for label in ("4_255", "16_255"):
        assert report["pgd"][label]["bacc"] <= report["clean"]["bacc"] + 1e-9
        assert result[f"test/adv_bacc@{label}"] == pytest.approx(report["pgd"][label]["bacc"])
        aa = report["autoattack"][label]
        assert aa["info"]["seed"] == 0 and aa["info"]["n_examples"] == 16
        assert result[f"test/aa_bacc@{label}"] == pytest.approx(aa["bacc"])
        assert aa["bacc"] <= aa["clean_bacc_same_examples"] + 1e-9
    assert report["pgd"]["16_255"]["bacc"] <= report["pgd"]["4_255"]["bacc"] + 1e-9


def test_test_report_works_under_inference_mode(trained, tmp_path):
    model, dm = trained
    callback = RobustnessCallback(epsilons=["64/255"], test_steps=5, test_restarts=1, autoattack=False,
                                  corruption_report=False)
    trainer = L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False, callbacks=[callback],
                        default_root_dir=str(tmp_path), inference_mode=True)
    result = trainer.test(model, datamodule=dm, verbose=False)[0]
    assert result["test/adv_bacc@64_255"] < result["test/clean_bacc"] - 0.3


def test_bad_settings_are_config_errors():
    with pytest.raises(ConfigError, match="epsilon"):
        RobustnessCallback(epsilons=["300/255"])
    with pytest.raises(ConfigError, match="norm"):
        RobustnessCallback(norm="l1")
    with pytest.raises(ConfigError, match="AutoAttack"):
        RobustnessCallback(autoattack_attacks=["apgd-xx"])


def test_corruption_accuracy_each_epoch_and_medmnist_c_table_in_the_report(trained, tmp_path):
    model, dm = trained
    callback = RobustnessCallback(epsilons=["4/255"], test_steps=2, test_restarts=1, autoattack=False,
                                  corruptions=["brightness_down", "contrast_down"], corruption_severities=[1, 5],
                                  corruption_val_samples=32, corruption_cache=str(tmp_path / "cache"))
    metrics = _validate(model, dm, callback)
    assert set(k for k in metrics if k.startswith("val/corr_bacc")) == {
        "val/corr_bacc", "val/corr_bacc@brightness_down", "val/corr_bacc@contrast_down"}
    assert metrics["val/corr_bacc"] == pytest.approx(
        (metrics["val/corr_bacc@brightness_down"] + metrics["val/corr_bacc@contrast_down"]) / 2)
    trainer = L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False, callbacks=[callback],
                        default_root_dir=str(tmp_path))
    result = trainer.test(model, datamodule=dm, verbose=False)[0]
    table = json.loads((tmp_path / "robustness.json").read_text())["corruptions"]
    assert table["protocol"] == "upsample224-corrupt-box" and table["flag"] == "breastmnist"
    assert set(table["bacc"]) == {"brightness_down", "contrast_down"}  # corruptions= limits the table too
    assert all(len(per_severity) == 5 for per_severity in table["bacc"].values())
    assert result["test/corr_bacc"] == pytest.approx(table["mean_bacc"])
    assert list((tmp_path / "cache" / "breastmnist").glob("*.npz"))


def _test_with_checkpoint(tiny_erm, checkpoint, tmp_path, epsilon) -> dict:
    """Tests the checkpoint at one epsilon with PGD and AutoAttack (apgd-ce, then square); returns the report on
    disk."""
    callback = RobustnessCallback(epsilons=[epsilon], test_steps=2, test_restarts=1,
                                  autoattack_attacks=["apgd-ce", "square"], autoattack_samples=16, square_queries=20,
                                  corruption_epoch=False, corruption_report=False)
    trainer = L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False, callbacks=[callback],
                        default_root_dir=str(tmp_path))
    trainer.test(tiny_erm.model, datamodule=tiny_erm.datamodule, ckpt_path=str(checkpoint), verbose=False)
    assert callback.report_path == checkpoint.with_name(f"{checkpoint.stem}.robustness.json")
    return json.loads(callback.report_path.read_text())


def test_report_names_the_autoattack_attacks_that_ran_and_a_retest_adds_to_it(tiny_erm, tmp_path):
    checkpoint = tiny_erm.checkpoint_copy(tmp_path / "ckpt")
    first = _test_with_checkpoint(tiny_erm, checkpoint, tmp_path, "1/255")
    info = first["autoattack"]["1_255"]["info"]
    # a tiny budget leaves examples robust after apgd-ce, so square runs on those that are left
    assert info["planned"] == ["apgd-ce", "square"] and info["skipped"] == []
    ce, square = info["attacks"]
    assert (ce["name"], square["name"]) == ("apgd-ce", "square") and square["n_queries"] == 20
    assert ce["n_attacked"] == round(info["clean_accuracy"] * 16)  # AutoAttack attacks the correctly classified
    assert round(info["robust_accuracy"] * 16) <= square["n_attacked"] <= ce["n_attacked"]

    second = _test_with_checkpoint(tiny_erm, checkpoint, tmp_path, 1.0)
    info = second["autoattack"]["1"]["info"]
    # epsilon 1 reaches any image: apgd-ce leaves no example robust, so square is planned but never runs
    assert info["robust_accuracy"] == 0
    assert [attack["name"] for attack in info["attacks"]] == ["apgd-ce"] and info["skipped"] == ["square"]
    # the re-test at another epsilon keeps the first test's entries
    assert second["autoattack"]["1_255"] == first["autoattack"]["1_255"]
    assert second["pgd"]["1_255"] == first["pgd"]["1_255"] and set(second["pgd"]) == {"1_255", "1"}
    assert second["threat_model"]["epsilon_labels"] == ["1_255", "1"]
    assert second["threat_model"]["epsilons"] == pytest.approx([1 / 255, 1.0])
