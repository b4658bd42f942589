"""configs/smoothing.yaml end to end on synthetic data: noise-trained ERM, certified at test time; the report's cert
keys are certified_metrics of the per-example radii it keeps; bad certification settings fail before training."""
import json
from pathlib import Path

import pytest

import train
from attacks.smoothing import certified_metrics
from evaluation.record import read_record
from lightning_modules.metrics import MetricKey

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def one_thread():
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_args(root, out, *extra):
    cb = "--trainer.callbacks.init_args."
    return ["fit", "--config", "configs/smoothing.yaml", "--data.root", str(root), "--data.verify_md5", "false",
            "--data.batch_size", "16", "--trainer.max_epochs", "1", "--trainer.default_root_dir", str(out),
            "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
            "--trainer.logger", "false",
            cb + "adversarial.val_samples", "8", cb + "adversarial.val_steps", "1", cb + "adversarial.test_steps", "1",
            cb + "adversarial.epsilons", "[0.5]", cb + "certified.n0", "8", cb + "certified.n", "40",
            cb + "certified.alpha", "0.05", cb + "certified.batch_size", "128", *extra]


def test_tiny_smoothing_fit_reports_certified_metrics_of_its_radii(synthetic_root, tmp_path):
    root = synthetic_root("pneumoniamnist", n_train=32, n_val=16, n_test=24)
    out = tmp_path / "run"
    train.run(tiny_args(root, out))
    (path,) = (out / "checkpoints").glob("best-*.robustness.json")
    report = json.loads(path.read_text())
    section = report["certified"]
    assert (section["sigma"], section["n0"], section["n"], section["alpha"]) == (0.25, 8, 40, 0.05)
    per = section["per_example"]
    assert section["n_examples"] == len(per["radius"]) == 24
    expected = certified_metrics(per["label"], per["prediction"], per["radius"], (0.0, 0.25, 0.5, 1.0),
                                 num_classes=2)
    metrics = {str(k): v for k, v in read_record(path).metrics().items()}
    for r, bacc, acc in zip(expected.radii, expected.balanced_accuracy, expected.accuracy):
        assert metrics[str(MetricKey("test", "cert", "bacc", r))] == pytest.approx(bacc)
        assert metrics[str(MetricKey("test", "cert", "acc", r))] == pytest.approx(acc)
    assert metrics["test/cert_abstain"] == pytest.approx(expected.abstention_rate)
    assert {"test/cert_bacc@r0", "test/cert_bacc@r0_25", "test/cert_bacc@r0_5", "test/cert_bacc@r1"} <= set(metrics)
    assert report["model"]["hparams"]["noise_sigma"] == 0.25


def test_the_smoothing_config_certifies_its_last_epoch(synthetic_root, tmp_path):
    """checkpoint.monitor null: the final model is tested and certified. At lr 0 the BatchNorm-free small_cnn_gn
    scores every epoch alike on clean validation images, so the val/clean_bacc monitor would keep epoch 0 (a tie
    is no improvement), as it did on BreastMNIST at sigma 0.25 and 0.5."""
    root = synthetic_root("pneumoniamnist", n_train=16, n_val=8, n_test=8)
    out = tmp_path / "run"
    result = train.run(tiny_args(root, out, "--trainer.max_epochs", "2", "--model.init_args.arch", "small_cnn_gn",
                                 "--model.init_args.lr", "0"))
    assert result.best_epoch == 1 and result.best_checkpoint.name == "best-epoch=001.ckpt"
    assert [p.name for p in (out / "checkpoints").glob("*.robustness.json")] == ["best-epoch=001.robustness.json"]


@pytest.mark.parametrize("extra, message", [
    (["certified.sigma", "0"], "sigma must be a number > 0"),
    (["certified.n0", "50", "--trainer.callbacks.init_args.certified.n", "50"], "n0 (selection samples) must be"),
    (["certified.alpha", "1.5"], "alpha must be a number in (0, 1)"),
    (["certified.radii", "[]"], "certified radii must be a non-empty list"),
])
def test_bad_certification_settings_are_one_line_and_write_nothing(tmp_path, capsys, extra, message):
    out = tmp_path / "run"
    args = tiny_args(tmp_path / "nodata", out, "--trainer.callbacks.init_args." + extra[0], *extra[1:])
    with pytest.raises(SystemExit) as exit_:
        train.main(args)
    err = capsys.readouterr().err
    assert exit_.value.code == 2
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert lines[-1].startswith("error: ") and message in lines[-1] and "Traceback" not in err, err
    assert not out.exists()


def test_a_multilabel_dataset_is_refused_before_training(synthetic_root, tmp_path, capsys):
    root = synthetic_root("chestmnist", n_train=16, n_val=8, n_test=8)
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_:
        train.main(tiny_args(root, out, "--data.flag", "chestmnist"))
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.strip().splitlines()[-1].startswith("error: ") and "multi-label" in err, err
    assert not list(Path(out).glob("**/*.ckpt"))
