"""Framework overhead: a training epoch through train.py's Lightning path against a plain PyTorch loop doing the
same work (same model, in-memory tensors, augmentation, batch size, optimizer and attack).

(a) `train.run(["fit", "--model", ERM or PGDAT, ...])`: LightningCLI, the MedMNISTDataModule, the module's
    training_step (loss, training metrics, logging), the CSV logger and ModelCheckpoint as train.py sets them up;
    no robustness callback, no validation, no test, progress bar off. Only the training epoch is timed (from
    on_train_epoch_start to on_train_epoch_end), not building the CLI or reading the npz.
(b) a `for` loop over a random permutation of the same uint8 training tensors: index_select, to [0, 1] floats,
    the same flip + crop, PGD (PGD-AT only), forward, the task loss, backward, Adam step.

Figure: images per second of (a) divided by those of (b); 1.0 means Lightning adds nothing. Goal >= 0.95.
Seconds are the process's CPU time (all its threads): on a shared machine other jobs' load barely moves them, while
wall-clock seconds swing by tens of percent. The wall-clock ratio is reported beside it.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

from bench.common import (
    DEFAULT_ROOT, BenchError, Parser, clock_pair, elapsed, environment, existing_dir, figure, format_table,
    interleaved_order, met_text, positive_int, run_main, set_threads, summary, write_json,
)
from lightning_modules.registry import METHODS

VARIANTS = ("lightning", "plain")
KINDS = ("erm", "pgd_at")  # the methods the hand-written loop (plain_epoch) also trains


def _epoch_timer():
    """A Lightning callback that times the training epoch and counts its images."""
    from lightning.pytorch.callbacks import Callback

    class EpochTimer(Callback):
        def __init__(self):
            self.seconds, self.images, self._start = None, 0, None

        def on_train_epoch_start(self, trainer, pl_module):
            self.images, self._start = 0, clock_pair()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.images += len(batch[0])

        def on_train_epoch_end(self, trainer, pl_module):
            self.seconds = elapsed(self._start)

    return EpochTimer()


def lightning_epoch(kind: str, settings: dict, workdir: Path) -> tuple[float, int]:
    """(seconds, images) of one training epoch run by train.run, the callback off."""
    import train

    timer = _epoch_timer()
    args = ["fit", "--model", METHODS[kind].class_path, "--model.init_args.network.arch", settings["arch"],
            "--data.flag", settings["flag"], "--data.root", settings["root"],
            "--data.verify_md5", str(settings["verify_md5"]).lower(), "--data.batch_size", str(settings["batch_size"]),
            "--trainer.max_epochs", "1", "--trainer.accelerator", "cpu", "--trainer.devices", "1",
            "--trainer.limit_val_batches", "0", "--trainer.num_sanity_val_steps", "0",
            "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
            "--trainer.inference_mode", "false", "--trainer.default_root_dir", str(workdir),
            "--test_after_fit", "false", "--seed_everything", str(settings["seed"])]
    if settings["batches"]:  # Lightning reads limit_train_batches 1 as 1.0 = 100 %: at least 2 batches
        args += ["--trainer.limit_train_batches", str(max(2, settings["batches"]))]
    if kind == "pgd_at":
        args += ["--model.init_args.epsilon", settings["epsilon"], "--model.init_args.steps", str(settings["steps"])]
    _quiet_lightning()
    train.run(args, callbacks=[timer])
    return timer.seconds, timer.images


def _quiet_lightning() -> None:
    import logging
    import warnings

    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module="lightning")
    warnings.filterwarnings("ignore", message=".*(ModelCheckpoint|does not have many workers|LightningCLI).*")


def plain_epoch(kind: str, settings: dict, split, crop_padding: int) -> tuple[float, int]:
    """(seconds, images) of the same epoch as a hand-written PyTorch loop."""
    import torch

    from attacks.gradient import PGD
    from datamodules.tensors import random_flip_crop, to_unit_range
    from lightning_modules.metrics import task_loss
    from lightning_modules.models import build_model

    torch.manual_seed(settings["seed"])
    model = build_model(settings["arch"], split.images.shape[1], settings["num_classes"])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    start = clock_pair()
    order = torch.randperm(len(split))
    batch, images = settings["batch_size"], 0
    for i, first in enumerate(range(0, len(order), batch)):
        if settings["batches"] and i >= max(2, settings["batches"]):
            break
        index = order[first : first + batch]
        x = random_flip_crop(to_unit_range(split.images.index_select(0, index)), crop_padding)
        y = split.targets.index_select(0, index)
        if kind == "pgd_at":
            x = PGD(model, settings["epsilon"], steps=settings["steps"])(x, y)
        loss = task_loss(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        images += len(x)
    return elapsed(start), images


def measure(kinds, settings: dict, repeats: int, warmup: int, workdir: Path, log=print) -> dict:
    """Per kind: warm-up, then `repeats` rounds of both variants in alternating order; paired images/s ratios."""
    from datamodules.medmnist import MedMNISTDataModule

    dm = MedMNISTDataModule(settings["flag"], 28, root=settings["root"], verify_md5=settings["verify_md5"])
    split = dm.split("train")
    settings = {**settings, "num_classes": dm.num_classes}
    threads_before = set_threads(settings["threads"])
    results = {}
    try:
        for kind in kinds:
            rate = {v: [] for v in VARIANTS}
            wall = {v: [] for v in VARIANTS}
            for r in range(warmup + repeats):
                timed_run = r >= warmup
                run_settings = settings if timed_run else {**settings, "batches": 2}
                for variant in interleaved_order(r, VARIANTS):
                    if variant == "lightning":
                        seconds, n = lightning_epoch(kind, run_settings, workdir / f"{kind}_{r}")
                    else:
                        seconds, n = plain_epoch(kind, run_settings, split, dm.crop_padding)
                    if timed_run:
                        rate[variant].append(n / seconds["cpu"])
                        wall[variant].append(n / seconds["wall"])
                    tag = f"repeat {r - warmup + 1}/{repeats}" if timed_run else f"warm-up {r + 1}/{warmup}"
                    log(f"[overhead {METHODS[kind].title} {tag}] {variant:<9} {n} images in {seconds['cpu']:.2f} CPU s "
                        f"({seconds['wall']:.2f} s wall) = {n / seconds['cpu']:,.0f} images per CPU s")
            ratios = [a / b for a, b in zip(rate["lightning"], rate["plain"])]
            wall_ratios = [a / b for a, b in zip(wall["lightning"], wall["plain"])]
            results[kind] = {"images_per_cpu_s": {v: {**summary(rate[v]), "repeats": rate[v]} for v in VARIANTS},
                             "images_per_wall_s": {v: {**summary(wall[v]), "repeats": wall[v]} for v in VARIANTS},
                             "ratio": {**summary(ratios), "repeats": ratios},
                             "wall_ratio": {**summary(wall_ratios), "repeats": wall_ratios}}
    finally:
        set_threads(threads_before)
    return results


def figures(results: dict, settings: dict) -> list[dict]:
    """One figure per kind: Lightning images/s over the plain loop's, goal >= 0.95."""
    rows = []
    for kind, result in results.items():
        scope = f"first {settings['batches']} batches" if settings["batches"] else "full epochs"
        rows.append(figure(f"framework overhead: {METHODS[kind].title} epoch, Lightning / plain loop (images/s)",
                           result["ratio"]["repeats"], 0.95, details={
                               "clock": "process CPU time (all threads); wall-clock ratio below",
                               "wall_ratio": result["wall_ratio"]["median"],
                               "images_per_cpu_s_median": {v: result["images_per_cpu_s"][v]["median"]
                                                           for v in VARIANTS},
                               "settings": f"{settings['flag']} 28 px train, {settings['arch']}, batch "
                                           f"{settings['batch_size']}, {scope}, torch threads {settings['threads']}"
                                           + (f", PGD-{settings['steps']} at {settings['epsilon']}"
                                              if kind == "pgd_at" else "")}))
    return rows


def quick_settings(root: str, verify_md5: bool, quick: bool, smoke: bool = False) -> tuple[dict, dict]:
    """(settings, schedule) of `python -m bench all`: whole ERM epochs, a few PGD-AT batches with --quick."""
    base = {"flag": "pneumoniamnist", "root": root, "verify_md5": verify_md5, "arch": "small_cnn",
            "batch_size": 128, "epsilon": "4/255", "steps": 7, "seed": 0, "threads": 1}
    if smoke:
        return base, {"erm": 2, "pgd_at": 2, "repeats": 1, "warmup": 0}
    if quick:
        return base, {"erm": None, "pgd_at": 8, "repeats": 3, "warmup": 1}
    return base, {"erm": None, "pgd_at": None, "repeats": 5, "warmup": 1}


def run_figures(root: str, verify_md5: bool, quick: bool, workdir: Path, smoke: bool = False, log=print) -> list[dict]:
    """The two overhead figures of `python -m bench all`."""
    base, plan = quick_settings(root, verify_md5, quick, smoke)
    rows = []
    for kind in ("erm", "pgd_at"):
        settings = {**base, "batches": plan[kind]}
        results = measure([kind], settings, plan["repeats"], plan["warmup"], workdir / "overhead", log)
        rows += figures(results, settings)
    return rows


def parse_args(argv=None):
    parser = Parser(description=__doc__.split("\n\n")[0],
                    epilog="Example: python bench/overhead.py --repeats 5 --json runs/bench/overhead.json")
    parser.add_argument("--root", type=existing_dir, default=DEFAULT_ROOT,
                        help="folder with <flag>.npz (default: %(default)s)")
    parser.add_argument("--flag", default="pneumoniamnist", help="dataset (default: %(default)s)")
    parser.add_argument("--kinds", nargs="+", choices=KINDS, default=["erm", "pgd_at"],
                        help="what to train (default: both)")
    parser.add_argument("--arch", default="small_cnn", help="architecture (default: %(default)s)")
    parser.add_argument("--batch-size", type=positive_int, default=128, help="training batch (default: %(default)s)")
    parser.add_argument("--batches", type=positive_int, default=None,
                        help="stop each epoch after N batches (default: whole epochs)")
    parser.add_argument("--epsilon", default="4/255", help="PGD-AT budget (default: %(default)s)")
    parser.add_argument("--steps", type=positive_int, default=7, help="PGD-AT steps (default: %(default)s)")
    parser.add_argument("--repeats", type=positive_int, default=5,
                        help="timed epochs per variant (default: %(default)s)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed 2-batch rounds first (default: %(default)s)")
    parser.add_argument("--threads", type=positive_int, default=1, help="torch threads (default: %(default)s)")
    parser.add_argument("--no-verify-md5", dest="verify_md5", action="store_false", help="skip the MD5 check")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", metavar="OUT", help="also write the results here (atomic write)")
    args = parser.parse_args(argv)
    if args.warmup < 0:
        parser.error(f"--warmup must be >= 0, got {args.warmup}")
    from attacks.threat_model import parse_epsilon
    from datamodules.info import dataset_info

    parse_epsilon(args.epsilon)
    args.flag = dataset_info(args.flag).flag
    if not (Path(args.root) / f"{args.flag}.npz").is_file():
        raise BenchError(f"{Path(args.root) / f'{args.flag}.npz'} not found (pass --root)")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    settings = {"flag": args.flag, "root": args.root, "verify_md5": args.verify_md5, "arch": args.arch,
                "batch_size": args.batch_size, "epsilon": args.epsilon, "steps": args.steps, "seed": args.seed,
                "threads": args.threads, "batches": args.batches}
    with tempfile.TemporaryDirectory(prefix="bench-overhead-") as tmp:
        results = measure(args.kinds, settings, args.repeats, args.warmup, Path(tmp))
    rows = figures(results, settings)
    print()
    print(format_table(["figure", "ratio", "min", "max", "goal", "met"],
                       [[r["name"], r["ratio"], *r["range"], r["goal"], met_text(r)] for r in rows]))
    write_json(args.json, {"benchmark": "overhead", "settings": settings, "results": results, "figures": rows,
                           "environment": environment()})
    return 0


if __name__ == "__main__":
    run_main(main)
