"""The mCE baseline of an entry: which model its mean corruption error is measured against, recorded in the entry so
that entries whose mCE has different baselines (or none) never share a board (Entry.board_label).

`--baseline FILE` names an entry (or a robustness report) of the baseline model; `--baseline self` makes the entry its
own baseline (mCE 1 by definition): how the baseline entry itself joins the board of the entries measured against it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from core.errors import ConfigError

SELF = "self"


def baseline_identity(baseline: Optional[str], protocol_label: str) -> Optional[dict]:
    """{'name', 'checkpoint_sha256'} of the baseline a file names (None without one; `self` is filled in later by
    `own_baseline`). A baseline entry of another protocol version, or a file that does not record its checkpoint's
    hash, is refused in one line before any scoring."""
    if baseline is None or baseline == SELF:
        return None
    from benchmark.entry import BLOCK
    from evaluation.mce import load_record

    path, record = load_record(baseline, "baseline")
    block = record.extra.get(BLOCK) or {}
    sha256 = record.provenance.checkpoint_sha256
    if not sha256:
        raise ConfigError(f"baseline {path} does not record its checkpoint's sha256: give the baseline model's "
                          "benchmark entry (python -m benchmark evaluate)")
    if block:
        label = f"{block['protocol']['name']}@{block['protocol']['version']}"
        if label != protocol_label:
            raise ConfigError(f"baseline {path} was evaluated under {label}, this entry under {protocol_label}: "
                              "evaluate the baseline under the same protocol version")
    return {"name": block.get("name") or Path(path).name, "checkpoint_sha256": sha256}


def own_baseline(report: dict, name: str, sha256: str, checkpoint_name: str) -> dict:
    """The report's MedMNIST-C table with the mCE against itself (1 where the model errs at all; where it makes no
    error on a corruption the table keeps the reason instead, as BaselineComparison does), and the identity."""
    from evaluation.mce import mean_corruption_error

    table = report["corruptions"]
    try:
        result = mean_corruption_error(table, table)
    except ConfigError as err:
        result = {"error": str(err)}
    table["mce"] = {**result, "baseline": name, "baseline_checkpoint": checkpoint_name}
    return {"name": name, "checkpoint_sha256": sha256}


def name_in_table(report: dict, identity: dict) -> None:
    """The mCE's `baseline` as the baseline's name, not the path of its file: an entry's bytes do not depend on
    where the baseline lay."""
    mce = (report.get("corruptions") or {}).get("mce")
    if isinstance(mce, dict) and "baseline" in mce:
        mce["baseline"] = identity["name"]


def board_suffix(identity: Optional[dict]) -> str:
    """`+mce-1a2b3c4d` (the baseline checkpoint's hash) for a board label; '' for entries without an mCE."""
    return f"+mce-{identity['checkpoint_sha256'][:8]}" if identity else ""
