"""The study's figures: constructed.png (every model's measures with intervals, chance dashed), corruption.png (clean
vs corrupted, the standard and the robust model), robust_curve.png (PGD balanced accuracy against epsilon) and
matched_accuracy.png (each seed's robust curve of clean vs corrupted balanced accuracy, the standard model on it)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from attacks.threat_model import parse_epsilon
from evaluation.plots import pyplot_agg, save_figure

from ..runner import mean_sd
from .config import ROLES
from .results import column_keys, curve_on, ordered_models, title

FIGURE_MEASURES = (("bacc", "bacc (default threshold)"), ("bacc_recal", "bacc (threshold on real val)"),
                   ("auroc", "AUROC"))


def figures(rows: list[dict], out: Path, cells: Optional[dict] = None, roles: Optional[dict] = None,
            curve: Sequence[str] = ()) -> None:
    """Write the figures into `out` (the corruption figure only when a model was tested on MedMNIST-C, the matched-
    accuracy one only with a `curve` of robust models)."""
    roles = roles or ROLES
    constructed_figure(rows, out / "constructed.png", cells or {})
    corruption_figure(rows, out / "corruption.png", roles)
    robust_curve(rows, out / "robust_curve.png", roles)
    if curve:
        matched_accuracy_figure(rows, out / "matched_accuracy.png", roles["standard"], curve)


def constructed_figure(rows: list[dict], path: Path, cells: dict) -> None:
    """Every model's measures on the real test split, bars with their intervals, chance dashed."""
    plt = pyplot_agg()
    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    models = ordered_models(rows)
    fig, axes = plt.subplots(1, len(datasets), figsize=(max(5.0, 1.5 + 0.55 * len(models)) * len(datasets), 3.8),
                             squeeze=False)
    for ax, d in zip(axes[0], datasets):
        chance = next(r["chance_bacc"] for r in rows if r["dataset"] == d)
        names = [m for m in models if any(r["model"] == m and r["dataset"] == d for r in rows)]
        shown = [(m, t) for m, t in FIGURE_MEASURES if any(m in cells.get((d, n), {}) for n in names)] or \
            [("clean_bacc", "balanced accuracy")]
        width = 0.8 / len(shown)
        for i, (measure, label) in enumerate(shown):
            means, lows, highs = [], [], []
            for n in names:
                c = cells.get((d, n), {}).get(measure)
                if c is None:
                    mean = mean_sd([r.get(measure, r["clean_bacc"]) for r in rows
                                    if r["model"] == n and r["dataset"] == d])[0]
                    means.append(mean), lows.append(mean), highs.append(mean)
                else:
                    means.append(c["mean"]), lows.append(c["low"]), highs.append(c["high"])
            means, lows, highs = map(np.array, (means, lows, highs))
            ax.bar(np.arange(len(names)) + i * width, means, width, label=label,
                   yerr=np.vstack([means - lows, highs - means]), capsize=2)
        ax.axhline(chance, color="k", ls="--", lw=1, label="chance")
        ax.set_xticks(np.arange(len(names)) + 0.4 - width / 2, names, rotation=30, ha="right", fontsize=7)
        ax.set_ylim(0, 1)
        ax.set_title(d)
        ax.set_ylabel("real test split")
        ax.legend(fontsize=6)
    fig.suptitle("Trained on real vs constructed sets (bars: interval over test examples / seeds)", fontsize=9)
    save_figure(fig, path)


def corruption_figure(rows: list[dict], path: Path, roles: dict) -> None:
    """Clean against MedMNIST-C balanced accuracy of the standard and the robust model (none without corruptions)."""
    pair = (roles["standard"], roles["robust"])
    corr = [r for r in rows if r.get("corr_bacc") is not None and r["model"] in pair]
    if not corr:
        return
    plt = pyplot_agg()
    fig, ax = plt.subplots(figsize=(5, 4))
    for model, marker in zip(pair, ("o", "s")):
        for d in dict.fromkeys(r["dataset"] for r in rows):
            sel = [r for r in corr if r["model"] == model and r["dataset"] == d]
            if sel:
                x = mean_sd([r["clean_bacc"] for r in sel])[0]
                y = mean_sd([r["corr_bacc"] for r in sel])[0]
                ax.scatter(x, y, marker=marker, s=50, label=f"{model} {d}")
    ax.plot([0, 1], [0, 1], "k:", lw=1)
    ax.set_xlabel("clean test balanced accuracy")
    ax.set_ylabel("MedMNIST-C balanced accuracy (mean)")
    ax.legend(fontsize=7)
    ax.set_title(f"Clean vs corruption: {title(pair[0])} and {title(pair[1])}")
    save_figure(fig, path)


def robust_curve(rows: list[dict], path: Path, roles: dict) -> None:
    """PGD balanced accuracy against the L-inf epsilon of the standard and the robust model."""
    plt = pyplot_agg()
    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    fig, axes = plt.subplots(1, len(datasets), figsize=(4.2 * len(datasets), 3.6), squeeze=False)
    for ax, d in zip(axes[0], datasets):
        for model in (roles["standard"], roles["robust"]):
            sel = [r for r in rows if r["dataset"] == d and r["model"] == model]
            if not sel:
                continue
            labels = sorted({key.condition for r in sel for key in column_keys(r, "adv", "bacc")}, key=parse_epsilon)
            eps = [0.0] + [parse_epsilon(label) for label in labels]
            ys = [mean_sd([r["clean_bacc"] for r in sel])[0]] + [mean_sd([r.get(f"adv_bacc@{label}") for r in sel])[0]
                                                                   for label in labels]
            ax.plot(np.array(eps) * 255, ys, marker="o", label=model)
        ax.set_xlabel("PGD epsilon (x 1/255, L-inf)")
        ax.set_ylabel("test balanced accuracy")
        ax.set_ylim(0, 1)
        ax.set_title(d)
        ax.legend(fontsize=7)
    save_figure(fig, path)


def matched_accuracy_figure(rows: list[dict], path: Path, standard: str, curve: Sequence[str]) -> None:
    """Finding 2 at matched clean accuracy, seen: per dataset, each seed's curve of the robust models (increasing
    epsilon, the ones the dataset trained) in clean vs corrupted balanced accuracy, and the standard model of the same
    seed as a cross of the same colour; a cross outside its curve's clean range is a seed where it is not reachable."""
    corr = [r for r in rows if r.get("corr_bacc") is not None]
    curves = {d: curve_on(corr, d, list(curve)) for d in dict.fromkeys(r["dataset"] for r in corr)}
    curves = {d: models for d, models in curves.items() if len(models) >= 2}
    if not curves:
        return
    plt = pyplot_agg()
    fig, axes = plt.subplots(1, len(curves), figsize=(5.2 * len(curves), 4.2), squeeze=False)
    for ax, (d, models) in zip(axes[0], curves.items()):
        of = {(r["model"], r["seed"]): r for r in corr if r["dataset"] == d}
        seeds = list(dict.fromkeys(r["seed"] for r in corr if r["dataset"] == d and r["model"] == standard))
        colours = plt.get_cmap("tab10")
        for i, seed in enumerate(seeds):
            points = [of[(m, seed)] for m in models if (m, seed) in of]
            ax.plot([p["clean_bacc"] for p in points], [p["corr_bacc"] for p in points], "-o", ms=3, lw=0.8,
                    color=colours(i % 10), alpha=0.8)
            base = of[(standard, seed)]
            ax.scatter(base["clean_bacc"], base["corr_bacc"], marker="x", s=40, color=colours(i % 10),
                       label=f"seed {seed}")
        means = [(mean_sd([of[(m, s)]["clean_bacc"] for s in seeds if (m, s) in of])[0],
                  mean_sd([of[(m, s)]["corr_bacc"] for s in seeds if (m, s) in of])[0]) for m in models]
        ax.plot(*zip(*means), "-s", color="k", lw=2, ms=5, label="mean over seeds")
        for m, (x, y) in zip(models, means):
            ax.annotate(m, (x, y), fontsize=6, xytext=(3, -8), textcoords="offset points")
        ax.set_xlabel("clean test balanced accuracy")
        ax.set_ylabel("MedMNIST-C balanced accuracy (mean)")
        ax.set_title(d, fontsize=9)
        ax.legend(fontsize=5, ncol=2)
    fig.suptitle(f"Matched clean accuracy: each seed's PGD-AT curve (line) and {title(standard)} (x)", fontsize=9)
    save_figure(fig, path)
