"""The leaderboard's figures as inline SVG text (matplotlib, no files, no fonts fetched): robust against clean balanced
accuracy, balanced accuracy per MedMNIST-C corruption, and calibration beside accuracy."""
from __future__ import annotations

import io
from typing import Any, Sequence

import numpy as np


def _svg(figure) -> str:
    """The figure as SVG text, byte-stable (no date, fixed id salt)."""
    import matplotlib.pyplot as plt

    buffer = io.StringIO()
    figure.savefig(buffer, format="svg", bbox_inches="tight", metadata={"Date": None})
    plt.close(figure)
    text = buffer.getvalue()
    return text[text.index("<svg"):]


def _figure(width: float, height: float, columns: int = 1):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams["svg.hashsalt"] = "medrobust-benchmark"
    return plt.subplots(1, columns, figsize=(width, height))


def robust_vs_clean(rows: Sequence[dict[str, Any]], eps: str) -> str:
    """AutoAttack balanced accuracy at the headline epsilon against clean balanced accuracy, one point per entry."""
    figure, ax = _figure(5.0, 4.0)
    for i, row in enumerate(rows):
        if row["clean_bacc"] is None or row["aa_bacc"] is None:
            continue
        ax.scatter(row["clean_bacc"], row["aa_bacc"], color=f"C{i % 10}", label=row["name"], zorder=3)
    ax.plot([0, 1], [0, 1], color="0.7", lw=0.8, ls="--", zorder=1)
    ax.set(xlabel="clean balanced accuracy", ylabel=f"AutoAttack balanced accuracy ({eps})", xlim=(0, 1.02),
           ylim=(0, 1.02), title="robust vs clean")
    ax.grid(alpha=0.3)
    if rows:
        ax.legend(fontsize=7, loc="upper left")
    return _svg(figure)


def corruption_heatmap(rows: Sequence[dict[str, Any]]) -> str:
    """Balanced accuracy per entry (rows) and corruption (columns), mean over severities."""
    names = sorted({name for row in rows for name in row["corruptions"]})
    figure, ax = _figure(max(4.0, 0.45 * len(names) + 2.5), max(2.0, 0.35 * len(rows) + 1.5))
    values = np.array([[np.nan if row["corruptions"].get(n) is None else row["corruptions"][n] for n in names]
                       for row in rows], dtype=float).reshape(len(rows), len(names))
    image = ax.imshow(values, vmin=0, vmax=1, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(len(rows)), [row["name"] for row in rows], fontsize=7)
    ax.set_title("MedMNIST-C balanced accuracy per corruption")
    figure.colorbar(image, ax=ax, fraction=0.04)
    return _svg(figure)


def calibration_beside_accuracy(rows: Sequence[dict[str, Any]], eps: str) -> str:
    """Two panels per entry: balanced accuracy (clean, AutoAttack) and ECE (clean, AutoAttack) side by side."""
    figure, (left, right) = _figure(8.0, max(2.0, 0.35 * len(rows) + 1.2), columns=2)
    y = np.arange(len(rows))
    for ax, metric, title in ((left, "bacc", "balanced accuracy"), (right, "ece", "ECE (lower is better)")):
        clean = [row[f"clean_{metric}"] or 0.0 for row in rows]
        robust = [row[f"aa_{metric}"] or 0.0 for row in rows]
        ax.barh(y - 0.2, clean, height=0.4, label="clean", color="C0")
        ax.barh(y + 0.2, robust, height=0.4, label=f"AutoAttack {eps}", color="C3")
        ax.set_yticks(y, [row["name"] for row in rows] if ax is left else [""] * len(rows), fontsize=7)
        ax.set_xlim(0, 1)
        ax.set_title(title)
        ax.invert_yaxis()
    right.legend(fontsize=7, loc="lower right")
    return _svg(figure)
