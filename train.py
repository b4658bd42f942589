"""Train and evaluate medrobust models: `python train.py fit --config configs/erm.yaml`.

Built on LightningCLI, so every config key can be overridden on the command line and
`--print_config` shows the whole run. Any MedRobustError ends the run with one line and exit code 2.
`run(args)` is the same run as a function (sweeps, studies and notebooks call it); reading a finished run
lives in evaluation.runs.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Optional, Sequence

from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import CSVLogger, Logger

from core.errors import ConfigError, MedRobustError
from core.memory import keep_freed_memory
from datamodules.medmnist import MedMNISTDataModule
from evaluation.runs import RunResult, best_epoch, logged_epochs, report_path
from lightning_modules.erm import ERM


def wandb_logger(project: str, save_dir: str, name: str | None, group: str | None = None) -> Logger:
    """A W&B logger, offline unless an API key is configured (no network is needed to train); `group`
    gathers runs (a sweep's trials) under one name."""
    from lightning.pytorch.loggers import WandbLogger

    return WandbLogger(project=project, save_dir=save_dir, name=name, group=group, mode=wandb_mode())


def wandb_mode() -> str:
    """WANDB_MODE when set, else online with an API key and offline without."""
    has_key = bool(os.environ.get("WANDB_API_KEY")) or "api.wandb.ai" in _read(Path.home() / ".netrc")
    return os.environ.get("WANDB_MODE") or ("online" if has_key else "offline")


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


class MedRobustCLI(LightningCLI):
    """LightningCLI with the DataModule's facts linked into the model and the project's loggers."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        for key in ("num_classes", "in_channels", "task", "input_size"):  # input_size: data.resize or data.size
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
        parser.add_argument("--wandb_group", type=str | None, default=None, help="W&B group (a sweep's study name).")
        parser.add_argument("--run_name", type=str | None, default=None, help="Name in W&B (default: the run folder).")
        parser.add_argument("--test_after_fit", type=bool, default=True, help="Test the best checkpoint after fit.")

    def parse_arguments(self, parser: LightningArgumentParser, args) -> None:
        """Configs and arguments written for the flat RobustnessCallback (`epsilons`, `autoattack_samples`, ...) or the
        flat model (`arch`, `lr`, `finetune`, ...) are grouped first (evaluation.evaluators.settings,
        lightning_modules.settings), so they run with the same meaning."""
        from evaluation.evaluators.settings import upgrade_cli_args as grouped_callback_args
        from lightning_modules.settings import upgrade_cli_args as grouped_model_args

        given = sys.argv[1:] if args is None else args
        if isinstance(given, (list, tuple)):
            upgraded = grouped_model_args(grouped_callback_args(given))
            if upgraded != list(given):
                self.config = parser.parse_args(upgraded)
                return
        super().parse_arguments(parser, args)

    def _parse_ckpt_path(self) -> None:
        """Before LightningCLI reads the model's hyperparameters from --ckpt_path (a traceback for a bad file): a
        missing file, a file that is not a checkpoint, or a checkpoint of another dataset, class count, input
        channels, task or model class than the config's ends in one line, before anything is built or trained."""
        subcommand = self.config.get("subcommand")
        config = self.config[subcommand] if subcommand else None
        path = config.get("ckpt_path") if config else None
        if path and str(path) not in ("last", "best", "hpc") and not str(path).startswith("registry"):
            from datamodules.info import dataset_info
            from evaluation.checkpoints import check_checkpoint, read_checkpoint

            info = dataset_info(config.data.flag)
            expect = {"flag": info.flag, "num_classes": info.num_classes, "task": info.task,
                      "in_channels": 3 if config.data.as_rgb else info.n_channels,
                      "model_class": config.model.class_path}
            check_checkpoint(read_checkpoint(path), expect, path)
        super()._parse_ckpt_path()

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
                loggers.append(wandb_logger(config.wandb_project, root, config.run_name or Path(root).name,
                                            config.get("wandb_group")))
            kwargs["logger"] = loggers
        return super().instantiate_trainer(**kwargs)

    def before_fit(self) -> None:
        """Callback settings that need the model and the data (say, explanation_k against the image size) fail here,
        before the Trainer creates the run folder: nothing is written."""
        for callback in self.trainer.callbacks:
            if hasattr(callback, "check_settings"):
                callback.check_settings(self.model, self.datamodule)

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


def build_cli(args: Optional[Sequence[str]] = None, callbacks: Sequence[Callback] = ()) -> MedRobustCLI:
    keep_freed_memory()  # fewer page faults on CPU (core.memory); MEDROBUST_KEEP_FREED_MEMORY=0 turns it off
    return MedRobustCLI(
        ERM,
        MedMNISTDataModule,
        subclass_mode_model=True,
        seed_everything_default=0,
        save_config_kwargs={"overwrite": True},
        trainer_defaults={"callbacks": list(callbacks)} if callbacks else None,
        parser_kwargs={"exit_on_error": False},  # argument errors raise, so main() prints them in one line
        args=list(args) if args is not None else None,
    )


def run(args: Sequence[str], callbacks: Sequence[Callback] = ()) -> RunResult:
    """`python train.py ARGS` in this process (`fit` or `test` first, as on the command line), with extra
    Lightning callbacks (say, a pruning callback); raises MedRobustError on bad input."""
    history = EpochHistory()
    from jsonargparse import ArgumentError

    try:
        cli = build_cli(args, [*callbacks, history])
    except ArgumentError as err:
        raise ConfigError(f"train.py arguments: {' '.join(str(err).split())}") from None
    trainer = cli.trainer
    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    best = Path(best) if best else (Path(trainer.ckpt_path) if trainer.ckpt_path else None)
    # a resumed run's history starts at the resume: the CSV logs hold the epochs before it too
    epochs = {int(row["epoch"]): row for row in logged_epochs(trainer.default_root_dir)}
    epochs.update({int(row["epoch"]): {**epochs.get(int(row["epoch"]), {}), **row} for row in history.epochs})
    callback = trainer.checkpoint_callback
    epoch, val = best_epoch(list(epochs.values()), best if callback and callback.best_model_path else None,
                            callback.monitor if callback else None, getattr(callback, "mode", "max"))
    metrics = {**val, **{k: v for k, v in _floats(trainer.callback_metrics).items() if k.startswith("test/")}}
    return RunResult(metrics, Path(trainer.default_root_dir), best, report_path(best), epoch, list(epochs.values()))


def main(args=None) -> None:
    from jsonargparse import ArgumentError

    from core.quiet import quiet_third_party

    quiet_third_party()
    try:
        build_cli(args)
    except Exception as err:
        cause = user_error(err)
        if cause is None and isinstance(err, ArgumentError):
            cause = " ".join(str(err).split())
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
