"""Train and evaluate medrobust models: `python train.py fit --config configs/erm.yaml`.

Built on LightningCLI, so every config key can be overridden on the command line and
`--print_config` shows the whole run. Any MedRobustError ends the run with one line and exit code 2.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import CSVLogger, Logger

from core.errors import MedRobustError
from datamodules.medmnist import MedMNISTDataModule
from lightning_modules.erm import ERM


def wandb_logger(project: str, save_dir: str, name: str | None) -> Logger:
    """A W&B logger, offline unless an API key is configured (no network is needed to train)."""
    from lightning.pytorch.loggers import WandbLogger

    has_key = bool(os.environ.get("WANDB_API_KEY")) or "api.wandb.ai" in _read(Path.home() / ".netrc")
    mode = os.environ.get("WANDB_MODE") or ("online" if has_key else "offline")
    return WandbLogger(project=project, save_dir=save_dir, name=name, mode=mode)


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


class MedRobustCLI(LightningCLI):
    """LightningCLI with the DataModule's facts linked into the model and the project's loggers."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        for key in ("num_classes", "in_channels", "task"):
            parser.link_arguments(f"data.{key}", f"model.init_args.{key}", apply_on="instantiate")
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults(
            {
                "checkpoint.monitor": "val/clean_bacc",
                "checkpoint.mode": "max",
                "checkpoint.save_last": True,
                "checkpoint.filename": "best-{epoch:03d}",
                "trainer.default_root_dir": "runs/default",
            }
        )
        parser.add_argument("--wandb", type=bool, default=False, help="Also log to Weights & Biases.")
        parser.add_argument("--wandb_project", type=str, default="medrobust")
        parser.add_argument("--run_name", type=str | None, default=None, help="Name in W&B (default: the run folder).")
        parser.add_argument("--test_after_fit", type=bool, default=True, help="Test the best checkpoint after fit.")

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand]
        root = config.trainer.default_root_dir
        if config.get("checkpoint") and config.checkpoint.dirpath is None:
            config.checkpoint.dirpath = os.path.join(root, "checkpoints")

    def instantiate_trainer(self, **kwargs):
        config = self.config[self.subcommand]
        if config.trainer.logger is None:
            root = config.trainer.default_root_dir
            loggers: list[Logger] = [CSVLogger(root, name="csv")]
            if config.get("wandb"):
                loggers.append(wandb_logger(config.wandb_project, root, config.run_name or Path(root).name))
            kwargs["logger"] = loggers
        return super().instantiate_trainer(**kwargs)

    def after_fit(self) -> None:
        if self.config.fit.get("test_after_fit") and not self.trainer.fast_dev_run:
            has_best = self.trainer.checkpoint_callback and self.trainer.checkpoint_callback.best_model_path
            self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path="best" if has_best else None)


def main(args=None) -> None:
    try:
        MedRobustCLI(
            ERM,
            MedMNISTDataModule,
            subclass_mode_model=True,
            seed_everything_default=0,
            save_config_kwargs={"overwrite": True},
            args=args,
        )
    except Exception as err:
        cause = user_error(err)
        if cause is None:
            raise
        print(f"error: {cause}", file=sys.stderr)
        sys.exit(2)


def user_error(err: BaseException | None) -> MedRobustError | None:
    """The MedRobustError behind `err`, also when jsonargparse wrapped it during instantiation."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, MedRobustError):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


if __name__ == "__main__":
    main()
