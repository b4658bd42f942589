"""Certification rate: `attacks.smoothing.Smooth.certify` against plain prediction of the same noise samples.

Both variants push the same number of noisy images through the same model in forward passes of `--batch-size`:
n0 + n Gaussian copies of each of `--images` random [0, 1] images at `--sigma`. "plain" only draws the noise, runs
the model and takes the argmax; "certify" is Cohen et al.'s CERTIFY (class counts, Clopper-Pearson bound, radius).
The figure is images/s certify / plain, the median of paired, interleaved rounds (goal >= 0.9x: the statistics and
book-keeping cost at most a tenth of the sampling). Process CPU seconds with 1 torch thread on a CPU; wall seconds
with CUDA synchronisation on a GPU.
"""
from __future__ import annotations

import json

from bench.common import (
    Parser, clock_pair, elapsed, environment, figure, format_table, paired_rounds, positive_int,
    resolved_device, round_options, run_main, summary, write_json,
)

VARIANTS = ("certify", "plain")
GOAL = 0.9
NAME = "certification rate: CERTIFY / plain prediction of the same noise samples (images/s)"


def parse_args(argv=None):
    parser = Parser(description=__doc__.split("\n\n")[0],
                    epilog="Example: python -m bench.certify_speed --n 1000 --json runs/bench/certify.json")
    parser.add_argument("--arch", default="small_cnn", help="model architecture (default: %(default)s)")
    parser.add_argument("--size", type=positive_int, default=28, help="image size in pixels (default: %(default)s)")
    parser.add_argument("--channels", type=positive_int, default=1, help="image channels (default: %(default)s)")
    parser.add_argument("--classes", type=positive_int, default=2, help="classes of the head (default: %(default)s)")
    parser.add_argument("--images", type=positive_int, default=8, help="images per round (default: %(default)s)")
    parser.add_argument("--n0", type=positive_int, default=10, help="selection samples (default: %(default)s)")
    parser.add_argument("--n", type=positive_int, default=100, help="estimation samples (default: %(default)s)")
    parser.add_argument("--sigma", type=float, default=0.25, help="noise level, pixel units (default: %(default)s)")
    parser.add_argument("--alpha", type=float, default=0.001, help="failure probability (default: %(default)s)")
    parser.add_argument("--batch-size", type=positive_int, default=256,
                        help="noisy images per forward pass (default: %(default)s)")
    round_options(parser, repeats=5)
    args = parser.parse_args(argv)
    if args.warmup < 0:
        parser.error("--warmup must be >= 0")
    from attacks.smoothing import check_settings

    check_settings(args.sigma, args.n0, args.n, args.alpha)
    args.device = resolved_device(args.device)
    return args


def plain_prediction(model, x, samples: int, sigma: float, batch_size: int, generator):
    """The baseline: the base model's classes on `samples` noisy copies of each image, nothing counted or tested."""
    import torch

    classes = []
    with torch.no_grad():
        for start in range(0, len(x) * samples, batch_size):
            owners = torch.arange(start, min(start + batch_size, len(x) * samples), device=x.device) // samples
            images = x[owners]
            noise = torch.randn(images.shape, generator=generator, device=x.device, dtype=images.dtype)
            classes.append(model(images + sigma * noise).argmax(dim=1))
    return torch.cat(classes)


def variants(model, x, args) -> dict:
    """The two timed calls on the same model and images: CERTIFY, and plain prediction of its n0 + n samples."""
    import torch

    from attacks.smoothing import Smooth

    smooth = Smooth(model, args.classes, args.sigma, batch_size=args.batch_size, seed=0)
    return {
        "certify": lambda: smooth.certify(x, args.n0, args.n, args.alpha),
        "plain": lambda: plain_prediction(model, x, args.n0 + args.n, args.sigma, args.batch_size,
                                          torch.Generator(device=x.device).manual_seed(0)),
    }


def measure(args, log=print) -> dict:
    import torch

    from lightning_modules.models import build_model

    torch.manual_seed(0)
    model = build_model(args.arch, args.channels, args.classes).to(args.device).eval()
    x = torch.rand(args.images, args.channels, args.size, args.size, generator=torch.Generator().manual_seed(1))
    x = x.to(args.device)
    run = variants(model, x, args)
    clock = "wall" if args.device == "cuda" else "cpu"
    threads = [torch.get_num_threads()] if args.device == "cuda" else [1]
    before = torch.get_num_threads()
    seconds = {v: [] for v in VARIANTS}
    try:
        for tag, timed, _, variant in paired_rounds(args.warmup, args.repeats, threads, VARIANTS):
            start = clock_pair()
            run[variant]()
            if args.device == "cuda":
                torch.cuda.synchronize()
            spent = elapsed(start)[clock]
            log(f"{tag} {variant}: {spent:.3f} s for {args.images} images")
            if timed:
                seconds[variant].append(spent)
    finally:
        torch.set_num_threads(before)
    certified = run["certify"]()
    return {"arch": args.arch, "size": args.size, "channels": args.channels, "classes": args.classes,
            "images": args.images, "n0": args.n0, "n": args.n, "sigma": args.sigma, "alpha": args.alpha,
            "batch_size": args.batch_size, "device": args.device,
            "clock": "wall, CUDA synchronised" if clock == "wall" else "process CPU, 1 thread",
            "seconds_per_image": {v: summary([s / args.images for s in t]) for v, t in seconds.items()},
            "ratios": [plain / certify for certify, plain in zip(seconds["certify"], seconds["plain"])],
            "abstained": int((certified.prediction < 0).sum()), "environment": environment()}


def rows(result: dict) -> list[dict]:
    """The row of `python -m bench all`: certified images/s over plain-prediction images/s (goal >= 0.9x)."""
    settings = (f"{result['arch']} {result['size']} px untrained, {result['images']} images, n0={result['n0']}, "
                f"n={result['n']}, sigma={result['sigma']:g}, batch {result['batch_size']}, {result['device']}, "
                f"{result['clock']}")
    return [figure(NAME, result["ratios"], GOAL, details={
        "seconds_per_image_median": {v: s["median"] for v, s in result["seconds_per_image"].items()},
        "settings": settings})]


def run_figures(quick: bool, smoke: bool = False, log=print) -> list[dict]:
    """The certification row of `python -m bench all`: tiny settings on a CPU, Cohen et al.'s n on a GPU."""
    import torch

    if smoke:
        options = ["--images", "2", "--n0", "2", "--n", "10", "--repeats", "1", "--warmup", "0", "--device", "cpu"]
    elif torch.cuda.is_available():
        options = ["--images", "16", "--n0", "100", "--n", "10000", "--batch-size", "2000", "--arch", "resnet18_28"]
    elif quick:
        options = ["--images", "8", "--n0", "10", "--n", "100", "--repeats", "3"]
    else:
        options = ["--images", "16", "--n0", "20", "--n", "200"]
    return rows(measure(parse_args(options), log=lambda line: log(f"[certify] {line}")))


def main(argv=None) -> int:
    args = parse_args(argv)
    result = measure(args)
    (row,) = rows(result)
    print(format_table(["figure", "ratio", "range", "details"],
                       [[row["name"], f"{row['ratio']:.3f}", f"{row['range'][0]:.3f}-{row['range'][1]:.3f}",
                         json.dumps(row["details"])]]))
    write_json(args.json, result)
    return 0


if __name__ == "__main__":
    run_main(main)
