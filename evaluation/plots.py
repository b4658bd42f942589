"""Plotting helpers every report shares (sweeps' curves, studies' figures): matplotlib without a display, and a
figure written atomically as PNG and closed."""
from __future__ import annotations

import io
from pathlib import Path


def pyplot_agg():
    """matplotlib.pyplot on the Agg backend (no display needed: workers, CI, headless machines)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path) -> Path:
    """A figure as PNG, written atomically; the figure is closed (many plots in one process leak otherwise)."""
    from core.files import atomic_write

    plt = pyplot_agg()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    with atomic_write(path, "wb") as handle:
        handle.write(buffer.getvalue())
    return path
