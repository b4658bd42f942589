"""A study's trials as rows (parameters, validation and test metrics, paths), the robustness-accuracy curve
(mean and spread over seeds per training epsilon) and the Pareto front of the validation objectives."""
from __future__ import annotations

import statistics
from collections import defaultdict
from typing import Any, Optional, Sequence

import optuna
from optuna.trial import TrialState

from attacks.threat_model import format_epsilon
from lightning_modules.metrics import MetricKey

from . import optuna_adapter as adapter
from . import study as studies
from .spec import SweepSpec


def trial_rows(study: optuna.Study, spec: SweepSpec) -> list[dict[str, Any]]:
    """One row per trial (skipped duplicates left out): number, state, params, values, metrics, paths."""
    rows = []
    for trial in adapter.all_trials(study, copy=True):
        if studies.is_skipped(trial):
            continue
        params = {**spec.fixed, **trial.params}
        params.pop("seed", None)
        rows.append({
            "number": trial.number,
            "state": trial.state.name,
            "point": studies.point_of(trial),
            "params": params,
            "epsilon": params.get("epsilon"),
            "seed": trial.user_attrs.get(studies.SEED, trial.params.get("seed")),
            "values": trial.values,
            "val": trial.user_attrs.get("val", {}),
            "test": trial.user_attrs.get("test", {}),
            "run_dir": trial.user_attrs.get("run_dir"),
            "checkpoint": trial.user_attrs.get("checkpoint"),
            "report": trial.user_attrs.get("report"),
            "best_epoch": trial.user_attrs.get("best_epoch"),
            "retry_of": trial.system_attrs.get(adapter.FAILED_TRIAL),
            "failure": trial.user_attrs.get("failure"),
            "seconds": (trial.datetime_complete - trial.datetime_start).total_seconds()
            if trial.datetime_complete and trial.datetime_start else None,
        })
    return rows


def headline_metrics(rows: Sequence[dict], spec: SweepSpec) -> list[str]:
    """The curve's metrics: balanced accuracy clean, under PGD (each epsilon), AutoAttack, certified (each radius)
    and MedMNIST-C (mean over corruptions), validation then test, plus the objectives."""
    keys = {MetricKey.parse(o.metric) for o in spec.objectives}
    for row in rows:
        for stage in ("val", "test"):
            for text in row[stage]:
                key = MetricKey.try_parse(text)
                if key and key.metric == "bacc" and (key.kind in ("adv", "aa", "cert") or key.condition is None
                                                     and key.kind in ("clean", "corr")):
                    keys.add(key)
    return [str(key) for key in sorted(keys, key=MetricKey.sort_key)]


def curve(rows: Sequence[dict], spec: SweepSpec, extra: Sequence[str] = ()) -> list[dict[str, Any]]:
    """Finished trials grouped by point (all parameters but the seed), sorted by training epsilon: per metric
    (the headline metrics and `extra` keys, such as select's constraints) the mean, standard deviation, min and
    max over seeds."""
    metrics = headline_metrics(rows, spec)
    metrics += [key for key in extra if key not in metrics]
    groups: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        if row["state"] == TrialState.COMPLETE.name:
            groups[_params_key(row["params"])].append(row)
    table = []
    for members in groups.values():
        params = members[0]["params"]
        entry: dict[str, Any] = {"epsilon": params.get("epsilon"), "epsilon_label": _label(params.get("epsilon"))}
        entry.update({k: v for k, v in params.items() if k != "epsilon"})
        entry["seeds"] = len(members)
        entry["trials"] = " ".join(str(m["number"]) for m in sorted(members, key=lambda m: m["number"]))
        for key in metrics:
            values = [metric_value(m, key) for m in members]
            values = [v for v in values if v is not None]
            entry[key] = statistics.fmean(values) if values else None
            entry[f"{key}:std"] = statistics.stdev(values) if len(values) > 1 else 0.0 if values else None
            entry[f"{key}:min"] = min(values) if values else None
            entry[f"{key}:max"] = max(values) if values else None
        table.append(entry)
    return sorted(table, key=lambda e: (str({k: v for k, v in e.items() if k in spec.fixed or k == "method"}),
                                        e["epsilon"] or 0.0))


def _params_key(params: dict) -> str:
    return repr(sorted((k, v) for k, v in params.items() if k != "seed"))


def _label(epsilon) -> str:
    return "-" if epsilon is None else format_epsilon(epsilon)


def pareto_front(points: Sequence[Sequence[float]], directions: Sequence[str]) -> list[int]:
    """Indices of the non-dominated points (each coordinate maximised or minimised)."""
    signed = [[v if d == "maximize" else -v for v, d in zip(p, directions)] for p in points]
    front = []
    for i, p in enumerate(signed):
        dominated = any(all(q_ >= p_ for q_, p_ in zip(q, p)) and any(q_ > p_ for q_, p_ in zip(q, p))
                        for j, q in enumerate(signed) if j != i)
        if not dominated:
            front.append(i)
    return front


def pareto_axes(rows: Sequence[dict], spec: SweepSpec) -> tuple[list[str], list[str]]:
    """Two validation metrics to trade off: the first two objectives, else clean and the strongest attack."""
    if len(spec.objectives) >= 2:
        return [o.metric for o in spec.objectives[:2]], [o.direction for o in spec.objectives[:2]]
    keys = [k for k in headline_metrics(rows, spec) if k.startswith("val/")]
    adv = [k for k in keys if (key := MetricKey.parse(k)).kind == "adv" and key.metric == "bacc"]
    other = adv[-1] if adv else next((k for k in keys if k != "val/clean_bacc"), spec.objectives[0].metric)
    return ["val/clean_bacc", other], ["maximize", "maximize"]


def format_curve(table: Sequence[dict], metrics: Sequence[str], extra: Sequence[str] = ()) -> str:
    """A Markdown table: training epsilon, seeds, each metric as mean (± std over seeds)."""
    header = ["train epsilon", *extra, "seeds", *metrics]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for entry in table:
        cells = [entry["epsilon_label"], *[str(entry.get(k, "")) for k in extra], str(entry["seeds"])]
        for key in metrics:
            mean, std = entry.get(key), entry.get(f"{key}:std")
            cells.append("-" if mean is None else f"{mean:.3f}" + (f" ± {std:.3f}" if entry["seeds"] > 1 else ""))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def metric_value(row: dict, key: str) -> Optional[float]:
    """A trial row's value of a val/ or test/ metric key (None when absent or of another stage)."""
    stage = MetricKey.parse(key).stage
    return row[stage].get(key) if stage in ("val", "test") else None
