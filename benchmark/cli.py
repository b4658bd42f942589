"""The benchmark's command line: `protocols`, `evaluate`, `export`, `build`; every input error is one `error:` line."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional, Sequence

from core.cli import Parser
from core.errors import MedRobustError


def _parser() -> Parser:
    parser = Parser(prog="python -m benchmark", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    listing = sub.add_parser("protocols", help="list the protocols (name, version, dataset, size)")
    listing.add_argument("--new", nargs=2, metavar=("FLAG", "SIZE"),
                         help="write benchmark/protocols/FLAG_SIZE.yaml from the template")

    evaluate = sub.add_parser("evaluate", help="score a checkpoint under a protocol: one entry in --out")
    evaluate.add_argument("checkpoint", help="a Lightning checkpoint written by train.py")
    evaluate.add_argument("--protocol", required=True, help="NAME, NAME@VERSION or a protocol YAML file")
    evaluate.add_argument("--out", required=True, help="folder for NAME.entry.json and NAME.timing.json")
    evaluate.add_argument("--root", help="folder with the MedMNIST npz files (default: medmnist's ~/.medmnist)")
    evaluate.add_argument("--cache", help="MedMNIST-C cache folder (default: the project's)")
    evaluate.add_argument("--baseline", help="an entry or robustness report to compute the mCE against")
    evaluate.add_argument("--name", help="the entry's name (default: CLASS-ARCH-SHA8)")
    evaluate.add_argument("--workers", type=int, help="processes building MedMNIST-C")
    evaluate.add_argument("--additional-data", action="store_true", help="the model saw data beyond the train split")
    evaluate.add_argument("--quick", action="store_true", help="few examples and steps: a non-standard entry")
    evaluate.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                          help="change a protocol setting (the entry is non-standard), e.g. --set pgd.steps=20")

    export = sub.add_parser("export", help="RobustBench model_info JSON and a Hugging Face model card per entry")
    export.add_argument("entries", nargs="+", help="entry files or folders of entries")
    export.add_argument("--out", required=True)

    build = sub.add_parser("build", help="the static leaderboard pages (site/index.html) from entries")
    build.add_argument("entries", nargs="+", help="entry files or folders of entries")
    build.add_argument("--out", required=True)
    return parser


def _protocols(args) -> None:
    from benchmark.protocol import PROTOCOLS, protocol_files, protocol_text, read_protocol, template

    if args.new:
        from core.errors import ConfigError

        flag, size = args.new[0], args.new[1]
        if not size.isdigit():
            raise ConfigError(f"SIZE must be 28, 64, 128 or 224, got {size!r}")
        settings = template(flag, int(size))
        path = PROTOCOLS / f"{settings['flag']}_{settings['size']}.yaml"
        if path.exists():
            raise ConfigError(f"{path} exists: protocols are not overwritten (their version would change)")
        from core.files import write_text_atomic

        write_text_atomic(path, protocol_text(flag, int(size)))
        print(path)
        return
    print(f"{'protocol':<24} {'version':<13} {'dataset':<16} size  file")
    for path in protocol_files():
        p = read_protocol(path)
        print(f"{p.name:<24} {p.version:<13} {p.flag:<16} {p.size:<5} {path.relative_to(PROTOCOLS.parent.parent)}")


def _evaluate(args) -> None:
    from benchmark.entry import write_entry
    from benchmark.evaluate import evaluate_checkpoint
    from benchmark.protocol import load_protocol, quick_overrides
    from datamodules.medmnist_c import DEFAULT_CACHE

    protocol = load_protocol(args.protocol)
    protocol = protocol.with_overrides([*(quick_overrides(protocol.flag) if args.quick else []), *args.set])
    entry, timing = evaluate_checkpoint(args.checkpoint, protocol, root=args.root, cache=args.cache or DEFAULT_CACHE,
                                        baseline=args.baseline, name=args.name, workers=args.workers,
                                        additional_data=args.additional_data)
    path = write_entry(args.out, entry, timing)
    for flag in entry.flags:
        print(f"screen: {flag}", file=sys.stderr)
    standard = "standard" if entry.standard else f"NON-STANDARD ({'; '.join(entry.block['nonstandard'])})"
    print(f"{path} ({entry.protocol_label}, {standard}, {timing['seconds']} s)")


def _export(args) -> None:
    from benchmark.entry import collect_entries
    from benchmark.exports import write_exports

    for entry in collect_entries(args.entries):
        for path in write_exports(entry, Path(args.out)):
            print(path)


def _build(args) -> None:
    from benchmark.entry import collect_entries
    from benchmark.site import build_site

    print(build_site(collect_entries(args.entries), Path(args.out)))


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parser().parse_args(argv)
    try:
        {"protocols": _protocols, "evaluate": _evaluate, "export": _export, "build": _build}[args.command](args)
    except MedRobustError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0
