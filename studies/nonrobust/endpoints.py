"""The study's pre-registered primary endpoints: one measure per finding and model, named in the config before any
result is seen (`endpoints: {primary: {d_rand: auroc, d_det: auroc, pgd_at - erm: corr_bacc@all}, correction:
holm}`) and applied to every dataset; results.md gives a verdict for these alone and labels every other number
descriptive.

Verdicts read Holm-adjusted p-values, not intervals at an adjusted level. Each endpoint's p-value is the test dual
to its interval (evaluation.statistics: the two-sided Student t test over seeds, the seed being the unit of
replication; with one seed, the bootstrap over test examples), so with a single endpoint the verdict is exactly the
interval's. Holm is a step-down procedure on those p-values: the level at which an endpoint is tested depends on
its rank among the others, so there is no one adjusted confidence level to print beside it (Bonferroni's 1 - a / m
is one, and Holm rejects everything it does, and more, at the same family-wise error). The unadjusted interval is
printed as the estimate's precision and labelled so. The family is every primary endpoint of every dataset.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from core.errors import ConfigError

from .. import corruption_drop, measures

CORRECTIONS = ("holm", "none")
FINDING_1_KINDS = ("d_rand", "d_det")
FINDINGS = {"1": "nonrobust features alone are useful",
            "2": "adversarial training raises balanced accuracy under corruption"}
#: measures a model's endpoint may name: every study measure but the D_det check against its own label (above
#: chance there would be evidence of robust features, not of finding 1)
MODEL_MEASURES = tuple(m for m in measures.MEASURES if m != "bacc_vs_new_label")


@dataclass(frozen=True)
class Endpoint:
    """One primary endpoint: a model (a real model, a constructed set, or a paired difference `a - b`), its measure,
    and the finding it decides ('1', '2', or '' for an endpoint of neither)."""

    model: str
    measure: str
    finding: str


def measure_choices(model: str, kinds: dict[str, str]) -> tuple:
    """The measures an endpoint on `model` may name: the study measures, and for a model trained on the real split
    (or a paired difference `a - b`) finding 2's MedMNIST-C measures too (measured where it has `corruptions: true`)."""
    if kinds.get(model, "real") == "real":
        return MODEL_MEASURES + tuple(corruption_drop.measure_names())
    return MODEL_MEASURES


def split(difference: str) -> tuple[str, str]:
    """(a, b) of a paired difference named `a - b`."""
    a, _, b = difference.partition(" - ")
    return a.strip(), b.strip()


def finding_of(model: str, kinds: dict[str, str], differences: dict[str, str]) -> str:
    """Finding 1 for a set built as D_rand or D_det, finding 2 for the robust minus the standard model."""
    if differences.get(model) == "roles":
        return "2"
    return "1" if kinds.get(model) in FINDING_1_KINDS else ""


def default_primary(kinds: dict[str, str], finding_2: Optional[str]) -> dict[str, str]:
    """The endpoints of a config that names none: test AUROC of every model trained on D_rand or D_det (at its last
    epoch), and absolute corrupted balanced accuracy of the robust minus the standard model over all corruptions
    (`finding_2`: that difference's name, None when the study does not measure it)."""
    out = {model: "auroc" for model, kind in kinds.items() if kind in FINDING_1_KINDS}
    if finding_2:
        out[finding_2] = f"corr_bacc@{corruption_drop.ALL}"
    return out


def check_endpoints(given, kinds: dict[str, str], differences: dict[str, str], finding_2: Optional[str]) -> dict:
    """endpoints: {primary: {MODEL: MEASURE}, correction: holm | none}, checked before any training: a measure the
    endpoint's kind of model does not have is one error line. `kinds` maps every model and constructed set to its
    kind (`real`, `d_rand`, ...), `differences` every paired difference `a - b` to where it comes from (`roles`,
    `comparisons`); an endpoint may also name `a - b` of any two models (paired like the others; `pairs` lists every
    difference the endpoints name). A model the study lacks (a `--set` that drops it) stays an endpoint that
    results.md reports as not measured. Without `primary`, the defaults (default_primary); `declared` says which."""
    if given is None:
        given = {}
    if not isinstance(given, dict) or set(given) - {"primary", "correction"}:
        raise ConfigError(f"endpoints takes primary ({{MODEL: MEASURE}}) and correction ({', '.join(CORRECTIONS)}), "
                          f"got {given!r}")
    correction = given.get("correction", "holm")
    if correction not in CORRECTIONS:
        raise ConfigError(f"endpoints.correction must be one of {', '.join(CORRECTIONS)}, got {correction!r}")
    declared = given.get("primary") is not None
    primary = given.get("primary") if declared else default_primary(kinds, finding_2)
    if not isinstance(primary, dict):
        raise ConfigError(f"endpoints.primary must map a model to one measure ({{d_rand: auroc}}), got {primary!r}")
    for model, measure in primary.items():
        if model not in differences and " - " in str(model) and set(split(model)) <= set(kinds):
            differences = {**differences, model: "endpoints"}  # a - b of two of the study's models: paired too
        if measure == "bacc_vs_new_label":
            raise ConfigError(f"endpoints.primary.{model}: bacc_vs_new_label is D_det's check against its own label "
                              "(above chance there means robust features were learned), not an endpoint of a finding")
        choices = measure_choices(model, kinds)
        if measure not in choices:
            raise ConfigError(f"endpoints.primary.{model}: unknown measure {measure!r} (choose from "
                              f"{', '.join(choices)})")
    endpoints = [Endpoint(model, measure, finding_of(model, kinds, differences)) for model, measure in primary.items()]
    pairs = {e.model: split(e.model) for e in endpoints if e.model in differences}
    return {"primary": endpoints, "correction": correction, "declared": declared, "pairs": pairs}


def measure_label(measure: str) -> str:
    """How results.md names a measure: the study measures' own words, finding 2's by family."""
    if measure in measures.MEASURES:
        return "test " + measures.MEASURES[measure][2]
    if measure == "clean_bacc":
        return "clean balanced accuracy"
    if measure == "reference_bacc":
        return "round-tripped clean balanced accuracy"
    kind, family = measure.split("@", 1)
    scope = "all corruptions" if family == corruption_drop.ALL else f"{family} corruptions"
    if kind == "corr_drop":
        return f"corrupted minus round-tripped clean balanced accuracy ({scope})"
    return f"absolute corrupted balanced accuracy ({scope})"


def null_of(endpoint: Endpoint, num_classes: int, difference: bool) -> float:
    """What an endpoint is compared with: 0 for a paired difference or a drop, else chance (AUROC 0.5, balanced
    accuracy 1 / C)."""
    if difference or endpoint.measure.startswith("corr_drop@"):
        return 0.0
    if endpoint.measure in measures.MEASURES:
        return measures.chance_of(endpoint.measure, num_classes)
    return 1.0 / num_classes


def p_value(cell: dict, null: float) -> float:
    """The endpoint's p-value, dual to its interval: t test over the per-seed values (a cell over seeds), else
    the bootstrap over test examples (studies.nonrobust.results.measure_cell keeps both)."""
    from evaluation.statistics import bootstrap_p_value, seed_p_value

    if cell.get("over") == "seeds":
        return seed_p_value(cell["values"], null)
    return bootstrap_p_value(cell.get("draws", []), null)


def verdict(p_adjusted: float, mean: float, null: float, alpha: float) -> str:
    """holds (adjusted p <= alpha, estimate above the null), does not hold (adjusted p <= alpha below it, or every
    seed exactly at it), else undecided at this sample size."""
    import math

    if math.isnan(p_adjusted):
        return measures.UNDECIDED
    if p_adjusted >= 1.0 and mean == null:
        return measures.NOT_HOLDS
    if p_adjusted <= alpha:
        return measures.HOLDS if mean > null else measures.NOT_HOLDS
    return measures.UNDECIDED


def evaluate(plan: dict, datasets: list[str], num_classes: dict[str, int], cells: dict, drops: dict,
             level: float) -> list[dict]:
    """Every primary endpoint on every dataset: its cell (from `cells`, else finding 2's `drops`), null, p-value,
    adjusted p-value (Holm across all of them, or none) and verdict. An endpoint the study did not measure keeps
    cell None and is left out of the correction."""
    from evaluation.statistics import holm

    out = []
    for d in datasets:
        for endpoint in plan["primary"]:
            key = (d, endpoint.model)
            cell = (cells.get(key) or {}).get(endpoint.measure) or (drops.get(key) or {}).get(endpoint.measure)
            null = null_of(endpoint, num_classes[d], " - " in endpoint.model)
            p = p_value(cell, null) if cell else float("nan")
            out.append({"dataset": d, "endpoint": endpoint, "cell": cell, "null": null, "p": p})
    adjusted = holm([r["p"] for r in out]) if plan["correction"] == "holm" else [r["p"] for r in out]
    for row, p_adj in zip(out, adjusted):
        row["p_adjusted"] = p_adj
        row["verdict"] = verdict(p_adj, row["cell"]["mean"], row["null"], 1 - level) if row["cell"] else None
    return out
