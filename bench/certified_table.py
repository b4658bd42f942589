"""The measured-certified-accuracy table of docs/certified.md, generated from result records (never typed by hand).

`python -m bench.certified_table RECORD...` prints one Markdown row per record: dataset, sigma, training epochs,
test images certified (of the split), clean balanced accuracy of the base classifier, certified balanced accuracy
at each radius the records carry, the abstention rate, seconds per certified image and the record's path.
`--intervals` adds a table of 95% percentile-bootstrap intervals over the certified test examples (the records'
per-example radii, evaluation.statistics.bootstrap, seed 0), so the intervals the docs quote come from a command too.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from bench.common import BenchError, Parser, run_main


def parse_args(argv=None):
    parser = Parser(description=__doc__.split("\n\n")[0],
                    epilog="Example: python -m bench.certified_table /work/runs/cert/*/checkpoints/*.robustness.json")
    parser.add_argument("records", nargs="+", help="result records (*.robustness.json) with a certified section")
    parser.add_argument("--out", help="also write the table here (Markdown)")
    parser.add_argument("--intervals", type=int, default=0, metavar="DRAWS",
                        help="also a table of 95%% bootstrap intervals over the certified examples (DRAWS resamples)")
    return parser.parse_args(argv)


def _epochs(record) -> str:
    """max_epochs and the certified checkpoint's epoch from the record's training config and checkpoint name
    (best-epoch=003: epoch 4): "30 (final)" when it is the last epoch, "10 (best: 4)" when an earlier one."""
    config = record.provenance.config or {}
    total = (config.get("trainer") or {}).get("max_epochs")
    best = re.search(r"epoch=(\d+)", Path(record.provenance.checkpoint or "").name)
    if not best:
        return f"{total}"
    epoch = int(best.group(1)) + 1
    return f"{total} (final)" if epoch == total else f"{total} (best: {epoch})"


def table(paths) -> str:
    """The Markdown table of the records at `paths`, sorted by dataset and sigma."""
    from evaluation.record import read_record
    from lightning_modules.metrics import MetricKey

    records = []
    for path in paths:
        record = read_record(path)
        if not record.certified:
            raise BenchError(f"{path}: the record has no certified section (train with certified.enabled true)")
        records.append((path, record))
    records.sort(key=lambda item: (item[1].provenance.dataset.get("flag", ""), item[1].certified["sigma"]))
    radii = sorted({(scores["radius"], label) for _, r in records for label, scores in r.certified["radii"].items()})
    head = ["dataset", "sigma", "epochs", "test images certified", "clean bacc",
            *[f"cert bacc r={radius:g}" for radius, _ in radii], "abstained", "s / image", "record"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for path, record in records:
        metrics, section, dataset = record.metrics(), record.certified, record.provenance.dataset
        cert = [metrics.get(MetricKey("test", "cert", "bacc", label)) for _, label in radii]
        clean = metrics.get(MetricKey("test", "clean", "bacc"))
        cells = [f"{dataset.get('flag')} {dataset.get('size')} px", f"{section['sigma']:g}", _epochs(record),
                 f"{section['n_examples']} of {dataset.get('n_examples')}", _fixed(clean),
                 *map(_fixed, cert), _fixed(section["abstention_rate"]), f"{section['seconds_per_image']:.2f}",
                 f"`{path}`"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def intervals(paths, draws: int = 2000) -> str:
    """A Markdown table: per record and radius, certified balanced accuracy with its 95% percentile bootstrap interval
    over the certified test examples (resampled together at every radius)."""
    from attacks.smoothing import certified_metrics
    from datamodules.info import dataset_info
    from evaluation.record import read_record
    from evaluation.statistics import bootstrap

    lines = ["| dataset | sigma | radius | cert bacc | 95% interval |", "|---|---|---|---|---|"]
    for path in paths:
        record = read_record(path)
        section, dataset = record.certified, record.provenance.dataset
        examples = section.get("per_example") if section else None
        if not examples:
            raise BenchError(f"{path}: the record has no per-example certified radii to resample")
        labels, predictions, radii = (np.asarray(examples[key]) for key in ("label", "prediction", "radius"))
        classes = dataset_info(dataset["flag"]).num_classes
        for scores in sorted(section["radii"].values(), key=lambda entry: entry["radius"]):
            radius = scores["radius"]

            def bacc(index, radius=radius):
                return certified_metrics(labels[index], predictions[index], radii[index], [radius],
                                         num_classes=classes).balanced_accuracy[0]

            result = bootstrap(bacc, len(labels), draws=draws, seed=0)
            lines.append(f"| {dataset.get('flag')} {dataset.get('size')} px | {section['sigma']:g} | {radius:g} | "
                         f"{result['value']:.3f} | [{result['low']:.2f}, {result['high']:.2f}] |")
    return "\n".join(lines) + "\n"


def _fixed(value) -> str:
    return "" if value is None else f"{value:.3f}"


def main(argv=None) -> int:
    args = parse_args(argv)
    text = table(args.records)
    if args.intervals:
        text += "\n" + intervals(args.records, args.intervals)
    print(text, end="")
    if args.out:
        from core.files import write_text_atomic

        write_text_atomic(Path(args.out), text)
    return 0


if __name__ == "__main__":
    run_main(main)
