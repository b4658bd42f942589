"""The study's steps, each kept under the out folder (evaluation.layout.StepLayout) and reused on a rerun: train the
source models on the real split, construct the Ilyas et al. sets from them, train a fresh model on each, measure
every model (and finding 2's corruption drops); then write results.csv, results.md and the figures."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from constructions.dataset import budget_columns, sidecar_path
from core.errors import ConfigError
from core.files import write_text_atomic
from datamodules.info import MULTILABEL, dataset_info
from evaluation.layout import StepLayout

from .. import corruption_drop, measures
from ..runner import done, train_step, write_csv
from .config import STATISTICS, Study, construction_kind, construction_settings, constructed_training
from . import leakage
from .figures import figures
from .results import cell_statistics, corruption_cells, drop_columns, result_row, roles_of
from .tables import results_markdown


def construct_step(out: Path, name: str, source: dict, study: Study, dataset: dict, seed: int) -> Path:
    """Build one constructed training set from a source checkpoint (kept and reused when already built)."""
    from constructions import construct_file

    if out.is_file():
        return out
    spec = study.constructions[name]
    settings, limit = construction_settings(name, spec, study.construction_defaults)
    try:
        construct_file(construction_kind(name, spec), source["best_checkpoint"], dataset["flag"], out,
                       size=dataset.get("size", 28), root=dataset.get("root"), settings=settings, limit=limit,
                       seed=seed, verify_md5=dataset.get("verify_md5", True))
    except ConfigError as err:  # epsilon: auto whose grid does not reach its target, among others
        raise ConfigError(f"constructions.{name} ({dataset['flag']}, seed {seed}): {err}") from None
    return out


def measure_step(step_dir: Path, summary: dict, study: Study, construction: str = "real",
                 sidecar: Optional[Path] = None, audit: Optional[dict] = None) -> dict:
    """Every study measure of one trained model (predictions cached beside its checkpoint): the per-example
    bootstrap draws, the diagnostics of a constructed model and the notes (a measure that does not apply)."""
    info = None
    if sidecar is not None and sidecar.is_file():
        info = json.loads(sidecar.read_text())
    predictions = measures.model_predictions(step_dir, summary["best_checkpoint"], construction,
                                             study.recalibration["split"], info)
    diagnostics = predictions.get("diagnostics")
    if audit is not None or info is not None:  # a constructed set's audit, then its budget (the sidecar's)
        diagnostics = {**(diagnostics or {}), **leakage.diagnostics(audit or {}), **budget_columns(info or {})}
    stats = study.statistics
    return {"measures": measures.draws(predictions, stats["bootstrap"], stats["seed"]), "level": stats["level"],
            "diagnostics": diagnostics, "notes": predictions["notes"]}


def drop_step(step_dir: Path, summary: dict, study: Study) -> dict:
    """Finding 2's per-family drops of one model trained with `corruptions: true` (predictions cached beside its
    checkpoint; the corrupted test set is the one its report used)."""
    predictions = corruption_drop.corruption_predictions(step_dir, summary["best_checkpoint"])
    return corruption_drop.drop_draws(predictions, study.statistics["bootstrap"], study.statistics["seed"])


def write_results(rows: list[dict], out: Path, draws: Optional[dict] = None, study: Optional[Study] = None,
                  corruption_draws: Optional[dict] = None) -> None:
    """results.csv (one row per model, dataset and seed, then one per model and dataset with seed `all`: the mean
    and the t interval over seeds, studies.measures.summary_rows), results.md and the figures. `draws` maps (dataset,
    model) to the per-seed bootstrap draws of every measure (studies.measures.draws); `corruption_draws` likewise
    to finding 2's per-family drops (studies.corruption_drop.drop_draws)."""
    cells = cell_statistics(draws or {}, study)
    drops = corruption_cells(corruption_draws or {}, study)
    level = study.statistics["level"] if study else STATISTICS["level"]
    write_csv(rows + measures.summary_rows(rows, level), out / "results.csv")
    write_text_atomic(out / "results.md", results_markdown(rows, cells, study, drops))
    figures(rows, out, cells, roles_of(study), study.matched_accuracy if study else ())


def reproduce(study: Study, out: Path, log=print) -> list[dict]:
    """Run (or reuse) every step of the study and write the results; returns the results rows."""
    out.mkdir(parents=True, exist_ok=True)
    layout = StepLayout(out)
    rows, draws, corruption_draws = [], {}, {}
    for dataset in study.datasets:
        flag, size = dataset_info(dataset["flag"]).flag, dataset.get("size", 28)
        for seed in study.seeds:
            base = layout.seed_dir(flag, size, seed)
            trained = {}
            for name, spec in study.models_of(dataset).items():
                log(f"[{flag} seed {seed}] train {name}" + (" (reused)" if done(base / name) else ""))
                trained[name] = train_step(base / name, spec, study.train, dataset, seed,
                                           corruptions=spec.get("corruptions", False))
                measured = measure_step(base / name, trained[name], study)
                draws.setdefault((flag, name), []).append(measured["measures"])
                rows.append(result_row(dataset, name, "real", seed, trained[name], measured))
                if spec.get("corruptions") and dataset_info(flag).task != MULTILABEL:
                    drops = drop_step(base / name, trained[name], study)
                    corruption_draws.setdefault((flag, name), []).append(drops)
                    rows[-1].update(drop_columns(drops, study.statistics["level"]))
            for name, spec in study.constructions.items():
                npz = layout.constructed(flag, size, seed, spec.get("reuse") or name)
                log(f"[{flag} seed {seed}] construct {name} from {spec['source']}"
                    + (" (reused)" if npz.is_file() else ""))
                construct_step(npz, spec.get("reuse") or name, trained[spec["source"]], study, dataset, seed)
                audit = leakage.audit_step(npz, name, spec, trained)  # a broken set stops here, before training
                extra = {"data.train_npz": str(npz), "data.verify_md5": False}
                step = base / StepLayout.trained_on(name)
                log(f"[{flag} seed {seed}] train on {name}" + (" (reused)" if done(step) else ""))
                summary = train_step(step, constructed_training(study, name), study.train, dataset, seed, extra=extra)
                kind = construction_kind(name, spec)
                measured = measure_step(step, summary, study, kind, sidecar_path(npz), audit)
                leakage.net_of_leakage(measured, audit, kind)
                draws.setdefault((flag, name), []).append(measured["measures"])
                rows.append(result_row(dataset, name, "constructed", seed, summary, measured, kind))
            write_results(rows, out, draws, study, corruption_draws)  # partial results after every dataset and seed
    write_results(rows, out, draws, study, corruption_draws)
    return rows
