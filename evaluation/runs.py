"""Finished training runs, read in one place: the RunResult, every logged epoch, the best epoch, the saved
config, per-example test predictions of the best checkpoint, and bootstrap intervals over test examples.

Sweeps, studies, bench and reports ask this module; none of them reads a run folder or a CSV log itself.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
import yaml

from core.errors import ConfigError
from datamodules.info import MULTILABEL
from evaluation.layout import RunLayout, report_beside
from evaluation.record import ResultRecord, read_record
from lightning_modules.metrics import MetricKey, make_metrics

MONITOR, MODE = "val/clean_bacc", "max"  # train.py's checkpoint defaults


@dataclass
class RunResult:
    """What one training run gives back: `metrics` holds the validation metrics of the epoch whose checkpoint
    is best (by the checkpoint's monitor) and the test metrics of that checkpoint; paths are None when absent."""

    metrics: dict[str, float]
    run_dir: Path
    best_checkpoint: Optional[Path]
    report: Optional[Path]
    best_epoch: Optional[int]
    history: list[dict[str, float]] = field(default_factory=list)

    def record(self) -> Optional[ResultRecord]:
        """The result record of the best checkpoint (evaluation.record), None when the run was not tested."""
        return None if self.report is None else read_record(self.report)


def logged_epochs(run_dir) -> list[dict[str, float]]:
    """Every epoch's metrics from a run's CSV logs, all versions in order (a resumed run logs to a new
    version; where two versions log the same epoch, the later one wins)."""
    rows: dict[int, dict[str, float]] = {}
    for path in RunLayout(run_dir).metrics_logs():
        with open(path, newline="") as handle:
            for row in csv.DictReader(handle):
                if row.get("epoch") in (None, ""):
                    continue
                epoch = int(float(row["epoch"]))
                values = {k: float(v) for k, v in row.items() if k not in ("epoch", "step") and v not in (None, "")}
                rows.setdefault(epoch, {"epoch": epoch}).update(values)
    return [rows[epoch] for epoch in sorted(rows)]


def run_config(run_dir) -> dict:
    """The training config LightningCLI saved for the run (the newest version's config.yaml)."""
    config = RunLayout(run_dir).config_file()
    if config is None:
        raise ConfigError(f"{run_dir} has no saved config.yaml (csv/version_*/config.yaml)")
    return yaml.safe_load(config.read_text())


def checkpoint_epoch(path) -> Optional[int]:
    """The epoch a Lightning checkpoint was saved at (None when it cannot be read)."""
    try:
        return int(torch.load(path, map_location="cpu", weights_only=False, mmap=True)["epoch"])
    except Exception:
        return None


def best_epoch(epochs: Sequence[dict], best_checkpoint=None, monitor: Optional[str] = MONITOR,
               mode: str = MODE) -> tuple[Optional[int], dict[str, float]]:
    """(epoch, its val/ metrics): the best checkpoint's epoch, else the best logged epoch by `monitor`."""
    epochs = [row for row in epochs if any(key.startswith("val/") for key in row)]
    if not epochs:
        return None, {}
    epoch = checkpoint_epoch(best_checkpoint) if best_checkpoint else None
    chosen = next((row for row in epochs if int(row["epoch"]) == epoch), None)
    if chosen is None:
        scored = [row for row in epochs if monitor in row] if monitor else []
        pick = min if mode == "min" else max
        chosen = pick(scored, key=lambda row: row[monitor]) if scored else epochs[-1]
    return int(chosen["epoch"]), {k: v for k, v in chosen.items() if k.startswith("val/")}


def checkpoint_choice(run_dir) -> tuple[Optional[Path], Optional[str], str]:
    """(best checkpoint, monitor, mode) of a run: the path from last.ckpt's ModelCheckpoint state, the monitor
    and mode from the run's saved config (train.py's defaults where it has none; monitor None where the config
    says null: the last epoch is the one kept and tested)."""
    run_dir = Path(run_dir)
    monitor, mode = MONITOR, MODE
    try:
        saved = run_config(run_dir).get("checkpoint") or {}
        monitor, mode = saved.get("monitor", monitor), saved.get("mode") or mode
    except ConfigError:
        pass
    best = None
    last = RunLayout(run_dir).last_checkpoint
    if last.exists():
        states = torch.load(last, map_location="cpu", weights_only=False, mmap=True).get("callbacks", {})
        for key, state in states.items():
            if str(key).startswith("ModelCheckpoint") and state.get("best_model_path"):
                best, monitor = Path(state["best_model_path"]), state.get("monitor") or monitor
    return best, monitor, mode


def report_path(checkpoint: Optional[Path]) -> Optional[Path]:
    """The robustness report written beside a checkpoint, when it exists."""
    report = report_beside(checkpoint) if checkpoint else None
    return report if report and report.exists() else None


def test_metrics(epochs: Sequence[dict]) -> dict[str, float]:
    """The test/ metrics of the last tested epoch."""
    tested = [row for row in epochs if any(k.startswith("test/") for k in row)]
    return {k: v for k, v in tested[-1].items() if k.startswith("test/")} if tested else {}


def read_run(run_dir) -> RunResult:
    """The RunResult of a finished `train.py fit` run from its folder alone (CSV logs, checkpoints, report):
    for runs made in another process, such as DDP trials or a study's earlier steps."""
    run_dir = Path(run_dir)
    best, monitor, mode = checkpoint_choice(run_dir)
    epochs = logged_epochs(run_dir)
    epoch, metrics = best_epoch(epochs, best, monitor, mode)
    metrics.update(test_metrics(epochs))
    return RunResult(metrics, run_dir, best, report_path(best), epoch, epochs)


# ---- per-example test predictions and bootstrap intervals -----------------------------------------------------
def robustness_settings(config: dict) -> dict:
    """The RobustnessCallback's settings in a saved training config under their flat names (`epsilons`, `test_steps`,
    `corruption_cache`, ...), grouped or flat as written, over the callback's defaults (evaluation.evaluators.settings,
    their one home; the defaults alone when the run had no callback)."""
    from evaluation.evaluators.settings import grouped, is_robustness_callback

    given = next((c.get("init_args") or {} for c in (config.get("trainer") or {}).get("callbacks") or []
                  if is_robustness_callback(c)), {})
    return grouped(given, warn=False).flat()


def test_predictions(run_dir, checkpoint) -> dict[str, Any]:
    """Per-example test probabilities of `checkpoint`: clean and under the report's PGD at each evaluation
    epsilon (same steps, restarts, norm and seed as the robustness report). Cached beside the checkpoint
    (evaluation.cache).

    Returns {'settings', 'task', 'num_classes', 'targets', 'scores': [(MetricKey kind, epsilon, probabilities)]}.
    """
    from attacks.gradient import PGD
    from attacks.threat_model import parse_epsilon
    from datamodules.medmnist import MedMNISTDataModule
    from evaluation.cache import PredictionCache
    from evaluation.checkpoints import load_module
    from evaluation.scoring import predict

    ckpt = Path(checkpoint or "")
    if not ckpt.is_file():
        raise ConfigError(f"run {run_dir} has no best checkpoint ({ckpt})")
    config = run_config(run_dir)
    robustness = robustness_settings(config)
    settings = {
        "data": config["data"], "epsilons": robustness["epsilons"], "norm": robustness["norm"],
        "steps": robustness["test_steps"], "restarts": robustness["test_restarts"], "seed": robustness["seed"],
        "batch_size": robustness["batch_size"],
    }

    def compute() -> dict[str, Any]:
        model = load_module(ckpt)
        dm = MedMNISTDataModule(**config["data"])
        split = dm.split("test")
        run = dict(task=dm.task, num_classes=dm.num_classes, batch_size=settings["batch_size"])
        out = {"task": dm.task, "num_classes": dm.num_classes, "targets": split.targets.clone(),
               "scores": [("clean", None, predict(model, split.images, targets=split.targets, **run))]}
        for eps in settings["epsilons"]:
            eps = parse_epsilon(eps, settings["norm"])
            attack = PGD(model, eps, steps=settings["steps"], restarts=settings["restarts"], norm=settings["norm"],
                         seed=settings["seed"])
            out["scores"].append(("adv", eps, predict(model, split.images, attack=attack, targets=split.targets,
                                                      **run)))
        return out

    return PredictionCache(ckpt, "test-predictions", settings).get(compute)


def score(probabilities: torch.Tensor, targets: torch.Tensor, task: str, num_classes: int,
          metrics: Sequence[str] = ("bacc", "acc", "auroc")) -> dict[str, float]:
    """{'bacc', 'acc', 'auroc'} of probabilities against targets by the project's metrics (one definition)."""
    collection = make_metrics(task, num_classes)
    targets = targets.long() if task == MULTILABEL or targets.is_floating_point() else targets
    targets = targets if task == MULTILABEL else targets.reshape(len(targets), -1)[:, 0]
    out = {}
    for name in metrics:
        metric = collection[name]
        metric.update(probabilities, targets)
        out[name] = float(metric.compute())
        metric.reset()
    return out


def bootstrap(predictions: dict, n: int = 1000, seed: int = 0, stage: str = "test",
              metrics: Sequence[str] = ("bacc", "acc")) -> dict[str, dict[str, float]]:
    """{'test/clean_bacc': {'value', 'low', 'high'}, 'test/adv_bacc@4_255': ...}: the point estimate on every
    example (the logged metric) and the 95% percentile interval over `n` resamples of the examples (the same
    resamples for every score and metric; evaluation.statistics owns the bootstrap)."""
    from evaluation.statistics import percentile_interval, resample_indices

    targets = predictions["targets"]
    num_classes = predictions.get("num_classes") or predictions["scores"][0][2].shape[1]
    samples = [torch.from_numpy(i) for i in resample_indices(len(targets), n, seed)]
    out = {}
    for kind, epsilon, probs in predictions["scores"]:
        point = score(probs, targets, predictions["task"], num_classes, metrics)
        draws = [score(probs[i], targets[i], predictions["task"], num_classes, metrics) for i in samples]
        for metric in metrics:
            low, high = percentile_interval([d[metric] for d in draws], 0.95)
            key = str(MetricKey(stage, kind, metric, epsilon))
            out[key] = {"value": point[metric], "low": low, "high": high}
    return out
