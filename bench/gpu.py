"""GPU throughput: images/s of ERM training, PGD-AT training and PGD evaluation with ResNet-18 at 28 and 224 px,
fp32 against the fast path (bf16 autocast + channels_last, optionally + torch.compile), and the share of the GPU's
measured bf16 matmul throughput that fast-path training reaches.

Synthetic [0, 1] images already on the GPU (the data path is figure 1), SGD, PGD-7 at 4/255 for PGD-AT and PGD-10
for evaluation, the project's `attacks.PGD` (loss and projection in fp32 under autocast). Paired, interleaved
repeats timed with CUDA synchronisation. Without CUDA every row says "no GPU".
"""
from __future__ import annotations

from bench.common import (
    Parser, environment, figure, format_table, met_text, not_measured, run_main, summary, write_json,
)

WORKLOADS = ("erm", "pgd_at", "pgd_eval")
NAMES = {"erm": "ERM training", "pgd_at": "PGD-AT training", "pgd_eval": "PGD-10 evaluation"}
SIZES = {28: ("resnet18_28", 256), 224: ("resnet18", 64)}  # architecture, batch size
GOALS = {"pgd_at": 2.0}  # the goal: bf16 path >= 2x fp32 for PGD-AT; the other rows are reported


def rows_without_gpu(sizes=(28, 224)) -> list[dict]:
    rows = [not_measured(f"GPU {NAMES[w]}, ResNet-18 {s} px: fast path / fp32 (images/s)",
                         f">= {GOALS[w]:g}x" if w in GOALS else "reported", "no GPU") for s in sizes for w in WORKLOADS]
    rows.append(not_measured("GPU training share of measured bf16 matmul peak", "reported", "no GPU"))
    return rows


def make_step(workload: str, model, optimizer, x, y, fast: bool, device_type: str):
    """One step of the workload as a closure; `fast`: bf16 autocast and channels_last inputs."""
    import torch
    import torch.nn.functional as F

    from attacks.gradient import PGD

    if fast:
        x = x.contiguous(memory_format=torch.channels_last)

    def autocast():
        return torch.autocast(device_type, dtype=torch.bfloat16, enabled=fast)

    def train_on(inputs):
        model.train()
        with autocast():
            loss = F.cross_entropy(model(inputs).float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    if workload == "erm":
        return lambda: train_on(x)
    if workload == "pgd_at":
        attack = PGD(model, 4 / 255, steps=7)

        def step():
            with autocast():
                x_adv = attack(x, y)
            train_on(x_adv)

        return step
    attack = PGD(model, 4 / 255, steps=10)

    def evaluate():
        with autocast():
            return attack(x, y)

    return evaluate


def build(arch: str, device, fast: bool, compile_model: bool):
    import torch

    from lightning_modules.models import build_model

    torch.manual_seed(0)
    model = build_model(arch, 3, 2).to(device)
    if fast:
        model = model.to(memory_format=torch.channels_last)
    if compile_model:
        model.forward = torch.compile(model.forward)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    return model, optimizer


def time_steps(step, steps: int, device) -> float:
    """Seconds per step (synchronised)."""
    import time

    import torch

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    return (time.perf_counter() - start) / steps


def measure_workload(workload: str, size: int, device, steps: int, repeats: int, compile_model: bool,
                     batch: int | None = None, log=print) -> dict:
    """images/s of fp32 and the fast path, paired and interleaved; a warm-up (and compilation) first."""
    import torch

    arch, default_batch = SIZES[size]
    batch = batch or default_batch
    x = torch.rand(batch, 3, size, size, device=device)
    y = torch.randint(0, 2, (batch,), device=device)
    variants = {"fp32": (False, False), "fast": (True, compile_model)}
    steps_fn = {}
    for name, (fast, comp) in variants.items():
        model, optimizer = build(arch, device, fast, comp)
        steps_fn[name] = make_step(workload, model, optimizer, x, y, fast, device.type)
        time_steps(steps_fn[name], 3 if comp else 1, device)  # warm-up, compilation
    rate = {name: [] for name in variants}
    for r in range(repeats):
        for name in (list(variants) if r % 2 == 0 else list(reversed(list(variants)))):
            rate[name].append(batch / time_steps(steps_fn[name], steps, device))
        log(f"[gpu {NAMES[workload]} {size} px repeat {r + 1}/{repeats}] fp32 {rate['fp32'][-1]:,.0f} images/s, "
            f"fast {rate['fast'][-1]:,.0f} images/s")
    ratios = [f / s for f, s in zip(rate["fast"], rate["fp32"])]
    return {"images_per_s": {k: summary(v) for k, v in rate.items()}, "ratios": ratios, "batch": batch, "arch": arch}


def matmul_peak(device, n: int = 8192, steps: int = 20) -> float:
    """Measured bf16 matmul FLOP/s of this GPU (n x n x n products)."""
    import torch

    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    time_steps(lambda: a @ b, 3, device)
    return 2 * n ** 3 / time_steps(lambda: a @ b, steps, device)


def training_flops(arch: str, size: int, batch: int, device) -> float:
    """FLOPs of one ERM training step (forward + backward), counted by torch.utils.flop_counter."""
    import torch
    import torch.nn.functional as F
    from torch.utils.flop_counter import FlopCounterMode

    model, _ = build(arch, device, False, False)
    x = torch.rand(batch, 3, size, size, device=device)
    y = torch.randint(0, 2, (batch,), device=device)
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(model(x), y).backward()
    return float(counter.get_total_flops())


def run_figures(quick: bool, compile_model: bool = True, log=print) -> list[dict]:
    """The GPU rows of `python -m bench all`, or "no GPU" rows without CUDA."""
    import torch

    if not torch.cuda.is_available():
        return rows_without_gpu()
    device = torch.device("cuda")
    name = torch.cuda.get_device_name(device)
    steps, repeats = (5, 3) if quick else (20, 5)
    rows, erm_fast = [], {}
    for size in SIZES:
        for workload in WORKLOADS:
            result = measure_workload(workload, size, device, steps, repeats, compile_model, log=log)
            if workload == "erm":
                erm_fast[size] = result
            row = figure(f"GPU {NAMES[workload]}, ResNet-18 {size} px: fast path / fp32 (images/s)",
                         result["ratios"], GOALS.get(workload), details={
                             "device": name,
                             "images_per_s_median": {k: v["median"] for k, v in result["images_per_s"].items()},
                             "fast_path": "bf16 autocast + channels_last"
                                          + (" + torch.compile" if compile_model else ""),
                             "batch": result["batch"]})
            rows.append(row)
    peak = matmul_peak(device)
    shares = []
    for size, result in erm_fast.items():
        flops = training_flops(result["arch"], size, result["batch"], device)
        shares.append(flops * result["images_per_s"]["fast"]["median"] / result["batch"] / peak)
    row = figure("GPU training share of measured bf16 matmul peak (ERM fast path, best of 28/224 px)", [max(shares)],
                 None, details={"device": name, "bf16_matmul_tflops": peak / 1e12,
                                "share_by_size": dict(zip(map(str, erm_fast), shares))})
    rows.append(row)
    return rows


def parse_args(argv=None):
    parser = Parser(description=__doc__.split("\n\n")[0],
                    epilog="Example: python bench/gpu.py --quick --json runs/bench/gpu.json")
    parser.add_argument("--quick", action="store_true", help="fewer steps and repeats")
    parser.add_argument("--no-compile", dest="compile", action="store_false", help="fast path without torch.compile")
    parser.add_argument("--json", metavar="OUT", help="also write the results here (atomic write)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    rows = run_figures(args.quick, args.compile)
    print(format_table(["figure", "ratio", "goal", "met / status"],
                       [[r["name"], r["ratio"], r["goal"], met_text(r)] for r in rows]))
    write_json(args.json, {"benchmark": "gpu", "figures": rows, "environment": environment()})
    return 0


if __name__ == "__main__":
    run_main(main)
