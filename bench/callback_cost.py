"""Cost of the per-epoch robustness check: RobustnessCallback.on_validation_epoch_end as a share of a training epoch.

Runs `train.run(["fit", "--config", "configs/pgd_at.yaml" or "configs/erm.yaml", ...])` on real PneumoniaMNIST, so
the callback has exactly the configs' values, for 1 + `repeats` epochs. In every epoch it times the training part
(on_train_epoch_start to on_validation_epoch_start: data, steps, logging) and the callback's check; each epoch gives
one paired share = check seconds / training-epoch seconds. Epoch 1 is not in the figure: its check also builds the
corrupted validation subset once per run (reported apart as `first check`). With `batches` the epoch stops early
and its time is scaled to the whole split (seconds per image x training images). Clock: process CPU time (one
torch thread), robust to other jobs on a shared machine; wall-clock shares are reported beside it.

`--callback key=value ...` overrides callback values (e.g. the previous defaults: val_samples=512 val_steps=10).
"""
from __future__ import annotations

import tempfile
from pathlib import Path

from bench.common import (
    DEFAULT_ROOT, REPO, BenchError, Parser, clock_pair, elapsed, environment, existing_dir, figure, format_table,
    met_text, positive_int, run_main, set_threads, summary, write_json,
)

CONFIGS = {"pgd_at": "configs/pgd_at.yaml", "erm": "configs/erm.yaml"}
NAMES = {"pgd_at": "PGD-AT", "erm": "ERM"}
PREVIOUS_DEFAULTS = {"val_samples": 512, "val_steps": 10, "every_n_epochs": 1, "epsilons": ["1/255", "4/255"],
                     "corruption_epoch": True, "corruption_val_samples": 128}


def _probe(overrides: dict):
    """A callback that finds the run's RobustnessCallback, applies `overrides` and times its per-epoch check."""
    from lightning.pytorch.callbacks import Callback

    from callbacks.robustness import RobustnessCallback

    class Probe(Callback):
        def __init__(self):
            self.train, self.check, self.images, self.values, self.explanation = [], [], [], {}, []
            self._start, self._images = None, 0

        def setup(self, trainer, pl_module, stage):
            (robust,) = [c for c in trainer.callbacks if isinstance(c, RobustnessCallback)]
            robust.reconfigure(**overrides)
            flat = robust.settings.flat()
            self.values = {"epsilons": list(robust.epsilons), "val_samples": flat["val_samples"],
                           "val_steps": flat["val_steps"], "every_n_epochs": flat["every_n_epochs"],
                           "corruption_epoch": flat["corruption_epoch"],
                           "corruption_val_samples": flat["corruption_val_samples"]
                           if flat["corruption_epoch"] or flat["corruption_report"] else None}
            inner = robust.on_validation_epoch_end

            def timed(trainer, pl_module):
                start = clock_pair()
                inner(trainer, pl_module)
                if not trainer.sanity_checking:
                    self.check.append(elapsed(start))

            robust.on_validation_epoch_end = timed
            explanation = robust.explanation  # the ExplanationEvaluator
            if explanation.settings.epoch:
                explain = explanation.epoch_metrics

                def timed_explanation(run):  # the explanation part of the check, timed on its own
                    start = clock_pair()
                    values = explain(run)
                    if not trainer.sanity_checking:
                        self.explanation.append(elapsed(start))
                    return values

                explanation.epoch_metrics = timed_explanation
                self.values["explanation"] = {**{key: getattr(explanation.settings, key) for key in
                                                 ("method", "samples", "steps", "k")},
                                              "epsilons": explanation.epsilons}

        def on_train_epoch_start(self, trainer, pl_module):
            self._start, self._images = clock_pair(), 0

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self._images += len(batch[0])

        def on_validation_epoch_start(self, trainer, pl_module):
            if not trainer.sanity_checking and self._start is not None:
                self.train.append(elapsed(self._start))
                self.images.append(self._images)
                self._start = None

    return Probe()


def measure(kind: str, root: str, verify_md5: bool, epochs: int, batches: int | None, workdir: Path,
            overrides: dict | None = None, threads: int = 1) -> dict:
    """Shares of one config's per-epoch check over its training epoch, epoch by epoch."""
    import train
    from datamodules.medmnist import MedMNISTDataModule

    from bench.overhead import _quiet_lightning

    n_train = len(MedMNISTDataModule("pneumoniamnist", 28, root=root, verify_md5=verify_md5).split("train"))
    probe = _probe(overrides or {})
    args = ["fit", "--config", str(REPO / CONFIGS[kind]), "--data.root", root,
            "--data.verify_md5", str(verify_md5).lower(), "--trainer.max_epochs", str(epochs),
            "--trainer.accelerator", "cpu", "--trainer.limit_val_batches", "1", "--trainer.num_sanity_val_steps", "0",
            "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
            "--trainer.default_root_dir", str(workdir), "--test_after_fit", "false"]
    if batches:  # Lightning reads limit_train_batches 1 as 1.0 = 100 %
        args += ["--trainer.limit_train_batches", str(max(2, batches))]
    _quiet_lightning()
    before = set_threads(threads)
    try:
        train.run(args, callbacks=[probe])
    finally:
        set_threads(before)
    if len(probe.check) != epochs or len(probe.train) != epochs:
        raise BenchError(f"expected {epochs} timed epochs, got {len(probe.train)} training and "
                         f"{len(probe.check)} checks")
    out = {"config": CONFIGS[kind], "callback": probe.values, "train_images": n_train, "epochs": []}
    for train_s, check_s, images in zip(probe.train, probe.check, probe.images):
        epoch_s = {clock: train_s[clock] / images * n_train for clock in ("cpu", "wall")}
        out["epochs"].append({"train_s": train_s, "epoch_s_full_split": epoch_s, "check_s": check_s,
                              "images_timed": images,
                              "share": {clock: check_s[clock] / epoch_s[clock] for clock in ("cpu", "wall")}})
    later = out["epochs"][1:] or out["epochs"]
    out["share"] = {**summary([e["share"]["cpu"] for e in later]), "repeats": [e["share"]["cpu"] for e in later]}
    out["wall_share"] = summary([e["share"]["wall"] for e in later])
    out["first_check_s"] = out["epochs"][0]["check_s"]
    if probe.explanation:  # the per-epoch explanation check alone, as a share of the same training epoch
        for epoch, expl_s in zip(out["epochs"], probe.explanation):
            epoch["explanation_s"] = expl_s
            epoch["explanation_share"] = {c: expl_s[c] / epoch["epoch_s_full_split"][c] for c in ("cpu", "wall")}
        later = out["epochs"][1:] or out["epochs"]
        out["explanation_share"] = {**summary([e["explanation_share"]["cpu"] for e in later]),
                                    "repeats": [e["explanation_share"]["cpu"] for e in later]}
    return out


EXPLANATION_CHECK = {"explanation_epoch": True, "epsilons": [], "corruption_epoch": False}


def explanation_figures(root: str, verify_md5: bool, quick: bool, workdir: Path, smoke: bool = False,
                        log=print) -> list[dict]:
    """The per-epoch explanation check at the callback's defaults (explanation_epoch on; the PGD and corruption
    parts off, so the check is the explanation part alone) as a share of a PGD-AT epoch (goal <= 10%)."""
    p = plan(quick, smoke)
    result = measure("pgd_at", root, verify_md5, p["epochs"], p["batches"]["pgd_at"], workdir / "callback_explanation",
                     EXPLANATION_CHECK)
    for i, e in enumerate(result["epochs"]):
        log(f"[callback explanation] epoch {i + 1}: PGD-AT training {e['epoch_s_full_split']['cpu']:.1f} CPU s (whole "
            f"split), explanation check {e['explanation_s']['cpu']:.2f} CPU s, "
            f"share {e['explanation_share']['cpu']:.1%}")
    values = result["callback"]["explanation"]
    scope = (f"epoch time scaled from the first {p['batches']['pgd_at']} batches" if p["batches"]["pgd_at"]
             else "whole epochs")
    return [figure("callback cost: explanation check / PGD-AT epoch (defaults)", result["explanation_share"]["repeats"],
                   0.10, higher_is_better=False, details={
                       "callback": f"{values['method']} maps of {values['samples']} val images, top-k attack "
                                   f"{values['steps']} steps at {values['epsilons']}, k {values['k']}, random noise, "
                                   "max-sensitivity (8 draws)",
                       "config": result["config"], "clock": "process CPU time",
                       "scope": f"real PneumoniaMNIST ({result['train_images']} train images), {scope}"})]


def _describe(values: dict) -> str:
    from attacks.threat_model import format_epsilon

    eps = ", ".join(format_epsilon(e) for e in values["epsilons"])
    corr = (f"corruptions on {values['corruption_val_samples']} images" if values["corruption_epoch"]
            else "no corruptions")
    return (f"{values['val_samples']} val images, PGD-{values['val_steps']} at {eps}, every {values['every_n_epochs']} "
            f"epoch(s), {corr}")


def figure_rows(results: dict, batches: dict) -> list[dict]:
    """The callback figures: share of a PGD-AT epoch (goal <= 10 %) and of an ERM epoch (reported, goal the same)."""
    rows = []
    for (kind, label), result in results.items():
        every = result["callback"]["every_n_epochs"] or 1
        shares = [s / every for s in result["share"]["repeats"]]  # amortised over the epochs between checks
        scope = (f"epoch time scaled from the first {batches[kind]} batches" if batches.get(kind)
                 else "whole epochs")
        # the goal is about PGD-AT at the configs' values; the other rows are reported beside it
        goal = 0.10 if (kind, label) == ("pgd_at", "configs' values") else None
        rows.append(figure(f"callback cost: check / {NAMES[kind]} epoch ({label})", shares, goal,
                           higher_is_better=False, details={
                               "callback": _describe(result["callback"]), "config": result["config"],
                               "check_cpu_s": summary([e["check_s"]["cpu"] for e in result["epochs"][1:]]
                                                      or [result["epochs"][0]["check_s"]["cpu"]])["median"],
                               "epoch_cpu_s": summary([e["epoch_s_full_split"]["cpu"]
                                                       for e in result["epochs"]])["median"],
                               "first_check_cpu_s": result["first_check_s"]["cpu"],
                               "wall_share": result["wall_share"]["median"] / every,
                               "clock": "process CPU time; share per epoch, amortised over every_n_epochs",
                               "scope": f"real PneumoniaMNIST ({result['train_images']} train images), {scope}"}))
    return rows


def plan(quick: bool, smoke: bool = False) -> dict:
    if smoke:
        return {"epochs": 2, "batches": {"pgd_at": 2, "erm": 2}, "previous": False}
    if quick:
        return {"epochs": 3, "batches": {"pgd_at": 3, "erm": 12}, "previous": True}
    return {"epochs": 4, "batches": {"pgd_at": None, "erm": None}, "previous": True}


def run_figures(root: str, verify_md5: bool, quick: bool, workdir: Path, smoke: bool = False, log=print) -> list[dict]:
    """Callback share of a PGD-AT and an ERM epoch at the configs' values (and, except --smoke, the previous
    defaults once, for comparison)."""
    p = plan(quick, smoke)
    results = {}
    runs = [("pgd_at", "configs' values", None), ("erm", "configs' values", None)]
    if p["previous"]:
        runs.append(("pgd_at", "previous defaults", PREVIOUS_DEFAULTS))
    for kind, label, overrides in runs:
        epochs = p["epochs"] if overrides is None else 2
        log(f"[callback {NAMES[kind]}, {label}] {epochs} epochs ...")
        result = measure(kind, root, verify_md5, epochs, p["batches"][kind],
                         workdir / f"callback_{kind}_{len(results)}", overrides)
        results[kind, label] = result
        for i, e in enumerate(result["epochs"]):
            log(f"[callback {NAMES[kind]}, {label}] epoch {i + 1}: training {e['epoch_s_full_split']['cpu']:.1f} CPU s "
                f"(whole split), check {e['check_s']['cpu']:.1f} CPU s, share {e['share']['cpu']:.1%}")
    return figure_rows(results, p["batches"])


def _value(text: str):
    import yaml

    return yaml.safe_load(text)


def parse_args(argv=None):
    parser = Parser(description=__doc__.split("\n\n")[0],
                    epilog="Example: python bench/callback_cost.py --kinds pgd_at erm --epochs 4 "
                           "--json runs/bench/callback.json")
    parser.add_argument("--root", type=existing_dir, default=DEFAULT_ROOT,
                        help="folder with pneumoniamnist.npz (default: %(default)s)")
    parser.add_argument("--kinds", nargs="+", choices=sorted(CONFIGS), default=["pgd_at", "erm"])
    parser.add_argument("--epochs", type=positive_int, default=4,
                        help="epochs per run; the first is reported apart (default: %(default)s)")
    parser.add_argument("--batches", type=positive_int, default=None,
                        help="training batches per epoch, time scaled to the split (default: all)")
    parser.add_argument("--callback", nargs="+", default=[], metavar="KEY=VALUE", help="override callback values")
    parser.add_argument("--no-verify-md5", dest="verify_md5", action="store_false")
    parser.add_argument("--json", metavar="OUT", help="also write the results here (atomic write)")
    args = parser.parse_args(argv)
    overrides = {}
    for item in args.callback:
        key, sep, value = item.partition("=")
        if not sep or key not in PREVIOUS_DEFAULTS:
            parser.error(f"--callback takes KEY=VALUE with KEY in {', '.join(PREVIOUS_DEFAULTS)}, got {item!r}")
        overrides[key] = _value(value)
    args.callback = overrides
    if not (Path(args.root) / "pneumoniamnist.npz").is_file():
        raise BenchError(f"{Path(args.root) / 'pneumoniamnist.npz'} not found (pass --root)")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench-callback-") as tmp:
        for kind in args.kinds:
            results[kind, "configs' values" if not args.callback else "overridden"] = measure(
                kind, args.root, args.verify_md5, args.epochs, args.batches, Path(tmp) / kind, args.callback)
    rows = figure_rows(results, {k: args.batches for k in args.kinds})
    print(format_table(["figure", "share", "min", "max", "goal", "met", "check CPU s", "epoch CPU s",
                        "first check CPU s"],
                       [[r["name"], r["ratio"], *r["range"], r["goal"], met_text(r),
                         r["details"]["check_cpu_s"], r["details"]["epoch_cpu_s"], r["details"]["first_check_cpu_s"]]
                        for r in rows]))
    write_json(args.json, {"benchmark": "callback_cost",
                           "results": {f"{kind}/{label}": v for (kind, label), v in results.items()},
                           "figures": rows, "environment": environment()})
    return 0


if __name__ == "__main__":
    run_main(main)
