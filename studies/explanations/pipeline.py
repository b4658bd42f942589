"""The explanation study's steps: train (or reuse) every model for every dataset and seed under the out folder
(evaluation.layout.StepLayout), then write results.csv, results.md and the figures."""
from __future__ import annotations

from pathlib import Path

from core.errors import ConfigError
from core.files import write_text_atomic
from datamodules.info import dataset_info
from evaluation.layout import StepLayout

from ..runner import done, train_step, write_csv
from .config import Study
from .figures import maps_figure, scatter_figure
from .results import analyse, result_row, seed_summary
from .tables import results_markdown

def write_results(rows: list[dict], study: Study, out: Path, figures: bool = True) -> dict:
    analysis = analyse(rows, study)
    per_seed = [{k: v for k, v in r.items() if k not in ("report", "best_checkpoint")} for r in rows]
    write_csv(per_seed + seed_summary(rows), out / "results.csv")
    write_text_atomic(out / "results.md", results_markdown(rows, analysis, study))
    if figures:
        scatter_figure(rows, analysis, out)
        maps_figure(rows, study, out)
    return analysis


def reproduce(study: Study, out: Path, log=print) -> list[dict]:
    """Train (or reuse) every model for every dataset and seed, then write the results; returns the rows."""
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    common = {**study.train, **study.callback_overrides()}
    for dataset in study.datasets:
        flag = dataset_info(dataset["flag"]).flag
        for seed in study.seeds:
            base = StepLayout(out).seed_dir(flag, dataset.get("size", 28), seed)
            for name, spec in study.models.items():
                log(f"[{flag} seed {seed}] train {name}" + (" (reused)" if done(base / name) else ""))
                summary = train_step(base / name, spec, common, dataset, seed)
                if not summary.get("report"):
                    raise ConfigError(f"{base / name} has no robustness report: the study needs the test to run")
                rows.append(result_row(dataset, name, spec, seed, summary, study.epsilon))
    log("analysis and figures ...")
    write_results(rows, study, out)
    return rows
