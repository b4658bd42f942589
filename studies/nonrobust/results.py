"""The study's results rows and cells: one results.csv row per trained model (read from its result record), the
statistics over seeds of every measure, finding 2's paired robust-minus-standard drops, and how models are named
and ordered in the tables."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import numpy as np

from datamodules.info import MULTILABEL, dataset_info
from evaluation.record import read_record
from evaluation.statistics import percentile_interval
from lightning_modules.metrics import MetricKey

from .. import corruption_drop, measures
from .config import ROLES, STATISTICS, Study, difference_of

DIFFERENCE = difference_of(ROLES)


def roles_of(study: Optional[Study]) -> dict:
    """The study's model roles (today's erm and pgd_at without a study)."""
    return study.roles if study is not None else dict(ROLES)


def result_row(dataset: dict, model: str, kind: str, seed: int, summary: dict, measured: Optional[dict] = None,
               construction: Optional[str] = None) -> dict:
    """One results.csv row: test metrics of one model (from its robustness report when there is one) and, with
    `measured` ({'measures': studies.measures.draws(...), 'diagnostics', 'notes'}), every study measure with its
    interval over test examples and the constructed model's diagnostics."""
    info = dataset_info(dataset["flag"])
    row: dict[str, Any] = {"dataset": info.flag, "size": dataset.get("size", 28), "model": model, "kind": kind,
                           "construction": construction or ("real" if kind == "real" else model), "seed": seed,
                           "chance_bacc": 1.0 / info.num_classes if info.task != MULTILABEL else 0.5}
    record = None
    if summary.get("report") and Path(summary["report"]).is_file():
        record = read_record(summary["report"])
    tested = record.metrics() if record is not None else {}
    logged = summary.get("metrics") or {}
    for metric in ("bacc", "acc"):
        key = MetricKey("test", "clean", metric)
        row[f"clean_{metric}"] = tested.get(key, logged.get(str(key)))
    if measured:
        level = measured.get("level", 0.95)
        for name, entry in measured["measures"].items():
            low, high = percentile_interval(entry["draws"], level)
            row[name], row[f"{name}_low"], row[f"{name}_high"] = entry["value"], low, high
        for name, note in (measured.get("notes") or {}).items():
            row[name] = note
        row.update(measured.get("diagnostics") or {})
    attacked = [key for key in tested if key.kind in ("adv", "aa") and key.metric == "bacc"]
    for key in sorted(attacked, key=MetricKey.sort_key):
        row[key.unstaged()] = tested[key]
    table = record.corruptions if record is not None else None
    if table:
        row["corr_bacc"] = tested[MetricKey("test", "corr", "bacc")]
        row["corr_be"] = tested.get(MetricKey("test", "corr", "be"))
        row["corr_rbe"] = tested.get(MetricKey("test", "corr", "rbe"))
        reference = table.get("roundtrip_bacc") or table.get("clean_bacc")
        row["corr_clean_reference_bacc"] = reference
        for key in column_keys(tested, "corr", "bacc"):
            row[key.unstaged()] = tested[key]
            row[MetricKey("test", "corr", "delta", key.condition).unstaged()] = tested[key] - reference
    return row


def column_keys(columns, kind: str, metric: str) -> list[MetricKey]:
    """The metric keys among study columns (`corr_bacc@noise`, `adv_bacc@4_255`, ...: MetricKey without a stage)
    of one kind and metric with a condition, in the order they come."""
    keys = [MetricKey.try_parse(column, "test") for column in columns if isinstance(column, (str, MetricKey))]
    found = [key for key in keys if key and key.kind == kind and key.metric == metric and key.condition is not None]
    return list(dict.fromkeys(found))


def drop_columns(drops: dict, level: float) -> dict:
    """results.csv columns of one model's drops: `corr_drop@F`, `corr_drop@F_low`, `corr_drop@F_high`."""
    out = {}
    for name, entry in drops.items():
        if name.startswith("corr_drop@"):
            out[name] = entry["value"]
            out[f"{name}_low"], out[f"{name}_high"] = percentile_interval(entry["draws"], level)
    return out


def measure_cell(per_seed: list[dict], level: float, over_seeds: bool) -> dict:
    """studies.measures.cell of one measure over a cell's seeds, with what its endpoint test needs: `over` (seeds or
    examples), the per-seed `values`, and the mean over seeds of the bootstrap `draws` (an interval over examples)."""
    out = measures.cell(per_seed, level, over_seeds)
    out["over"] = "seeds" if over_seeds and len(per_seed) > 1 else "examples"
    out["values"] = [m["value"] for m in per_seed]
    if out["over"] == "examples":
        out["draws"] = np.stack([m["draws"] for m in per_seed]).mean(axis=0)
    return out


def paired(per_model: dict, pairs: dict) -> dict:
    """{(dataset, 'a - b'): per-seed a - b draw by draw} for every pair {name: (a, b)} both of whose models were
    measured on the same seeds of a dataset: paired by seed and, within a seed, over the same resampled test
    examples (every model's draws resample the same indices: the paired bootstrap over examples)."""
    out = {}
    for dataset in dict.fromkeys(key[0] for key in per_model):
        for name, (a, b) in pairs.items():
            first, second = per_model.get((dataset, a)), per_model.get((dataset, b))
            if first and second and len(first) == len(second):
                out[(dataset, name)] = [corruption_drop.difference(x, y) for x, y in zip(first, second)]
    return out


def pairs_of(study: Optional[Study]) -> dict:
    """{`a - b`: (a, b)}: the study's paired differences (finding 2's robust minus standard model without one)."""
    if study is not None:
        return study.pairs()
    return {DIFFERENCE: (ROLES["robust"], ROLES["standard"])}


def corruption_cells(corruption_draws: dict, study: Optional[Study] = None) -> dict:
    """{(dataset, model): {measure: cell}} of finding 2's measures, and {(dataset, 'pgd_at - erm'): ...} (robust
    minus standard model) from the paired per-seed differences when both models were measured on the same seeds."""
    level = study.statistics["level"] if study else STATISTICS["level"]
    over_seeds = study.over_seeds if study else True
    roles = roles_of(study)
    pair = {difference_of(roles): (roles["robust"], roles["standard"])}
    per_model = {**corruption_draws, **paired(corruption_draws, pair)}
    return {key: {m: measure_cell([d[m] for d in per_seed], level, over_seeds) for m in per_seed[0]}
            for key, per_seed in per_model.items()}


def cell_statistics(draws: dict, study: Optional[Study] = None) -> dict:
    """{(dataset, model): {measure: mean, sd, interval, seeds}} from every seed's bootstrap draws, and the same for
    every paired difference `a - b` of the study (finding 2's pair, `comparisons`)."""
    level = study.statistics["level"] if study else STATISTICS["level"]
    over_seeds = study.over_seeds if study else True
    out = {}
    for key, per_seed in {**draws, **paired(draws, pairs_of(study))}.items():
        names = [m for m in measures.MEASURES if all(m in d for d in per_seed)]
        out[key] = {m: measure_cell([d[m] for d in per_seed], level, over_seeds) for m in names}
    return out


def curve_on(rows: list[dict], dataset: str, curve: list[str]) -> list[str]:
    """The models of the matched-accuracy `curve` (in its order) that have rows on `dataset`: the ones it trained."""
    return [m for m in curve if any(r["dataset"] == dataset and r["model"] == m for r in rows)]


def matched_accuracy(rows: list[dict], dataset: str, standard: str, curve: list[str], level: float) -> dict:
    """Finding 2 at matched clean accuracy on `dataset`, seed by seed: the robust models' curve of (clean, corrupted)
    balanced accuracy over training epsilon (`curve`, increasing) read at the standard model's clean balanced
    accuracy (corruption_drop.at_matched_clean), minus the standard model's corrupted balanced accuracy. The curve
    is the models of `curve` trained on `dataset` (a dataset's `models:` may leave some out).
    {'curve': those models, 'per_seed': {seed: difference or None (not reachable)}, 'cell': t interval over the
    reachable seeds}."""
    from evaluation.statistics import seed_interval

    curve = curve_on(rows, dataset, curve)

    def of(model, seed):
        return next((r for r in rows if r["dataset"] == dataset and r["model"] == model and r["seed"] == seed
                     and r.get("corr_bacc") is not None), None)

    per_seed = {}
    for seed in dict.fromkeys(r["seed"] for r in rows if r["dataset"] == dataset and r["model"] == standard):
        base, points = of(standard, seed), [of(m, seed) for m in curve]
        if base is None or None in points:
            continue
        read = corruption_drop.at_matched_clean([(r["clean_bacc"], r["corr_bacc"]) for r in points],
                                                base["clean_bacc"])
        per_seed[seed] = None if read is None else read - base["corr_bacc"]
    reachable = [v for v in per_seed.values() if v is not None]
    return {"curve": curve, "per_seed": per_seed, "cell": seed_interval(reachable, level) if reachable else None}


# ---- naming and ordering models in tables and figures --------------------------------------------------------
MODEL_ORDER = ("erm", "pgd_at", "robust_l2", "d_rand", "d_det", "d_nr", "d_r")
TRAINED_ON = {"erm": "real (ERM)", "pgd_at": "real (PGD-AT, L-inf)", "robust_l2": "real (PGD-AT, L2)",
              "d_rand": "D_rand (nonrobust features only)", "d_det": "D_det (nonrobust features only)",
              "d_nr": "D_NR (standard-model features)", "d_r": "D_R (robust-model features)"}
TITLES = {"erm": "ERM", "pgd_at": "PGD-AT"}


def title(model: str) -> str:
    """How the text names a model: ERM, PGD-AT, else the model's own name."""
    return TITLES.get(model, model)


def ordered_models(rows) -> list[str]:
    """The models of some rows, in the tables' order (sources, then the constructed sets, then the rest by name)."""
    seen = list(dict.fromkeys(r["model"] for r in rows))
    return sorted(seen, key=lambda m: (MODEL_ORDER.index(m) if m in MODEL_ORDER else len(MODEL_ORDER), m))


def construction_of(rows, model) -> str:
    """The construction kind a model was trained on (`real`, `d_rand`, ...)."""
    return next((r.get("construction") or model for r in rows if r["model"] == model), model)


def trained_on(rows, model) -> str:
    """The tables' "trained on" label of a model."""
    kind = construction_of(rows, model)
    label = TRAINED_ON.get(kind, TRAINED_ON.get(model, model))
    return label if kind == model or kind == "real" else f"{label}: {model}"
