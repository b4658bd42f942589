"""`python -m sweeps report`: curve.csv, curve.png (balanced accuracy against training epsilon, validation
and test, with the spread over seeds), pareto.png (the validation trade-off, test beside it) and the table;
with W&B enabled in the sweep, a summary run logs the table and both plots."""
from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Sequence

import optuna

from core.files import write_text_atomic
from evaluation.plots import pyplot_agg, save_figure
from lightning_modules.metrics import MetricKey

from . import results
from .spec import SweepSpec


def write_report(study: optuna.Study, spec: SweepSpec, out: Path, log=print) -> dict:
    """Write the report files into `out`; returns {'table', 'metrics', 'files'}."""
    rows = results.trial_rows(study, spec)
    table = results.curve(rows, spec)
    metrics = results.headline_metrics(rows, spec)
    extra = [d.name for d in spec.dimensions if d.name != "epsilon"]
    out.mkdir(parents=True, exist_ok=True)
    files = [_write_csv(out / "curve.csv", table, metrics, extra),
             _plot_curve(out / "curve.png", table, metrics, extra, spec),
             _plot_pareto(out / "pareto.png", rows, spec)]
    text = results.format_curve(table, metrics, extra)
    write_text_atomic(out / "curve.md", text + "\n")
    log(text)
    log(f"wrote {', '.join(str(f) for f in files)}")
    if spec.wandb:
        _wandb_summary(spec, table, metrics, files)
    return {"table": table, "metrics": metrics, "files": files}


def _write_csv(path: Path, table: Sequence[dict], metrics: Sequence[str], extra: Sequence[str]) -> Path:
    columns = ["epsilon", "epsilon_label", *extra, "seeds", "trials"]
    columns += [f"{m}{suffix}" for m in metrics for suffix in ("", ":std", ":min", ":max")]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(table)
    return write_text_atomic(path, buffer.getvalue())


def _plot_curve(path: Path, table, metrics, extra, spec: SweepSpec) -> Path:
    plt = pyplot_agg()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    groups: dict[str, list[dict]] = {}
    for entry in table:
        groups.setdefault(" ".join(f"{k}={entry[k]}" for k in extra), []).append(entry)
    for ax, stage in zip(axes, ("val", "test")):
        for group, entries in groups.items():
            entries = sorted(entries, key=lambda e: e["epsilon"])
            x = [e["epsilon"] * 255 for e in entries]
            for key in (m for m in metrics if m.startswith(f"{stage}/")):
                y = [e[key] for e in entries]
                if all(v is None for v in y):
                    continue
                parsed = MetricKey.parse(key)
                label = str(parsed).removeprefix(f"{parsed.stage}/") + (f" ({group})" if group else "")
                line, = ax.plot(x, y, marker="o", label=label)
                low = [e[f"{key}:min"] for e in entries]
                high = [e[f"{key}:max"] for e in entries]
                if any(e["seeds"] > 1 for e in entries) and None not in low:
                    ax.fill_between(x, low, high, color=line.get_color(), alpha=0.2)
        ax.set_title(f"{'validation' if stage == 'val' else 'test'} ({spec.study})")
        ax.set_xlabel("training epsilon (x/255)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0].set_ylabel("balanced accuracy (band: min-max over seeds)")
    path = save_figure(fig, path)
    plt.close(fig)
    return path


def _plot_pareto(path: Path, rows, spec: SweepSpec) -> Path:
    plt = pyplot_agg()
    keys, directions = results.pareto_axes(rows, spec)
    done = [r for r in rows if r["state"] == "COMPLETE" and all(r["val"].get(k) is not None for k in keys)]
    points = [[r["val"][k] for k in keys] for r in done]
    front = set(results.pareto_front(points, directions)) if points else set()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    for ax, stage in zip(axes, ("val", "test")):
        stage_keys = [k.replace("val/", f"{stage}/", 1) for k in keys]
        for i, row in enumerate(done):
            values = [row[stage].get(k) for k in stage_keys]
            if None in values:
                continue
            on_front = i in front
            ax.scatter(*values, color="C3" if on_front else "C0", s=40 if on_front else 20, zorder=3 if on_front else 2)
            ax.annotate(results._label(row["epsilon"]), values, fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.set_xlabel(stage_keys[0])
        ax.set_ylabel(stage_keys[1])
        ax.set_title("validation: Pareto front in red" if stage == "val"
                     else "test (same trials; front chosen on validation)")
        ax.grid(alpha=0.3)
    path = save_figure(fig, path)
    plt.close(fig)
    return path


def _wandb_summary(spec: SweepSpec, table, metrics, files) -> None:
    """One W&B run in the study's group with the curve table, the curve and the Pareto plot (offline
    unless an API key is configured)."""
    import wandb
    from train import wandb_mode

    columns = ["epsilon", "epsilon_label", "seeds", *metrics]
    run = wandb.init(project=spec.wandb_project, group=spec.study, name=f"{spec.study}-summary",
                     job_type="sweep-summary",
                     dir=str(spec.study_dir), mode=wandb_mode(), reinit="finish_previous")
    try:
        run.log({"curve": wandb.Table(columns=columns, data=[[e.get(c) for c in columns] for e in table]),
                 "curve_plot": wandb.Image(str(files[1])), "pareto_plot": wandb.Image(str(files[2]))})
    finally:
        run.finish()
