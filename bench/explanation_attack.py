"""Cost per image of the attacks on explanations against PGD at the same number of steps.

All three run on `build_model('small_cnn', 1, 2)` and the first `--batch-size` PneumoniaMNIST test images, L-inf,
`--steps` steps, one torch thread: medrobust's PGD (random start, best iterate), TopKAttack (Ghorbani et al.'s
top-k region attack) and TargetedManipulation (Dombrowski et al., towards the map of the next image). An
explanation attack step differentiates the gradient map (a double backward through the softplus network) and
scores the iterate on the model as given (a forward and a backward), where a PGD step is one forward and one
backward, so a ratio of a few is expected. The figure is the CPU-time ratio explanation attack / PGD, the median
of paired, interleaved repeats. Weights do not change the cost; `--train-epochs` makes the model a realistic one.
"""
from __future__ import annotations

from pathlib import Path

from bench.common import (
    DEFAULT_ROOT, BenchError, Parser, clock_pair, elapsed, environment, existing_dir, figure, format_table,
    paired_rounds, positive_int, run_main, summary, write_json,
)

VARIANTS = ("pgd", "topk", "targeted")
EXPLANATION_ATTACKS = VARIANTS[1:]
LABELS = {"pgd": "PGD (medrobust)", "topk": "TopKAttack (Ghorbani)", "targeted": "TargetedManipulation (Dombrowski)"}


def parse_args(argv=None):
    parser = Parser(description=__doc__.split("\n\n")[0],
                    epilog="Example: python bench/explanation_attack.py --repeats 5 --json runs/bench/expl_attack.json")
    parser.add_argument("--root", type=existing_dir, default=DEFAULT_ROOT,
                        help="folder with pneumoniamnist.npz (default: %(default)s)")
    parser.add_argument("--batch-size", type=positive_int, default=64,
                        help="test images attacked at once (default: %(default)s)")
    parser.add_argument("--eps", default="4/255", help="L-inf budget (default: %(default)s)")
    parser.add_argument("--steps", type=positive_int, default=10, help="steps of every attack (default: %(default)s)")
    parser.add_argument("--repeats", type=positive_int, default=5,
                        help="timed rounds; the median is reported (default: %(default)s)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first (default: %(default)s)")
    parser.add_argument("--train-epochs", type=int, default=0, help="ERM epochs before timing (default: %(default)s)")
    parser.add_argument("--no-verify-md5", dest="verify_md5", action="store_false",
                        help="skip the MD5 check (custom or synthetic files)")
    parser.add_argument("--seed", type=int, default=0, help="seed for the model and PGD's start (default: %(default)s)")
    parser.add_argument("--json", metavar="OUT", help="also write the results here (atomic write)")
    args = parser.parse_args(argv)
    if args.warmup < 0 or args.train_epochs < 0:
        parser.error("--warmup and --train-epochs must be >= 0")
    from attacks.threat_model import parse_epsilon

    args.eps = parse_epsilon(args.eps)  # a bad budget is a ConfigError: one line, exit 2
    if not (Path(args.root) / "pneumoniamnist.npz").is_file():
        raise BenchError(f"{Path(args.root) / 'pneumoniamnist.npz'} not found (pass --root)")
    return args


def make_attack(variant: str, model, eps: float, steps: int, seed: int):
    from attacks.explanation import TargetedManipulation, TopKAttack
    from attacks.gradient import PGD

    if variant == "pgd":
        return PGD(model, eps, steps=steps, seed=seed)
    if variant == "topk":
        return TopKAttack(model, eps, steps=steps)
    return TargetedManipulation(model, eps, steps=steps)


def run_attack(variant: str, attack, model, x, y, target_maps):
    if variant == "pgd":
        return attack(x, y)
    if variant == "topk":
        return attack.run(x)
    return attack.run(x, target_maps)


def measure(model, x, y, args) -> dict:
    """Warm-up, then `repeats` rounds timing every attack on the batch, in alternating order (1 torch thread)."""
    from attacks.explanation import input_gradient_map

    classes = model(x).argmax(1).detach()
    target_maps = input_gradient_map(model, x.roll(1, 0), classes.roll(1, 0))
    cpu = {v: [] for v in VARIANTS}
    wall = {v: [] for v in VARIANTS}
    for tag, timed_run, _, variant in paired_rounds(args.warmup, args.repeats, [1], VARIANTS):
        attack = make_attack(variant, model, args.eps, args.steps, args.seed)
        start = clock_pair()
        run_attack(variant, attack, model, x, y, target_maps)
        spent = elapsed(start)
        if timed_run:
            cpu[variant].append(spent["cpu"])
            wall[variant].append(spent["wall"])
        print(f"[{tag}] {variant:<9} {spent['wall']:.3f} s ({spent['cpu']:.3f} CPU s)", flush=True)
    result = {"images": len(x), "steps": args.steps, "epsilon": args.eps,
              "cpu_seconds_per_image": {v: {**summary([s / len(x) for s in cpu[v]]), "repeats": cpu[v]}
                                        for v in VARIANTS},
              "wall_seconds": {v: {**summary(wall[v]), "repeats": wall[v]} for v in VARIANTS}}
    for variant in EXPLANATION_ATTACKS:
        ratios = [a / b for a, b in zip(cpu[variant], cpu["pgd"])]
        result[f"{variant}_over_pgd"] = {**summary(ratios), "repeats": ratios}
    return result


def prepare(args):
    """(model, images, labels): small_cnn (optionally ERM-trained) and the first test images, 1 torch thread."""
    import torch

    from bench.attack_speed import load_data, train
    from lightning_modules.models import build_model

    torch.manual_seed(args.seed)
    train_split, x, y = load_data(args)
    model = build_model("small_cnn", 1, 2)
    train(model, train_split, args.train_epochs, args.seed)
    return model.eval(), x, y


def run_figures(root: str, verify_md5: bool, quick: bool, smoke: bool = False, log=print) -> list[dict]:
    """The figures of `python -m bench all`: CPU seconds per image of each explanation attack / PGD's, same steps.
    There is no goal in the issue: the rows are informational (goal shown as <= 10x, a guide, not a target)."""
    import contextlib
    import io

    from bench.common import set_threads

    if smoke:
        options = ["--batch-size", "8", "--steps", "2", "--repeats", "1", "--warmup", "0"]
    elif quick:
        options = ["--batch-size", "32", "--repeats", "3", "--warmup", "1"]
    else:
        options = ["--batch-size", "64", "--repeats", "5", "--warmup", "1"]
    args = parse_args(["--root", root, *options] + ([] if verify_md5 else ["--no-verify-md5"]))
    before = set_threads(1)
    try:
        model, x, y = prepare(args)
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            result = measure(model, x, y, args)
    finally:
        set_threads(before)
    for line in printed.getvalue().splitlines():
        log(f"[explanation attack] {line}")
    return [figure(f"explanation attack: {LABELS[v]} / PGD, {args.steps} steps each (CPU seconds per image)",
                   result[f"{v}_over_pgd"]["repeats"], 10.0, higher_is_better=False,
                   details={"cpu_seconds_per_image": {k: result["cpu_seconds_per_image"][k]["median"]
                                                      for k in VARIANTS},
                            "settings": f"small_cnn, {len(x)} PneumoniaMNIST test images, L-inf "
                                        f"{args.eps:.4g}, 1 torch thread"})
            for v in EXPLANATION_ATTACKS]


def main(argv=None) -> int:
    args = parse_args(argv)
    from bench.common import set_threads

    before = set_threads(1)
    try:
        model, x, y = prepare(args)
        print(f"{args.steps} steps of each attack on {len(x)} PneumoniaMNIST test images, small_cnn, 1 torch thread; "
              f"{args.warmup} warm-up + {args.repeats} timed rounds, interleaved", flush=True)
        result = measure(model, x, y, args)
    finally:
        set_threads(before)
    per_image = result["cpu_seconds_per_image"]
    print()
    print(format_table(["attack", "CPU ms / image (median)", "min", "max"],
                       [[LABELS[v], 1000 * per_image[v]["median"], 1000 * per_image[v]["min"],
                         1000 * per_image[v]["max"]] for v in VARIANTS]))
    print()
    for variant in EXPLANATION_ATTACKS:
        ratio = result[f"{variant}_over_pgd"]
        print(f"{LABELS[variant]} / PGD at {args.steps} steps, CPU time per image, median of {args.repeats} paired "
              f"rounds: {ratio['median']:.2f}x (range {ratio['min']:.2f}-{ratio['max']:.2f})")
    write_json(args.json, {"environment": environment(), "settings": {k: v for k, v in vars(args).items()},
                           **result})
    return 0


if __name__ == "__main__":
    run_main(main)
