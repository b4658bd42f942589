"""`python -m bench all [--quick] --out DIR`: every benchmark figure in one run, a table, DIR/bench.md and
DIR/bench.json.

Figures (each a ratio of paired, interleaved repeats: the median with the range):
  data        data path vs the official recipe, real PneumoniaMNIST and a synthetic PathMNIST-sized set (goal >= 20x)
  overhead    Lightning (train.py) vs a plain PyTorch loop, ERM and PGD-AT epochs (goal >= 0.95x)
  attack      medrobust PGD vs torchattacks PGD at equal strength (goal: time ratio <= 1)
  callback    per-epoch RobustnessCallback check at the configs' values / a PGD-AT and an ERM epoch (goal <= 10%)
  medmnist_c  MedMNIST-C build, 2 workers vs 1 (goal >= 1.8x)
  sweep       quick sweep, 2 workers vs 1 (bench/sweep_scaling.py; goal <= 0.6x the time)
  gpu         ResNet-18 fp32 vs bf16 + channels_last (+ compile), matmul-peak share ("no GPU" without CUDA)
  lora        LoRA PGD-AT / full fine-tuning of the same timm backbone: step time and peak memory (reported)
  explanation explanation attacks / PGD per image at the same steps (reported); the per-epoch explanation check /
              a PGD-AT epoch (goal <= 10%)
  certify     randomized-smoothing CERTIFY / plain prediction of the same noise samples, images/s (goal >= 0.9x)
  protocol    one benchmark evaluation / its parts (clean, PGD, AutoAttack, MedMNIST-C, confidence, screen) run
              separately, CPU s (goal <= 1.0x)
  seeds       K seeds of small_cnn stacked with torch.func / trained one at a time, ERM and PGD-AT steps, images/s
              (goal >= 2x at 10 seeds, and the stacked step must equal K separate steps)
"""
from __future__ import annotations

import os
import platform
import sys
import tempfile
import time
import traceback
from pathlib import Path

from bench.common import DEFAULT_ROOT, Parser, existing_dir, figure, format_table, met_text, not_measured, run_main

FIGURES = ("data", "overhead", "attack", "callback", "medmnist_c", "sweep", "gpu", "lora", "explanation", "certify",
           "protocol", "seeds")


def machine() -> dict:
    """What the figures were measured on: CPU model, cores, load, versions, GPU."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(),
            "load_average_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
            "python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def data_figures(root: str, verify_md5: bool, quick: bool, smoke: bool, workdir: Path, log) -> list[dict]:
    """Figure 1 on real PneumoniaMNIST and on a synthetic PathMNIST-sized set (89,996 RGB train images)."""
    import contextlib
    import io

    from bench import data_loading
    from datamodules.synthetic import write_synthetic_npz

    sets = [("pneumoniamnist", root, verify_md5, "real PneumoniaMNIST, 4,708 grey train images")]
    if not smoke:
        path_root = workdir / "pathmnist"
        log("[data] writing a synthetic PathMNIST-sized npz (89,996 RGB 28 px train images) ...")
        write_synthetic_npz(path_root, "pathmnist", 28, n_train=89996, n_val=64, n_test=64)  # medmnist checks the count
        sets.append(("pathmnist", str(path_root), False, "synthetic PathMNIST-sized, 89,996 RGB train images"))
    rows = []
    for flag, data_root, verify, what in sets:
        if smoke:
            options = ["--repeats", "1", "--warmup", "0", "--batches", "2"]
        elif flag == "pathmnist":  # a whole baseline epoch is ~20 s: time the first batches of the 90k set
            options = ["--repeats", "3" if quick else "5", "--warmup", "1", "--batches", "150" if quick else "300"]
        else:
            options = ["--repeats", "3" if quick else "5", "--warmup", "1"]
        args = data_loading.parse_args(["--root", data_root, "--flag", flag, "--threads", "1", *options]
                                       + ([] if verify else ["--no-verify-md5"]))
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            result = data_loading.measure(args)
        for line in printed.getvalue().splitlines():
            log(f"[data {flag}] {line}")
        (run,) = result["runs"]
        scope = f"first {args.batches} batches of an epoch" if args.batches else "whole epochs"
        images_per_s = {v: s["images_per_s"]["median"] for v, s in run["variants"].items()}
        settings = f"{what}, batch {args.batch_size}, {scope}, 1 torch thread, wall clock"
        rows.append(figure(f"data path: medrobust / official recipe ({flag}, images/s)",
                           run["ratio_a_over_b"]["repeats"], 20.0,
                           details={"images_per_s_median": images_per_s, "settings": settings}))
    return rows


def sweep_figures(quick: bool, smoke: bool, workdir: Path, log) -> list[dict]:
    """Figure 6 from bench/sweep_scaling.py, with one trial's thread scaling beside it."""
    from bench import sweep_scaling

    if smoke:
        return [not_measured("sweep scaling: 2 workers / 1 (time)", "<= 0.6x", "skipped in --smoke (whole sweeps)")]
    import contextlib
    import io

    args = sweep_scaling.parse_args(["--repeats", "1" if quick else "2"])
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        sweep_scaling.prepare(args)
        folder = workdir / "sweep"
        folder.mkdir(parents=True, exist_ok=True)
        result = sweep_scaling.measure(args, folder)
    for line in printed.getvalue().splitlines():
        log(f"[sweep] {line}")
    threads = sweep_scaling.thread_scaling(repeats=3, log=lambda line: log(f"[sweep threads] {line}"))
    return sweep_rows(result, threads)


def sweep_rows(result: dict, threads: list[float]) -> list[dict]:
    """The sweep figure (time with 2 workers / with 1, each repeat paired; goal <= 0.6x) from
    `sweep_scaling.measure`, and one trial's 2-thread speed-up beside it (reported)."""
    times = [1 / speedup for speedup in result["ratios"]["1/2"]["repeats"]]  # seconds(2 workers) / seconds(1)
    return [figure("sweep scaling: 2 workers / 1 (time)", times, 0.6, higher_is_better=False, details={
                "seconds_median": {str(w): s["median"] for w, s in result["seconds"].items()},
                "settings": f"{Path(result['sweep']).name} with {' '.join(result['overrides'])}, wall clock"}),
            figure("sweep context: one trial's PGD-AT steps, 2 torch threads / 1 (speed-up)", threads, None,
                   details={"settings": "small_cnn, batch 128, PGD-3 at 4/255, 6 training steps, wall clock; "
                                        "the best 2-worker time ratio is about this / 2"})]


def explanation_figures(root: str, verify_md5: bool, quick: bool, smoke: bool, workdir: Path, log) -> list[dict]:
    """bench/explanation_attack.py's cost ratios, and the per-epoch explanation check / a PGD-AT epoch."""
    from bench import callback_cost, explanation_attack

    rows = explanation_attack.run_figures(root, verify_md5, quick, smoke, log)
    for row in rows:  # the issue names no goal for the attack's cost: reported beside PGD's
        row.update(goal="reported", goal_value=None, met=None)
    return rows + callback_cost.explanation_figures(root, verify_md5, quick, workdir, smoke, log)


def run_all(names, root: str, verify_md5: bool, quick: bool, smoke: bool, workdir: Path, log=print) -> list[dict]:
    """Every requested figure; a benchmark that fails gives a row saying so, and the others still run."""
    from bench import (
        attack_speed, callback_cost, certify_speed, gpu, lora_step, medmnist_c_build, overhead, protocol_cost,
        seed_stacking,
    )

    runners = {
        "data": lambda: data_figures(root, verify_md5, quick, smoke, workdir, log),
        "overhead": lambda: overhead.run_figures(root, verify_md5, quick, workdir, smoke, log),
        "attack": lambda: attack_speed.run_figures(root, verify_md5, quick, smoke, log),
        "callback": lambda: callback_cost.run_figures(root, verify_md5, quick, workdir, smoke, log),
        "medmnist_c": lambda: medmnist_c_build.run_figures(quick, workdir, smoke, log),
        "sweep": lambda: sweep_figures(quick, smoke, workdir, log),
        "gpu": lambda: gpu.run_figures(quick, log=log),
        "lora": lambda: lora_step.run_figures(quick, smoke, log=log),
        "explanation": lambda: explanation_figures(root, verify_md5, quick, smoke, workdir, log),
        "certify": lambda: certify_speed.run_figures(quick, smoke, log=log),
        "protocol": lambda: protocol_cost.run_figures(quick, smoke, log=log),
        "seeds": lambda: seed_stacking.run_figures(quick, smoke, log=log),
    }
    rows = []
    for name in names:
        started = time.perf_counter()
        log(f"== {name} ==")
        try:
            produced = runners[name]()
        except Exception as err:  # noqa: BLE001  (one broken benchmark must not hide the others)
            traceback.print_exc()
            produced = [not_measured(name, "-", f"failed: {type(err).__name__}: {err}")]
        for row in produced:
            row["benchmark"], row["seconds"] = name, round(time.perf_counter() - started, 1)
        rows += produced
        log(f"== {name}: {time.perf_counter() - started:.0f} s ==")
    return rows


def _ratio(row: dict) -> str:
    if row["ratio"] is None:
        return "-"
    low, high = row["range"]
    return f"{row['ratio']:.3g} ({low:.3g}-{high:.3g})"


def table(rows: list[dict]) -> str:
    return format_table(["figure", "ratio (range)", "goal", "met"],
                        [[r["name"], _ratio(r), r["goal"], met_text(r)] for r in rows])


def markdown(rows: list[dict], info: dict, command: str, seconds: float) -> str:
    lines = [f"# Benchmarks: `{command}`", "",
             f"Machine: {info['cpu']}, {info['cores']} cores, GPU: {info['gpu'] or 'none'}; Python {info['python']}, "
             f"torch {info['torch']}; 1-minute load average at the start {info['load_average_1min']:.1f}. "
             f"Total {seconds / 60:.1f} min.", "",
             "| figure | ratio, median (range) | goal | met | settings |", "|---|---|---|---|---|"]
    for r in rows:
        settings = r.get("details", {}).get("settings") or r.get("details", {}).get("callback") or ""
        lines.append(f"| {r['name']} | {_ratio(r)} | {r['goal']} | {met_text(r)} | {settings} |")
    lines += ["", "Ratios are paired and interleaved within this run (see bench/README.md); absolute times are not "
              "comparable across runs or machines.", ""]
    return "\n".join(lines)


def parse_args(argv=None):
    parser = Parser(prog="python -m bench", description=__doc__.split("\n\n")[0],
                    epilog="Example: python -m bench all --quick --out runs/bench")
    parser.add_argument("command", choices=["all"], help="'all': run every benchmark")
    parser.add_argument("--quick", action="store_true", help="smaller runs that fit a 2-core CPU in 15 minutes")
    parser.add_argument("--smoke", action="store_true", help="tiny runs that only check that everything works (tests)")
    parser.add_argument("--only", default=None, help=f"comma-separated subset of {','.join(FIGURES)}")
    parser.add_argument("--root", type=existing_dir, default=DEFAULT_ROOT,
                        help="folder with pneumoniamnist.npz (default: %(default)s)")
    parser.add_argument("--no-verify-md5", dest="verify_md5", action="store_false",
                        help="skip the MD5 check of the real files")
    parser.add_argument("--out", required=True, help="folder for bench.md and bench.json")
    args = parser.parse_args(argv)
    args.names = FIGURES if args.only is None else tuple(n.strip() for n in args.only.split(",") if n.strip())
    unknown = [n for n in args.names if n not in FIGURES]
    if unknown or not args.names:
        parser.error(f"--only takes names from {', '.join(FIGURES)}, got {args.only!r}")
    if not (Path(args.root) / "pneumoniamnist.npz").is_file():
        parser.error(f"{Path(args.root) / 'pneumoniamnist.npz'} not found (pass --root)")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("WANDB_MODE", "offline")
    from core.files import write_json_atomic, write_text_atomic

    def log(message: str) -> None:
        print(message, flush=True)

    info = machine()
    command = "python -m bench " + " ".join(sys.argv[1:] if argv is None else argv)
    log(f"{command}\nmachine: {info['cpu']}, {info['cores']} cores, torch {info['torch']}, "
        f"GPU {info['gpu'] or 'none'}, "
        f"load average {info['load_average_1min']}")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-all-") as tmp:
        rows = run_all(args.names, args.root, args.verify_md5, args.quick, args.smoke, Path(tmp), log)
    seconds = time.perf_counter() - started
    info["load_average_1min_end"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    print()
    print(table(rows))
    out = Path(args.out)
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    write_json_atomic(out / "bench.json", {"command": command, "mode": mode, "machine": info,
                                           "seconds": round(seconds, 1), "figures": rows})
    write_text_atomic(out / "bench.md", markdown(rows, info, command, seconds))
    print(f"\nwrote {out / 'bench.md'} and {out / 'bench.json'} ({seconds / 60:.1f} min)")
    failed = [r for r in rows if str(r.get("status", "")).startswith("failed")]
    return 1 if failed else 0


if __name__ == "__main__":
    run_main(main)
