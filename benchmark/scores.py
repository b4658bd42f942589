"""An entry's numbers as the leaderboard and the exports show them, read through its record's metric keys: one row
per entry and threat model (clean, AutoAttack and PGD per epsilon, MedMNIST-C, calibration, randomized smoothing's
certified balanced accuracy per L2 radius)."""
from __future__ import annotations

import math
from typing import Any, Optional

from attacks.threat_model import format_epsilon
from benchmark.entry import Entry
from lightning_modules.metrics import MetricKey, parse_radius

CALIBRATION = ("ece", "nll", "brier")
THREAT_NAMES = {"linf": "Linf", "l2": "L2"}  # RobustBench's threat-model names


def number(value) -> Optional[float]:
    """A finite float, else None (NaN calibration of an empty subset, a missing score)."""
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def epsilons(entry: Entry, norm: str) -> list[tuple[str, float]]:
    """(label, epsilon) of the threat model's AutoAttack sets, smallest first."""
    sets = entry.threat_record(norm).autoattack
    return sorted(((label, s.epsilon) for label, s in sets.items()), key=lambda pair: pair[1])


def headline_epsilon(entry: Entry, norm: str) -> tuple[str, float]:
    """The largest epsilon of a threat model: the one its leaderboard ranks by (8/255 for L-inf, 0.5 for L2)."""
    return epsilons(entry, norm)[-1]


def certified_radii(entry: Entry) -> dict[str, float]:
    """{radius label: L2 radius} of the record's certified section, smallest first ({} without one)."""
    section = entry.record.certified or {}
    radii = {label: float(scores.get("radius", parse_radius(label))) for label, scores in
             (section.get("radii") or {}).items()}
    return dict(sorted(radii.items(), key=lambda pair: pair[1]))


def row(entry: Entry, norm: str) -> dict[str, Any]:
    """Every number the page and the exports show for one entry under one threat model."""
    metrics = entry.metrics(norm)

    def get(kind: str, metric: str, condition=None) -> Optional[float]:
        return number(metrics.get(MetricKey("test", kind, metric, condition)))

    out: dict[str, Any] = {"name": entry.name, "model": entry.block.get("model", {}), "standard": entry.standard,
                           "protocol": entry.protocol_label, "flags": entry.flags, "norm": norm}
    for metric in ("bacc", "acc", "auroc", *CALIBRATION):
        out[f"clean_{metric}"] = get("clean", metric)
    per_eps = []
    for label, eps in epsilons(entry, norm):
        per_eps.append({"label": label, "epsilon": eps, "eps": format_epsilon(eps),
                        **{f"aa_{m}": get("aa", m, label) for m in ("bacc", "acc", "auroc", *CALIBRATION)},
                        **{f"pgd_{m}": get("adv", m, label) for m in ("bacc", "acc")}})
    out["epsilons"] = per_eps
    headline = per_eps[-1]
    out.update({"eps": headline["eps"], "aa_bacc": headline["aa_bacc"], "aa_acc": headline["aa_acc"],
                **{f"aa_{m}": headline[f"aa_{m}"] for m in CALIBRATION}})
    record = entry.record
    out["corr_bacc"], out["corr_be"], out["corr_rbe"], out["corr_mce"] = (
        get("corr", "bacc"), get("corr", "be"), get("corr", "rbe"), get("corr", "mce"))
    table = record.corruptions or {}
    out["corruptions"] = {name: number(value) for name, value in (table.get("corruption_bacc") or {}).items()}
    # certified L2 radii hold under every threat model's board: the section is the record's own, not per threat model
    out["cert_radii"] = certified_radii(entry)
    out["cert_bacc"] = {label: get("cert", "bacc", label) for label in out["cert_radii"]}
    out["cert_sigma"] = number((record.certified or {}).get("sigma"))
    out["cert_abstain"] = get("cert", "abstain")
    out["n_examples"] = (record.provenance.dataset or {}).get("n_examples")
    out["forward_passes"] = (entry.block.get("forward_passes") or {}).get("per_prediction", 1)
    return out
