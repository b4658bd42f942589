"""`python -m sweeps select`: the training epsilon for a deployment, chosen on validation metrics only
(constraints, then the best of one metric), with the chosen checkpoint's test metrics and 95% bootstrap
intervals over test examples (per-example predictions recomputed once and cached in the trial's folder)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from core.errors import ConfigError
from evaluation import runs
from lightning_modules.metrics import MetricKey, parse_metric_key

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
    table = results.curve(rows, spec, extra=[c[0] for c in constraints] + [objective[0]])
    sign = 1 if objective[1] == "maximize" else -1

    def ok(value, kind, bound):
        return value is not None and (value >= bound if kind == "min" else value <= bound)

    eligible = [e for e in table
                if all(ok(e.get(k), kind, b) for k, kind, b in constraints) and e.get(objective[0]) is not None]
    if not eligible:
        return None
    best = max(eligible, key=lambda e: sign * e[objective[0]])
    members = [r for r in done if str(r["number"]) in best["trials"].split()]
    trial = max(members, key=lambda r: -np.inf if r["val"].get(objective[0]) is None else sign * r["val"][objective[0]])
    return Choice(best, trial, list(constraints), objective)


def test_intervals(trial: dict, n: int = 1000) -> dict[str, dict[str, float]]:
    """95% bootstrap intervals over TEST examples for the deployed checkpoint of `trial` (never validation:
    the choice was made there); each point estimate is the run's test metric."""
    if not trial.get("checkpoint"):
        raise ConfigError(f"trial {trial['number']} has no best checkpoint")
    predictions = runs.test_predictions(Path(trial["run_dir"]), trial["checkpoint"])
    return runs.bootstrap(predictions, n=n, stage="test")


def format_choice(choice: Choice, intervals: dict, spec: SweepSpec) -> str:
    point, trial = choice.point, choice.trial
    searched = [d.name for d in spec.dimensions if d.name != 'epsilon']
    bounds = ', '.join(f'{k} >= {b}' if kind == 'min' else f'{k} <= {b}' for k, kind, b in choice.constraints)
    lines = [f"chosen training epsilon: {point['epsilon_label']}"
             + "".join(f", {k}={point[k]}" for k in point if k in searched)
             + f" (on validation: {bounds or 'no constraints'}; "
             f"then {choice.objective[1]} {choice.objective[0]})"]
    lines.append(f"validation, mean over {point['seeds']} seed(s): "
                 + ", ".join(f"{k}={point[k]:.4f}" for k in point
                             if k.startswith("val/") and ":" not in k and point[k] is not None))
    lines.append(f"deployed checkpoint (trial {trial['number']}, seed {trial['seed']}, epoch {trial['best_epoch']}): "
                 f"{trial['checkpoint']}")
    shown = [(key, v) for k, v in trial["val"].items() if (key := MetricKey.try_parse(k))
             and (key.condition is None or key.kind == "adv")]
    lines.append("  validation: "
                 + ", ".join(f"{k}={v:.4f}" for k, v in sorted(shown, key=lambda kv: kv[0].sort_key())))
    lines.append("  test (95% bootstrap interval over test examples):")
    for key, ci in intervals.items():
        lines.append(f"    {key} = {ci['value']:.4f}  [{ci['low']:.4f}, {ci['high']:.4f}]")
    others = {k: v for k, v in trial["test"].items() if k not in intervals and (key := MetricKey.try_parse(k))
              and (key.kind in ("corr", "aa") or key.metric == "auroc")}
    if others:
        lines.append("  test (from the robustness report): "
                     + ", ".join(f"{k}={v:.4f}" for k, v in sorted(others.items())))
    return "\n".join(lines)
