"""`python -m constructions construct ...`: build D_rand, D_det, D_NR or D_R as a MedMNIST-format npz."""
from __future__ import annotations

import argparse
import json
import sys
import warnings
from typing import Optional, Sequence

from core.cli import Parser
from core.errors import MedRobustError
from .builder import KINDS, Settings
from .dataset import construct_file, parts_path, sidecar_path


def parser() -> argparse.ArgumentParser:
    top = Parser(prog="python -m constructions", description=__doc__)
    commands = top.add_subparsers(dest="command", required=True, parser_class=Parser)
    p = commands.add_parser(
        "construct", help="build a constructed training set (Ilyas et al. 2019)",
        description="Replace the training split of a MedMNIST dataset by a constructed one (float32 images in "
        "[0, 1]); val and test are copied untouched. Finished batches are kept in OUT.parts/ so an interrupted "
        "run resumes where it stopped.",
    )
    p.add_argument("--kind", required=True, help=f"one of {', '.join(KINDS)}")
    p.add_argument("--ckpt", required=True, help="source checkpoint written by train.py (ERM; L2 PGD-AT for d_r)")
    p.add_argument("--flag", required=True, help="MedMNIST dataset, e.g. pneumoniamnist (single-label only)")
    p.add_argument("--size", type=int, default=28, help="image size: 28, 64, 128 or 224 (default 28)")
    p.add_argument("--root", default=None, help="folder of the official npz files (default ~/.medmnist)")
    p.add_argument("--out", required=True, help="output .npz; a sidecar .json is written beside it")
    p.add_argument("--epsilon", default="0.5",
                   help="L2 radius at 32x32x3 for d_rand/d_det, scaled by sqrt(d/3072) (default 0.5); auto: the "
                   "smallest of 0.5, 1, 2, 4 at which the source assigns 95%% of 256 sampled training images to their "
                   "new label (step 0.2 x that radius)")
    p.add_argument("--step", default=None, help="L2 step size at 32x32x3, scaled the same (default 0.1)")
    p.add_argument("--steps", type=int, default=None,
                   help="iterations (default 100 for d_rand/d_det, 1000 for d_nr/d_r)")
    p.add_argument("--no-scale", action="store_true", help="use --epsilon and --step as given, not scaled to the image")
    p.add_argument("--random-start", action="store_true", help="start PGD at a random point of the ball")
    p.add_argument("--batch-size", type=int, default=256, help="images per batch (default 256)")
    p.add_argument("--limit", type=int, default=None, help="only the first N training images (quick runs)")
    p.add_argument("--seed", type=int, default=0, help="seed of the targets, start images and random starts")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output and discard kept batches")
    p.add_argument("--no-verify-md5", action="store_true", help="skip the MD5 check of the official file")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return top


def _show_warning(message, category, filename, lineno, file=None, line=None):
    print(f"warning: {message}", file=sys.stderr)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parser().parse_args(argv)
    warnings.showwarning = _show_warning
    try:
        settings = Settings(epsilon=args.epsilon, step=args.step, steps=args.steps, scale=not args.no_scale,
                            random_start=args.random_start, batch_size=args.batch_size)
        sidecar = construct_file(
            args.kind, args.ckpt, args.flag, args.out, size=args.size, root=args.root, settings=settings,
            limit=args.limit, seed=args.seed, overwrite=args.overwrite, verify_md5=not args.no_verify_md5,
            device=args.device, progress=not args.no_progress,
        )
    except MedRobustError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"interrupted: finished batches are kept in {parts_path(args.out)}; rerun the same command to resume",
              file=sys.stderr)
        return 130
    build = sidecar["build"]
    print(f"wrote {args.out} and {sidecar_path(args.out)}: {sidecar['counts']['train']} {sidecar['kind']} images, "
          f"{sidecar['assigned_share']:.1%} assigned to their new label by the source model, "
          f"{build['images_per_second']} images/s on {build['device']}")
    print(json.dumps({"resolved": sidecar["resolved"], "stats": sidecar["stats"], **(
        {"budget": sidecar["budget"]} if "budget" in sidecar else {})}))
    return 0
