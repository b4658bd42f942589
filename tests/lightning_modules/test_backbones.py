"""timm backbones: normalisation from the backbone, weights files, fine-tuning modes (full, linear probe, LoRA via
PEFT) with ERM and adversarial training, checkpoints that reload, and one-line errors through train.py.

Random weights only (tests cannot download): timm's own tiny test models (test_resnet, test_vit at 28 px)."""
from pathlib import Path

import pytest
import torch

from core.errors import ConfigError, DataError
from lightning_modules.adversarial import FGSMRS, PGDAT, TRADES
from lightning_modules.erm import ERM
from lightning_modules.models import Normalize, classifier_layer, features
from lightning_modules.settings import setting

pytest.importorskip("timm")
pytest.importorskip("peft")

import train  # noqa: E402

RESNET = dict(arch="timm/test_resnet", in_channels=1, num_classes=2)
VIT = dict(arch="timm/test_vit", in_channels=3, num_classes=3, model_kwargs={"img_size": 28, "patch_size": 4})


def _logits(module, x):
    with torch.no_grad():
        return module.eval()(x)


def test_normalization_is_the_backbones_own():
    import timm

    model = ERM(arch="timm/test_resnet", in_channels=3, num_classes=2)
    config = timm.data.resolve_data_config(model=timm.create_model("test_resnet"))
    normalize = model.model[0]
    assert isinstance(normalize, Normalize)
    assert torch.allclose(normalize.mean.flatten(), torch.tensor(config["mean"]))
    assert torch.allclose(normalize.std.flatten(), torch.tensor(config["std"]))
    grey = ERM(**RESNET).model[0]  # one channel: timm sums the RGB filters, so the RGB mean of mean and std
    assert torch.allclose(grey.mean.flatten(), torch.tensor([sum(config["mean"]) / 3]))
    assert torch.allclose(grey.std.flatten(), torch.tensor([sum(config["std"]) / 3]))
    assert model.model[1].net.conv1[0].in_channels == 3 and ERM(**RESNET).model[1].net.conv1[0].in_channels == 1


@pytest.mark.parametrize("spec,finetune", [(RESNET, "full"), (RESNET, "lora"), (RESNET, "linear"), (VIT, "lora")])
def test_features_are_what_the_classifier_reads(spec, finetune):
    torch.manual_seed(0)
    model = ERM(**spec, finetune=finetune).eval()
    x = torch.rand(2, spec["in_channels"], 28, 28)
    with torch.no_grad():
        assert torch.allclose(classifier_layer(model)(features(model, x)), model(x), atol=1e-5)


def test_weights_file_round_trips(tmp_path):
    """save (safetensors and a torch state dict), load with pretrained: PATH, same logits."""
    from lightning_modules.backbones import save_weights

    torch.manual_seed(0)
    source = ERM(**RESNET)
    x = torch.rand(4, 1, 28, 28)
    path = save_weights(source, tmp_path / "test_resnet.safetensors")
    torch.save(source.model[1].net.state_dict(), tmp_path / "test_resnet.pt")
    torch.manual_seed(1)
    assert not torch.allclose(_logits(ERM(**RESNET), x), _logits(source, x))  # other random weights differ
    for file in (path, tmp_path / "test_resnet.pt"):
        loaded = ERM(**RESNET, pretrained=str(file))
        assert torch.equal(_logits(loaded, x), _logits(source, x))
        assert str(file) in loaded.hparams.backbone


def test_lora_weights_merge_into_a_plain_model(tmp_path):
    from lightning_modules.backbones import save_weights

    torch.manual_seed(0)
    lora = ERM(**VIT, finetune="lora", lora_rank=4)
    with torch.no_grad():  # LoRA's B starts at zero: give the adapters something to merge
        for name, p in lora.named_parameters():
            if "lora_B" in name or "modules_to_save" in name:
                p.normal_(0, 0.05)
    x = torch.rand(3, 3, 28, 28)
    path = save_weights(lora, tmp_path / "merged.safetensors")
    merged = ERM(**VIT, pretrained=str(path))
    assert torch.allclose(_logits(merged, x), _logits(lora, x), atol=1e-5)
    assert not torch.allclose(_logits(ERM(**VIT), x), _logits(lora, x), atol=1e-3)


def test_a_file_with_the_published_class_count_gets_a_new_classifier(tmp_path):
    import timm
    from safetensors.torch import save_file

    published = timm.create_model("test_resnet", num_classes=1000, in_chans=3)  # what an ImageNet file holds
    save_file(published.state_dict(), str(tmp_path / "imagenet.safetensors"))
    model = ERM(**RESNET, pretrained=str(tmp_path / "imagenet.safetensors"))
    conv1 = published.conv1[0].weight.sum(1, keepdim=True)  # RGB filters summed for grey input
    assert torch.allclose(model.model[1].net.conv1[0].weight, conv1)
    assert model.model[1].net.fc.out_features == 2 and "new 2-class classifier" in model.hparams.backbone


@pytest.mark.parametrize("finetune", ["full", "linear", "lora"])
def test_only_trained_parameters_move_and_reach_the_optimizer(finetune, monkeypatch):
    from types import SimpleNamespace

    torch.manual_seed(0)
    model = ERM(**RESNET, finetune=finetune, lora_rank=2, lr=0.05)
    monkeypatch.setattr(ERM, "trainer", property(lambda self: SimpleNamespace(max_epochs=1)))  # the schedule reads it
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = model.configure_optimizers()["optimizer"]
    trainable = [p for p in model.parameters() if p.requires_grad]
    in_optimizer = [p for group in optimizer.param_groups for p in group["params"]]
    assert len(in_optimizer) == len(trainable) and all(p.requires_grad for p in in_optimizer)
    assert sum(p.numel() for p in trainable) == model.hparams.trainable_parameters
    model.train()
    x, y = torch.rand(8, 1, 28, 28), torch.randint(0, 2, (8,))
    loss, _ = model.training_loss(x, y)
    loss.backward()
    optimizer.step()
    after = model.state_dict()
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    head = {k for k in moved if ".fc." in k}
    assert head, "the classifier always trains"
    if finetune == "full":
        assert any("conv1" in k for k in moved) and any("running_mean" in k for k in moved)
    elif finetune == "linear":
        assert moved == head  # not even BatchNorm's running statistics: the backbone runs in eval mode
        assert model.hparams.trainable_parameters == 2 * model.model[1].net.num_features + 2
    else:
        assert {k for k in moved - head} and all("lora_" in k for k in moved - head)
        assert model.hparams.trainable_parameters < 0.1 * model.hparams.total_parameters


@pytest.mark.parametrize("cls,extra", [(PGDAT, {"steps": 2}), (TRADES, {"steps": 2}), (FGSMRS, {})])
def test_lora_trains_adversarially(cls, extra):
    torch.manual_seed(0)
    model = cls(**VIT, finetune="lora", lora_rank=2, epsilon="8/255", **extra).train()
    x, y = torch.rand(4, 3, 28, 28), torch.randint(0, 3, (4,))
    loss, logits = model.training_loss(x, y)
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert grads and all("lora_" in n or "modules_to_save" in n for n in grads)
    assert logits.shape == (4, 3) and torch.isfinite(loss)


def test_lora_pgd_at_checkpoint_reloads_without_the_weights_file(tmp_path):
    """A LoRA model started from a weights file: its Lightning checkpoint holds base and adapter weights, and
    load_module rebuilds it (the file deleted) with the same logits; the run's facts survive in memory only."""
    import lightning as L

    from datamodules.medmnist import MedMNISTDataModule
    from datamodules.synthetic import write_synthetic_npz
    from evaluation.checkpoints import load_module
    from lightning_modules.backbones import save_weights

    write_synthetic_npz(tmp_path / "data", "breastmnist", 28, n_train=32, n_val=16, n_test=16)
    weights = save_weights(ERM(**RESNET), tmp_path / "start.safetensors")
    model = PGDAT(**RESNET, pretrained=str(weights), finetune="lora", lora_rank=2, steps=1, lr=0.01)
    dm = MedMNISTDataModule("breastmnist", root=str(tmp_path / "data"), verify_md5=False, batch_size=16)
    trainer = L.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, inference_mode=False, accelerator="cpu",
                        default_root_dir=str(tmp_path))
    trainer.fit(model, datamodule=dm)
    trainer.save_checkpoint(tmp_path / "lora.ckpt")
    weights.unlink()
    saved = torch.load(tmp_path / "lora.ckpt", map_location="cpu", weights_only=False)
    assert setting(saved["hyper_parameters"], "pretrained") is False and saved["medrobust_pretrained"] == str(weights)
    assert "trainable_parameters" not in saved["hyper_parameters"]
    assert any("lora_A" in k for k in saved["state_dict"])
    reloaded = load_module(tmp_path / "lora.ckpt", expect={"model_class": "PGDAT", "num_classes": 2})
    x = torch.rand(4, 1, 28, 28)
    assert torch.equal(_logits(reloaded, x), _logits(model, x))
    assert setting(reloaded.hparams, "pretrained") == str(weights)
    assert reloaded.hparams.trainable_parameters == model.hparams.trainable_parameters


@pytest.mark.parametrize("kwargs,error,message", [
    (dict(arch="timm/resnet_nosuch"), ConfigError, "unknown timm model 'timm/resnet_nosuch'"),
    (dict(arch="timm/test_resnet", finetune="lora", lora_targets=["qkv"]), ConfigError, "matches no layer"),
    (dict(arch="timm/test_resnet", finetune="lora", lora_targets=["attention"]), ConfigError,
     "has no attention layers"),
    (dict(arch="timm/test_resnet", finetune="adapter"), ConfigError, "unknown finetune mode"),
    (dict(arch="timm/vit_tiny_patch16_224", input_size=112), ConfigError, "takes 224 px input"),
    (dict(arch="timm/test_convnext", input_size=2), ConfigError, "cannot take 2 px input"),
    (dict(arch="timm/test_resnet", pretrained="/no/such.safetensors"), DataError, "not found"),
    (dict(arch="small_cnn", finetune="lora"), ConfigError, "need a timm backbone"),
])
def test_bad_backbones_are_one_line_errors(kwargs, error, message):
    with pytest.raises(error, match=message):
        ERM(**{"in_channels": 3, **kwargs})


def test_weights_of_another_architecture_or_class_count_are_refused(tmp_path):
    from lightning_modules.backbones import save_weights

    save_weights(ERM(arch="timm/test_resnet", in_channels=1, num_classes=3), tmp_path / "three.safetensors")
    save_weights(ERM(**VIT), tmp_path / "vit.safetensors")
    with pytest.raises(ConfigError, match="classifier for 3 classes: this run has 2"):
        ERM(**RESNET, pretrained=str(tmp_path / "three.safetensors"))
    with pytest.raises(ConfigError, match="does not hold weights of timm/test_resnet"):
        ERM(**RESNET, pretrained=str(tmp_path / "vit.safetensors"))
    (tmp_path / "text.pt").write_text("not weights")
    with pytest.raises(DataError, match="not a readable weights file"):
        ERM(**RESNET, pretrained=str(tmp_path / "text.pt"))


def test_pretrained_true_without_network_names_the_file(monkeypatch, tmp_path):
    from lightning_modules import backbones

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("MEDROBUST_WEIGHTS", str(tmp_path / "weights"))
    monkeypatch.setattr(backbones, "_cached_published", lambda model: None)
    with pytest.raises(ConfigError) as err:
        ERM(**RESNET, pretrained=True)
    text = str(err.value)
    assert "https://huggingface.co/timm/test_resnet.r160_in1k/resolve/main/model.safetensors" in text
    assert str(tmp_path / "weights" / "test_resnet.r160_in1k.safetensors") in text and "\n" not in text
    # put there, it is found without the network
    from safetensors.torch import save_file
    import timm

    (tmp_path / "weights").mkdir()
    published = timm.create_model("test_resnet")
    save_file(published.state_dict(), str(tmp_path / "weights" / "test_resnet.r160_in1k.safetensors"))
    model = ERM(**RESNET, pretrained=True)
    assert torch.allclose(model.model[1].net.layer4[0].conv1.weight, published.layer4[0].conv1.weight)


# ---- through train.py ---------------------------------------------------------------------------------------
def _main(args, capsys):
    with pytest.raises(SystemExit) as exit_:
        train.main(list(args))
        raise SystemExit(0)
    return exit_.value.code or 0, capsys.readouterr().err


@pytest.fixture
def lora_args(synthetic_root, tmp_path):
    root = synthetic_root("pneumoniamnist", n_train=32, n_val=16, n_test=16)

    def make(*extra):
        return ["fit", "--config", "configs/finetune_lora.yaml", "--data.root", str(root), "--data.verify_md5",
                "false", "--trainer.default_root_dir", str(tmp_path / "run"), "--model.init_args.arch",
                "timm/test_resnet", "--model.init_args.pretrained", "false", "--data.resize", "null", *extra]
    return make


@pytest.mark.parametrize("extra,message", [
    (["--model.init_args.arch", "timm/resnet_nosuch"], "unknown timm model"),
    (["--model.init_args.pretrained", "WEIGHTS"], "does not hold weights of timm/test_resnet"),
    (["--model.init_args.lora_targets", "[qkv]"], "LoRA target 'qkv' matches no layer"),
    (["--model.init_args.lora_targets", "[attention]"], "has no attention layers"),
    (["--model.init_args.arch", "timm/vit_tiny_patch16_224", "--data.resize", "112"], "takes 224 px input"),
    (["--model.init_args.arch", "timm/vit_tiny_patch16_224"], "takes 224 px input, the data gives 28 px"),
])
def test_bad_backbone_input_through_train_py_is_one_line_and_writes_nothing(lora_args, tmp_path, capsys, extra,
                                                                            message):
    from lightning_modules.backbones import save_weights

    weights = save_weights(ERM(arch="timm/test_vit", in_channels=1), tmp_path / "vit.safetensors")
    extra = [str(weights) if e == "WEIGHTS" else e for e in extra]
    code, err = _main(lora_args(*extra), capsys)
    assert code == 2 and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("error: ") and message in err.strip().splitlines()[-1]
    assert not (tmp_path / "run").exists()


@pytest.mark.slow  # a minute or more on 2 busy cores
def test_lora_pgd_at_fit_through_train_py_reports_the_backbone(lora_args, tmp_path):
    import json

    result = train.run(lora_args(
        "--trainer.max_epochs", "1", "--model.init_args.steps", "1", "--model.init_args.lora_rank", "2",
        "--data.batch_size", "16", "--trainer.enable_progress_bar", "false",
        "--trainer.callbacks.init_args.epsilons", "[4/255]", "--trainer.callbacks.init_args.val_samples", "16",
        "--trainer.callbacks.init_args.test_steps", "2", "--trainer.callbacks.init_args.test_restarts", "1",
        "--trainer.callbacks.init_args.autoattack", "false", "--trainer.callbacks.init_args.corruption_report",
        "false", "--trainer.callbacks.init_args.corruption_epoch", "false"))
    (report,) = Path(result.run_dir).glob("checkpoints/best-*.robustness.json")
    hparams = json.loads(report.read_text())["model"]["hparams"]
    assert setting(hparams, "finetune") == "lora" and hparams["input_size"] == 28
    assert 0 < hparams["trainable_parameters"] < hparams["total_parameters"]
    assert "LoRA r=2" in hparams["backbone"] and "test/adv_bacc@4_255" in result.metrics
