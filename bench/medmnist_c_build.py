"""MedMNIST-C build time with 2 worker processes against 1: `datamodules.medmnist_c.build(..., workers=w)`.

Each build writes a fresh cache folder (nothing is reused) for the same test images, corruptions and seed; the two
settings run interleaved (order alternating), and each repeat gives a paired speed-up = seconds(1) / seconds(2).
Wall-clock time (parallelism is the point), so other jobs on the machine lower the figure: the load average is
recorded. Every process runs one thread (OpenCV, ImageMagick, torch), as the builder's processes do, so the
figure is the speed-up from processes, not from thread pools; with 2 workers the building process corrupts beside
one pool process. The warm-up build starts the forkserver (once per process, as in any longer job); the timed
builds start their pool from it. Default data: a synthetic PneumoniaMNIST npz with `--test-images` test images
(official format).
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from bench.common import (
    Parser, environment, figure, format_table, paired_rounds, positive_int, run_main, summary, timed, write_json,
)


def build_seconds(root: Path, cache: Path, flag: str, workers: int, corruptions) -> float:
    """Wall seconds of one full build into an empty cache folder."""
    from datamodules.medmnist_c import build

    shutil.rmtree(cache, ignore_errors=True)
    seconds, report = timed(lambda: build(flag, 28, root, cache, seed=0, corruptions=corruptions, workers=workers,
                                          progress=False, verify=False))
    if len(report.built) != len(corruptions or report.built) or report.reused:
        raise RuntimeError(f"the build reused cache files: {report}")
    return seconds


def measure(root: Path, flag: str, repeats: int, warmup: int, workdir: Path, corruptions=None, workers=(1, 2),
            log=print) -> dict:
    """Interleaved builds with each worker count; paired speed-ups of the first count over the others."""
    from datamodules.medmnist_c.builder import one_thread

    # one thread per process, as the builder's processes run: with workers=1 the build runs in this process, where
    # OpenCV and ImageMagick would otherwise use every core, and 1 vs 2 workers would not compare processes
    with one_thread():
        return _measure(root, flag, repeats, warmup, workdir, corruptions, workers, log)


def _measure(root, flag, repeats, warmup, workdir, corruptions, workers, log) -> dict:
    seconds = {w: [] for w in workers}
    first = {}
    load = [os.getloadavg()[0]]
    for tag, timed_run, _, w in paired_rounds(warmup, repeats, [1], workers):  # one torch thread, as one_thread()
        s = build_seconds(root, workdir / f"cache_w{w}", flag, w, corruptions)
        first.setdefault(str(w), s)
        if timed_run:
            seconds[w].append(s)
        log(f"[medmnist-c {tag}] workers={w}: {s:.2f} s")
    load.append(os.getloadavg()[0])
    base, other = workers[0], workers[-1]
    speedups = [a / b for a, b in zip(seconds[base], seconds[other])]
    return {"seconds": {str(w): {**summary(v), "repeats": v} for w, v in seconds.items()},
            "speedup": {**summary(speedups), "repeats": speedups}, "load_average_1min": load,
            "first_build_seconds": first}


def synthetic_root(workdir: Path, test_images: int) -> Path:
    from datamodules.synthetic import write_synthetic_npz

    root = workdir / "data"
    write_synthetic_npz(root, "pneumoniamnist", 28, n_train=8, n_val=8, n_test=test_images)
    return root


def plan(quick: bool, smoke: bool = False) -> dict:
    if smoke:
        return {"test_images": 2, "corruptions": ["brightness_up", "contrast_down"], "repeats": 1, "warmup": 0}
    if quick:  # ~12 s a build with one worker (a real PneumoniaMNIST build: minutes)
        return {"test_images": 96, "corruptions": None, "repeats": 2, "warmup": 1}
    return {"test_images": 256, "corruptions": None, "repeats": 3, "warmup": 1}


def run_figures(quick: bool, workdir: Path, smoke: bool = False, log=print) -> list[dict]:
    """The MedMNIST-C figure of `python -m bench all`: speed-up of 2 workers over 1, goal >= 1.8x."""
    p = plan(quick, smoke)
    root = synthetic_root(workdir / "medmnist_c", p["test_images"])
    result = measure(root, "pneumoniamnist", p["repeats"], p["warmup"], workdir / "medmnist_c", p["corruptions"],
                     log=log)
    from datamodules.medmnist_c import corruption_names

    names = p["corruptions"] or list(corruption_names("pneumoniamnist"))
    return [figure("MedMNIST-C build: 2 workers vs 1 (speed-up)", result["speedup"]["repeats"], 1.8, details={
        "seconds_median": {w: s["median"] for w, s in result["seconds"].items()},
        "first_build_seconds": result["first_build_seconds"],  # the 2-worker one starts the forkserver
        "load_average_1min": result["load_average_1min"], "cpu_count": os.cpu_count(),
        "settings": f"synthetic pneumoniamnist, {p['test_images']} test images x {len(names)} corruptions x 5 "
                    f"severities, corrupted at 224 px, wall clock, after {p['warmup']} warm-up build(s)"})]


def parse_args(argv=None):
    parser = Parser(description=__doc__.split("\n\n")[0],
                    epilog="Example: python bench/medmnist_c_build.py --test-images 64 --repeats 3")
    parser.add_argument("--test-images", type=positive_int, default=64,
                        help="synthetic test images (default: %(default)s)")
    parser.add_argument("--corruptions", nargs="+", default=None, help="subset of corruptions (default: all)")
    parser.add_argument("--workers", type=positive_int, nargs=2, default=[1, 2],
                        help="the two worker counts (default: 1 2)")
    parser.add_argument("--repeats", type=positive_int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--json", metavar="OUT", help="also write the results here (atomic write)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-medmnistc-") as tmp:
        root = synthetic_root(Path(tmp), args.test_images)
        result = measure(root, "pneumoniamnist", args.repeats, args.warmup, Path(tmp), args.corruptions,
                         tuple(args.workers))
    rows = [[w, s["median"], s["min"], s["max"]] for w, s in result["seconds"].items()]
    print(format_table(["workers", "s median", "min", "max"], rows))
    sp = result["speedup"]
    print(f"speed-up {args.workers[0]} -> {args.workers[1]} workers, median of {args.repeats} paired repeats: "
          f"{sp['median']:.2f}x (range {sp['min']:.2f}-{sp['max']:.2f}); load average {result['load_average_1min']}")
    write_json(args.json, {"benchmark": "medmnist_c_build", **result, "environment": environment()})
    return 0


if __name__ == "__main__":
    run_main(main)
