"""Mean corruption error against a baseline model: `python -m evaluation.mce REPORT.json --baseline BASE.json`.

The ImageNet-C definition (Hendrycks & Dietterich 2019) on two robustness reports' MedMNIST-C tables: per
corruption c, the model's errors summed over the severities s divided by the baseline model's,
    CE_c = sum_s E(model, c, s) / sum_s E(baseline, c, s),    mCE = mean over corruptions of CE_c,
with E the balanced error, 1 - balanced accuracy (the project's headline metric; BE and rBE use the same error).
Below 1: fewer errors under corruption than the baseline. The baseline is any robustness report of the same
dataset, image size, MedMNIST-C protocol and severities that covers the model's corruptions: the ERM run of a
study, or the ERM point of a sweep (`--baseline` also takes a run folder, whose best checkpoint's report is read;
`python -m sweeps status` lists each trial's run folder). BE / rBE against medmnistc's AlexNet stay beside it.
`--write` stores the result in REPORT.json under `corruptions.mce`.
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Optional, Sequence

from core.cli import Parser
from core.errors import ConfigError, MedRobustError
from evaluation.record import ResultRecord, read_record, write_record


def load_record(path, what: str = "report") -> tuple[Path, ResultRecord]:
    """(file, record): a result record (evaluation.record) with a MedMNIST-C table; a run folder gives its best
    checkpoint's record."""
    path = Path(path).expanduser()
    if path.is_dir():
        from evaluation.runs import read_run

        report = read_run(path).report
        if report is None:
            raise ConfigError(f"{what} run folder {path} has no robustness report beside its best checkpoint "
                              "(test the run first)")
        path = report
    if not path.is_file():
        raise ConfigError(f"{what} {path} not found: give a robustness report (*.robustness.json) or a run folder")
    try:
        record = read_record(path)
    except ConfigError as err:
        raise ConfigError(f"{what}: {err}") from None
    if not isinstance((record.corruptions or {}).get("bacc"), dict) or not record.corruptions["bacc"]:
        raise ConfigError(f"{what} {path} has no MedMNIST-C table (`corruptions`): test it with "
                          "RobustnessCallback corruption_report: true")
    return path, record


def load_report(path, what: str = "report") -> tuple[Path, dict]:
    """(file, report as JSON): `load_record`'s record in the report's form, for readers of its sections."""
    path, record = load_record(path, what)
    return path, record.to_dict()


def mean_corruption_error(table: dict, baseline: dict, corruptions: Optional[Sequence[str]] = None) -> dict:
    """{'mce', 'ce': {c: CE_c}, 'errors': {c: summed model errors}, 'baseline_errors': {...}, ...} from two MedMNIST-C
    tables (`CorruptionScores.to_dict()`); `corruptions` defaults to the model's. ConfigError for tables that
    do not measure the same thing."""
    for field, name in (("flag", "dataset"), ("size", "image size"), ("protocol", "MedMNIST-C protocol")):
        if table.get(field) != baseline.get(field):
            raise ConfigError(f"the baseline is of another {name}: {baseline.get(field)!r}, the model's "
                              f"{table.get(field)!r}; CE compares errors on the same corrupted images")
    if list(table.get("severities", ())) != list(baseline.get("severities", ())):
        raise ConfigError(f"the baseline was scored at severities {baseline.get('severities')}, the model at "
                          f"{table.get('severities')}: CE sums errors over the same severities")
    corruptions = list(table["bacc"] if corruptions is None else corruptions)
    missing = [c for c in corruptions if c not in baseline["bacc"]]
    if missing:
        raise ConfigError(f"the baseline has no scores for {', '.join(missing)} (it has "
                          f"{', '.join(baseline['bacc'])}): score it on the model's corruptions")
    unknown = [c for c in corruptions if c not in table["bacc"]]
    if unknown:
        raise ConfigError(f"the model has no scores for {', '.join(unknown)}")
    errors = {c: float(sum(1.0 - b for b in table["bacc"][c])) for c in corruptions}
    base = {c: float(sum(1.0 - b for b in baseline["bacc"][c])) for c in corruptions}
    perfect = [c for c, e in base.items() if e <= 0]
    if perfect:
        raise ConfigError(f"the baseline makes no error on {', '.join(perfect)}: CE is undefined there")
    ce = {c: errors[c] / base[c] for c in corruptions}
    return {"mce": float(sum(ce.values()) / len(ce)), "ce": ce, "errors": errors, "baseline_errors": base,
            "corruptions": corruptions, "severities": list(table["severities"]),
            "error": "balanced error (1 - balanced accuracy), summed over severities"}


def mce_between(report_path, baseline_path) -> dict:
    """The mCE of the report at `report_path` against the one at `baseline_path` (or a run folder), with both named."""
    _, record = load_record(report_path, "report")
    baseline_file, baseline = load_record(baseline_path, "baseline")
    result = mean_corruption_error(record.corruption_table(), baseline.corruption_table())
    return {**result, "baseline": str(baseline_file), "baseline_checkpoint": baseline.provenance.checkpoint,
            "baseline_model": baseline.provenance.model.get("class")}


def format_mce(result: dict, table: dict, digits: int = 3) -> str:
    """Per corruption: the summed errors of model and baseline, CE, and the AlexNet BE / rBE beside; then the means."""
    width = max(len("corruption"), *(len(c) for c in result["corruptions"]))
    number = f"{{:>{digits + 8}.{digits}f}}"
    heads = ("sum E", "sum E base", "CE", "BE", "rBE")
    lines = [f"mCE against {result['baseline']} ({table.get('flag')}, {table.get('size')} px, "
             f"{table.get('protocol')}, severities {result['severities']}; E = balanced error)",
             f"{'corruption':<{width}}" + "".join(f"{h:>{digits + 8}}" for h in heads)]
    lines.append("-" * len(lines[-1]))
    for c in result["corruptions"]:
        values = (result["errors"][c], result["baseline_errors"][c], result["ce"][c],
                  table.get("be", {}).get(c, math.nan), table.get("rbe", {}).get(c, math.nan))
        lines.append(f"{c:<{width}}" + "".join(number.format(v) for v in values))
    lines.append("-" * len(lines[1]))
    pad = " " * (2 * (digits + 8))
    means = (result["mce"], table.get("mean_be", math.nan), table.get("mean_rbe", math.nan))
    lines.append(f"{'mean':<{width}}{pad}" + "".join(number.format(v) for v in means))
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = Parser(prog="python -m evaluation.mce", description=__doc__.split("\n\n")[0])
    parser.add_argument("report", help="robustness report (*.robustness.json) with a MedMNIST-C table")
    parser.add_argument("--baseline", required=True,
                        help="the baseline model's robustness report, or its run folder (the ERM point of a sweep)")
    parser.add_argument("--write", action="store_true", help="store the result in REPORT under corruptions.mce")
    parser.add_argument("--json", action="store_true", help="print the result as JSON instead of a table")
    args = parser.parse_args(argv)
    try:
        result = mce_between(args.report, args.baseline)
        path, record = load_record(args.report)
        if args.write:
            record.mce = result
            write_record(path, record)
    except MedRobustError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2) if args.json else format_mce(result, record.corruption_table()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
