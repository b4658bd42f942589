import lightning as L
import pytest
import torch

from datamodules.medmnist import MedMNISTDataModule
from lightning_modules.erm import ERM
from core.errors import ConfigError
from lightning_modules.metrics import MultilabelBalancedAccuracy, make_metrics


def _fit(root, flag, epochs=3):
    L.seed_everything(0)
    dm = MedMNISTDataModule(flag, root=str(root), verify_md5=False, batch_size=32, augment=False)
    model = ERM(num_classes=dm.num_classes, in_channels=dm.in_channels, task=dm.task, lr=3e-3)
    trainer = L.Trainer(max_epochs=epochs, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False)
    trainer.fit(model, datamodule=dm)
    return trainer, model, dm


@pytest.mark.parametrize("flag", ["breastmnist", "chestmnist", "retinamnist"])
def test_training_learns_the_synthetic_structure(synthetic_root, flag):
    root = synthetic_root(flag, n_train=256, n_val=64, n_test=64)
    trainer, model, dm = _fit(root, flag)
    metrics = trainer.callback_metrics
    for key in ("train/loss", "train/clean_bacc", "val/clean_bacc", "val/clean_acc", "val/clean_auroc",
                "val/clean_loss"):
        assert key in metrics, key
    # chance is 0.5 for binary and multi-label (per label), 0.2 for RetinaMNIST's 5 grades;
    # 14 thin label bands learn more slowly in 3 epochs than one bright class band.
    floor = 0.6 if flag == "chestmnist" else 0.8
    assert metrics["val/clean_bacc"] > floor
    result = trainer.test(model, datamodule=dm, verbose=False)[0]
    assert result["test/clean_bacc"] > floor


def test_training_reduces_loss(synthetic_root):
    root = synthetic_root("pathmnist", n_train=256)
    dm = MedMNISTDataModule("pathmnist", root=str(root), verify_md5=False)
    dm.setup()
    x, y = dm.on_after_batch_transfer(next(iter(dm.val_dataloader())), 0)
    untrained = ERM(num_classes=9, in_channels=3, task="multiclass").eval()
    trained = _fit(root, "pathmnist", epochs=4)[1].eval()
    with torch.no_grad():
        before, after = untrained.loss(untrained(x), y).item(), trained.loss(trained(x), y).item()
    assert after < 0.5 * before, (before, after)


def test_multilabel_balanced_accuracy_matches_definition():
    metric = MultilabelBalancedAccuracy(2)
    target = torch.tensor([[1, 0], [1, 1], [0, 0], [0, 1]])
    probs = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.1, 0.6], [0.3, 0.7]])
    # label 0: sensitivity 1/2, specificity 2/2; label 1: sensitivity 2/2, specificity 1/2
    assert metric(probs, target).item() == pytest.approx(0.75)


def test_binary_balanced_accuracy_is_mean_recall():
    metrics = make_metrics("binary", 2)
    target = torch.tensor([0, 0, 0, 1])
    probs = torch.tensor([[0.9, 0.1], [0.9, 0.1], [0.9, 0.1], [0.9, 0.1]])
    out = metrics(probs, target)
    assert out["bacc"].item() == pytest.approx(0.5) and out["acc"].item() == pytest.approx(0.75)


def test_metric_keys_follow_one_grammar_and_parse_what_users_type():
    from lightning_modules.metrics import metric_key, parse_metric_key

    assert metric_key("val", "adv", "bacc", "4/255") == "val/adv_bacc@4_255"
    assert metric_key("test", "aa", "acc", 8 / 255) == "test/aa_acc@8_255"
    assert metric_key("val", "corr", "bacc", "gaussian_noise") == "val/corr_bacc@gaussian_noise"
    assert metric_key("test", "clean", "bacc") == "test/clean_bacc"
    for typed in ("adv_bacc@4/255", "val/adv_bacc@eps=4/255", "val/adv_bacc@4_255", "adv_bacc@0.0156863"):
        assert parse_metric_key(typed, stage="val") == "val/adv_bacc@4_255", typed
    assert parse_metric_key("test/corr_bacc") == "test/corr_bacc"
    with pytest.raises(ConfigError, match="needs a stage"):
        parse_metric_key("clean_bacc")
    with pytest.raises(ConfigError):
        metric_key("valid", "clean")
