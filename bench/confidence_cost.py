"""The confidence and calibration measures add no attack work: forward passes counted with them on and off.

`python -m bench.confidence_cost [--root DIR] [--out FILE]` runs the RobustnessCallback's per-epoch check (clean,
PGD, corrupted validation subset) and its test report (clean, PGD with restarts, optionally AutoAttack and the
MedMNIST-C table) on real PneumoniaMNIST with `confidence=True` and `confidence=False`, and counts the forward
calls and the images that pass through the model (a forward hook: clean scoring, every attack step, the test
loop). The figure is images(on) / images(off), goal <= 1 (it is exactly 1 when the measures reuse the scored
probabilities). Process CPU seconds of both are reported beside it, not judged: the measures' own arithmetic.
A small CNN with random weights is enough: the count does not depend on what the model learnt.
"""
from __future__ import annotations

import contextlib
import tempfile

from bench.common import (
    DEFAULT_ROOT, Parser, clock_pair, elapsed, environment, existing_dir, figure, format_table, positive_int, run_main,
    write_json,
)


def parse_args(argv=None):
    parser = Parser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=existing_dir, default=DEFAULT_ROOT, help="folder with pneumoniamnist.npz")
    parser.add_argument("--flag", default="pneumoniamnist")
    parser.add_argument("--no-verify-md5", dest="verify_md5", action="store_false")
    parser.add_argument("--test-samples", type=positive_int, default=256, help="test images (subsample_test)")
    parser.add_argument("--repeats", type=positive_int, default=1, help="runs per setting (interleaved)")
    parser.add_argument("--autoattack", action="store_true", help="include AutoAttack (apgd-ce) in the test report")
    parser.add_argument("--corruption-report", action="store_true", help="include the MedMNIST-C test table")
    parser.add_argument("--out", help="write the result as JSON here")
    return parser.parse_args(argv)


@contextlib.contextmanager
def counted_forward(model):
    """A list that collects the batch size of every forward call of `model` (clean scoring, attack steps, test loop)."""
    seen = []
    handle = model.register_forward_hook(lambda module, args, output: seen.append(args[0].shape[0]))
    try:
        yield seen
    finally:
        handle.remove()


def measure(args) -> dict:
    import lightning as L
    import torch

    from callbacks.robustness import RobustnessCallback
    from datamodules.medmnist import MedMNISTDataModule
    from lightning_modules.erm import ERM

    torch.set_num_threads(1)
    L.seed_everything(0, verbose=False)
    dm = MedMNISTDataModule(args.flag, root=args.root, verify_md5=args.verify_md5, batch_size=128, augment=False,
                            subsample_test=args.test_samples, subsample_val=args.test_samples)
    model = ERM(lr=1e-3)
    cache = tempfile.mkdtemp(prefix="confidence-cost-")
    settings = dict(epsilons=["4/255"], val_samples=192, val_steps=5, test_steps=10, test_restarts=2,
                    autoattack=args.autoattack, autoattack_attacks=["apgd-ce"], autoattack_samples=32,
                    corruptions=["brightness_down", "gaussian_noise"], corruption_severities=[1, 3],
                    corruption_val_samples=64, corruption_report=args.corruption_report, corruption_cache=cache)
    runs = {True: [], False: []}
    for _ in range(args.repeats):
        for confidence in (True, False):
            callback = RobustnessCallback(**settings, confidence=confidence)
            trainer_args = dict(logger=False, enable_progress_bar=False, enable_model_summary=False, accelerator="cpu",
                                callbacks=[callback], default_root_dir=tempfile.mkdtemp(prefix="confidence-cost-"))
            start = clock_pair()
            with counted_forward(model) as seen:
                L.Trainer(**trainer_args).validate(model, datamodule=dm, verbose=False)
                L.Trainer(**trainer_args).test(model, datamodule=dm, verbose=False)
            runs[confidence].append({"calls": len(seen), "images": sum(seen), **elapsed(start)})
    ratios = [on["images"] / off["images"] for on, off in zip(runs[True], runs[False])]
    calls_equal = all(on["calls"] == off["calls"] for on, off in zip(runs[True], runs[False]))
    row = figure("confidence metrics: images through the model, on / off", ratios, 1.0, higher_is_better=False,
                 details={"runs": {"on": runs[True], "off": runs[False]},
                          "settings": {k: v for k, v in settings.items() if k != "corruption_cache"},
                          "data": f"{args.flag}, {args.test_samples} test images"},
                 requires={"same number of forward calls": calls_equal})
    return {"figure": row, "environment": environment()}


def main(argv=None) -> int:
    args = parse_args(argv)
    result = measure(args)
    row = result["figure"]
    runs = row["details"]["runs"]
    print(format_table(["confidence", "forward calls", "images", "CPU s", "wall s"],
                       [[name, r["calls"], r["images"], round(r["cpu"], 2), round(r["wall"], 2)]
                        for name in ("on", "off") for r in runs[name]]))
    print(f"images on / off: {row['ratio']:.4f} (goal {row['goal']}; met: {row['met']})")
    write_json(args.out, result)
    return 0 if row["met"] else 1


if __name__ == "__main__":
    run_main(main)
