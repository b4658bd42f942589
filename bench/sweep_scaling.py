"""Wall time of one sweep run with 1 worker and with 2 workers on the same cores (`python -m sweeps run
SWEEP --workers N`, each in a fresh study and folder): the ratio says how much the workers' split of the
cores buys.

Each variant is the command a user runs, timed from start to exit, including the workers' start-up and
the report. With N workers each gets cores // N torch threads, so 1 worker uses every core for one trial
and 2 workers run two trials at once. The MedMNIST-C cache is built before the timing (both would reuse it).
By default the quick sweep runs 1 epoch at training epsilons 2/255 and 4/255 (two equal trials: the
ideal ratio on 2 cores is 2); `--full` times configs/sweeps/quick.yaml unchanged.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import (
    REPO, BenchError, Parser, environment, format_table, interleaved_order, positive_int, run_main, summary, write_json,
)

SMALLER = ["epsilon=[2/255, 4/255]", "trainer.max_epochs=1"]


def parse_args(argv=None):
    parser = Parser(description=__doc__.split("\n\n")[0],
                    epilog="Example: python bench/sweep_scaling.py --json runs/bench/sweep_scaling.json")
    parser.add_argument("--sweep", default=str(REPO / "configs" / "sweeps" / "quick.yaml"),
                        help="sweep YAML (default: %(default)s)")
    parser.add_argument("--full", action="store_true",
                        help="time the sweep as written (default: 1 epoch, eps 2/255 and 4/255)")
    parser.add_argument("--set", dest="assignments", action="append", default=[], metavar="KEY=VALUE",
                        help="further sweep overrides, as `python -m sweeps run --set`")
    parser.add_argument("--workers", type=positive_int, nargs="+", default=[1, 2],
                        help="worker counts to time (default: 1 2)")
    parser.add_argument("--repeats", type=positive_int, default=1,
                        help="timed runs per worker count (default: %(default)s)")
    parser.add_argument("--out", default=None, help="folder for the throwaway studies (default: a temporary folder)")
    parser.add_argument("--json", metavar="OUT", help="also write the results here (atomic write)")
    args = parser.parse_args(argv)
    if not Path(args.sweep).is_file():
        raise BenchError(f"sweep {args.sweep} not found")
    args.assignments = ([] if args.full else list(SMALLER)) + args.assignments
    return args


def sweep_command(args, workers: int, folder: Path, name: str) -> list[str]:
    command = [sys.executable, "-m", "sweeps", "run", args.sweep, "--workers", str(workers), "--study", name,
               "--root", str(folder), "--storage", f"journal:{folder / name / 'study.journal'}"]
    for text in args.assignments:
        command += ["--set", text]
    return command


def prepare(args) -> None:
    """Check the sweep and build its MedMNIST-C cache before anything is timed."""
    from sweeps.launch import check
    from sweeps.spec import load_spec
    from sweeps.training import build_corruption_caches

    spec = load_spec(args.sweep, args.assignments, study="bench-check", root=tempfile.mkdtemp(), workers=1)
    build_corruption_caches(check(spec))


def measure(args, folder: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MEDROBUST_THREADS", "MKL_NUM_THREADS")}
    seconds: dict[int, list[float]] = {w: [] for w in args.workers}
    for repeat in range(args.repeats):
        for workers in map(int, interleaved_order(repeat, [str(w) for w in args.workers])):
            name = f"scaling-w{workers}-r{repeat}"
            print(f"run {repeat + 1}/{args.repeats}: {workers} worker(s) ...", flush=True)
            start = time.perf_counter()
            result = subprocess.run(sweep_command(args, workers, folder, name), cwd=REPO, env=env, capture_output=True,
                                    text=True)
            elapsed = time.perf_counter() - start
            if result.returncode:
                raise BenchError(f"the sweep with {workers} worker(s) failed: "
                                 f"{result.stderr.strip()[-500:] or result.stdout[-500:]}")
            seconds[workers].append(elapsed)
            print(f"  {elapsed:.1f} s", flush=True)
    base = args.workers[0]
    out = {"sweep": args.sweep, "overrides": args.assignments, "seconds": {w: summary(v) for w, v in seconds.items()},
           "ratios": {}, "environment": environment()}
    for w in args.workers[1:]:
        paired = [a / b for a, b in zip(seconds[base], seconds[w])]
        out["ratios"][f"{base}/{w}"] = {**summary(paired), "repeats": paired}
    return out


def thread_scaling(repeats: int = 3, batches: int = 6, log=print) -> list[float]:
    """Paired speed-ups of one PGD-AT training loop (small_cnn, batch 128, PGD-3) with 2 torch threads over 1, in
    this process: the share of the cores one trial already uses. At 2.0, two 1-thread trials side by side cannot
    beat two 2-thread trials one after the other, whatever the sweep does."""
    import torch
    import torch.nn.functional as F

    from attacks.gradient import PGD
    from bench.common import clock_pair, elapsed, paired_rounds, set_threads
    from lightning_modules.models import build_model

    generator = torch.Generator().manual_seed(0)
    x, y = torch.rand((128, 1, 28, 28), generator=generator), torch.randint(2, (128,), generator=generator)
    torch.manual_seed(0)
    model = build_model("small_cnn", 1, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)

    def train_steps():
        for _ in range(batches):
            x_adv = PGD(model, 4 / 255, steps=3)(x, y)
            model.train()
            loss = F.cross_entropy(model(x_adv), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

    before = set_threads(1)
    seconds: dict[int, list[float]] = {1: [], 2: []}
    try:
        for tag, timed_run, threads, _ in paired_rounds(1, repeats, [1, 2], ["train"]):
            start = clock_pair()
            train_steps()
            spent = elapsed(start)["wall"]
            if timed_run:
                seconds[threads].append(spent)
            log(f"[{tag}] {threads} torch thread(s): {spent:.2f} s")
    finally:
        set_threads(before)
    return [a / b for a, b in zip(seconds[1], seconds[2])]


def main(argv=None) -> int:
    args = parse_args(argv)
    print(f"sweep {args.sweep} {' '.join('--set ' + a for a in args.assignments)}; workers {args.workers}; "
          f"{os.cpu_count()} cores; {args.repeats} run(s) each")
    prepare(args)
    if args.out:
        folder = Path(args.out)
        folder.mkdir(parents=True, exist_ok=True)
        result = measure(args, folder)
    else:
        with tempfile.TemporaryDirectory(prefix="sweep-scaling-") as tmp:
            result = measure(args, Path(tmp))
    rows = [[w, s["median"], s["min"], s["max"]] for w, s in result["seconds"].items()]
    print()
    print(format_table(["workers", "seconds median", "min", "max"], rows))
    for name, ratio in result["ratios"].items():
        print(f"time ratio {name} workers: {ratio['median']:.2f} (> 1: more workers finish sooner; "
              f"range {ratio['min']:.2f}-{ratio['max']:.2f})")
    write_json(args.json, result)
    return 0


if __name__ == "__main__":
    run_main(main)
