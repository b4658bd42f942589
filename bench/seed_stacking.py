"""Seeds trained together: K copies of the quick study's model stacked with torch.func against K trained one at a time.

Both variants train K seeds of `small_cnn` (the quick study's model, Normalize + SmallCNN with BatchNorm) on K
per-seed batches of `--batch` random [0, 1] images, with the project's own training code: `ERM.training_loss`
and `PGDAT.training_loss` (the project's PGD from attacks/, `--steps` steps at `--epsilon` L-inf, run in eval mode
as PGDAT does), summed per seed, and Adam at the study's learning rate.
"sequential": K LightningModules and K optimizers, one step each. "stacked": one module whose model is
`StackedSeeds` (parameters and buffers of the K models stacked along a new first dimension, the forward one
`vmap` of `functional_call`: one batched pass for all seeds), one optimizer over the stacked parameters; the PGD
attack sees one batch of K x B images, each block scored by its own model.

The figure per (method, K) is images/s stacked / sequential, the median of paired, interleaved rounds (goal >= 2x
at 10 seeds: the issue's 10 seeds in half the time of one at a time). Before timing, one step of each variant from
equal weights and batches must agree (per-seed losses, weights, BatchNorm running statistics); the goal needs it.
Process CPU seconds with 1 torch thread on a CPU; wall seconds with CUDA synchronisation on a GPU.
"""
from __future__ import annotations

import contextlib
import copy

import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from bench.common import (
    Parser, clock_pair, elapsed, environment, figure, format_table, paired_rounds, positive_int,
    resolved_device, round_options, run_main, summary, write_json,
)

VARIANTS = ("stacked", "sequential")
METHODS = ("erm", "pgd_at")
GOAL, GOAL_SEEDS = 2.0, 10
TOLERANCE = {"rtol": 1e-4, "atol": 1e-5}  # float32 rounding of grouped against plain convolutions
#: updated weights may differ by more: Adam's first step is lr * g / (|g| + 1e-8), which turns a rounding-sized
#: difference in a near-zero gradient into a visible one; a tenth of a step (0.1 lr) is still far below any real
#: difference (another seed's batch moves most weights by a whole step)
STEP_SHARE = 0.1


def parse_args(argv=None):
    parser = Parser(description=__doc__.split("\n\n")[0],
                    epilog="Example: python -m bench.seed_stacking --seeds 1 3 10 --json runs/bench/seeds.json")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS),
                        help="training steps to time (default: %(default)s)")
    parser.add_argument("--seeds", nargs="+", type=positive_int, default=[1, 3, 10],
                        help="numbers of seeds K trained together (default: %(default)s)")
    parser.add_argument("--batch", type=positive_int, default=128, help="images per seed and step (default: 128)")
    parser.add_argument("--size", type=positive_int, default=28, help="image size in pixels (default: %(default)s)")
    parser.add_argument("--channels", type=positive_int, default=1, help="image channels (default: %(default)s)")
    parser.add_argument("--classes", type=positive_int, default=2, help="classes of the head (default: %(default)s)")
    parser.add_argument("--steps", type=positive_int, default=5, help="PGD steps of PGD-AT (default: %(default)s)")
    parser.add_argument("--epsilon", default="4/255", help="PGD-AT L-inf budget (default: %(default)s)")
    parser.add_argument("--train-steps", type=positive_int, default=1,
                        help="timed training steps per round (default: %(default)s)")
    round_options(parser, repeats=3)
    args = parser.parse_args(argv)
    if args.warmup < 0:
        parser.error("--warmup must be >= 0")
    if args.size < 4:
        parser.error("--size must be >= 4 (SmallCNN pools twice)")
    from attacks.threat_model import parse_epsilon

    parse_epsilon(args.epsilon, "linf")  # a bad budget ends in one error line before anything is built
    args.device = resolved_device(args.device)
    return args


class StackedSeeds(nn.Module):
    """K models of one architecture as one model: images (K*B, ...) in K consecutive blocks of B, block k scored by
    model k, logits (K*B, classes) out. Parameters and buffers are stacked along a new first dimension
    (`parameters_of_seeds` for the optimizer); BatchNorm's running statistics update per seed in training mode."""

    def __init__(self, models):
        super().__init__()
        params, self.seed_buffers = stack_module_state(list(models))
        self.seed_params = {name: p.detach().requires_grad_() for name, p in params.items()}
        self.template = copy.deepcopy(models[0]).to("meta")  # a submodule: train() and eval() reach it
        self.seeds = len(models)

    def parameters_of_seeds(self) -> list:
        return list(self.seed_params.values())

    def _one(self, params, buffers, x):
        return functional_call(self.template, (params, buffers), (x,))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        blocks = x.unflatten(0, (self.seeds, -1))
        return vmap(self._one)(self.seed_params, self.seed_buffers, blocks).flatten(0, 1)

    def seed_state(self) -> dict:
        """{"params": {name: (K, ...)}, "buffers": {name: (K, ...)}}, detached."""
        return detached_state(self.seed_params, self.seed_buffers)


def detached_state(params: dict, buffers: dict) -> dict:
    """{"params": ..., "buffers": ...} of stacked (K, ...) tensors, detached: what the agreement check compares."""
    return {"params": {name: p.detach() for name, p in params.items()},
            "buffers": {name: b.detach() for name, b in buffers.items()}}


def training_module(method: str, args, seed: int):
    """The project's module for `method` (ERM, or PGDAT at the row's steps and epsilon), weights from `seed`."""
    from lightning_modules.adversarial import PGDAT
    from lightning_modules.erm import ERM

    torch.manual_seed(seed)
    common = dict(network={"arch": "small_cnn"}, in_channels=args.channels, num_classes=args.classes)
    if method == "pgd_at":
        module = PGDAT(epsilon=args.epsilon, steps=args.steps, **common)
    else:
        module = ERM(**common)
    return module.to(args.device).train()


def optimizer_for(module, params):
    """Adam at the module's learning rate and weight decay (its `configure_optimizers` without the schedule)."""
    hp = module.settings.optimization
    return torch.optim.Adam(params, lr=hp.lr, weight_decay=hp.weight_decay)


class Sequential:
    """K modules and optimizers, trained one at a time: what one process per seed does."""

    def __init__(self, modules):
        self.modules = modules
        self.optimizers = [optimizer_for(m, m.parameters()) for m in modules]

    def step(self, x, y):
        """One training step of every seed on its own block of (K, B, ...) images; per-seed losses (K,)."""
        losses = []
        for module, optimizer, images, labels in zip(self.modules, self.optimizers, x, y):
            optimizer.zero_grad(set_to_none=True)
            loss, _ = module.training_loss(images, labels)
            loss.backward()
            optimizer.step()
            losses.append(loss.detach())
        return torch.stack(losses)

    def seed_state(self) -> dict:
        """{"params": {name: (K, ...)}, "buffers": {name: (K, ...)}} of the K models, stacked, detached."""
        return detached_state(*stack_module_state([m.model for m in self.modules]))


class Stacked:
    """The same K seeds in one module whose model is `StackedSeeds`, one optimizer over the stacked weights."""

    def __init__(self, modules):
        self.module = copy.deepcopy(modules[0])
        self.module.model = StackedSeeds([m.model for m in modules])
        self.optimizer = optimizer_for(self.module, self.module.model.parameters_of_seeds())

    def step(self, x, y):
        """One step of all seeds together: the module's training loss on K x B images, split per seed and summed
        (each seed's gradient is its own loss's); per-seed losses (K,)."""
        module, seeds = self.module, len(x)
        self.optimizer.zero_grad(set_to_none=True)
        _, logits = module.training_loss(x.flatten(0, 1), y.flatten(0, 1))
        losses = torch.stack([module.loss(block, labels) for block, labels in zip(logits.unflatten(0, (seeds, -1)), y)])
        losses.sum().backward()
        self.optimizer.step()
        return losses.detach()

    def seed_state(self) -> dict:
        return self.module.model.seed_state()


def seed_batches(args, seeds: int, generator_seed: int = 1):
    """(K, B, C, H, W) random [0, 1] images and (K, B) labels on the device: a different batch per seed."""
    generator = torch.Generator().manual_seed(generator_seed)
    x = torch.rand(seeds, args.batch, args.channels, args.size, args.size, generator=generator)
    y = torch.randint(0, args.classes, (seeds, args.batch), generator=generator)
    return x.to(args.device), y.to(args.device)


def both_variants(method: str, args, seeds: int) -> dict:
    """{"sequential": ..., "stacked": ...} from the same K initial weights (seeds 0..K-1)."""
    modules = [training_module(method, args, seed) for seed in range(seeds)]
    return {"stacked": Stacked(modules), "sequential": Sequential(modules)}


def one_step_each(method: str, args, seeds: int, x=None, y=None, rng_seed: int = 0) -> dict:
    """One step of each variant from equal weights and per-seed batches (the global RNG reseeded before each, so
    PGD's random starts match where the device draws one stream the same in one call or K: the CPU):
    {variant: {"loss": (K,), "state": {"params": ..., "buffers": ...}}, "lr": the optimizer's learning rate}."""
    if x is None:
        x, y = seed_batches(args, seeds)
    variants = both_variants(method, args, seeds)
    result = {"lr": variants["stacked"].optimizer.param_groups[0]["lr"]}
    for name, variant in variants.items():
        torch.manual_seed(rng_seed)
        loss = variant.step(x, y)
        result[name] = {"loss": loss, "state": variant.seed_state()}
    return result


def disagreement(result: dict) -> list[str]:
    """What differs between the variants of `one_step_each` beyond float rounding (TOLERANCE; weights within
    STEP_SHARE of an Adam step): empty when they did the same work."""
    stacked, sequential, lr = result["stacked"], result["sequential"], result["lr"]
    differ = [] if torch.allclose(stacked["loss"], sequential["loss"], **TOLERANCE) else ["loss"]
    for kind, tolerance in (("params", {"rtol": TOLERANCE["rtol"], "atol": STEP_SHARE * lr}), ("buffers", TOLERANCE)):
        ours, theirs = stacked["state"][kind], sequential["state"][kind]
        if set(ours) != set(theirs):
            differ.append(f"{kind} names")
            continue
        differ += [name for name, value in theirs.items()
                   if not torch.allclose(ours[name].to(value.dtype), value, **tolerance)]
    return differ


@contextlib.contextmanager
def full_float32():
    """TF32 off for cuDNN convolutions and CUDA matmuls inside the block, restored after: the agreement check allows
    float32 rounding, and TF32 rounds grouped and plain convolutions apart by about 1e-3."""
    before = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before


def agrees(method: str, args, log=print) -> bool:
    """The stacked step equals K separate steps on this device (3 seeds, this row's sizes, full float32). On CUDA,
    whose random streams differ between one draw and K, PGD-AT is checked with starts at the clean images."""
    from unittest import mock

    from attacks.gradient import PGD

    same_starts = (mock.patch.object(PGD, "_random_start", lambda self, x, generator: x)
                   if args.device != "cpu" else contextlib.nullcontext())
    with same_starts, full_float32():
        differ = disagreement(one_step_each(method, args, 3))
    log(f"{method}: stacked step equals 3 separate steps: {'yes' if not differ else 'NO, ' + ', '.join(differ)}")
    return not differ


def timed_rounds(variants: dict, x, y, args, threads: list[int], clock: str, log, label: str) -> dict:
    """{variant: [seconds of `--train-steps` steps, one per timed round]} of paired, interleaved rounds."""
    seconds = {v: [] for v in VARIANTS}
    for tag, timed, _, name in paired_rounds(args.warmup, args.repeats, threads, VARIANTS):
        start = clock_pair()
        for _ in range(args.train_steps):
            variants[name].step(x, y)
        if args.device == "cuda":
            torch.cuda.synchronize()
        spent = elapsed(start)[clock]
        log(f"{label} {tag} {name}: {spent:.3f} s")
        if timed:
            seconds[name].append(spent)
    return seconds


def measure(args, log=print) -> dict:
    """Per method: the agreement check, then both variants timed for every K, with glibc keeping freed memory as
    train.py does (core.memory)."""
    from core.memory import freed_memory_kept

    clock = "wall" if args.device == "cuda" else "cpu"
    threads = [torch.get_num_threads()] if args.device == "cuda" else [1]
    before = torch.get_num_threads()
    runs = []
    with freed_memory_kept() as kept:
        try:
            torch.set_num_threads(threads[0])
            for method in args.methods:
                same_work = agrees(method, args, log)
                for seeds in args.seeds:
                    x, y = seed_batches(args, seeds)
                    seconds = timed_rounds(both_variants(method, args, seeds), x, y, args, threads, clock, log,
                                           f"{method} K={seeds}")
                    images = seeds * args.batch * args.train_steps
                    runs.append({"method": method, "seeds": seeds, "same_work": same_work,
                                 "images_per_s": {v: summary([images / s for s in t]) for v, t in seconds.items()},
                                 "ratios": [seq / st for st, seq in zip(seconds["stacked"], seconds["sequential"])]})
        finally:
            torch.set_num_threads(before)
    return {"batch": args.batch, "size": args.size, "channels": args.channels, "classes": args.classes,
            "steps": args.steps, "epsilon": args.epsilon, "train_steps": args.train_steps, "device": args.device,
            "clock": "wall, CUDA synchronised" if clock == "wall" else "process CPU, 1 thread",
            "freed_memory_kept": kept, "runs": runs, "environment": environment()}


def row_name(method: str, seeds: int) -> str:
    label = {"erm": "ERM", "pgd_at": "PGD-AT"}[method]
    return f"seeds: {seeds} stacked / one at a time, {label} step (images/s)"


def rows(result: dict) -> list[dict]:
    """The rows of `python -m bench all`, one per (method, K): images/s stacked / sequential; the goal (>= 2x) at
    10 seeds or more, and only when the stacked step did the same work; smaller K reported."""
    out = []
    for run in result["runs"]:
        attack = (f", PGD {result['steps']} steps at {result['epsilon']} L-inf (eval mode)"
                  if run["method"] == "pgd_at" else "")
        seeds = f"{run['seeds']} seed{'s' if run['seeds'] != 1 else ''}"
        settings = (f"small_cnn {result['size']} px, {seeds} x batch {result['batch']}{attack}, Adam, "
                    f"{result['device']}, {result['clock']}"
                    + (", glibc keeping freed memory as train.py does" if result.get("freed_memory_kept") else ""))
        goal = GOAL if run["seeds"] >= GOAL_SEEDS else None
        out.append(figure(row_name(run["method"], run["seeds"]), run["ratios"], goal, details={
            "images_per_s_median": {v: s["median"] for v, s in run["images_per_s"].items()}, "settings": settings},
            requires={"same_work": run["same_work"]}))
    return out


def run_figures(quick: bool, smoke: bool = False, log=print) -> list[dict]:
    """The `seeds` rows of `python -m bench all`: tiny settings in --smoke, fewer seeds and rounds with --quick on a
    CPU, more timed steps on a GPU."""
    if smoke:
        options = ["--seeds", "1", "2", "--batch", "4", "--size", "8", "--steps", "1", "--repeats", "1",
                   "--warmup", "0", "--device", "cpu"]
    elif torch.cuda.is_available():
        options = ["--seeds", "1", "3", "10", "--train-steps", "5", "--repeats", "5"]
    elif quick:
        options = ["--seeds", "1", "3", "--repeats", "3"]
    else:
        options = ["--seeds", "1", "3", "10", "--repeats", "3"]
    return rows(measure(parse_args(options), log=lambda line: log(f"[seeds] {line}")))


def main(argv=None) -> int:
    args = parse_args(argv)
    result = measure(args)
    print(format_table(["figure", "ratio", "range", "images/s stacked", "images/s sequential", "same work"],
                       [[r["name"], round(r["ratio"], 3), f"{r['range'][0]:.3f}-{r['range'][1]:.3f}",
                         r["details"]["images_per_s_median"]["stacked"],
                         r["details"]["images_per_s_median"]["sequential"], r["details"]["same_work"]]
                        for r in rows(result)]))
    write_json(args.json, result)
    return 0


if __name__ == "__main__":
    run_main(main)
