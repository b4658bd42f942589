"""data.resize: the DataModule serves its own size, the model's first layer resizes batches on their device, so
attacks perturb (and epsilon measures) the served images; train.py links data.resize into the model."""
import pytest
import torch
import torch.nn.functional as F

from attacks.gradient import PGD
from core.errors import ConfigError
from datamodules.medmnist import MedMNISTDataModule
from lightning_modules.models import build_model

import train


def test_resize_is_the_models_input_size_and_the_served_images_keep_theirs(synthetic_root):
    root = synthetic_root("breastmnist", n_train=8, n_val=8, n_test=8)
    plain = MedMNISTDataModule("breastmnist", root=str(root), verify_md5=False)
    resized = MedMNISTDataModule("breastmnist", root=str(root), verify_md5=False, resize=224)
    assert (plain.input_size, resized.input_size, resized.size) == (28, 224, 28)
    assert resized.split("train").images.shape[-2:] == (28, 28)
    for bad in (0, -3, "big", 1.5):
        with pytest.raises(ConfigError, match="resize must be a positive integer"):
            MedMNISTDataModule("breastmnist", root=str(root), verify_md5=False, resize=bad)


def test_the_model_resizes_on_the_device_and_attacks_stay_on_the_served_images():
    torch.manual_seed(0)
    model = build_model("small_cnn", 1, 2, input_size=56).eval()
    x = torch.rand(4, 1, 28, 28)
    upsampled = F.interpolate(x, size=(56, 56), mode="bilinear", align_corners=False)
    with torch.no_grad():
        assert torch.allclose(model(x), model[1](model[0](upsampled)), atol=1e-6)
        assert torch.equal(model(upsampled), model(x))  # batches already at the input size pass unchanged
        assert not torch.allclose(model(x), build_model("small_cnn", 1, 2)(x))  # not a no-op
    y = torch.tensor([0, 1, 0, 1])
    adv = PGD(model, 4 / 255, steps=3, seed=0)(x, y)
    assert adv.shape == x.shape and (adv - x).abs().max() <= 4 / 255 + 1e-6
    assert (adv - x).abs().max() > 0  # gradients pass through the resize to the 28 px pixels


def test_train_py_links_data_resize_into_the_model(synthetic_root, tmp_path):
    root = synthetic_root("breastmnist", n_train=16, n_val=8, n_test=8)
    common = ["fit", "--config", "configs/erm.yaml", "--data.flag", "breastmnist", "--data.root", str(root),
              "--data.verify_md5", "false", "--trainer.fast_dev_run", "true", "--trainer.enable_progress_bar",
              "false", "--trainer.enable_model_summary", "false", "--trainer.callbacks", "[]"]
    for extra, expected in (([], 28), (["--data.resize", "56"], 56)):
        cli = train.build_cli([*common, "--trainer.default_root_dir", str(tmp_path / str(expected)), *extra])
        assert cli.model.hparams.input_size == expected and cli.model.model[0].size == expected


def test_a_bad_resize_through_train_py_is_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        train.main(["fit", "--config", "configs/erm.yaml", "--trainer.default_root_dir", str(tmp_path / "run"),
                    "--data.resize", "0"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and err[-1].startswith("error: resize must be a positive integer")
    assert not (tmp_path / "run").exists()
