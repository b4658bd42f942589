"""python -m studies reproduce CONFIG --out DIR: run (or reuse) every step of a study and write its tables and
figures. The config's `study:` key names the study (default: nonrobust_features)."""
from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Optional, Sequence

from core.cli import Parser
from core.errors import ConfigError, MedRobustError

from . import framework

EXAMPLES = """examples:
  python -m studies reproduce configs/study/quick.yaml --out runs/study/quick
  python -m studies reproduce configs/study/quick.yaml --out runs/study/quick --set seeds=[0,1,2]
  python -m studies reproduce configs/study/quick.yaml --out runs/study/quick --dataset breastmnist --set seeds=[3]
"""


def build_parser() -> Parser:
    parser = Parser(prog="python -m studies", description="Reproduce a published robustness study in one command.",
                    epilog=EXAMPLES, formatter_class=__import__("argparse").RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    reproduce = commands.add_parser("reproduce", help="run or resume a study config (configs/study/*.yaml)",
                                    epilog=EXAMPLES, formatter_class=parser.formatter_class)
    reproduce.add_argument("config", help="study YAML (configs/study/quick.yaml, paper.yaml, causes.yaml, ...)")
    reproduce.add_argument("--out", required=True, help="folder for every step's run and the results (reused on rerun)")
    reproduce.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                           help="override a study key (YAML value): --set seeds=[0,1] --set train.trainer.max_epochs=2")
    reproduce.add_argument("--dataset", dest="datasets", action="append", default=[], metavar="FLAG",
                           help="run only this one of the config's datasets, as the config gives it (repeatable; a "
                                "later run without --dataset reuses its steps and tabulates every dataset)")
    return parser


def reproduce(config: str | Path, out: str | Path, overrides: Sequence[str] = (), log=print,
              datasets: Sequence[str] = ()) -> list[dict]:
    """Load, check and run a study config (studies.framework: its `study:` key names the kind), on `datasets`
    alone where given (MedMNIST flags of the config's datasets); returns its results rows."""
    study = framework.load(config, overrides)
    if datasets:
        study.datasets = only_datasets(study.datasets, datasets)
    return study.reproduce(Path(out), log=log)


def only_datasets(entries: list[dict], flags: Sequence[str]) -> list[dict]:
    """The config's dataset entries whose flag is one of `flags` (each must be one of them)."""
    from datamodules.info import dataset_info

    known = {dataset_info(entry["flag"]).flag for entry in entries}
    wanted = {dataset_info(flag).flag for flag in flags}
    if wanted - known:
        raise ConfigError(f"--dataset {', '.join(sorted(wanted - known))}: not among the config's datasets "
                          f"({', '.join(sorted(known))})")
    return [entry for entry in entries if dataset_info(entry["flag"]).flag in wanted]


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    from core.quiet import quiet_third_party

    quiet_third_party()
    try:
        started = time.time()
        rows = reproduce(args.config, args.out, args.overrides, datasets=args.datasets)
    except MedRobustError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print((Path(args.out) / "results.md").read_text())
    figures = sorted(p.name for p in Path(args.out).glob("*.png"))
    print(f"done in {time.time() - started:.0f} s: {len(rows)} result rows; results in {args.out}/results.csv, "
          "results.md" + "".join(f", {name}" for name in figures))
    return 0
