"""LoRA PGD-AT against full fine-tuning of the same timm backbone: training-step time and peak memory, as ratios.

Both variants are `lightning_modules.adversarial.PGDAT` on the same randomly initialised timm backbone (seed 0):
`finetune: full` and `finetune: lora` (PEFT adapters of `--rank` on the convolutions or attention layers, the
classifier trained whole), each with the optimizer its own `configure_optimizers` builds (trainable parameters
only). One timed step is what a PGD-AT batch costs: the PGD inner attack (`--steps` steps, gradients with respect
to the input through the whole network in both variants), the training forward and backward, the optimizer step.

Time: process CPU seconds per step with 1 torch thread (the work done, little affected by other jobs on a shared
machine), the variants interleaved in paired rounds; the figure is the median of the per-round ratios lora/full.
Memory: on CUDA the peak allocated memory over the timed steps (torch.cuda.max_memory_allocated); on a CPU the
growth of the peak resident set over the steps, each variant in a fresh process (python -m bench.lora_step
--memory-worker VARIANT). A ratio below 1 means LoRA is cheaper.
"""
from __future__ import annotations

import json
import subprocess
import sys

from bench.common import (
    BenchError, Parser, clock_pair, elapsed, environment, figure, format_table, paired_rounds, positive_int, run_main,
    summary, write_json,
)

VARIANTS = ("full", "lora")


def parse_args(argv=None):
    parser = Parser(description=__doc__.split("\n\n")[0],
                    epilog="Example: python -m bench.lora_step --arch timm/resnet18 --size 28 "
                           "--json runs/bench/lora.json")
    parser.add_argument("--arch", default="timm/resnet18", help="timm backbone, timm/NAME (default: %(default)s)")
    parser.add_argument("--size", type=positive_int, default=28, help="input size in pixels (default: %(default)s)")
    parser.add_argument("--channels", type=positive_int, default=1, help="input channels (default: %(default)s)")
    parser.add_argument("--batch", type=positive_int, default=32, help="training batch (default: %(default)s)")
    parser.add_argument("--steps", type=positive_int, default=3,
                        help="PGD steps of the inner attack (default: %(default)s)")
    parser.add_argument("--rank", type=positive_int, default=8, help="LoRA rank (default: %(default)s)")
    parser.add_argument("--targets", nargs="+", default=None,
                        help="LoRA targets (default: attention if any, else conv)")
    parser.add_argument("--train-steps", type=positive_int, default=3,
                        help="timed training steps per round (default: %(default)s)")
    parser.add_argument("--repeats", type=positive_int, default=3, help="timed rounds (default: %(default)s)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first (default: %(default)s)")
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto (default: %(default)s)")
    parser.add_argument("--memory-worker", choices=VARIANTS, help=argparse_suppress())
    parser.add_argument("--json", metavar="OUT", help="also write the results here (atomic write)")
    args = parser.parse_args(argv)
    if args.warmup < 0:
        parser.error("--warmup must be >= 0")
    import torch

    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device not in ("cpu", "cuda") or (args.device == "cuda" and not torch.cuda.is_available()):
        raise BenchError(f"--device {args.device}: choose cpu, or cuda on a machine with a GPU")
    return args


def argparse_suppress():
    import argparse

    return argparse.SUPPRESS


def build(variant: str, args):
    """The PGDAT module of `variant` on `args.device`, its optimizer, and a fixed random batch."""
    from types import SimpleNamespace

    import torch

    from lightning_modules.adversarial import PGDAT

    torch.manual_seed(0)
    module = PGDAT(network={"arch": args.arch}, in_channels=args.channels, num_classes=2, input_size=args.size,
                   finetuning={"mode": variant, "lora_rank": args.rank, "lora_targets": args.targets},
                   optimization={"optimizer": "adamw", "lr": 1e-3}, steps=args.steps, epsilon="4/255").to(args.device)
    module._trainer = SimpleNamespace(max_epochs=1, current_epoch=0)  # what configure_optimizers reads
    optimizer = module.configure_optimizers()["optimizer"]
    module._trainer = None
    generator = torch.Generator().manual_seed(1)
    x = torch.rand(args.batch, args.channels, args.size, args.size, generator=generator).to(args.device)
    y = torch.randint(0, 2, (args.batch,), generator=generator).to(args.device)
    return module, optimizer, x, y


def train_steps(module, optimizer, x, y, n: int) -> None:
    import torch

    module.train()
    for _ in range(n):
        optimizer.zero_grad(set_to_none=True)
        loss, _ = module.training_loss(x, y)
        loss.backward()
        optimizer.step()
    if x.is_cuda:
        torch.cuda.synchronize()


def training_state_bytes(module, optimizer) -> int:
    """Bytes of the weights, their gradients and the optimizer's state: what training holds between steps."""
    tensors = [p for p in module.parameters()] + [p.grad for p in module.parameters() if p.grad is not None]
    tensors += [t for state in optimizer.state.values() for t in state.values() if hasattr(t, "element_size")]
    return sum(t.numel() * t.element_size() for t in tensors)


def rss_bytes() -> int:
    import os

    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def memory_worker(args) -> int:
    """One variant in this fresh process: the growth of the peak resident set over warm-up and timed steps."""
    import resource

    import torch

    torch.set_num_threads(1)
    module, optimizer, x, y = build(args.memory_worker, args)
    before = rss_bytes()
    train_steps(module, optimizer, x, y, 1 + args.train_steps)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    print(json.dumps({"variant": args.memory_worker, "bytes": max(0, peak - before)}))
    return 0


def peak_memory(args) -> dict[str, int]:
    """Peak memory of each variant's training steps: CUDA's allocator peak, or a fresh process's RSS growth."""
    import torch

    if args.device == "cuda":
        result = {}
        for variant in VARIANTS:
            module, optimizer, x, y = build(variant, args)
            train_steps(module, optimizer, x, y, 1)
            torch.cuda.reset_peak_memory_stats()
            train_steps(module, optimizer, x, y, args.train_steps)
            result[variant] = int(torch.cuda.max_memory_allocated())
            del module, optimizer
            torch.cuda.empty_cache()
        return result
    result = {}
    for variant in VARIANTS:
        command = [sys.executable, "-m", "bench.lora_step", "--memory-worker", variant, "--arch", args.arch,
                   "--size", str(args.size), "--channels", str(args.channels), "--batch", str(args.batch),
                   "--steps", str(args.steps), "--rank", str(args.rank), "--train-steps", str(args.train_steps),
                   "--device", "cpu", *(["--targets", *args.targets] if args.targets else [])]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            raise BenchError(f"memory worker {variant} failed: {(done.stderr.strip().splitlines() or [''])[-1]}")
        result[variant] = json.loads(done.stdout.strip().splitlines()[-1])["bytes"]
    return result


def measure(args, log=print) -> dict:
    import torch

    before = torch.get_num_threads()
    built = {variant: build(variant, args) for variant in VARIANTS}
    counts = {v: int(m.hparams.trainable_parameters) for v, (m, *_) in built.items()}
    total = int(built["full"][0].hparams.total_parameters)
    seconds = {v: [] for v in VARIANTS}
    try:
        for tag, timed, _, variant in paired_rounds(args.warmup, args.repeats, [1], VARIANTS):
            start = clock_pair()
            train_steps(*built[variant], args.train_steps)
            spent = elapsed(start)["wall" if args.device == "cuda" else "cpu"] / args.train_steps
            log(f"{tag} {variant}: {spent:.3f} s per step")
            if timed:
                seconds[variant].append(spent)
    finally:
        torch.set_num_threads(before)
    state = {v: training_state_bytes(m, optimizer) for v, (m, optimizer, *_) in built.items()}
    del built
    memory = peak_memory(args)
    ratios = [lora / full for lora, full in zip(seconds["lora"], seconds["full"])]
    return {"arch": args.arch, "size": args.size, "batch": args.batch, "pgd_steps": args.steps, "rank": args.rank,
            "device": args.device, "clock": "wall" if args.device == "cuda" else "process CPU, 1 thread",
            "trainable_parameters": counts, "total_parameters_full": total,
            "seconds_per_step": {v: summary(s) for v, s in seconds.items()}, "time_ratios": ratios,
            "peak_memory_bytes": memory, "training_state_bytes": state,
            "memory_ratio": memory["lora"] / memory["full"] if memory["full"] else None,
            "environment": environment()}


def rows(result: dict) -> list[dict]:
    """The two rows of `python -m bench all` (reported: the issue sets no goal for them)."""
    what = (f"{result['arch']} {result['size']} px, batch {result['batch']}, PGD-{result['pgd_steps']}, "
            f"LoRA r={result['rank']} ({result['trainable_parameters']['lora']:,} of "
            f"{result['trainable_parameters']['full']:,} parameters trained), {result['device']}")
    time_row = figure("LoRA PGD-AT step time / full fine-tuning", result["time_ratios"], None, higher_is_better=False,
                      details={"seconds_per_step_median": {v: s["median"]
                                                           for v, s in result["seconds_per_step"].items()},
                               "settings": f"{what}, {result['clock']}"})
    memory = result["peak_memory_bytes"]
    memory_row = figure("LoRA PGD-AT peak memory / full fine-tuning", [result["memory_ratio"]], None,
                        higher_is_better=False,
                        details={"peak_mib": {v: round(b / 2**20, 1) for v, b in memory.items()},
                                 "weights_grads_optimizer_mib": {v: round(b / 2**20, 1)
                                                                 for v, b in result["training_state_bytes"].items()},
                                 "settings": what + (", CUDA allocator peak" if result["device"] == "cuda" else
                                                     ", growth of a fresh process's peak RSS over the steps")})
    return [time_row, memory_row]


def run_figures(quick: bool, smoke: bool = False, log=print) -> list[dict]:
    """The LoRA rows of `python -m bench all`: ResNet-18 at 28 px on a CPU (ResNet-50 at 224 px on a GPU)."""
    import torch

    gpu = torch.cuda.is_available()
    options = (["--arch", "timm/resnet50", "--size", "224", "--batch", "64", "--steps", "7"] if gpu else
               ["--arch", "timm/resnet18", "--size", "28", "--batch", "32", "--steps", "3"])
    if smoke:
        options = ["--arch", "timm/test_resnet", "--size", "28", "--batch", "8", "--steps", "1", "--repeats", "1",
                   "--warmup", "0", "--train-steps", "1"]
    elif quick:
        options += ["--repeats", "3", "--train-steps", "2"]
    else:
        options += ["--repeats", "5", "--train-steps", "3"]
    result = measure(parse_args(options), log=lambda line: log(f"[lora] {line}"))
    return rows(result)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.memory_worker:
        return memory_worker(args)
    result = measure(args)
    table = [[row["name"], f"{row['ratio']:.3f}", f"{row['range'][0]:.3f}-{row['range'][1]:.3f}",
              json.dumps(row["details"])] for row in rows(result)]
    print(format_table(["figure", "ratio", "range", "details"], table))
    write_json(args.json, result)
    return 0


if __name__ == "__main__":
    run_main(main)
