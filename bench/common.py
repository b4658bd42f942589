"""Shared helpers for the bench scripts: one-line errors, timing, summary tables and JSON output."""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

from core.cli import Parser  # noqa: F401 (the bench scripts' parser)

REPO = Path(__file__).resolve().parents[1]

DEFAULT_ROOT = str(REPO.parent / "shared" / "data" / "medmnist")


class BenchError(Exception):
    """A bad path or argument: the script prints `error: ...` and exits with code 2."""


def run_main(main: Callable[[], int]) -> None:
    """Run a script's main; a BenchError or a MedRobustError (bad file, flag, epsilon) ends in one line."""
    from core.errors import MedRobustError

    try:
        code = main()
    except (BenchError, MedRobustError) as err:
        print(f"error: {err}", file=sys.stderr)
        code = 2
    sys.exit(code)


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    from core.checks import positive_int as check
    from core.errors import ConfigError

    try:
        return check("the value", text)
    except ConfigError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def existing_dir(text: str) -> str:
    """argparse type: a folder that exists."""
    if not Path(text).expanduser().is_dir():
        raise argparse.ArgumentTypeError(f"folder {text!r} not found")
    return str(Path(text).expanduser())


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    """(seconds, result) of one call, on a monotonic high-resolution clock."""
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def interleaved_order(repeat: int, names: Sequence[str]) -> list[str]:
    """Alternate which variant runs first, so slow drift (other jobs, thermals) hits both equally."""
    return list(names) if repeat % 2 == 0 else list(reversed(names))


def paired_rounds(warmup: int, repeats: int, threads: Sequence[int], variants: Sequence[str]):
    """Yield (tag, timed, threads, variant) for warm-up then timed rounds: every thread setting in every round
    (torch.set_num_threads applied), the variants in alternating order."""
    import torch

    for r in range(warmup + repeats):
        timed_run = r >= warmup
        tag = f"repeat {r - warmup + 1}/{repeats}" if timed_run else f"warm-up {r + 1}/{warmup}"
        for n_threads in threads:
            torch.set_num_threads(n_threads)
            for variant in interleaved_order(r, variants):
                yield tag, timed_run, n_threads, variant


def summary(values: Sequence[float]) -> dict[str, float]:
    """Median (the reported figure), min and max of a list of repeats."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def format_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain fixed-width table: numbers right-aligned, text left-aligned."""
    cells = [[str(h) for h in header]] + [[_cell(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    numeric = [all(isinstance(row[i], (int, float)) or row[i] is None for row in rows) for i in range(len(header))]

    def line(row):
        return "  ".join(c.rjust(w) if num else c.ljust(w) for c, w, num in zip(row, widths, numeric)).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(cells[0]), rule] + [line(row) for row in cells[1:]])


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.4g}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


def write_json(path: str | None, data: dict) -> None:
    """Write `data` atomically (temporary file, then rename) when a path was given."""
    if path:
        from core.files import write_json_atomic

        print(f"wrote {write_json_atomic(path, data)}")


def environment() -> dict:
    """Versions and thread count that a timing depends on."""
    import platform

    import torch

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": __import__("os").cpu_count(),
        "machine": platform.machine(),
    }


def figure(name: str, ratios: Sequence[float], goal: float | None, higher_is_better: bool = True, unit: str = "x",
           details: dict | None = None, requires: dict[str, bool] | None = None) -> dict:
    """One row of `python -m bench all`, the only place a row's `met` is decided: the median paired ratio, its
    range and whether it meets the goal. `goal` None: the row is reported without a goal of its own (met None).
    `requires`: named conditions the goal also needs (equal attack strength, say), kept in the details."""
    stats = summary(ratios)
    details = {**(details or {}), **(requires or {})}
    if goal is None:
        met, goal_text = None, "reported"
    else:
        met = ((stats["median"] >= goal if higher_is_better else stats["median"] <= goal)
               and all((requires or {}).values()))
        goal_text = f"{'>=' if higher_is_better else '<='} {goal:g}{unit}"
    return {"name": name, "ratio": stats["median"], "range": [stats["min"], stats["max"]], "repeats": list(ratios),
            "goal": goal_text, "goal_value": goal, "higher_is_better": higher_is_better, "unit": unit,
            "met": None if met is None else bool(met), "details": details}


def met_text(row: dict) -> str:
    """The table's `met` column: yes, NO, reported, or why the row was not measured."""
    if row.get("status"):
        return row["status"]
    return {True: "yes", False: "NO", None: "reported"}[row["met"]]


def not_measured(name: str, goal: str, why: str) -> dict:
    """A row that could not be measured here (no GPU, a module not available): met is None, the reason says why."""
    return {"name": name, "ratio": None, "range": None, "repeats": [], "goal": goal, "goal_value": None,
            "higher_is_better": True, "unit": "", "met": None, "status": why, "details": {}}


def set_threads(n: int) -> int:
    """torch.set_num_threads(n); returns the previous setting so the caller can restore it."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    return before


def clock_pair() -> tuple[float, float]:
    """(CPU seconds of this process, all threads; wall seconds): start of a span for `elapsed`."""
    return time.process_time(), time.perf_counter()


def elapsed(start: tuple[float, float]) -> dict[str, float]:
    """{'cpu': process CPU seconds, 'wall': wall seconds} since `clock_pair()`. With one torch thread CPU time is
    the work done, nearly unaffected by other jobs on a shared machine; wall time is what a user waits."""
    cpu, wall = clock_pair()
    return {"cpu": cpu - start[0], "wall": wall - start[1]}


def resolved_device(device: str) -> str:
    """`--device`: `auto` is cuda when a GPU is visible, else cpu; cpu, or cuda on a machine with a GPU, as given;
    anything else one BenchError line."""
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device not in ("cpu", "cuda") or (device == "cuda" and not torch.cuda.is_available()):
        raise BenchError(f"--device {device}: choose cpu, or cuda on a machine with a GPU")
    return device


def round_options(parser, repeats: int) -> None:
    """The options every timed-rounds row with a device shares: --repeats, --warmup, --device, --json."""
    parser.add_argument("--repeats", type=positive_int, default=repeats, help="timed rounds (default: %(default)s)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first (default: %(default)s)")
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto (default: %(default)s)")
    parser.add_argument("--json", metavar="OUT", help="also write the results here (atomic write)")
