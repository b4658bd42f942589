"""Throughput of one training epoch's data path (PneumoniaMNIST by default, any 2D flag with --flag): medrobust's
DataModule vs the common torchvision baseline (`medmnist.PneumoniaMNIST` + ToTensor + Normalize, per-sample PIL).

(a) MedMNISTDataModule train loader (in-memory uint8 tensors, one index op per batch) followed by
    `on_after_batch_transfer` (uint8 -> [0, 1] floats, random flip + crop), as Lightning runs it.
(b) `medmnist.PneumoniaMNIST(split="train", transform=ToTensor+Normalize)` in a DataLoader with
    num_workers=0 and the same batch size: one PIL image and two transforms per sample, then collate.

Both run interleaved in one process, so the ratio (a)/(b) is meaningful even on a busy machine.
"""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace



from bench.common import (
    DEFAULT_ROOT, BenchError, Parser, environment, existing_dir, format_table, paired_rounds,
    positive_int, run_main, summary, timed, write_json,
)

VARIANTS = ("medrobust", "torchvision")
LABELS = {
    "medrobust": "(a) MedMNISTDataModule + on_after_batch_transfer (augment)",
    "torchvision": "(b) medmnist.<Flag>MNIST + ToTensor/Normalize, PIL per sample",
}


def parse_args(argv=None):
    parser = Parser(description=__doc__.split("\n\n")[0],
                    epilog="Example: python bench/data_loading.py --repeats 5 --json runs/bench/data_loading.json")
    parser.add_argument("--root", type=existing_dir, default=DEFAULT_ROOT,
                        help="folder with <flag>.npz (default: %(default)s)")
    parser.add_argument("--flag", default="pneumoniamnist", help="MedMNIST dataset at 28 px (default: %(default)s)")
    parser.add_argument("--batch-size", type=positive_int, default=128,
                        help="images per batch for both loaders (default: %(default)s, the DataModule's)")
    parser.add_argument("--repeats", type=positive_int, default=5,
                        help="timed epochs per variant; the median is reported (default: %(default)s)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed epochs per variant first (default: %(default)s)")
    parser.add_argument("--batches", type=positive_int, default=None,
                        help="stop each epoch after this many batches (default: the whole epoch)")
    parser.add_argument("--no-verify-md5", dest="verify_md5", action="store_false",
                        help="skip the DataModule's MD5 check (custom or synthetic files)")
    parser.add_argument("--threads", type=positive_int, nargs="+", default=None,
                        help="torch.set_num_threads setting(s), each measured in every repeat, e.g. --threads 1 2 "
                             "(default: torch's current)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed for shuffling and augmentation (default: %(default)s)")
    parser.add_argument("--json", metavar="OUT", help="also write the results here (atomic write)")
    args = parser.parse_args(argv)
    if args.threads is None:
        import torch

        args.threads = [torch.get_num_threads()]
    if args.warmup < 0:
        parser.error(f"--warmup must be >= 0, got {args.warmup}")
    from datamodules.info import dataset_info

    args.flag = dataset_info(args.flag).flag  # an unknown flag is a ConfigError: one line, exit 2
    if not (Path(args.root) / f"{args.flag}.npz").is_file():
        raise BenchError(f"{Path(args.root) / f'{args.flag}.npz'} not found (pass --root)")
    return args


def build(variant: str, args):
    """A fresh (loader, per-batch step) pair; building it (reading the npz) is timed separately."""
    import torch
    from torch.utils.data import DataLoader

    if variant == "medrobust":
        from datamodules.medmnist import MedMNISTDataModule

        dm = MedMNISTDataModule(args.flag, 28, root=args.root, verify_md5=args.verify_md5,
                                batch_size=args.batch_size, augment=True)
        dm.setup("fit")
        dm.trainer = SimpleNamespace(training=True)  # what on_after_batch_transfer reads to augment
        device = torch.device("cpu")

        def step(batch):
            batch = dm.transfer_batch_to_device(batch, device, 0)
            return dm.on_after_batch_transfer(batch, 0)

        return dm.train_dataloader(), step

    import medmnist
    from torchvision import transforms

    channels = medmnist.INFO[args.flag]["n_channels"]
    transform = transforms.Compose([transforms.ToTensor(),
                                    transforms.Normalize(mean=[0.5] * channels, std=[0.5] * channels)])
    dataset_class = getattr(medmnist, medmnist.INFO[args.flag]["python_class"])
    dataset = dataset_class(split="train", root=args.root, transform=transform)
    return DataLoader(dataset, batch_size=args.batch_size, shuffle=True, num_workers=0), (lambda batch: batch)


def epoch(loader, step, max_batches) -> int:
    """Run the data path for one epoch (or max_batches); returns the number of images produced."""
    images = 0
    for i, batch in enumerate(loader):
        if max_batches is not None and i >= max_batches:
            break
        x, _ = step(batch)
        images += len(x)
    return images


def measure(args) -> dict:
    """Warm-up, then `repeats` rounds; each round runs every thread setting, both variants in alternating order."""
    import torch
    import medmnist  # noqa: F401  (imports are not part of any timing)
    import torchvision.transforms  # noqa: F401
    import datamodules.medmnist  # noqa: F401

    torch.manual_seed(args.seed)
    threads_before = torch.get_num_threads()
    setup_s = {(t, v): [] for t in args.threads for v in VARIANTS}
    rate = {(t, v): [] for t in args.threads for v in VARIANTS}
    images = {}
    for tag, timed_run, threads, variant in paired_rounds(args.warmup, args.repeats, args.threads, VARIANTS):
        seconds_setup, (loader, step) = timed(lambda: build(variant, args))
        seconds, n = timed(lambda: epoch(loader, step, args.batches))
        images[variant] = n
        if timed_run:
            setup_s[threads, variant].append(seconds_setup)
            rate[threads, variant].append(n / seconds)
        print(f"[{tag}] threads={threads} {variant:<11} {n} images in {seconds:.3f} s = "
              f"{n / seconds:,.0f} images/s (setup {seconds_setup:.3f} s)", flush=True)
    torch.set_num_threads(threads_before)
    runs = []
    for threads in args.threads:
        ratios = [a / b for a, b in zip(rate[threads, "medrobust"], rate[threads, "torchvision"])]
        runs.append({
            "torch_threads": threads,
            "variants": {v: {"description": LABELS[v], "images_per_s": summary(rate[threads, v]),
                             "setup_s": summary(setup_s[threads, v]), "images_per_s_repeats": rate[threads, v]}
                         for v in VARIANTS},
            "ratio_a_over_b": {**summary(ratios), "repeats": ratios},
        })
    return {
        "benchmark": "data_loading",
        "dataset": {"flag": args.flag, "size": 28, "split": "train", "root": args.root},
        "settings": {"batch_size": args.batch_size, "repeats": args.repeats, "warmup": args.warmup,
                     "batches": args.batches, "seed": args.seed, "num_workers": 0, "threads": args.threads},
        "images_per_epoch": images,
        "runs": runs,
        "environment": environment(),
    }


def main(argv=None) -> int:
    args = parse_args(argv)
    scope = f"first {args.batches} batches" if args.batches else "one full epoch"
    print(f"data path on {args.flag} 28 px train, batch {args.batch_size}, {scope}, torch threads "
          f"{', '.join(map(str, args.threads))}; {args.warmup} warm-up + {args.repeats} timed repeats, interleaved")
    result = measure(args)
    rows = []
    for run in result["runs"]:
        for v in VARIANTS:
            stats = run["variants"][v]
            rows.append([LABELS[v], run["torch_threads"], result["images_per_epoch"][v],
                         stats["images_per_s"]["median"], stats["images_per_s"]["min"], stats["images_per_s"]["max"],
                         stats["setup_s"]["median"]])
    print()
    print(format_table(["variant", "threads", "images", "images/s median", "min", "max", "setup s"], rows))
    print()
    for run in result["runs"]:
        ratio = run["ratio_a_over_b"]
        print(f"threads={run['torch_threads']}: ratio (a)/(b), median of {args.repeats} paired repeats: "
              f"{ratio['median']:.2f}x (range {ratio['min']:.2f}-{ratio['max']:.2f})")
    print("> 1 means medrobust's data path is faster. (a) also augments (flip + crop) and yields [0, 1] floats "
          "(normalization is in the model); (b) does no augmentation. 'setup s' (reading the npz) is not in images/s.")
    write_json(args.json, result)
    return 0


if __name__ == "__main__":
    run_main(main)
