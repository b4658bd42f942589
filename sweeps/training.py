"""The bridge between a sweep and train.py: a trial's command line, the metrics a run will log (checked
before the study is touched), and the trial's run itself (`train.run` in this process, or `train.py` in
a child process when a trial spans several GPUs with DDP)."""
from __future__ import annotations

import contextlib
import io
import logging
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from attacks.threat_model import epsilon_label
from core.config import cli_value
from core.errors import ConfigError, MedRobustError
from lightning_modules.metrics import MetricKey, metric_key

from .spec import KNOBS, REPO, SweepSpec


@dataclass
class TrainingFacts:
    """What the training config of a sweep logs and reads, found by building (not running) one trial."""

    val_metrics: set[str] = field(default_factory=set)
    test_metrics: set[str] = field(default_factory=set)
    monitor: str = "val/clean_bacc"
    data: dict[str, Any] = field(default_factory=dict)
    corruption_caches: list[dict[str, Any]] = field(default_factory=list)


def trial_args(spec: SweepSpec, params: dict[str, Any], run_dir: Path, *, ckpt: Optional[Path] = None,
               run_name: Optional[str] = None, wandb: Optional[bool] = None) -> list[str]:
    """`train.py fit ...` arguments of the trial with `params` (epsilon, seed, knobs, searched keys)."""
    params = {**spec.fixed, **params}
    method = params.pop("method")
    seed = params.pop("seed", spec.seeds[0])
    args = ["fit", "--config", str(spec.base_config(method))]
    for key, value in spec.overrides.items():
        args += [f"--{key}", cli_value(value)]
    for name, value in params.items():
        args += [f"--{KNOBS.get(name, name)}", cli_value(value)]
    args += ["--seed_everything", str(seed), "--trainer.default_root_dir", str(run_dir)]
    if "trainer.enable_progress_bar" not in spec.overrides:
        args += ["--trainer.enable_progress_bar", "false"]
    if spec.gpus_per_trial > 1:
        args += ["--trainer.devices", str(spec.gpus_per_trial), "--trainer.strategy", "ddp"]
    if spec.wandb if wandb is None else wandb:
        args += ["--wandb", "true", "--wandb_project", spec.wandb_project, "--wandb_group", spec.study]
        if run_name:
            args += ["--run_name", run_name]
    if ckpt is not None:
        args += ["--ckpt_path", str(ckpt)]
    return args


def representative_points(spec: SweepSpec) -> list[dict[str, Any]]:
    """Parameter sets that exercise every method and both ends of every searched dimension."""
    points = []
    methods = next((d.values for d in spec.dimensions if d.name == "method"), [spec.fixed["method"]])
    for method in methods:
        for end in (0, -1):
            point = {"method": method, "seed": spec.seeds[0]}
            for d in spec.dimensions:
                if d.name != "method":
                    point[d.name] = d.values[end] if d.is_grid else (d.low if end == 0 else d.high)
            if point not in points:
                points.append(point)
    return points


class _Built(Exception):
    """Raised by the checking CLI right before it would fit: classes are built, nothing has run."""

    def __init__(self, cli):
        super().__init__("built")
        self.cli = cli


def build_without_fitting(args: Sequence[str]):
    """Parse and instantiate a `train.py` run (model, data, trainer, callbacks) without fitting or writing;
    any problem becomes one ConfigError line."""
    import train

    class CheckingCLI(train.MedRobustCLI):
        def before_fit(self):
            raise _Built(self)

    stderr, stdout = io.StringIO(), io.StringIO()
    quiet = [logging.getLogger(name) for name in ("lightning.pytorch", "lightning.fabric")]
    levels = [logger.level for logger in quiet]
    for logger in quiet:
        logger.setLevel(logging.WARNING)
    try:
        with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(stdout):
            CheckingCLI(train.ERM, train.MedMNISTDataModule, subclass_mode_model=True, seed_everything_default=0,
                        args=list(args))
    except _Built as built:
        return built.cli
    except SystemExit:
        text = stderr.getvalue()
        text = text[text.rfind("error:") + len("error:"):] if "error:" in text else text
        raise ConfigError(f"training config: {' '.join(text.split())[:600]}") from None
    except Exception as err:  # a module's own check (epsilon, optimizer, ...) wrapped by jsonargparse
        cause = train.user_error(err)
        raise ConfigError(f"training config: {cause or ' '.join(str(err).split())[:600]}") from None
    finally:
        for logger, level in zip(quiet, levels):
            logger.setLevel(level)
    raise ConfigError("training config: train.py did not reach fit")


def check_training(spec: SweepSpec) -> TrainingFacts:
    """Build every representative trial of the sweep (bad keys, values and data files fail here) and collect
    the metric keys its runs will log, so objectives can be checked before the study exists."""
    facts = TrainingFacts()
    for point in representative_points(spec):
        cli = build_without_fitting(trial_args(spec, point, Path(os.devnull) / "sweep-check", wandb=False))
        dm = cli.datamodule
        try:
            dm.prepare_data()
        except MedRobustError as err:
            raise ConfigError(f"training data: {err}") from None
        facts.data = {"flag": dm.flag, "size": dm.size, "root": str(dm.root), "verify_md5": dm.hparams.verify_md5}
        for stage in ("val", "test"):
            keys = {metric_key(stage, "clean", m) for m in ("bacc", "acc", "auroc", "loss")}
            (facts.val_metrics if stage == "val" else facts.test_metrics).update(keys)
        if cli.trainer.checkpoint_callback is not None and cli.trainer.checkpoint_callback.monitor:
            facts.monitor = cli.trainer.checkpoint_callback.monitor
        for callback in cli.trainer.callbacks:
            _callback_metrics(callback, dm, facts)
    return facts


def _callback_metrics(callback, dm, facts: TrainingFacts) -> None:
    """The keys a callback says it logs (`logged_keys`), and the MedMNIST-C caches the robustness report reads."""
    if not hasattr(callback, "logged_keys"):
        return
    keys = callback.logged_keys(dm)
    facts.val_metrics.update(keys.get("val", ()))
    facts.test_metrics.update(keys.get("test", ()))
    corruption = getattr(callback, "corruption", None)  # the RobustnessCallback's CorruptionEvaluator
    if corruption is not None and corruption.settings.report:
        cache = {"flag": dm.flag, "size": dm.size, "root": str(dm.root), **corruption.cache_spec(),
                 "verify": dm.hparams.verify_md5}
        if cache not in facts.corruption_caches:
            facts.corruption_caches.append(cache)


def check_metrics(spec: SweepSpec, facts: TrainingFacts) -> None:
    """Every objective must be a validation metric the trials log."""
    for objective in spec.objectives:
        if objective.metric not in facts.val_metrics:
            wanted = MetricKey.parse(objective.metric)
            near = sorted(k for k in facts.val_metrics if (key := MetricKey.try_parse(k))
                          and (key.kind, key.metric) == (wanted.kind, wanted.metric))
            hint = f"; logged: {', '.join(near)}" if near else f"; logged: {', '.join(sorted(facts.val_metrics))}"
            raise ConfigError(f"objective {objective.metric} is not logged by the trials{hint}")


def build_corruption_caches(facts: TrainingFacts, workers: Optional[int] = None) -> None:
    """Build the MedMNIST-C test sets once, before the workers start (the cache writes are atomic, so
    workers that still race for a file only repeat work)."""
    from datamodules.medmnist_c import build

    for cache in facts.corruption_caches:
        build(cache["flag"], cache["size"], cache["root"], cache["cache"], seed=cache["seed"], workers=workers,
              corruptions=cache["corruptions"], progress=False, verify=cache["verify"])


def run_in_process(args: Sequence[str], callbacks: Sequence = ()):
    """One trial's run in this process (train.run), returning its RunResult."""
    import train

    return train.run(args, callbacks)


def run_in_child(args: Sequence[str], log: Path) -> dict[str, Any]:
    """A trial spanning several GPUs: `train.py ARGS` in a child process (Lightning's DDP launcher re-runs
    that command per rank); its results are read back from the run folder."""
    from evaluation.runs import read_run

    with open(log, "a") as handle:
        code = subprocess.call([sys.executable, str(REPO / "train.py"), *args], stdout=handle, stderr=subprocess.STDOUT,
                               cwd=os.getcwd())
    if code:
        raise RuntimeError(f"train.py exited with code {code}; see {log}")
    run_dir = Path(args[args.index("--trainer.default_root_dir") + 1])
    return read_run(run_dir)


def epsilon_name(value: float) -> str:
    return epsilon_label(value)
