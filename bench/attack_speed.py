"""Time of medrobust's PGD vs torchattacks' PGD on the same model and batch, and their robust accuracy.

Both are L-inf PGD with `steps` steps of size 2.5 * eps / steps from a uniform random start, run on
`build_model('small_cnn', 1, 2)` (briefly trained on PneumoniaMNIST so robust accuracy means
something) and the first `--batch-size` real PneumoniaMNIST test images. The timed task is what a robustness
evaluation does with a batch: attack it and score the adversarial images. medrobust's PGD keeps, per example,
the strongest iterate over all steps (a success beats a failure, then the higher loss), which takes one forward
pass on the last iterate, and hands the logits of what it returns to the evaluator
(`evaluation.scoring.predict`), which therefore skips its own forward; torchattacks returns the last iterate,
which is then scored by one forward pass. The per-epoch check runs medrobust's PGD with early_stop=True (no more
steps for an example once it is misclassified, as AutoAttack does: same robust accuracy, less work); it is timed
as a third variant. The attack alone (without the scoring) is timed too.
"""
from __future__ import annotations

from pathlib import Path



from bench.common import (
    DEFAULT_ROOT, BenchError, Parser, clock_pair, elapsed, environment, figure, existing_dir, format_table,
    paired_rounds, positive_int, run_main, summary, write_json,
)

VARIANTS = ("medrobust", "medrobust_early_stop", "torchattacks")
OURS = VARIANTS[:2]
LABELS = {
    "medrobust": "medrobust PGD (best iterate per example)",
    "medrobust_early_stop": "medrobust PGD, early_stop=True (per-epoch check)",
    "torchattacks": "torchattacks.PGD (last iterate)",
}


def parse_args(argv=None):
    parser = Parser(description=__doc__.split("\n\n")[0],
                    epilog="Example: python bench/attack_speed.py --repeats 5 --json runs/bench/attacks.json")
    parser.add_argument("--root", type=existing_dir, default=DEFAULT_ROOT,
                        help="folder with pneumoniamnist.npz (default: %(default)s)")
    parser.add_argument("--batch-size", type=positive_int, default=256,
                        help="test images attacked at once (default: %(default)s)")
    parser.add_argument("--eps", default="8/255", help="L-inf budget for the timing (default: %(default)s)")
    parser.add_argument("--steps", type=positive_int, default=10, help="PGD steps (default: %(default)s)")
    parser.add_argument("--repeats", type=positive_int, default=5,
                        help="timed attacks per variant; the median is reported (default: %(default)s)")
    parser.add_argument("--warmup", type=int, default=1,
                        help="untimed attacks per variant first (default: %(default)s)")
    parser.add_argument("--train-epochs", type=int, default=2,
                        help="ERM epochs on the train split before attacking; 0 keeps random weights "
                             "(default: %(default)s)")
    parser.add_argument("--strength-eps", nargs="+", default=["1/255", "2/255", "8/255"],
                        help="budgets at which both attacks' robust accuracy is compared (default: %(default)s)")
    parser.add_argument("--threads", type=positive_int, nargs="+", default=None,
                        help="torch.set_num_threads setting(s) to time, each in every repeat "
                             "(default: torch's current)")
    parser.add_argument("--no-verify-md5", dest="verify_md5", action="store_false",
                        help="skip the MD5 check (custom or synthetic files)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed for the model, training and the strength runs (default: %(default)s)")
    parser.add_argument("--json", metavar="OUT", help="also write the results here (atomic write)")
    args = parser.parse_args(argv)
    if args.warmup < 0 or args.train_epochs < 0:
        parser.error("--warmup and --train-epochs must be >= 0")
    from attacks.threat_model import parse_epsilon

    args.eps = parse_epsilon(args.eps)  # a bad budget is a ConfigError: one line, exit 2
    args.strength_eps = [parse_epsilon(e) for e in args.strength_eps]
    if args.threads is None:
        import torch

        args.threads = [torch.get_num_threads()]
    if not (Path(args.root) / "pneumoniamnist.npz").is_file():
        raise BenchError(f"{Path(args.root) / 'pneumoniamnist.npz'} not found (pass --root)")
    return args


def load_data(args):
    """(train split, test images as [0, 1] floats, test labels) of PneumoniaMNIST."""
    from datamodules.medmnist import MedMNISTDataModule

    dm = MedMNISTDataModule("pneumoniamnist", 28, root=args.root, verify_md5=args.verify_md5)
    test = dm.split("test")
    if args.batch_size > len(test):
        raise BenchError(f"--batch-size {args.batch_size} exceeds the {len(test)} test images")
    return dm.split("train"), test.images[: args.batch_size].float() / 255, test.targets[: args.batch_size]


def train(model, split, epochs: int, seed: int) -> None:
    """A few Adam epochs of plain ERM, so the model is not a constant predictor."""
    import torch
    import torch.nn.functional as F
    from tqdm.auto import tqdm

    if epochs == 0:
        return
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    for epoch in range(epochs):
        order = torch.randperm(len(split), generator=generator)
        for start in tqdm(range(0, len(order), 128), desc=f"ERM epoch {epoch + 1}/{epochs}", leave=False):
            index = order[start : start + 128]
            loss = F.cross_entropy(model(split.images[index].float() / 255), split.targets[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()


def make_attack(variant: str, model, eps: float, steps: int, seed=None):
    """The attacks under comparison with the same budget, step size, steps and random start."""
    if variant in OURS:
        from attacks.gradient import PGD

        return PGD(model, eps, steps=steps, seed=seed, early_stop=variant == "medrobust_early_stop")
    import torchattacks

    return torchattacks.PGD(model, eps=eps, alpha=2.5 * eps / steps, steps=steps, random_start=True)


def accuracy(model, x, y) -> float:
    import torch

    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


def strength(model, x, y, args) -> list[dict]:
    """Robust accuracy of each attack (seeded) at each budget, and the largest perturbation each made."""
    import torch

    rows = []
    for eps in args.strength_eps:
        row = {"epsilon": eps}
        for variant in VARIANTS:
            torch.manual_seed(args.seed)  # torchattacks draws its start from the global RNG
            x_adv = make_attack(variant, model, eps, args.steps, seed=args.seed)(x, y)
            row[variant] = {"robust_acc": accuracy(model, x_adv, y), "max_linf": (x_adv - x).abs().max().item()}
        rows.append(row)
    return rows


TASKS = ("evaluate", "attack")


def robust_logits(variant: str, attack, model, x, y):
    """One batch of a robustness evaluation: the attack, then the logits of the adversarial images, as
    `evaluation.scoring.predict` gets them (medrobust's PGD returns them; torchattacks' images need a forward)."""
    import torch

    if variant in OURS:
        from evaluation.scoring import attacked

        x_adv, logits = attacked(attack, model, x, y)
    else:
        x_adv, logits = attack(x, y), None
    if logits is None:
        with torch.no_grad():
            logits = model(x_adv)
    return logits


def measure(model, x, y, args) -> dict:
    """Warm-up, then `repeats` rounds; each round times both attacks at every thread setting, alternating order,
    first as an evaluation (attack + scores), then the attack alone."""
    keys = [(t, task, v) for t in args.threads for task in TASKS for v in VARIANTS]
    seconds = {k: [] for k in keys}
    cpu = {k: [] for k in keys}
    for tag, timed_run, threads, variant in paired_rounds(args.warmup, args.repeats, args.threads, VARIANTS):
        for task in TASKS:
            attack = make_attack(variant, model, args.eps, args.steps)
            start = clock_pair()
            if task == "evaluate":
                robust_logits(variant, attack, model, x, y)
            else:
                attack(x, y)
            spent = elapsed(start)
            if timed_run:
                seconds[threads, task, variant].append(spent["wall"])
                cpu[threads, task, variant].append(spent["cpu"])
            print(f"[{tag}] threads={threads} {task:<8} {variant:<12} {spent['wall']:.3f} s ({spent['cpu']:.3f} CPU s)",
                  flush=True)

    def ratios(times, threads, task, ours):
        return [a / b for a, b in zip(times[threads, task, ours], times[threads, task, "torchattacks"])]

    runs = []
    for threads in args.threads:
        run = {"torch_threads": threads}
        for task in TASKS:
            prefix = "" if task == "evaluate" else "attack_only_"
            run[f"{prefix}seconds"] = {v: {**summary(seconds[threads, task, v]), "repeats": seconds[threads, task, v]}
                                       for v in VARIANTS}
            run[f"{prefix}cpu_seconds"] = {v: {**summary(cpu[threads, task, v]), "repeats": cpu[threads, task, v]}
                                           for v in VARIANTS}
            for ours in OURS:
                infix = "early_stop_" if ours == "medrobust_early_stop" else ""
                wall, work = ratios(seconds, threads, task, ours), ratios(cpu, threads, task, ours)
                run[f"{prefix}{infix}ratio_ours_over_theirs"] = {**summary(wall), "repeats": wall}
                run[f"{prefix}{infix}cpu_ratio_ours_over_theirs"] = {**summary(work), "repeats": work}
        runs.append(run)
    return {"runs": runs}


def run_figures(root: str, verify_md5: bool, quick: bool, smoke: bool = False, log=print) -> list[dict]:
    """The attack figure of `python -m bench all`: CPU-time ratio ours/theirs (goal <= 1) at equal strength."""
    import contextlib
    import io

    import torch

    from lightning_modules.models import build_model

    if smoke:
        options = ["--batch-size", "16", "--steps", "2", "--repeats", "1", "--warmup", "0", "--train-epochs", "0",
                   "--strength-eps", "8/255"]
    elif quick:
        options = ["--batch-size", "128", "--repeats", "5", "--warmup", "1", "--train-epochs", "1",
                   "--strength-eps", "2/255", "8/255"]
    else:
        options = ["--batch-size", "256", "--repeats", "7", "--warmup", "1", "--train-epochs", "2"]
    args = parse_args(["--root", root, "--threads", "1", *options] + ([] if verify_md5 else ["--no-verify-md5"]))
    before = torch.get_num_threads()
    torch.manual_seed(args.seed)
    train_split, x, y = load_data(args)
    model = build_model("small_cnn", 1, 2)
    try:
        torch.set_num_threads(1)
        train(model, train_split, args.train_epochs, args.seed)
        model.eval()
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            timing = measure(model, x, y, args)
        for line in printed.getvalue().splitlines():
            log(f"[attack] {line}")
        strong = strength(model, x, y, args)
    finally:
        torch.set_num_threads(before)
    (run,) = timing["runs"]
    # equal strength: ours may not leave more examples robust than torchattacks (2 examples of slack)
    slack = 2 / len(x)
    robust = {f"{r['epsilon']:.5f}": {v: r[v]["robust_acc"] for v in VARIANTS} for r in strong}
    rows = []
    for ours, infix, what in (("medrobust", "", "best iterate, logits handed to the scorer"),
                              ("medrobust_early_stop", "early_stop_",
                               "early_stop=True as the per-epoch check runs it")):
        weaker = [r for r in strong if r[ours]["robust_acc"] > r["torchattacks"]["robust_acc"] + slack]
        label = "" if ours == "medrobust" else ", early stop"
        row = figure(f"attack: robust evaluation, medrobust PGD-{args.steps}{label} / torchattacks PGD-{args.steps} "
                     f"(CPU seconds)", run[f"{infix}cpu_ratio_ours_over_theirs"]["repeats"], 1.0,
                     higher_is_better=False,
                     details={
                         "wall_ratio": run[f"{infix}ratio_ours_over_theirs"]["median"],
                         "attack_only_cpu_ratio": run[f"attack_only_{infix}cpu_ratio_ours_over_theirs"]["median"],
                         "robust_acc": robust, "clean_acc": accuracy(model, x, y),
                         "settings": f"small_cnn after {args.train_epochs} ERM epoch(s), {len(x)} PneumoniaMNIST test "
                                     f"images, L-inf 8/255, 1 torch thread; timed: attack + scores of the batch; "
                                     f"{what}"},
                     requires={"equal_strength": not weaker})
        rows.append(row)
    return rows


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    from attacks.threat_model import format_epsilon
    from lightning_modules.models import build_model

    torch.manual_seed(args.seed)
    train_split, x, y = load_data(args)
    model = build_model("small_cnn", 1, 2)
    print(f"training small_cnn for {args.train_epochs} ERM epoch(s) on {len(train_split)} images ...", flush=True)
    train(model, train_split, args.train_epochs, args.seed)
    model.eval()
    threads_before = torch.get_num_threads()
    print(f"PGD-{args.steps} at eps={format_epsilon(args.eps)} on {len(x)} PneumoniaMNIST test images; "
          f"{args.warmup} warm-up + {args.repeats} timed repeats, interleaved", flush=True)
    timing = measure(model, x, y, args)
    torch.set_num_threads(threads_before)
    print("robust accuracy of both attacks (seeded) ...", flush=True)
    clean = accuracy(model, x, y)
    strong = strength(model, x, y, args)

    rows = []
    for run in timing["runs"]:
        for prefix, task in (("", "attack + scores"), ("attack_only_", "attack alone")):
            for v in VARIANTS:
                s = run[f"{prefix}seconds"][v]
                rows.append([LABELS[v], task, run["torch_threads"], s["median"], s["min"], s["max"],
                             len(x) / s["median"]])
    print()
    print(format_table(["attack", "timed", "threads", "s median", "min", "max", "images/s"], rows))
    print()
    for run in timing["runs"]:
        for prefix, task in (("", "attack + scores"), ("attack_only_", "attack alone")):
            for infix, ours in (("", "medrobust"), ("early_stop_", "medrobust, early stop")):
                ratio = run[f"{prefix}{infix}ratio_ours_over_theirs"]
                print(f"threads={run['torch_threads']}, {task}, {ours}: time ratio ours/theirs, "
                      f"median of {args.repeats} "
                      f"paired repeats: {ratio['median']:.2f} (range {ratio['min']:.2f}-{ratio['max']:.2f}); "
                      f"< 1 means medrobust is faster")
    print("medrobust's PGD tracks the best iterate per example (one forward pass on the last iterate) and returns its "
          "logits to the evaluator; with early_stop=True it stops attacking an example at its first success.")
    print()
    print(format_table(["eps", "clean acc", "medrobust robust acc", "early stop robust acc", "torchattacks robust acc",
                        "max |delta| ours", "max |delta| theirs"],
                       [[format_epsilon(r["epsilon"]), clean, r["medrobust"]["robust_acc"],
                         r["medrobust_early_stop"]["robust_acc"], r["torchattacks"]["robust_acc"],
                         r["medrobust"]["max_linf"], r["torchattacks"]["max_linf"]] for r in strong]))
    print("Equally strong: robust accuracies agree up to a few examples (the random starts differ; from the same "
          "start ours can only be lower, since it keeps the best iterate; early stop finds the same successes).")
    write_json(args.json, {
        "benchmark": "attacks",
        "settings": {"batch_size": len(x), "epsilon": args.eps, "steps": args.steps,
                     "alpha": 2.5 * args.eps / args.steps, "repeats": args.repeats, "warmup": args.warmup,
                     "train_epochs": args.train_epochs, "seed": args.seed, "threads": args.threads,
                     "model": "small_cnn(1, 2)"},
        "clean_acc": clean,
        **timing,
        "strength": strong,
        "notes": "timed: attack + scores (runs[].seconds) and the attack alone (runs[].attack_only_seconds); "
                 "medrobust PGD keeps the strongest iterate per example and returns its logits (early_stop_*: "
                 "stops attacking an example at its first success); torchattacks returns the last iterate",
        "environment": environment(),
    })
    return 0


if __name__ == "__main__":
    run_main(main)
