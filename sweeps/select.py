"""`python -m sweeps select`: the training epsilon for a deployment, chosen on validation metrics only
(constraints, then the best of one metric), with the chosen checkpoint's test metrics and 95% bootstrap
intervals over test examples (per-example predictions recomputed once and cached in the trial's folder)."""
from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch
import yaml

from core.errors import ConfigError
from datamodules.info import MULTILABEL
from lightning_modules.metrics import parse_metric_key

from . import results
from .spec import SweepSpec


@dataclass
class Choice:
    point: dict            # the curve entry (means over seeds)
    trial: dict            # the trial whose checkpoint is deployed
    constraints: list[tuple[str, str, float]]
    objective: tuple[str, str]


def parse_constraint(text: str, kind: str) -> tuple[str, str, float]:
    """`clean_bacc=0.85` -> ('val/clean_bacc', 'min', 0.85); test metrics are refused (choose on validation)."""
    key, sep, value = text.partition("=")
    if not sep:
        raise ConfigError(f"--{kind} takes METRIC=VALUE (clean_bacc=0.85), got {text!r}")
    try:
        bound = float(value)
    except ValueError:
        raise ConfigError(f"--{kind} {key}: {value!r} is not a number") from None
    return _val_key(key), kind, bound


def _val_key(text: str) -> str:
    key = parse_metric_key(text, stage="val")
    if not key.startswith("val/"):
        raise ConfigError(f"{text}: select chooses on validation metrics (val/...); test metrics are only reported")
    return key


def choose(rows: Sequence[dict], spec: SweepSpec, constraints: Sequence[tuple[str, str, float]],
           objective: Optional[tuple[str, str]]) -> Optional[Choice]:
    """The point (mean over seeds) meeting every constraint with the best objective; its trial with the best
    objective value is the checkpoint to deploy. None when no point qualifies."""
    done = [r for r in rows if r["state"] == "COMPLETE"]
    if not done:
        raise ConfigError(f"study {spec.study!r} has no finished trial yet")
    known = set().union(*(r["val"].keys() for r in done))
    objective = objective or (spec.objectives[0].metric, spec.objectives[0].direction)
    for key in [c[0] for c in constraints] + [objective[0]]:
        if key not in known:
            raise ConfigError(f"unknown metric {key}: the trials logged {', '.join(sorted(known))}")
    table = results.curve(rows, spec)
    sign = 1 if objective[1] == "maximize" else -1

    def ok(value, kind, bound):
        return value is not None and (value >= bound if kind == "min" else value <= bound)

    eligible = [e for e in table if all(ok(e.get(k), kind, b) for k, kind, b in constraints) and e.get(objective[0]) is not None]
    if not eligible:
        return None
    best = max(eligible, key=lambda e: sign * e[objective[0]])
    members = [r for r in done if str(r["number"]) in best["trials"].split()]
    trial = max(members, key=lambda r: sign * (r["val"].get(objective[0]) or -np.inf * sign))
    return Choice(best, trial, list(constraints), objective)


# ---- bootstrap on test examples -------------------------------------------------------------------------
def run_config(run_dir: Path) -> dict:
    """The training config LightningCLI saved for the run (the newest version's config.yaml)."""
    configs = sorted(Path(run_dir).glob("csv/version_*/config.yaml"), key=lambda p: p.stat().st_mtime)
    if not configs:
        raise ConfigError(f"{run_dir} has no saved config.yaml (csv/version_*/config.yaml)")
    return yaml.safe_load(configs[-1].read_text())


def test_predictions(trial: dict) -> dict[str, Any]:
    """Per-example test probabilities of the trial's best checkpoint: clean and under the report's PGD at each
    evaluation epsilon (same steps, restarts, norm and seed as the robustness report). Cached beside it."""
    from attacks.gradient import PGD
    from attacks.threat_model import parse_epsilon
    from datamodules.medmnist import MedMNISTDataModule
    from evaluation.scoring import predict
    from evaluation.checkpoints import load_module

    ckpt = Path(trial["checkpoint"] or "")
    if not ckpt.is_file():
        raise ConfigError(f"trial {trial['number']} has no best checkpoint ({ckpt})")
    config = run_config(Path(trial["run_dir"]))
    robustness = next((c.get("init_args", {}) for c in config["trainer"].get("callbacks") or []
                       if str(c.get("class_path", "")).endswith("RobustnessCallback")), {})
    settings = {
        "checkpoint": str(ckpt), "mtime": ckpt.stat().st_mtime, "data": config["data"],
        "epsilons": robustness.get("epsilons", ["4/255"]), "norm": robustness.get("norm", "linf"),
        "steps": robustness.get("test_steps", 50), "restarts": robustness.get("test_restarts", 2),
        "seed": robustness.get("seed", 0), "batch_size": robustness.get("batch_size", 256),
    }
    cache = ckpt.with_name(f"{ckpt.stem}.test-predictions.pt")
    if cache.exists():
        cached = torch.load(cache, weights_only=False)
        if cached.get("settings") == settings:
            return cached
    model = load_module(ckpt)
    dm = MedMNISTDataModule(**{k: v for k, v in config["data"].items()})
    split = dm.split("test")
    run = dict(task=dm.task, num_classes=dm.num_classes, batch_size=settings["batch_size"])
    out = {"settings": settings, "task": dm.task, "targets": split.targets.clone(),
           "scores": [("clean", None, predict(model, split.images, targets=split.targets, **run))]}
    for eps in settings["epsilons"]:
        eps = parse_epsilon(eps, settings["norm"])
        attack = PGD(model, eps, steps=settings["steps"], restarts=settings["restarts"], norm=settings["norm"],
                     seed=settings["seed"])
        out["scores"].append(("adv", eps, predict(model, split.images, attack=attack, targets=split.targets, **run)))
    from core.files import atomic_write

    with atomic_write(cache, "wb") as handle:
        torch.save(out, handle)
    return out


def balanced_accuracy(probs: np.ndarray, targets: np.ndarray, task: str) -> tuple[float, float]:
    """(balanced accuracy, accuracy) as lightning_modules.metrics scores them (macro recall; multi-label:
    mean over labels of (sensitivity + specificity) / 2)."""
    if task == MULTILABEL:
        pred = probs > 0.5
        t = targets.astype(bool)
        tp, tn = (pred & t).sum(0), (~pred & ~t).sum(0)
        sens = tp / np.maximum(t.sum(0), 1)
        spec = tn / np.maximum((~t).sum(0), 1)
        return float(((sens + spec) / 2).mean()), float((pred == t).mean())
    pred = probs.argmax(1)
    recalls = [(pred[targets == c] == c).mean() for c in np.unique(targets)]
    return float(np.mean(recalls)), float((pred == targets).mean())


def bootstrap(predictions: dict, n: int = 1000, seed: int = 0) -> dict[str, dict[str, float]]:
    """{'test/clean_bacc': {'value', 'low', 'high'}, 'test/adv_bacc@4_255': ...}: point estimate on all test
    examples and the 2.5 / 97.5 percentiles over `n` resamples of the examples."""
    from lightning_modules.metrics import metric_key

    targets = predictions["targets"].numpy()
    targets = targets if predictions["task"] == MULTILABEL else targets.reshape(len(targets), -1)[:, 0]
    rng = np.random.default_rng(seed)
    samples = [rng.integers(0, len(targets), len(targets)) for _ in range(n)]
    out = {}
    for kind, epsilon, probs in predictions["scores"]:
        probs = probs.numpy()
        point = balanced_accuracy(probs, targets, predictions["task"])
        draws = np.array([balanced_accuracy(probs[i], targets[i], predictions["task"]) for i in samples])
        for column, metric in enumerate(("bacc", "acc")):
            key = metric_key("test", kind, metric, epsilon)
            low, high = np.percentile(draws[:, column], [2.5, 97.5])
            out[key] = {"value": point[column], "low": float(low), "high": float(high)}
    return out


def format_choice(choice: Choice, intervals: dict, spec: SweepSpec) -> str:
    point, trial = choice.point, choice.trial
    lines = [f"chosen training epsilon: {point['epsilon_label']}"
             + "".join(f", {k}={point[k]}" for k in point if k in [d.name for d in spec.dimensions if d.name != 'epsilon'])
             + f" (on validation: {', '.join(f'{k} >= {b}' if kind == 'min' else f'{k} <= {b}' for k, kind, b in choice.constraints) or 'no constraints'}; "
             f"then {choice.objective[1]} {choice.objective[0]})"]
    lines.append(f"validation, mean over {point['seeds']} seed(s): "
                 + ", ".join(f"{k}={point[k]:.4f}" for k in point if k.startswith("val/") and ":" not in k and point[k] is not None))
    lines.append(f"deployed checkpoint (trial {trial['number']}, seed {trial['seed']}, epoch {trial['best_epoch']}): {trial['checkpoint']}")
    lines.append("  validation: " + ", ".join(f"{k}={v:.4f}" for k, v in sorted(trial["val"].items()) if "@" not in k or "adv" in k))
    lines.append("  test (95% bootstrap interval over test examples):")
    for key, ci in intervals.items():
        lines.append(f"    {key} = {ci['value']:.4f}  [{ci['low']:.4f}, {ci['high']:.4f}]")
    others = {k: v for k, v in trial["test"].items() if k not in intervals and ("corr" in k or "aa_" in k or "auroc" in k)}
    if others:
        lines.append("  test (from the robustness report): " + ", ".join(f"{k}={v:.4f}" for k, v in sorted(others.items())))
    return "\n".join(lines)


def mean(values):
    return statistics.fmean(values) if values else None
