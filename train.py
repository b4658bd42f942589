"""Train and evaluate medrobust models: `python train.py fit --config configs/erm.yaml`.

Built on LightningCLI, so every config key can be overridden on the command line and
`--print_config` shows the whole run. Any MedRobustError ends the run with one line and exit code 2.
`run(args)` is the same run as a function (sweeps, studies and notebooks call it).
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

from lightning.pytorch.callbacks import Callback, ModelCheckpoint
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


class EpochHistory(Callback):
    """Every validation epoch's metrics (floats), so a run can report the epoch its best checkpoint holds."""

    def __init__(self):
        self.epochs: list[dict[str, float]] = []

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self.epochs.append({"epoch": trainer.current_epoch, **_floats(trainer.callback_metrics)})


def _floats(metrics) -> dict[str, float]:
    return {key: float(value) for key, value in metrics.items()}


@dataclass
class RunResult:
    """What one training run gives back: `metrics` holds the validation metrics of the epoch whose checkpoint
    is best (by `val/clean_bacc`) and the test metrics of that checkpoint; paths are None when absent."""

    metrics: dict[str, float]
    run_dir: Path
    best_checkpoint: Optional[Path]
    report: Optional[Path]
    best_epoch: Optional[int]
    history: list[dict[str, float]] = field(default_factory=list)


def build_cli(args: Optional[Sequence[str]] = None, callbacks: Sequence[Callback] = ()) -> MedRobustCLI:
    return MedRobustCLI(
        ERM,
        MedMNISTDataModule,
        subclass_mode_model=True,
        seed_everything_default=0,
        save_config_kwargs={"overwrite": True},
        trainer_defaults={"callbacks": list(callbacks)} if callbacks else None,
        args=list(args) if args is not None else None,
    )


def run(args: Sequence[str], callbacks: Sequence[Callback] = ()) -> RunResult:
    """`python train.py ARGS` in this process (`fit` or `test` first, as on the command line), with extra
    Lightning callbacks (say, a pruning callback); raises MedRobustError on bad input."""
    history = EpochHistory()
    cli = build_cli(args, [*callbacks, history])
    trainer = cli.trainer
    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    best = Path(best) if best else (Path(trainer.ckpt_path) if trainer.ckpt_path else None)
    best_epoch, metrics = None, {}
    if history.epochs:
        monitor = trainer.checkpoint_callback.monitor if trainer.checkpoint_callback else None
        scored = [row for row in history.epochs if monitor in row] if monitor else []
        chosen = max(scored, key=lambda row: row[monitor]) if scored else history.epochs[-1]
        best_epoch = int(chosen["epoch"])
        metrics.update({k: v for k, v in chosen.items() if k.startswith("val/")})
    metrics.update({k: v for k, v in _floats(trainer.callback_metrics).items() if k.startswith("test/")})
    report = best.with_name(f"{best.stem}.robustness.json") if best else None
    return RunResult(metrics, Path(trainer.default_root_dir), best, report if report and report.exists() else None,
                     best_epoch, history.epochs)


def main(args=None) -> None:
    try:
        build_cli(args)
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
