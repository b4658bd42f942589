"""The benchmark protocol's cost: one `benchmark evaluate` of a checkpoint against the sum of its parts run separately.

`python -m bench.protocol_cost [--repeats N] [--out FILE]` evaluates a small ERM checkpoint (fitted on synthetic
BreastMNIST for one epoch) under the breastmnist_28 protocol with quick settings (benchmark.protocol.quick_overrides),
and times each part alone on the same checkpoint and test images: clean scoring, PGD (every threat model and epsilon),
AutoAttack, the MedMNIST-C table, the confidence measures (a pass with the calibration meter over every set the
protocol scores: clean, PGD's and AutoAttack's adversarial images, the corrupted sets) and the gradient-masking screen
(PGD at the large epsilon). The figure is protocol / sum of parts, process CPU seconds with 1 torch thread, paired and
interleaved repeats (goal <= 1.0x: the protocol shares its clean and attack passes). Images through the model are
counted beside it. The MedMNIST-C cache is built before the first timed round.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

from bench.common import (
    Parser, clock_pair, elapsed, environment, figure, format_table, interleaved_order, positive_int, run_main,
    summary, write_json,
)

NAME = "benchmark protocol: one evaluation / its parts run separately (CPU s)"
PARTS = ("clean", "pgd", "autoattack", "medmnist_c", "confidence", "screen")
N_TEST = 32


def parse_args(argv=None):
    parser = Parser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=positive_int, default=3, help="paired rounds (default: %(default)s)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first (default: %(default)s)")
    parser.add_argument("--out", help="write the result as JSON here")
    return parser.parse_args(argv)


class _Keeping:
    """A PGD attack that keeps the adversarial images it hands back (the confidence part scores them again)."""

    def __init__(self, attack):
        self.attack, self.model, self.kept = attack, attack.model, []

    def scored(self, x, y):
        x_adv, logits = self.attack.scored(x, y)
        self.kept.append(x_adv.detach())
        return x_adv, logits

    def __call__(self, x, y):
        return self.scored(x, y)[0]


def fitted_checkpoint(folder: Path) -> tuple[Path, Path]:
    """(data folder, checkpoint): an ERM small CNN fitted for one epoch on synthetic BreastMNIST."""
    import lightning as L

    from datamodules.medmnist import MedMNISTDataModule
    from datamodules.synthetic import write_synthetic_npz
    from lightning_modules.erm import ERM

    write_synthetic_npz(folder / "data", "breastmnist", 28, n_train=128, n_val=32, n_test=N_TEST)
    L.seed_everything(0, verbose=False)
    dm = MedMNISTDataModule("breastmnist", root=str(folder / "data"), verify_md5=False, batch_size=32, augment=False)
    trainer = L.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, inference_mode=False, accelerator="cpu",
                        default_root_dir=str(folder))
    trainer.fit(ERM(lr=3e-3), datamodule=dm)
    trainer.save_checkpoint(folder / "erm.ckpt")
    return folder / "data", folder / "erm.ckpt"


def parts(protocol, checkpoint: Path, root: Path, cache: str) -> dict:
    """{part: callable}: each part of the protocol alone, on the checkpoint's model and the protocol's test images."""
    import torch

    from attacks.autoattack import run_autoattack
    from attacks.gradient import PGD
    from attacks.threat_model import parse_epsilon
    from benchmark.evaluate import check_dataset
    from datamodules.medmnist import MedMNISTDataModule
    from datamodules.tensors import to_unit_range
    from evaluation.checkpoints import load_module, read_checkpoint
    from evaluation.corruption import CorruptionEvaluation
    from evaluation.evaluators import Scorer

    s = protocol.settings
    check_dataset(read_checkpoint(checkpoint), protocol, checkpoint)
    model = load_module(checkpoint)
    dm = MedMNISTDataModule(protocol.flag, protocol.size, root=str(root), verify_md5=False, augment=False,
                            subsample_test=s["examples"], subsample_seed=s["seed"])
    split = dm.split("test")
    images, targets = split.images, split.targets
    scorer, meter = Scorer(s["batch_size"]), Scorer(s["batch_size"], s["confidence"]["bins"])
    corruption = CorruptionEvaluation(s["corruption"]["corruptions"], cache=cache, seed=s["seed"])
    budgets = [(norm, eps) for norm in protocol.norms for eps in protocol.epsilons(norm)]
    adversarial: dict[str, list] = {"pgd": [], "autoattack": []}

    def pgd():
        adversarial["pgd"] = []
        for norm, eps in budgets:
            attack = _Keeping(PGD(model, eps, steps=s["pgd"]["steps"], restarts=s["pgd"]["restarts"], norm=norm,
                                  seed=s["seed"]))
            scorer.score(model, images, targets, attack)
            adversarial["pgd"].append(torch.cat(attack.kept))

    def autoattack():
        adversarial["autoattack"] = []
        x = to_unit_range(images)
        for norm, eps in budgets:
            x_adv, _ = run_autoattack(model, x, targets, eps, norm=norm, version=s["autoattack"]["version"],
                                      attacks=s["autoattack"]["attacks"], num_classes=dm.num_classes, seed=s["seed"],
                                      batch_size=s["batch_size"], n_queries_square=s["autoattack"]["square_queries"])
            scorer.score(model, x_adv, targets)
            adversarial["autoattack"].append(x_adv)

    def confidence():
        for x in [images, *adversarial["pgd"], *adversarial["autoattack"]]:
            meter.score(model, x, targets, confidence=True)
        corruption.test_table(model, dm, s["confidence"]["bins"])

    def screen():
        eps = parse_epsilon(s["screen"]["large_epsilon"], "linf")
        attack = PGD(model, eps, steps=s["screen"]["large_steps"], restarts=1, norm="linf", seed=s["seed"])
        scorer.score(model, images, targets, attack)

    return {"model": model, "clean": lambda: scorer.score(model, images, targets), "pgd": pgd,
            "autoattack": autoattack, "medmnist_c": lambda: corruption.test_table(model, dm, None),
            "confidence": confidence, "screen": screen}


def measure(args) -> dict:
    import torch

    from bench.confidence_cost import counted_forward
    from benchmark.evaluate import evaluate_checkpoint
    from benchmark.protocol import load_protocol, quick_overrides

    torch.set_num_threads(1)
    folder = Path(tempfile.mkdtemp(prefix="protocol-cost-"))
    root, checkpoint = fitted_checkpoint(folder)
    cache = str(folder / "medmnist-c")
    protocol = load_protocol("breastmnist_28")
    protocol = protocol.with_overrides(quick_overrides(protocol.flag))
    separate = parts(protocol, checkpoint, root, cache)
    model = separate.pop("model")
    rounds = []
    for r in range(args.warmup + args.repeats):
        timed = {}
        for variant in interleaved_order(r, ("protocol", "parts")):
            if variant == "protocol":
                start = clock_pair()
                _, timing = evaluate_checkpoint(checkpoint, protocol, root=str(root), cache=cache, name="cost")
                timed["protocol"] = {**elapsed(start), "images": timing["forward_passes"]}
            else:
                by_part = {}
                with counted_forward(model) as seen:
                    for part in PARTS:
                        start = clock_pair()
                        separate[part]()
                        by_part[part] = elapsed(start)
                timed["parts"] = {"cpu": sum(p["cpu"] for p in by_part.values()),
                                  "wall": sum(p["wall"] for p in by_part.values()), "images": sum(seen),
                                  "by_part": by_part}
        if r >= args.warmup:
            rounds.append(timed)
    ratios = [t["protocol"]["cpu"] / t["parts"]["cpu"] for t in rounds]
    settings = (f"synthetic BreastMNIST ({N_TEST} test images), ERM small_cnn fitted 1 epoch, protocol breastmnist_28 "
                f"with --quick ({', '.join(protocol.overrides)}), 1 torch thread, process CPU s")
    row = figure(NAME, ratios, 1.0, higher_is_better=False, details={
        "settings": settings, "protocol_version": protocol.version,
        "images": {"protocol": rounds[0]["protocol"]["images"], "parts": rounds[0]["parts"]["images"]},
        "cpu_s": {"protocol": summary([t["protocol"]["cpu"] for t in rounds]),
                  "parts": summary([t["parts"]["cpu"] for t in rounds])},
        "parts_cpu_s_median": {part: summary([t["parts"]["by_part"][part]["cpu"] for t in rounds])["median"]
                               for part in PARTS}})
    return {"figure": row, "rounds": rounds, "environment": environment()}


def run_figures(quick: bool, smoke: bool, log=print) -> list[dict]:
    """The row of `python -m bench all` (one paired round in --smoke, three otherwise)."""
    result = measure(parse_args(["--repeats", "1" if smoke else "3", "--warmup", "1"]))
    row = result["figure"]
    log(f"[protocol] protocol {row['details']['cpu_s']['protocol']['median']:.1f} CPU s, parts "
        f"{row['details']['cpu_s']['parts']['median']:.1f} CPU s, images {row['details']['images']}")
    return [row]


def main(argv=None) -> int:
    args = parse_args(argv)
    result = measure(args)
    row = result["figure"]
    details = row["details"]
    print(format_table(["part", "CPU s (median)"], [[p, round(v, 2)] for p, v in details["parts_cpu_s_median"].items()]
                       + [["sum of parts", round(details["cpu_s"]["parts"]["median"], 2)],
                          ["protocol", round(details["cpu_s"]["protocol"]["median"], 2)]]))
    print(f"protocol / parts: {row['ratio']:.3f} (goal {row['goal']}; met: {row['met']}); images through the model "
          f"{details['images']}")
    write_json(args.out, result)
    return 0 if row["met"] else 1


if __name__ == "__main__":
    run_main(main)
