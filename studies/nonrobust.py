"""Reproduce "Useful nonrobust features are ubiquitous in biomedical images" (arXiv 2604.22579) in one command:
`python -m studies reproduce configs/study/quick.yaml --out runs/study/quick`.

For each dataset and seed: train ERM, PGD-AT and an L2-robust source model on the real training split; build the
Ilyas et al. training sets (D_rand, D_det, D_NR, D_R) from them; train a fresh model on each; test every model on
the real test split (clean, PGD at several epsilons, MedMNIST-C where asked) with the RobustnessCallback; write
`results.csv`, `results.md` and figures. Every finished step is kept under --out and reused on a rerun.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from attacks.threat_model import format_epsilon, parse_epsilon
from core.errors import ConfigError

from core.files import write_text_atomic
from datamodules.info import MULTILABEL, dataset_info
from evaluation.layout import StepLayout
from evaluation.record import read_record
from lightning_modules.metrics import MetricKey
from evaluation.statistics import percentile_interval

from . import corruption_drop, measures
from .runner import (
    cell, check_datasets, check_seeds, check_training_spec, done, load_study, mean_sd, train_step, write_csv,
)

STATISTICS = {"bootstrap": 1000, "level": 0.95, "interval": "auto", "seed": 0}
INTERVALS = ("auto", "examples", "seeds", "seeds_and_examples")  # seeds_and_examples: the former name of seeds
CONSTRUCTION_KINDS = ("d_rand", "d_det", "d_nr", "d_r")


# ---- configuration ------------------------------------------------------------------------------------------
@dataclass
class Study:
    """A parsed, validated study config (see configs/study/quick.yaml): the YAML's keys are its fields (less
    `source`, the file), checked when it is built."""

    name: str = ""
    seeds: list[int] = field(default_factory=lambda: [0])
    datasets: list[dict] = field(default_factory=list)
    train: dict = field(default_factory=dict)
    models: dict[str, dict] = field(default_factory=dict)
    constructions: dict[str, dict] = field(default_factory=dict)
    construction_defaults: dict = field(default_factory=dict)
    constructed_training: dict = field(default_factory=lambda: {"config": "configs/erm.yaml"})
    source: Path = Path("study.yaml")
    statistics: dict = field(default_factory=lambda: dict(STATISTICS))
    recalibration: dict = field(default_factory=lambda: {"split": "val"})

    def __post_init__(self) -> None:
        models = self.models = self.models or {}
        if not models:
            raise ConfigError("the study needs at least one model trained on the real split: models: {erm: {config: "
                              "configs/erm.yaml}} (finding 2 compares erm with pgd_at)")
        for name, spec in models.items():
            check_training_spec(f"models.{name}", spec)
        constructions = self.constructions = self.constructions or {}
        for name, spec in constructions.items():
            if not isinstance(spec, dict) or spec.get("source") not in models:
                raise ConfigError(f"constructions.{name}.source must name one of the models ({', '.join(models)})")
            kind = construction_kind(name, spec)
            if kind not in CONSTRUCTION_KINDS:
                raise ConfigError(f"unknown construction {kind!r}: choose from {', '.join(CONSTRUCTION_KINDS)} "
                                  f"(a set named otherwise says which with kind: d_rand)")
            if not isinstance(spec.get("training") or {}, dict):
                raise ConfigError(f"constructions.{name}.training must be a mapping of train.py keys to values")
            reuse = spec.get("reuse")
            order = list(constructions)
            if reuse is not None and (reuse not in constructions or order.index(reuse) >= order.index(name)
                                      or constructions[reuse].get("reuse") is not None):
                raise ConfigError(f"constructions.{name}.reuse must name a set built earlier in the list, got {reuse!r}")
        self.datasets = check_datasets(self.datasets or [])
        for entry in self.datasets:
            info = dataset_info(entry["flag"])
            if constructions and info.task == MULTILABEL:
                raise ConfigError(f"{info.flag} is multi-label: the Ilyas et al. constructions need one class per image")
        self.seeds = check_seeds(self.seeds)
        self.constructed_training = self.constructed_training or {"config": "configs/erm.yaml"}
        check_training_spec("constructed_training", self.constructed_training)
        self.statistics = check_statistics(self.statistics or {}, self.seeds)
        self.recalibration = check_recalibration(self.recalibration or {}, self.datasets)
        self.name = str(self.name or Path(self.source).stem)
        self.train, self.construction_defaults = dict(self.train or {}), dict(self.construction_defaults or {})

    @property
    def over_seeds(self) -> bool:
        """Whether intervals are over seeds, a t interval over the per-seed estimates (`auto`: when there are 2
        seeds or more), rather than over test examples."""
        return self.statistics["interval"] in ("seeds", "seeds_and_examples") or (
            self.statistics["interval"] == "auto" and len(self.seeds) > 1)


def load(path: str | Path, overrides: Optional[list[str]] = None) -> Study:
    """Read a study YAML, apply `--set key=value` overrides (dotted keys, YAML values), and check it."""
    return load_study(Study, path, overrides)

def check_statistics(given: dict, seeds: list[int]) -> dict:
    """statistics: {bootstrap: draws, level: interval level, interval: auto | examples | seeds, seed}."""
    if not isinstance(given, dict) or set(given) - set(STATISTICS):
        raise ConfigError(f"statistics takes {', '.join(STATISTICS)}, got {given!r}")
    out = {**STATISTICS, **given}
    n, level = out["bootstrap"], out["level"]
    if isinstance(n, bool) or not isinstance(n, int) or n < 100:
        raise ConfigError(f"statistics.bootstrap must be an integer of at least 100 draws, got {n!r}")
    if isinstance(level, bool) or not isinstance(level, (int, float)) or not 0.5 <= level < 1:
        raise ConfigError(f"statistics.level must lie in [0.5, 1), got {level!r}")
    if out["interval"] not in INTERVALS:
        raise ConfigError(f"statistics.interval must be one of {', '.join(INTERVALS)}, got {out['interval']!r}")
    if out["interval"] in ("seeds", "seeds_and_examples") and len(seeds) < 2:
        raise ConfigError(f"statistics.interval {out['interval']} is over seeds: it needs at least 2 seeds, got "
                          f"{len(seeds)} ({seeds}); add seeds or use interval: examples")
    return out


def check_recalibration(given: dict, datasets: list[dict]) -> dict:
    """recalibration: {split: val}: the real split a bias (and the AdaBN statistics) are fitted on; never test (the
    split every number is reported on), never train (a constructed model's training split is the constructed set)."""
    from datamodules.npz import SPLITS

    if not isinstance(given, dict) or set(given) - {"split"}:
        raise ConfigError(f"recalibration takes split, got {given!r}")
    split = given.get("split", "val")
    for entry in datasets:
        flag = dataset_info(entry["flag"]).flag
        if split not in SPLITS:
            raise ConfigError(f"recalibration.split {split!r}: {flag} has no such split (its splits: "
                              f"{', '.join(SPLITS)}); recalibrate on val")
        if split != "val":
            raise ConfigError(f"recalibration.split {split!r}: fit on the real validation split (val); test is "
                              "what every number is reported on, and train is the constructed set itself")
        path = _dataset_file(entry)
        if path is not None:
            with np.load(path) as npz:
                if f"{split}_images" not in npz.files:
                    raise ConfigError(f"recalibration.split {split!r}: {path} has no {split} split "
                                      f"(it holds {', '.join(sorted(npz.files))})")
    return {"split": split}


def _dataset_file(entry: dict) -> Optional[Path]:
    """The dataset's npz when it is already on disk (else None: it is checked when the study reads it)."""
    from datamodules.info import npz_name
    from datamodules.medmnist import default_root

    path = Path(entry.get("root") or default_root()) / npz_name(dataset_info(entry["flag"]).flag, entry.get("size", 28))
    return path if path.is_file() else None


def construction_kind(name: str, spec: dict) -> str:
    """The Ilyas et al. kind of a named constructed set: its `kind:` key, else its name (d_rand, d_det, ...)."""
    return str(spec.get("kind", name))


#: keys of a construction entry that are not constructions.Settings (`reuse: NAME`: train on the set built for
#: entry NAME, for knobs of the constructed model only: epochs, normalisation)
CONSTRUCTION_META = ("source", "kind", "training", "reuse")


#: A model trained on a constructed set is scored at its last epoch, as Ilyas et al. do. Its real-validation balanced
#: accuracy at the default threshold, the checkpoint monitor of other runs, sits at chance on every epoch (the
#: BatchNorm shift, README), so "best" picked an arbitrary epoch: epoch 0, before any fit, on 9 of the quick
#: study's 12 such models.
LAST_EPOCH = {"checkpoint.monitor": None}


def constructed_training(study: Study, name: str) -> dict:
    """The training spec of the model trained on constructed set `name`: constructed_training, with the set's
    own `training:` train.py overrides on top (epochs, architecture, ...); its last epoch is the one scored unless
    the config names a `checkpoint.monitor`."""
    base = study.constructed_training
    own = study.constructions[name].get("training") or {}
    return {**base, "overrides": {**LAST_EPOCH, **(base.get("overrides") or {}), **own}}


# ---- steps --------------------------------------------------------------------------------------------------
def construct_step(out: Path, name: str, source: dict, study: Study, dataset: dict, seed: int) -> Path:
    """Build one constructed training set from a source checkpoint (kept and reused when already built)."""
    from constructions import Settings, construct_file

    if out.is_file():
        return out
    spec = study.constructions[name]
    settings = {**study.construction_defaults, **{k: v for k, v in spec.items() if k not in CONSTRUCTION_META}}
    limit = settings.pop("limit", None)
    try:
        settings = Settings(**settings)
    except TypeError as err:
        raise ConfigError(f"constructions.{name}: {err}") from None
    construct_file(construction_kind(name, spec), source["best_checkpoint"], dataset["flag"], out, size=dataset.get("size", 28),
                   root=dataset.get("root"), settings=settings, limit=limit, seed=seed,
                   verify_md5=dataset.get("verify_md5", True))
    return out


# ---- results ------------------------------------------------------------------------------------------------
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
    figures(rows, out, cells)


def corruption_cells(corruption_draws: dict, study: Optional[Study] = None) -> dict:
    """{(dataset, model): {measure: cell}} of finding 2's measures, and {(dataset, 'pgd_at - erm'): ...} from the
    paired per-seed differences when both models were measured on the same seeds."""
    level = study.statistics["level"] if study else STATISTICS["level"]
    over_seeds = study.over_seeds if study else True
    per_model = dict(corruption_draws)
    for dataset in {key[0] for key in corruption_draws}:
        erm, at = corruption_draws.get((dataset, "erm")), corruption_draws.get((dataset, "pgd_at"))
        if erm and at and len(erm) == len(at):
            per_model[(dataset, DIFFERENCE)] = [corruption_drop.difference(a, e) for a, e in zip(at, erm)]
    return {key: {m: measures.cell([d[m] for d in per_seed], level, over_seeds) for m in per_seed[0]}
            for key, per_seed in per_model.items()}


DIFFERENCE = "pgd_at - erm"


def cell_statistics(draws: dict, study: Optional[Study] = None) -> dict:
    """{(dataset, model): {measure: mean, sd, interval, seeds}} from every seed's bootstrap draws."""
    level = study.statistics["level"] if study else STATISTICS["level"]
    over_seeds = study.over_seeds if study else True
    out = {}
    for key, per_seed in draws.items():
        names = [m for m in measures.MEASURES if all(m in d for d in per_seed)]
        out[key] = {m: measures.cell([d[m] for d in per_seed], level, over_seeds) for m in names}
    return out


MODEL_ORDER = ("erm", "pgd_at", "robust_l2", "d_rand", "d_det", "d_nr", "d_r")
TRAINED_ON = {"erm": "real (ERM)", "pgd_at": "real (PGD-AT, L-inf)", "robust_l2": "real (PGD-AT, L2)",
              "d_rand": "D_rand (nonrobust features only)", "d_det": "D_det (nonrobust features only)",
              "d_nr": "D_NR (standard-model features)", "d_r": "D_R (robust-model features)"}
TABLE_MEASURES = (("bacc", "bacc, default threshold"), ("auroc", "AUROC"),
                  ("bacc_recal", "bacc, threshold fitted on real val"), ("bacc_adabn", "bacc, AdaBN on real val"),
                  ("auroc_adabn", "AUROC, AdaBN"))
WHY = """## Which measure each verdict uses, and why

- **Finding 1 (nonrobust features alone are useful) is judged on test AUROC** against the real labels (chance
  0.5): whether the model's scores rank real images of one class above the other, whatever its decision threshold.
  A model trained on D_rand / D_det sees only perturbed images (every one moved by the construction's L2 budget), so
  its BatchNorm statistics and its bias fit the constructed set, not clean images; at the default threshold it can
  call nearly every real image one class (balanced accuracy at chance) while ranking them well. That is a shift of
  the operating point, not an absence of useful features. Balanced accuracy is also given at a threshold (per-class
  bias) fitted on the real validation split only, and after AdaBN (BatchNorm statistics re-estimated on unlabeled
  real validation images: no labels, no threshold), each with its own verdict.
- Every verdict is read from the interval, not a fixed margin: **holds** when its lower bound is above chance,
  **does not hold** when its upper bound is not above chance, **undecided at this sample size** when it contains
  chance with room above it (the upper bound says how large an effect the data still allow).
- For D_det, a model that learned the robust (visible) features scores below chance against the real labels and
  above chance against the D_det label `(y + 1) mod C` (`bacc_vs_new_label`)."""


def _ordered_models(rows):
    seen = list(dict.fromkeys(r["model"] for r in rows))
    return sorted(seen, key=lambda m: (MODEL_ORDER.index(m) if m in MODEL_ORDER else len(MODEL_ORDER), m))


def _construction(rows, model) -> str:
    return next((r.get("construction") or model for r in rows if r["model"] == model), model)


def _trained_on(rows, model) -> str:
    kind = _construction(rows, model)
    label = TRAINED_ON.get(kind, TRAINED_ON.get(model, model))
    return label if kind == model or kind == "real" else f"{label}: {model}"


def results_markdown(rows: list[dict], cells: Optional[dict] = None, study: Optional[Study] = None,
                     drops: Optional[dict] = None) -> str:
    """The study's tables: every measure per model and dataset with its interval and chance beside it, the
    constructed models' diagnostics, clean vs MedMNIST-C, and a verdict per finding with the measure it uses."""
    cells = cells or {}
    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    seeds = sorted({r["seed"] for r in rows})
    stats = study.statistics if study else STATISTICS
    if study.over_seeds if study else len(seeds) > 1:
        how = "Student t over the per-seed estimates, the seed being the unit of replication"
    else:
        how = f"bootstrap over test examples, {stats['bootstrap']} draws"
    lines = [f"# Study reproduction: measures on the real test split (seeds {seeds})", ""]
    if cells:
        lines += [f"Each cell: mean ± sd over seeds [{stats['level']:.0%} interval: {how}]. Chance: AUROC 0.5, "
                  "balanced accuracy 1 / classes.", ""]
    for d in datasets:
        chance = next(r["chance_bacc"] for r in rows if r["dataset"] == d)
        lines += [f"## {d} (chance balanced accuracy {chance:.3f}, AUROC 0.500)", ""]
        if not any(key[0] == d for key in cells):
            lines += ["| model | trained on | test balanced accuracy |", "|---|---|---|"]
            for model in _ordered_models([r for r in rows if r["dataset"] == d]):
                lines.append(f"| {model} | {_trained_on(rows, model)} | "
                             f"{cell([r['clean_bacc'] for r in rows if r['model'] == model and r['dataset'] == d])} |")
            lines.append("")
            continue
        lines += ["| model | trained on | seeds | " + " | ".join(title for _, title in TABLE_MEASURES) + " |",
                  "|---|---|---|" + "---|" * len(TABLE_MEASURES)]
        for model in _ordered_models([r for r in rows if r["dataset"] == d]):
            c = cells.get((d, model), {})
            note = {m: next((r[m] for r in rows if r["model"] == model and r["dataset"] == d
                             and isinstance(r.get(m), str)), "-") for m, _ in TABLE_MEASURES}
            values = [measures.describe(c[m], chance) if m in c else note[m] for m, _ in TABLE_MEASURES]
            n = len([r for r in rows if r["model"] == model and r["dataset"] == d])
            lines.append(f"| {model} | {_trained_on(rows, model)} | {n} | " + " | ".join(values) + " |")
        lines.append("")
    lines += diagnostics_table(rows, cells)
    lines += robust_table(rows)
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
            names = [key.condition for key in column_keys(erm[0], "corr", "bacc")]
            lines += [f"**{d}**", "", "| corruption | ERM | PGD-AT | PGD-AT - ERM | ERM: corrupted - round-tripped clean | PGD-AT: corrupted - round-tripped clean |",
                      "|---|---|---|---|---|---|"]
            for name in names:
                e = mean_sd([r.get(f"corr_bacc@{name}") for r in erm])[0]
                a = mean_sd([r.get(f"corr_bacc@{name}") for r in at])[0]
                de = mean_sd([r.get(f"corr_delta@{name}") for r in erm])[0]
                da = mean_sd([r.get(f"corr_delta@{name}") for r in at])[0]
                lines.append(f"| {name} | {e:.3f} | {a:.3f} | {a - e:+.3f} | {de:+.3f} | {da:+.3f} |")
            lines.append("")
    lines += drop_table(drops or {})
    if cells:
        lines += ["", WHY]
    lines += ["", findings(rows, cells, drops)]
    return "\n".join(lines) + "\n"


def drop_table(drops: dict) -> list[str]:
    """Finding 2's table: corrupted minus round-tripped clean balanced accuracy per corruption family, ERM and
    PGD-AT, and PGD-AT minus ERM (paired over test examples), each with its interval."""
    if not drops:
        return []
    lines = ["", "## Finding 2: corrupted minus round-tripped clean balanced accuracy, per corruption family", "",
             "Mean over the family's corruptions and severities, minus the clean test images resampled as the "
             "corrupted ones (the round-trip reference; the clean image under native224). PGD-AT - ERM is paired: "
             "the same resampled test examples for both models. Above 0: PGD-AT loses less.", ""]
    for dataset in dict.fromkeys(key[0] for key in drops):
        models = [m for m in ("erm", "pgd_at", DIFFERENCE) if (dataset, m) in drops]
        names = [m for m in drops[(dataset, models[0])] if m.startswith("corr_drop@")]
        names = sorted(names, key=lambda m: (m == f"corr_drop@{corruption_drop.ALL}", m))
        lines += [f"**{dataset}**", "", "| family | " + " | ".join(models) + " |", "|---|" + "---|" * len(models)]
        for extra in ("clean_bacc", "reference_bacc"):
            lines.append(f"| {extra.replace('_bacc', ' bacc')} | " + " | ".join(
                measures.describe(drops[(dataset, m)][extra], 0.0) if extra in drops[(dataset, m)] else "-"
                for m in models) + " |")
        for name in names:
            lines.append(f"| {MetricKey.parse(name, 'test').condition} | " + " | ".join(
                measures.describe(drops[(dataset, m)][name], 0.0) if name in drops[(dataset, m)] else "-"
                for m in models) + " |")
        lines.append("")
    return lines


def robust_table(rows: list[dict]) -> list[str]:
    """Test balanced accuracy under attack of the models trained on the real split: PGD (the callback's test
    attack) and, where the study asks for it, AutoAttack (paper.yaml: standard AutoAttack on the whole test split),
    mean ± sd over seeds."""
    real = [r for r in rows if r.get("kind") == "real"]
    keys = sorted({key for r in real for kind in ("adv", "aa") for key in column_keys(r, kind, "bacc")},
                  key=MetricKey.sort_key)
    columns = [key.unstaged() for key in keys]
    if not columns:
        return []
    lines = ["## Robust balanced accuracy on the real test split (mean ± sd over seeds)", "",
             "| dataset | model | clean | " + " | ".join(("AutoAttack " if key.kind == "aa" else "PGD ") +
                                                         format_epsilon(key.epsilon) for key in keys) + " |",
             "|---|---|---|" + "---|" * len(columns)]
    for d in dict.fromkeys(r["dataset"] for r in real):
        for model in _ordered_models([r for r in real if r["dataset"] == d]):
            sel = [r for r in real if r["dataset"] == d and r["model"] == model]
            values = [cell([r.get(k) for r in sel if r.get(k) is not None]) if any(r.get(k) is not None for r in sel)
                      else "-" for k in columns]
            lines.append(f"| {d} | {model} | {cell([r['clean_bacc'] for r in sel])} | " + " | ".join(values) + " |")
    return lines + [""]


DIAGNOSTICS = (("train_acc_constructed", "train acc on its constructed set"),
               ("source_agreement", "source model agrees with the new labels"),
               ("mean_p1_constructed", "mean p(class 1), constructed train"),
               ("mean_p1_real_test", "mean p(class 1), real test"),
               ("prob_shift_tv", "shift of mean probabilities (TV)"),
               ("bacc_vs_new_label", "bacc vs D_det label (y+1) mod C"))


def diagnostics_table(rows: list[dict], cells: dict) -> list[str]:
    constructed = [r for r in rows if r.get("kind") == "constructed" and "train_acc_constructed" in r]
    if not constructed:
        return []
    lines = ["## Diagnostics of the models trained on constructed sets (mean over seeds)", "",
             "| dataset | model | " + " | ".join(title for _, title in DIAGNOSTICS) + " |",
             "|---|---|" + "---|" * len(DIAGNOSTICS)]
    for d in dict.fromkeys(r["dataset"] for r in constructed):
        for model in _ordered_models([r for r in constructed if r["dataset"] == d]):
            sel = [r for r in constructed if r["dataset"] == d and r["model"] == model]
            values = []
            for key, _ in DIAGNOSTICS:
                if key == "bacc_vs_new_label" and key in cells.get((d, model), {}):
                    values.append(measures.describe(cells[(d, model)][key], 0.0))
                    continue
                got = [r.get(key) for r in sel if isinstance(r.get(key), (int, float))]
                values.append(f"{mean_sd(got)[0]:.3f}" if got else "-")
            lines.append(f"| {d} | {model} | " + " | ".join(values) + " |")
    return lines + [""]


VERDICT_MEASURES = (("auroc", "AUROC"), ("bacc_recal", "bacc with a threshold fitted on real val"),
                    ("bacc_adabn", "bacc after AdaBN"), ("bacc", "bacc at the default threshold"))


def findings(rows: list[dict], cells: Optional[dict] = None, drops: Optional[dict] = None) -> str:
    """Plain sentences: does each of the study's two findings hold here, read from intervals against chance (and,
    for finding 2, against no difference between PGD-AT and ERM)."""
    cells, drops = cells or {}, drops or {}
    out = ["## Findings", ""]
    for d in dict.fromkeys(r["dataset"] for r in rows):
        chance = next(r["chance_bacc"] for r in rows if r["dataset"] == d)
        num_classes = round(1 / chance)
        for model in _ordered_models([r for r in rows if r["dataset"] == d]):
            kind = _construction(rows, model)
            if kind not in ("d_rand", "d_det"):
                continue
            c = cells.get((d, model))
            if not c or "auroc" not in c:
                values = [r["clean_bacc"] for r in rows if r["dataset"] == d and r["model"] == model]
                mean = mean_sd(values)[0]
                out.append(f"- {d}, {model}: test balanced accuracy {mean:.3f} vs chance {chance:.3f} "
                           f"({mean - chance:+.3f}); no per-example measures, so no interval: finding 1 "
                           f"{measures.UNDECIDED}.")
                continue
            head = c["auroc"]
            main = measures.verdict(head["low"], head["high"], 0.5)
            parts = []
            for m, title in VERDICT_MEASURES[1:]:
                if m in c:
                    ch = measures.chance_of(m, num_classes)
                    parts.append(f"{title} {measures.describe(c[m], ch)} ({measures.verdict(c[m]['low'], c[m]['high'], ch)})")
            room = f"; effects up to AUROC {head['high']:.3f} not excluded" if main == measures.UNDECIDED else ""
            out.append(f"- {d}, {model} ({head['seeds']} seed{'s' if head['seeds'] > 1 else ''}): test AUROC "
                       f"{measures.describe(head, 0.5)} vs chance 0.500: **finding 1 (nonrobust features alone are "
                       f"useful) {main}**{room}. Also: " + "; ".join(parts) + ".")
            if kind == "d_det" and "bacc_vs_new_label" in c:
                n = c["bacc_vs_new_label"]
                out.append(f"  Against the D_det label (y + 1) mod C: bacc {measures.describe(n, chance)} "
                           "(a model that learned the robust, visible features would score above chance here).")
        erm = [r for r in rows if r["dataset"] == d and r["model"] == "erm" and r.get("corr_bacc") is not None]
        at = [r for r in rows if r["dataset"] == d and r["model"] == "pgd_at" and r.get("corr_bacc") is not None]
        paired = drops.get((d, DIFFERENCE))
        if paired:
            everything = f"corr_drop@{corruption_drop.ALL}"
            gain, clean = paired[everything], paired["clean_bacc"]
            absolute = paired[f"corr_bacc@{corruption_drop.ALL}"]
            robust = measures.verdict(gain["low"], gain["high"], 0.0)
            cost = measures.verdict(-clean["high"], -clean["low"], 0.0)
            families = [key.condition for key in column_keys(paired, "corr", "drop") if key.unstaged() != everything]
            wins = [f for f in families if paired[f"corr_drop@{f}"]["low"] > 0]
            losses = [f for f in families if paired[f"corr_drop@{f}"]["high"] < 0]
            out.append(f"- {d}, PGD-AT - ERM ({gain['seeds']} seed{'s' if gain['seeds'] > 1 else ''}, paired over "
                       f"test examples): clean bacc {measures.describe(clean, 0.0)} (a clean cost: {cost}); "
                       f"corrupted minus round-tripped clean {measures.describe(gain, 0.0)} over all corruptions "
                       f"(**PGD-AT loses less under corruption: {robust}**); corrupted bacc "
                       f"{measures.describe(absolute, 0.0)}. Families where PGD-AT loses less: "
                       f"{', '.join(wins) or 'none'}; more: {', '.join(losses) or 'none'}. Finding 2 (AT trades clean "
                       f"accuracy for corruption robustness) is read from these two verdicts.")
        elif erm and at:
            ce, ca = mean_sd([r["clean_bacc"] for r in erm])[0], mean_sd([r["clean_bacc"] for r in at])[0]
            me, ma = mean_sd([r["corr_bacc"] for r in erm])[0], mean_sd([r["corr_bacc"] for r in at])[0]
            verdict = "holds" if ca <= ce and ma > me else ("partly holds" if ma > me else "does not hold")
            out.append(f"- {d}, ERM -> PGD-AT: clean {ce:.3f} -> {ca:.3f} ({ca - ce:+.3f}), MedMNIST-C {me:.3f} -> "
                       f"{ma:.3f} ({ma - me:+.3f}): finding 2 (AT trades clean accuracy for corruption robustness) "
                       f"{verdict} (point estimates; no interval over test examples for MedMNIST-C yet).")
    return "\n".join(out)


FIGURE_MEASURES = (("bacc", "bacc (default threshold)"), ("bacc_recal", "bacc (threshold on real val)"),
                   ("auroc", "AUROC"))


def figures(rows: list[dict], out: Path, cells: Optional[dict] = None) -> None:
    """constructed.png (every model's measures with intervals, chance dashed), corruption.png (clean vs corrupted,
    ERM and PGD-AT), robust_curve.png (PGD balanced accuracy against epsilon)."""
    from evaluation.plots import pyplot_agg, save_figure

    plt = pyplot_agg()
    cells = cells or {}

    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    models = _ordered_models(rows)

    fig, axes = plt.subplots(1, len(datasets), figsize=(max(5.0, 1.5 + 0.55 * len(models)) * len(datasets), 3.8),
                             squeeze=False)
    for ax, d in zip(axes[0], datasets):
        chance = next(r["chance_bacc"] for r in rows if r["dataset"] == d)
        names = [m for m in models if any(r["model"] == m and r["dataset"] == d for r in rows)]
        shown = [(m, t) for m, t in FIGURE_MEASURES if any(m in cells.get((d, n), {}) for n in names)] or \
            [("clean_bacc", "balanced accuracy")]
        width = 0.8 / len(shown)
        for i, (measure, title) in enumerate(shown):
            means, lows, highs = [], [], []
            for n in names:
                c = cells.get((d, n), {}).get(measure)
                if c is None:
                    mean = mean_sd([r.get(measure, r["clean_bacc"]) for r in rows if r["model"] == n and r["dataset"] == d])[0]
                    means.append(mean), lows.append(mean), highs.append(mean)
                else:
                    means.append(c["mean"]), lows.append(c["low"]), highs.append(c["high"])
            means, lows, highs = map(np.array, (means, lows, highs))
            ax.bar(np.arange(len(names)) + i * width, means, width, label=title,
                   yerr=np.vstack([means - lows, highs - means]), capsize=2)
        ax.axhline(chance, color="k", ls="--", lw=1, label="chance")
        ax.set_xticks(np.arange(len(names)) + 0.4 - width / 2, names, rotation=30, ha="right", fontsize=7)
        ax.set_ylim(0, 1)
        ax.set_title(d)
        ax.set_ylabel("real test split")
        ax.legend(fontsize=6)
    fig.suptitle("Trained on real vs constructed sets (bars: interval over test examples / seeds)", fontsize=9)
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
            labels = sorted({key.condition for r in sel for key in column_keys(r, "adv", "bacc")}, key=parse_epsilon)
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
def measure_step(step_dir: Path, summary: dict, study: Study, construction: str = "real",
                 sidecar: Optional[Path] = None) -> dict:
    """Every study measure of one trained model (predictions cached beside its checkpoint): the per-example
    bootstrap draws, the diagnostics of a constructed model and the notes (a measure that does not apply)."""
    info = None
    if sidecar is not None and sidecar.is_file():
        info = json.loads(sidecar.read_text())
    predictions = measures.model_predictions(step_dir, summary["best_checkpoint"], construction,
                                             study.recalibration["split"], info)
    stats = study.statistics
    return {"measures": measures.draws(predictions, stats["bootstrap"], stats["seed"]), "level": stats["level"],
            "diagnostics": predictions.get("diagnostics"), "notes": predictions["notes"]}


def drop_step(step_dir: Path, summary: dict, study: Study) -> dict:
    """Finding 2's per-family drops of one model trained with `corruptions: true` (predictions cached beside its
    checkpoint; the corrupted test set is the one its report used)."""
    predictions = corruption_drop.corruption_predictions(step_dir, summary["best_checkpoint"])
    return corruption_drop.drop_draws(predictions, study.statistics["bootstrap"], study.statistics["seed"])


def drop_columns(drops: dict, level: float) -> dict:
    """results.csv columns of one model's drops: `corr_drop@F`, `corr_drop@F_low`, `corr_drop@F_high`."""
    out = {}
    for name, entry in drops.items():
        if name.startswith("corr_drop@"):
            out[name] = entry["value"]
            out[f"{name}_low"], out[f"{name}_high"] = percentile_interval(entry["draws"], level)
    return out


def reproduce(study: Study, out: Path, log=print) -> list[dict]:
    """Run (or reuse) every step of the study and write the results; returns the results rows."""
    out.mkdir(parents=True, exist_ok=True)
    rows, draws, corruption_draws = [], {}, {}
    for dataset in study.datasets:
        flag = dataset_info(dataset["flag"]).flag
        for seed in study.seeds:
            base = StepLayout(out).seed_dir(flag, dataset.get("size", 28), seed)
            trained = {}
            for name, spec in study.models.items():
                log(f"[{flag} seed {seed}] train {name}" + (" (reused)" if done(base / name) else ""))
                trained[name] = train_step(base / name, spec, study.train, dataset, seed, corruptions=spec.get("corruptions", False))
                measured = measure_step(base / name, trained[name], study)
                draws.setdefault((flag, name), []).append(measured["measures"])
                rows.append(result_row(dataset, name, "real", seed, trained[name], measured))
                if spec.get("corruptions") and dataset_info(flag).task != MULTILABEL:
                    drops = drop_step(base / name, trained[name], study)
                    corruption_draws.setdefault((flag, name), []).append(drops)
                    rows[-1].update(drop_columns(drops, study.statistics["level"]))
            for name, spec in study.constructions.items():
                npz = StepLayout(out).constructed(flag, dataset.get("size", 28), seed, spec.get("reuse") or name)
                log(f"[{flag} seed {seed}] construct {name} from {spec['source']}" + (" (reused)" if npz.is_file() else ""))
                construct_step(npz, spec.get("reuse") or name, trained[spec["source"]], study, dataset, seed)
                extra = {"data.train_npz": str(npz), "data.verify_md5": False}
                step = base / StepLayout.trained_on(name)
                log(f"[{flag} seed {seed}] train on {name}" + (" (reused)" if done(step) else ""))
                summary = train_step(step, constructed_training(study, name), study.train, dataset, seed, extra=extra)
                kind = construction_kind(name, spec)
                measured = measure_step(step, summary, study, kind, npz.with_suffix(".json"))
                draws.setdefault((flag, name), []).append(measured["measures"])
                rows.append(result_row(dataset, name, "constructed", seed, summary, measured, kind))
            write_results(rows, out, draws, study, corruption_draws)  # partial results after every dataset and seed
    write_results(rows, out, draws, study, corruption_draws)
    return rows


DESCRIPTION = "the nonrobust-features study: train, construct D_rand/D_det/D_NR/D_R, evaluate, tabulate"
