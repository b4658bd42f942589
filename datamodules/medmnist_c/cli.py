"""Command line: `python -m datamodules.medmnist_c build --flag ... --size ... --root ...` prebuilds a cache."""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

from core.cli import Parser
from core.errors import MedRobustError
from . import __doc__ as _package_doc
from .builder import build
from .cache import DEFAULT_CACHE
from .corruptors import SOURCES


def _parser() -> argparse.ArgumentParser:
    parser = Parser(prog="python -m datamodules.medmnist_c", description=_package_doc.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    b = commands.add_parser("build", help="prebuild the MedMNIST-C cache of one dataset and size")
    b.add_argument("--flag", required=True, help="MedMNIST 2D flag, e.g. pneumoniamnist")
    b.add_argument("--size", type=int, default=28, help="image size: 28, 64, 128 or 224 (default 28)")
    b.add_argument("--root", required=True, help="folder with the official MedMNIST npz files")
    b.add_argument("--cache", default=DEFAULT_CACHE, help=f"cache folder (default {DEFAULT_CACHE})")
    b.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    b.add_argument("--seed", type=int, default=0, help="generation seed (default 0)")
    b.add_argument("--source", choices=SOURCES, default="upsample",
                   help="upsample the size-px test images (default), use the official 224 px file, or resample "
                        "official pre-built MedMNIST-C files (--prebuilt)")
    b.add_argument("--prebuilt", default=None, help="folder of official MedMNIST-C files ({folder}/{flag}/*.npz)")
    b.add_argument("--corruptions", default=None, help="comma-separated subset (default: all of the flag's)")
    b.add_argument("--no-verify", action="store_true", help="skip the MD5 check of the clean files")
    b.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    source = "prebuilt" if args.prebuilt is not None and args.source == "upsample" else args.source
    try:
        report = build(args.flag, args.size, args.root, args.cache, seed=args.seed, source=source,
                       prebuilt_root=args.prebuilt,
                       corruptions=args.corruptions.split(",") if args.corruptions else None,
                       workers=args.workers, progress=not args.quiet, verify=not args.no_verify)
    except MedRobustError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{report.flag} {report.size}px ({report.protocol}): built {len(report.built)}, reused "
          f"{len(report.reused)} corruptions in {report.seconds:.1f} s -> {report.folder}")
    return 0
