"""Reproduce "Useful nonrobust features are ubiquitous in biomedical images" (arXiv 2604.22579) in one command:
`python -m studies reproduce configs/study/quick.yaml --out runs/study/quick`.

For each dataset and seed: train ERM, PGD-AT and an L2-robust source model on the real training split; build the
Ilyas et al. training sets (D_rand, D_det, D_NR, D_R) from them; train a fresh model on each; test every model on
the real test split (clean, PGD at several epsilons, MedMNIST-C where asked) with the RobustnessCallback; write
`results.csv`, `results.md` and figures. Every finished step is kept under --out and reused on a rerun.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

from attacks.threat_model import parse_epsilon
from core.config import resolve_path
from core.errors import ConfigError

from core.files import write_text_atomic
from datamodules.info import MULTILABEL, dataset_info

from .runner import cell, check_training_spec, done, load_config, mean_sd, train_step, write_csv

STUDY_KEYS = {"study", "name", "seeds", "datasets", "train", "models", "constructions", "construction_defaults",
              "constructed_training"}
DATASET_KEYS = {"flag", "size", "root", "download", "verify_md5", "train"}
REQUIRED_MODELS = ("erm", "pgd_at")
CONSTRUCTION_KINDS = ("d_rand", "d_det", "d_nr", "d_r")


# ---- configuration ------------------------------------------------------------------------------------------
@dataclass
class Study:
    """A parsed, validated study config (see configs/study/quick.yaml)."""

    name: str
    seeds: list[int]
    datasets: list[dict]
    train: dict
    models: dict[str, dict]
    constructions: dict[str, dict]
    construction_defaults: dict
    constructed_training: dict
    source: Path


def load(path: str | Path, overrides: Optional[list[str]] = None) -> Study:
    """Read a study YAML, apply `--set key=value` overrides (dotted keys, YAML values), and check it."""
    path = Path(path)
    raw = load_config(path, overrides)
    unknown = sorted(set(raw) - STUDY_KEYS)
    if unknown:
        raise ConfigError(f"unknown study key(s) {', '.join(unknown)}: the keys are {', '.join(sorted(STUDY_KEYS))}")
    models = raw.get("models") or {}
    missing = [m for m in REQUIRED_MODELS if m not in models]
    if missing:
        raise ConfigError(f"the study needs models {', '.join(missing)} (ERM and PGD-AT are what it compares)")
    for name, spec in models.items():
        check_training_spec(f"models.{name}", spec)
    constructions = raw.get("constructions") or {}
    for kind, spec in constructions.items():
        if kind not in CONSTRUCTION_KINDS:
            raise ConfigError(f"unknown construction {kind!r}: choose from {', '.join(CONSTRUCTION_KINDS)}")
        if not isinstance(spec, dict) or spec.get("source") not in models:
            raise ConfigError(f"constructions.{kind}.source must name one of the models ({', '.join(models)})")
    datasets = raw.get("datasets") or []
    if not datasets:
        raise ConfigError("the study needs at least one dataset: datasets: [{flag: pneumoniamnist, size: 28}]")
    for entry in datasets:
        if not isinstance(entry, dict) or "flag" not in entry:
            raise ConfigError(f"each dataset needs a flag, got {entry!r}")
        extra = sorted(set(entry) - DATASET_KEYS)
        if extra:
            raise ConfigError(f"unknown dataset key(s) {', '.join(extra)}: use {', '.join(sorted(DATASET_KEYS))}")
        if entry.get("root"):
            entry["root"] = str(resolve_path(entry["root"]))
        info = dataset_info(entry["flag"])
        if constructions and info.task == MULTILABEL:
            raise ConfigError(f"{info.flag} is multi-label: the Ilyas et al. constructions need one class per image")
    seeds = raw.get("seeds", [0])
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise ConfigError(f"seeds must be a non-empty list of integers, got {seeds!r}")
    constructed = raw.get("constructed_training") or {"config": "configs/erm.yaml"}
    check_training_spec("constructed_training", constructed)
    return Study(str(raw.get("name") or path.stem), seeds, datasets, dict(raw.get("train") or {}), models,
                 constructions, dict(raw.get("construction_defaults") or {}), constructed, path)


# ---- steps --------------------------------------------------------------------------------------------------
def construct_step(out: Path, kind: str, source: dict, study: Study, dataset: dict, seed: int) -> Path:
    """Build one constructed training set from a source checkpoint (kept and reused when already built)."""
    from constructions import Settings, construct_file

    if out.is_file():
        return out
    settings = {**study.construction_defaults, **{k: v for k, v in study.constructions[kind].items() if k != "source"}}
    limit = settings.pop("limit", None)
    try:
        settings = Settings(**settings)
    except TypeError as err:
        raise ConfigError(f"constructions.{kind}: {err}") from None
    construct_file(kind, source["best_checkpoint"], dataset["flag"], out, size=dataset.get("size", 28),
                   root=dataset.get("root"), settings=settings, limit=limit, seed=seed,
                   verify_md5=dataset.get("verify_md5", True))
    return out


# ---- results ------------------------------------------------------------------------------------------------
def result_row(dataset: dict, model: str, kind: str, seed: int, summary: dict) -> dict:
    """One results.csv row: test metrics of one model (from its robustness report when there is one)."""
    info = dataset_info(dataset["flag"])
    row: dict[str, Any] = {"dataset": info.flag, "size": dataset.get("size", 28), "model": model, "kind": kind,
                           "seed": seed, "chance_bacc": 1.0 / info.num_classes if info.task != MULTILABEL else 0.5}
    report = {}
    if summary.get("report") and Path(summary["report"]).is_file():
        report = json.loads(Path(summary["report"]).read_text())
    metrics = summary.get("metrics") or {}
    row["clean_bacc"] = report.get("clean", {}).get("bacc", metrics.get("test/clean_bacc"))
    row["clean_acc"] = report.get("clean", {}).get("acc", metrics.get("test/clean_acc"))
    for label, entry in sorted((report.get("pgd") or {}).items(), key=lambda item: item[1]["epsilon"]):
        row[f"adv_bacc@{label}"] = entry["bacc"]
    table = report.get("corruptions")
    if table:
        row["corr_bacc"] = table["mean_bacc"]
        row["corr_be"], row["corr_rbe"] = table.get("mean_be"), table.get("mean_rbe")
        reference = table.get("roundtrip_bacc") or table.get("clean_bacc")
        row["corr_clean_reference_bacc"] = reference
        for name, value in table["corruption_bacc"].items():
            row[f"corr_bacc@{name}"] = value
            row[f"corr_delta@{name}"] = value - reference
    return row


def write_results(rows: list[dict], out: Path) -> None:
    """results.csv (one row per model, dataset and seed), results.md and the figures."""
    write_csv(rows, out / "results.csv")
    write_text_atomic(out / "results.md", results_markdown(rows))
    figures(rows, out)


MODEL_ORDER = ("erm", "pgd_at", "robust_l2", "d_rand", "d_det", "d_nr", "d_r")


def _ordered_models(rows):
    seen = list(dict.fromkeys(r["model"] for r in rows))
    return sorted(seen, key=lambda m: (MODEL_ORDER.index(m) if m in MODEL_ORDER else len(MODEL_ORDER), m))


def results_markdown(rows: list[dict]) -> str:
    """The study's tables: balanced accuracy per model kind and dataset with chance beside it; ERM vs PGD-AT
    under MedMNIST-C; corrupted minus clean per corruption."""
    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    seeds = sorted({r["seed"] for r in rows})
    lines = [f"# Study reproduction: test balanced accuracy (mean ± sd over seeds {seeds})", "",
             "| model | trained on | " + " | ".join(datasets) + " |", "|---|---|" + "---|" * len(datasets)]
    trained_on = {"erm": "real (ERM)", "pgd_at": "real (PGD-AT, L-inf)", "robust_l2": "real (PGD-AT, L2)",
                  "d_rand": "D_rand (nonrobust features only)", "d_det": "D_det (nonrobust features only)",
                  "d_nr": "D_NR (standard-model features)", "d_r": "D_R (robust-model features)"}
    for model in _ordered_models(rows):
        cells = [cell([r["clean_bacc"] for r in rows if r["model"] == model and r["dataset"] == d]) for d in datasets]
        lines.append(f"| {model} | {trained_on.get(model, model)} | " + " | ".join(cells) + " |")
    chance = [f"{next(r['chance_bacc'] for r in rows if r['dataset'] == d):.3f}" for d in datasets]
    lines.append("| chance | | " + " | ".join(chance) + " |")
    corr_rows = [r for r in rows if r.get("corr_bacc") is not None]
    if corr_rows:
        lines += ["", "## Clean vs MedMNIST-C (mean over corruptions and severities)", "",
                  "| dataset | model | clean bacc | clean bacc, round-tripped | corrupted bacc | corrupted - round-tripped clean | mean rBE |",
                  "|---|---|---|---|---|---|---|"]
        for d in datasets:
            for model in _ordered_models(corr_rows):
                sel = [r for r in corr_rows if r["dataset"] == d and r["model"] == model]
                if sel:
                    lines.append(f"| {d} | {model} | {cell([r['clean_bacc'] for r in sel])} | "
                                 f"{cell([r['corr_clean_reference_bacc'] for r in sel])} | "
                                 f"{cell([r['corr_bacc'] for r in sel])} | "
                                 f"{cell([r['corr_bacc'] - r['corr_clean_reference_bacc'] for r in sel])} | "
                                 f"{cell([r['corr_rbe'] for r in sel])} |")
        lines += ["", "## PGD-AT minus ERM under each corruption (corrupted balanced accuracy)", ""]
        for d in datasets:
            erm = [r for r in corr_rows if r["dataset"] == d and r["model"] == "erm"]
            at = [r for r in corr_rows if r["dataset"] == d and r["model"] == "pgd_at"]
            if not erm or not at:
                continue
            names = [k.split("@", 1)[1] for k in erm[0] if k.startswith("corr_bacc@")]
            lines += [f"**{d}**", "", "| corruption | ERM | PGD-AT | PGD-AT - ERM | ERM: corrupted - round-tripped clean | PGD-AT: corrupted - round-tripped clean |",
                      "|---|---|---|---|---|---|"]
            for name in names:
                e = mean_sd([r.get(f"corr_bacc@{name}") for r in erm])[0]
                a = mean_sd([r.get(f"corr_bacc@{name}") for r in at])[0]
                de = mean_sd([r.get(f"corr_delta@{name}") for r in erm])[0]
                da = mean_sd([r.get(f"corr_delta@{name}") for r in at])[0]
                lines.append(f"| {name} | {e:.3f} | {a:.3f} | {a - e:+.3f} | {de:+.3f} | {da:+.3f} |")
            lines.append("")
    lines += ["", findings(rows)]
    return "\n".join(lines) + "\n"


def findings(rows: list[dict]) -> str:
    """Plain sentences: does each of the study's two findings hold here, and by how much."""
    out = ["## Findings", ""]
    for d in dict.fromkeys(r["dataset"] for r in rows):
        chance = next(r["chance_bacc"] for r in rows if r["dataset"] == d)
        for model in ("d_rand", "d_det"):
            values = [r["clean_bacc"] for r in rows if r["dataset"] == d and r["model"] == model]
            if values:
                mean = mean_sd(values)[0]
                verdict = "holds" if mean > chance + 0.05 else "does not hold"
                out.append(f"- {d}, {model}: test balanced accuracy {mean:.3f} vs chance {chance:.3f} "
                           f"({mean - chance:+.3f}): finding 1 (nonrobust features generalise) {verdict}.")
        erm = [r for r in rows if r["dataset"] == d and r["model"] == "erm" and r.get("corr_bacc") is not None]
        at = [r for r in rows if r["dataset"] == d and r["model"] == "pgd_at" and r.get("corr_bacc") is not None]
        if erm and at:
            ce, ca = mean_sd([r["clean_bacc"] for r in erm])[0], mean_sd([r["clean_bacc"] for r in at])[0]
            me, ma = mean_sd([r["corr_bacc"] for r in erm])[0], mean_sd([r["corr_bacc"] for r in at])[0]
            verdict = "holds" if ca <= ce and ma > me else ("partly holds" if ma > me else "does not hold")
            out.append(f"- {d}, ERM -> PGD-AT: clean {ce:.3f} -> {ca:.3f} ({ca - ce:+.3f}), MedMNIST-C {me:.3f} -> "
                       f"{ma:.3f} ({ma - me:+.3f}): finding 2 (AT trades clean accuracy for corruption robustness) {verdict}.")
    return "\n".join(out)


def figures(rows: list[dict], out: Path) -> None:
    """constructed.png (constructed-set accuracies vs chance), corruption.png (clean vs corrupted, ERM and PGD-AT),
    robust_curve.png (PGD balanced accuracy against epsilon)."""
    from sweeps.report import pyplot_agg, save_figure

    plt = pyplot_agg()

    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    models = _ordered_models(rows)

    fig, ax = plt.subplots(figsize=(max(5.0, 1.2 + 0.45 * len(datasets) * len(models)), 3.8))
    width = 0.8 / max(1, len(models))
    for i, model in enumerate(models):
        means, sds = zip(*[mean_sd([r["clean_bacc"] for r in rows if r["model"] == model and r["dataset"] == d])
                           for d in datasets])
        ax.bar(np.arange(len(datasets)) + i * width, means, width, yerr=sds, label=model, capsize=2)
    for j, d in enumerate(datasets):
        chance = next(r["chance_bacc"] for r in rows if r["dataset"] == d)
        ax.hlines(chance, j - width / 2, j + 0.8 - width / 2, colors="k", linestyles="--",
                  label="chance" if j == 0 else None)
    ax.set_xticks(np.arange(len(datasets)) + 0.4 - width / 2, datasets)
    ax.set_ylabel("test balanced accuracy")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7, ncol=2)
    ax.set_title("Trained on real vs constructed sets")
    save_figure(fig, out / "constructed.png")

    corr = [r for r in rows if r.get("corr_bacc") is not None and r["model"] in ("erm", "pgd_at")]
    if corr:
        fig, ax = plt.subplots(figsize=(5, 4))
        for model, marker in (("erm", "o"), ("pgd_at", "s")):
            for d in datasets:
                sel = [r for r in corr if r["model"] == model and r["dataset"] == d]
                if sel:
                    x = mean_sd([r["clean_bacc"] for r in sel])[0]
                    y = mean_sd([r["corr_bacc"] for r in sel])[0]
                    ax.scatter(x, y, marker=marker, s=50, label=f"{model} {d}")
        ax.plot([0, 1], [0, 1], "k:", lw=1)
        ax.set_xlabel("clean test balanced accuracy")
        ax.set_ylabel("MedMNIST-C balanced accuracy (mean)")
        ax.legend(fontsize=7)
        ax.set_title("Clean vs corruption: ERM and PGD-AT")
        save_figure(fig, out / "corruption.png")

    fig, axes = plt.subplots(1, len(datasets), figsize=(4.2 * len(datasets), 3.6), squeeze=False)
    for ax, d in zip(axes[0], datasets):
        for model in ("erm", "pgd_at", "robust_l2"):
            sel = [r for r in rows if r["dataset"] == d and r["model"] == model]
            if not sel:
                continue
            if model == "robust_l2":
                continue  # an L2 threat model: not on the L-inf axis
            labels = sorted({k.split("@", 1)[1] for r in sel for k in r if k.startswith("adv_bacc@")},
                            key=parse_epsilon)
            eps = [0.0] + [parse_epsilon(label) for label in labels]
            ys = [mean_sd([r["clean_bacc"] for r in sel])[0]] + [mean_sd([r.get(f"adv_bacc@{label}") for r in sel])[0]
                                                                   for label in labels]
            ax.plot(np.array(eps) * 255, ys, marker="o", label=model)
        ax.set_xlabel("PGD epsilon (x 1/255, L-inf)")
        ax.set_ylabel("test balanced accuracy")
        ax.set_ylim(0, 1)
        ax.set_title(d)
        ax.legend(fontsize=7)
    save_figure(fig, out / "robust_curve.png")


# ---- the pipeline -------------------------------------------------------------------------------------------
def reproduce(study: Study, out: Path, log=print) -> list[dict]:
    """Run (or reuse) every step of the study and write the results; returns the results rows."""
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for dataset in study.datasets:
        flag = dataset_info(dataset["flag"]).flag
        for seed in study.seeds:
            base = out / f"{flag}_{dataset.get('size', 28)}" / f"seed_{seed}"
            trained = {}
            for name, spec in study.models.items():
                log(f"[{flag} seed {seed}] train {name}" + (" (reused)" if done(base / name) else ""))
                trained[name] = train_step(base / name, spec, study.train, dataset, seed, corruptions=spec.get("corruptions", False))
                rows.append(result_row(dataset, name, "real", seed, trained[name]))
            for kind, spec in study.constructions.items():
                npz = base / "constructed" / f"{kind}.npz"
                log(f"[{flag} seed {seed}] construct {kind} from {spec['source']}" + (" (reused)" if npz.is_file() else ""))
                construct_step(npz, kind, trained[spec["source"]], study, dataset, seed)
                training = study.constructed_training
                extra = {"data.train_npz": str(npz), "data.verify_md5": False}
                log(f"[{flag} seed {seed}] train on {kind}" + (" (reused)" if done(base / f"train_{kind}") else ""))
                summary = train_step(base / f"train_{kind}", training, study.train, dataset, seed, extra=extra)
                rows.append(result_row(dataset, kind, "constructed", seed, summary))
            write_results(rows, out)  # partial results after every dataset and seed
    write_results(rows, out)
    return rows


DESCRIPTION = "the nonrobust-features study: train, construct D_rand/D_det/D_NR/D_R, evaluate, tabulate"
