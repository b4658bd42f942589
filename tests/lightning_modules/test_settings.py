"""The training modules' grouped settings: defaults in one place, flat keys of the earlier constructor (configs,
command lines, checkpoints) upgraded, conflicting or unknown keys refused in one line."""
from __future__ import annotations

import inspect

import pytest
import torch
import yaml

import train
from core.errors import ConfigError
from evaluation.checkpoints import load_module
from lightning_modules.adversarial import PGDAT
from lightning_modules.erm import ERM
from lightning_modules.settings import (
    GROUPS, LEGACY_KEYS, FinetuningSettings, ModuleSettings, NetworkSettings, OptimizationSettings, flat_hparams,
    setting, upgrade_cli_args, upgrade_config, upgrade_init_args,
)

#: the hyperparameters a PGDAT checkpoint written by train.py before the grouping holds (flat)
FLAT_PGDAT = {
    "_class_path": "lightning_modules.adversarial.PGDAT", "epsilon": "4/255", "steps": 2, "alpha": None,
    "norm": "linf", "warmup_epochs": 2, "arch": "small_cnn", "num_classes": 2, "in_channels": 1, "task": "binary",
    "optimizer": "sgd", "lr": 0.05, "weight_decay": 0.0005, "momentum": 0.9, "lr_milestones": [0.5, 0.75],
    "lr_gamma": 0.1, "norm_mean": None, "norm_std": None, "channels_last": False, "compile": False,
    "input_size": 28, "pretrained": False, "finetune": "full", "lora_rank": 8, "lora_alpha": None,
    "lora_dropout": 0.0, "lora_targets": None, "model_kwargs": None, "loss_terms": None, "noise_sigma": 0.0,
    "_instantiator": "lightning.pytorch.cli.instantiate_module",
}


def test_defaults_live_in_the_settings_dataclasses():
    signature = inspect.signature(ERM).parameters
    assert {name: signature[name].default for name in GROUPS} == {
        "network": NetworkSettings(), "optimization": OptimizationSettings(), "finetuning": FinetuningSettings()}
    assert not set(LEGACY_KEYS) & set(signature)  # no flat keyword keeps a default of its own
    module = ERM()
    assert module.settings == ModuleSettings()
    assert {name: module.hparams[name] for name in GROUPS} == ModuleSettings().hparams()
    assert flat_hparams(module.hparams)["lr_milestones"] == [0.5, 0.75]  # YAML-safe lists, not tuples


def test_flat_keys_are_upgraded_in_the_constructor_the_config_and_the_command_line():
    module = PGDAT(steps=1, lr=0.05, finetune="full", arch="small_cnn")
    assert module.settings.optimization.lr == 0.05 and module.hparams["optimization"]["lr"] == 0.05
    assert "lr" not in module.hparams and setting(module.hparams, "lr") == 0.05 == setting(FLAT_PGDAT, "lr")
    assert setting(module.hparams, "steps") == 1 and setting(module.hparams, "nothing", "x") == "x"
    assert PGDAT(steps=1, optimization={"lr": 0.05}).hparams == module.hparams
    assert upgrade_init_args({"epsilon": "4/255", "finetune": "lora", "lr": 0.1, "optimization": {"lr": 0.1}}) == {
        "epsilon": "4/255", "finetuning": {"mode": "lora"}, "optimization": {"lr": 0.1}}
    args = upgrade_cli_args(["fit", "--model.init_args.lr", "0.01", "--model.init_args.arch=resnet18",
                             "--model.init_args.steps", "3"])
    assert args == ["fit", "--model.init_args.optimization.lr", "0.01", "--model.init_args.network.arch", "resnet18",
                    "--model.init_args.steps", "3"]
    config, changed = upgrade_config({"fit": {"model": {"init_args": {"lora_rank": 4}}}})
    assert changed and config["fit"]["model"]["init_args"] == {"finetuning": {"lora_rank": 4}}


def test_a_flat_config_and_command_line_run_as_the_grouped_ones(tmp_path, capsys):
    flat = yaml.safe_load(open("configs/pgd_at.yaml"))
    init_args = flat["model"]["init_args"]
    init_args.update(init_args.pop("network"), **init_args.pop("optimization"))
    assert "lr" in init_args and "arch" in init_args
    (tmp_path / "flat.yaml").write_text(yaml.safe_dump(flat))
    printed = []
    for config in ("configs/pgd_at.yaml", str(tmp_path / "flat.yaml")):
        with pytest.raises(SystemExit) as exit_:
            train.main(["fit", "--config", config, "--model.init_args.lr", "0.02", "--print_config"])
        out, err = capsys.readouterr()
        assert exit_.value.code in (0, None), err
        printed.append(yaml.safe_load(out)["model"])
    assert printed[0] == printed[1] and printed[0]["init_args"]["optimization"]["lr"] == 0.02


@pytest.mark.parametrize("build, message", [
    (lambda: ERM(lrr=0.1), "ERM has no setting lrr: write it in its group"),
    (lambda: PGDAT(network={"archh": "small_cnn"}), "model network has no setting archh: choose from arch"),
    (lambda: upgrade_init_args({"lr": 0.1, "optimization": {"lr": 0.2}}),
     "model init_args set lr: 0.1 and optimization.lr: 0.2: keep only optimization.lr"),
])
def test_unknown_or_conflicting_keys_fail_in_one_line(build, message):
    with pytest.raises(ConfigError, match=message) as err:
        build()
    assert "\n" not in str(err.value)


def test_conflicting_keys_of_a_config_end_the_run_in_one_line(tmp_path, capsys):
    config = yaml.safe_load(open("configs/erm.yaml"))
    config["model"]["init_args"]["lr"] = 0.5
    (tmp_path / "both.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(SystemExit) as exit_:
        train.main(["fit", "--config", str(tmp_path / "both.yaml"), "--print_config"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: model init_args set lr: 0.5 and optimization.lr: 0.001") and "\n" not in err


def test_a_checkpoint_with_flat_hyperparameters_loads_with_its_settings(tmp_path):
    torch.manual_seed(0)
    written = PGDAT(**{k: v for k, v in FLAT_PGDAT.items() if not k.startswith("_")})
    torch.save({"state_dict": written.state_dict(), "hyper_parameters": FLAT_PGDAT,
                "pytorch-lightning_version": "2.6.0"}, tmp_path / "old.ckpt")
    x = torch.rand(3, 1, 28, 28)
    for loaded in (load_module(tmp_path / "old.ckpt"), PGDAT.load_from_checkpoint(tmp_path / "old.ckpt").eval()):
        assert type(loaded) is PGDAT and loaded.settings.optimization.optimizer == "sgd"
        assert loaded.steps == 2 and flat_hparams(loaded.hparams) == {
            k: v for k, v in FLAT_PGDAT.items() if not k.startswith("_")}
        assert torch.equal(loaded(x), written.eval()(x))


def test_a_grouped_checkpoint_reloads_through_lightning_and_load_module(tmp_path):
    written = PGDAT(steps=2, optimization={"lr": 0.02}, input_size=28).eval()
    hparams = {**written.hparams, "_class_path": "lightning_modules.adversarial.PGDAT",
               "_instantiator": "lightning.pytorch.cli.instantiate_module"}
    torch.save({"state_dict": written.state_dict(), "hyper_parameters": hparams, "pytorch-lightning_version": "2.6.0"},
               tmp_path / "new.ckpt")
    for loaded in (load_module(tmp_path / "new.ckpt"), PGDAT.load_from_checkpoint(tmp_path / "new.ckpt")):
        assert loaded.settings.optimization.lr == 0.02 and dict(loaded.hparams) == dict(written.hparams)
