"""Finished runs read in one place: logged epochs, the best epoch, RunResult, and bootstrap intervals."""
import numpy as np
import pytest
import torch

from evaluation import runs
from lightning_modules.metrics import make_metrics


@pytest.mark.parametrize("task, classes", [("multiclass", 3), ("binary", 2), ("multilabel", 4)])
def test_bootstrap_point_estimate_is_the_logged_metric(task, classes):
    """The interval's point is the project's one balanced accuracy; on multi-label data a label with no positives
    is left out (as lightning_modules.metrics does), not scored as sensitivity 0."""
    rng = np.random.default_rng(0)
    logits = torch.tensor(rng.normal(size=(200, classes)), dtype=torch.float32)
    if task == "multilabel":
        probs = torch.sigmoid(logits)
        targets = torch.tensor(rng.integers(0, 2, (200, classes)))
        targets[:, 0] = 0  # a label with no positives in the test split
    else:
        probs = torch.softmax(logits, 1)
        targets = torch.tensor(rng.integers(0, classes, 200))
    metrics = make_metrics(task, classes)
    metrics.update(probs, targets)
    expected = {k: float(v) for k, v in metrics.compute().items()}
    intervals = runs.bootstrap({"task": task, "targets": targets, "scores": [("clean", None, probs)]}, n=100)
    assert intervals["test/clean_bacc"]["value"] == pytest.approx(expected["bacc"], abs=1e-6)
    assert intervals["test/clean_acc"]["value"] == pytest.approx(expected["acc"], abs=1e-6)


def test_bootstrap_intervals_contain_the_estimate_and_shrink_with_more_examples():
    rng = np.random.default_rng(1)

    def predictions(n):
        targets = torch.tensor(rng.integers(0, 2, n))
        right = rng.random(n) < 0.8
        pred = torch.where(torch.tensor(right), targets, 1 - targets)
        probs = torch.nn.functional.one_hot(pred, 2).float() * 0.8 + 0.1
        return {"task": "binary", "targets": targets,
                "scores": [("clean", None, probs), ("adv", 4 / 255, probs.flip(1))]}

    small, large = runs.bootstrap(predictions(100), n=300), runs.bootstrap(predictions(3000), n=300)
    assert set(small) == {"test/clean_bacc", "test/clean_acc", "test/adv_bacc@4_255", "test/adv_acc@4_255"}
    for ci in (*small.values(), *large.values()):
        assert ci["low"] <= ci["value"] <= ci["high"]
    width = lambda ci: ci["high"] - ci["low"]  # noqa: E731
    assert width(large["test/clean_bacc"]) < width(small["test/clean_bacc"]) / 2
    assert small["test/adv_bacc@4_255"]["value"] == pytest.approx(1 - small["test/clean_bacc"]["value"], abs=1e-9)


def test_logged_epochs_merge_csv_versions_of_a_resumed_run(tmp_path):
    for version, lines in (("0", ["epoch,step,train/loss,val/clean_bacc", "0,10,0.7,", "0,10,,0.6", "1,20,0.6,",
                                  "1,20,,0.8"]),
                           ("1", ["epoch,step,train/loss,val/clean_bacc,test/clean_bacc", "2,30,0.5,,", "2,30,,0.7,",
                                  "2,30,,,0.75"])):
        folder = tmp_path / "csv" / f"version_{version}"
        folder.mkdir(parents=True)
        (folder / "metrics.csv").write_text("\n".join(lines) + "\n")
    epochs = runs.logged_epochs(tmp_path)
    assert [e["epoch"] for e in epochs] == [0, 1, 2]
    assert epochs[1]["val/clean_bacc"] == 0.8 and epochs[2]["test/clean_bacc"] == 0.75
    epoch, val = runs.best_epoch(epochs, None, "val/clean_bacc", "max")
    assert epoch == 1 and val == {"val/clean_bacc": 0.8}  # the best epoch came before the resume
    result = runs.read_run(tmp_path)
    assert result.best_epoch == 1 and result.metrics == {"val/clean_bacc": 0.8, "test/clean_bacc": 0.75}


def test_a_run_saved_with_monitor_null_reads_back_its_last_epoch(tmp_path):
    """checkpoint.monitor null (configs/smoothing.yaml: the final model is certified) keeps the last epoch; read back
    without a readable checkpoint, the run's best epoch is its last, not the best val/clean_bacc."""
    folder = tmp_path / "csv" / "version_0"
    folder.mkdir(parents=True)
    (folder / "metrics.csv").write_text("epoch,step,val/clean_bacc\n0,5,0.9\n1,10,0.6\n")
    (folder / "config.yaml").write_text("checkpoint:\n  monitor: null\n  mode: max\n")
    assert runs.checkpoint_choice(tmp_path) == (None, None, "max")
    assert runs.read_run(tmp_path).best_epoch == 1
    (folder / "config.yaml").write_text("checkpoint:\n  mode: max\n")  # no monitor saved: train.py's default
    assert runs.read_run(tmp_path).best_epoch == 0
