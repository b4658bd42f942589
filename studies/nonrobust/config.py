"""The nonrobust-features study's config (configs/study/quick.yaml): the `Study` dataclass, its checks, and the
training spec of a model trained on a constructed set."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Optional

import numpy as np

from core.errors import ConfigError
from datamodules.info import MULTILABEL, dataset_info

from ..runner import StudyConfig, check_datasets, check_seeds, check_training_spec, load_study
from .endpoints import check_endpoints

STATISTICS = {"bootstrap": 1000, "level": 0.95, "interval": "auto", "seed": 0}
INTERVALS = ("auto", "examples", "seeds", "seeds_and_examples")  # seeds_and_examples: the former name of seeds
CONSTRUCTION_KINDS = ("d_rand", "d_det", "d_nr", "d_r")
#: the models finding 2 compares, by role: the standard model and the adversarially trained one (`roles:` in the
#: config names others; a role whose model the study lacks is skipped, as a study without pgd_at skips finding 2)
ROLES = {"standard": "erm", "robust": "pgd_at"}


@dataclass
class Study(StudyConfig):
    """A parsed, validated study config (see configs/study/quick.yaml): the YAML's keys are its fields (less
    `source`, the file), checked when it is built; a studies.framework.Study."""

    DESCRIPTION: ClassVar[str] = (
        "the nonrobust-features study: train, construct D_rand/D_det/D_NR/D_R, evaluate, tabulate")
    constructions: dict[str, dict] = field(default_factory=dict)
    construction_defaults: dict = field(default_factory=dict)
    constructed_training: dict = field(default_factory=lambda: {"config": "configs/erm.yaml"})
    source: Path = Path("study.yaml")
    statistics: dict = field(default_factory=lambda: dict(STATISTICS))
    recalibration: dict = field(default_factory=lambda: {"split": "val"})
    roles: dict[str, str] = field(default_factory=dict)  # filled from ROLES
    #: {MODEL: BASE}: each a paired difference MODEL - BASE of every measure, paired by seed (scale knobs)
    comparisons: dict[str, str] = field(default_factory=dict)
    #: robust models at several training epsilons, in increasing order: finding 2 at the standard model's clean
    #: balanced accuracy, read off their curve
    matched_accuracy: list[str] = field(default_factory=list)
    #: {primary: {MODEL: MEASURE}, correction: holm}: checked into the plan studies.nonrobust.endpoints gives
    endpoints: Optional[dict] = None

    def __post_init__(self) -> None:
        models = self.models = self.models or {}
        if not models:
            raise ConfigError("the study needs at least one model trained on the real split: models: {erm: {config: "
                              "configs/erm.yaml}} (finding 2 compares erm with pgd_at)")
        for name, spec in models.items():
            check_training_spec(f"models.{name}", spec)
        self.constructions = check_constructions(self.constructions or {}, models)
        self.datasets = check_datasets(self.datasets or [], extra_keys=frozenset({"models"}))
        for entry in self.datasets:
            info = dataset_info(entry["flag"])
            if self.constructions and info.task == MULTILABEL:
                raise ConfigError(f"{info.flag} is multi-label: the Ilyas et al. constructions need one class per "
                                  "image")
        self.seeds = check_seeds(self.seeds)
        self.constructed_training = self.constructed_training or {"config": "configs/erm.yaml"}
        check_training_spec("constructed_training", self.constructed_training)
        self.statistics = check_statistics(self.statistics or {}, self.seeds)
        self.recalibration = check_recalibration(self.recalibration or {}, self.datasets)
        self.roles = check_roles(self.roles or {}, models)
        self.comparisons = check_comparisons(self.comparisons or {}, [*models, *self.constructions])
        self.matched_accuracy = check_matched_accuracy(self.matched_accuracy or [], models, self.roles)
        self.endpoints = check_endpoints(self.endpoints, self.kinds(), self.differences(), self.finding_2())
        for entry in self.datasets:
            check_dataset_models(entry, self)
        self.name = str(self.name or Path(self.source).stem)
        self.train, self.construction_defaults = dict(self.train or {}), dict(self.construction_defaults or {})
        for name, spec in self.constructions.items():
            if spec.get("reuse") is None:
                construction_settings(name, spec, self.construction_defaults)  # a bad setting fails before training

    @property
    def over_seeds(self) -> bool:
        """Whether intervals are over seeds, a t interval over the per-seed estimates (`auto`: when there are 2
        seeds or more), rather than over test examples."""
        return self.statistics["interval"] in ("seeds", "seeds_and_examples") or (
            self.statistics["interval"] == "auto" and len(self.seeds) > 1)

    def models_of(self, dataset: dict) -> dict[str, dict]:
        """The models trained on one dataset of `datasets:`: its own `models:` list where it gives one (the
        matched-accuracy curve needs other training epsilons on different datasets), else all of them."""
        names = dataset.get("models") or list(self.models)
        return {name: spec for name, spec in self.models.items() if name in names}

    def kinds(self) -> dict[str, str]:
        """Every model (`real`) and constructed set (its kind: d_rand, ...) of the study."""
        return {**{m: "real" for m in self.models},
                **{name: construction_kind(name, spec) for name, spec in self.constructions.items()}}

    def differences(self) -> dict[str, str]:
        """Every paired difference `a - b` the study tabulates, and where it comes from: `roles` (finding 2's robust
        minus standard model, when the study has both) or `comparisons`."""
        out = {difference_of(self.roles): "roles"} if set(self.roles.values()) <= set(self.models) else {}
        return {**out, **{difference_of({"robust": a, "standard": b}): "comparisons"
                           for a, b in self.comparisons.items()}}

    def pairs(self) -> dict[str, tuple[str, str]]:
        """{`a - b`: (a, b)} of every paired difference (differences, and any other the endpoints name)."""
        pairs = {difference_of(self.roles): (self.roles["robust"], self.roles["standard"])}
        pairs.update({difference_of({"robust": a, "standard": b}): (a, b) for a, b in self.comparisons.items()})
        pairs = {name: pair for name, pair in pairs.items() if name in self.differences()}
        return {**pairs, **(self.endpoints or {}).get("pairs", {})}

    def corrupted(self) -> set[str]:
        """The models tested under MedMNIST-C (`corruptions: true`)."""
        return {m for m, spec in self.models.items() if spec.get("corruptions")}

    def finding_2(self) -> Optional[str]:
        """The name of finding 2's difference when the study measures it (both role models under MedMNIST-C)."""
        pair = {self.roles["robust"], self.roles["standard"]}
        return difference_of(self.roles) if pair <= self.corrupted() else None

    def reproduce(self, out: Path, log=print) -> list[dict]:
        """Run (or reuse) every step under `out` and write the results (studies.nonrobust.pipeline)."""
        from .pipeline import reproduce

        return reproduce(self, Path(out), log)


def load(path: str | Path, overrides: Optional[list[str]] = None) -> Study:
    """Read a study YAML, apply `--set key=value` overrides (dotted keys, YAML values), and check it."""
    return load_study(Study, path, overrides)


def check_constructions(constructions: dict, models: dict) -> dict:
    """constructions: {name: {source: MODEL, kind: d_rand, training: {...}, reuse: EARLIER, ...settings}}."""
    for name, spec in constructions.items():
        if not isinstance(spec, dict) or spec.get("source") not in models:
            raise ConfigError(f"constructions.{name}.source must name one of the models ({', '.join(models)})")
        kind = construction_kind(name, spec)
        if kind not in CONSTRUCTION_KINDS:
            raise ConfigError(f"unknown construction {kind!r}: choose from {', '.join(CONSTRUCTION_KINDS)} "
                              f"(a set named otherwise says which with kind: d_rand)")
        if not isinstance(spec.get("training") or {}, dict):
            raise ConfigError(f"constructions.{name}.training must be a mapping of train.py keys to values")
        if spec.get("leakage") is not None and spec["leakage"] not in models:
            raise ConfigError(f"constructions.{name}.leakage must name one of the models (an L2-robust model trained "
                              f"at the construction's budget), got {spec['leakage']!r}")
        reuse = spec.get("reuse")
        order = list(constructions)
        if reuse is not None and (reuse not in constructions or order.index(reuse) >= order.index(name)
                                  or constructions[reuse].get("reuse") is not None):
            raise ConfigError(f"constructions.{name}.reuse must name a set built earlier in the list, got {reuse!r}")
    return constructions


def check_roles(given: dict, models: dict) -> dict:
    """roles: {standard: MODEL, robust: MODEL}, today's names (erm, pgd_at) where not given; a role the config names
    must be one of its models."""
    if not isinstance(given, dict) or set(given) - set(ROLES):
        raise ConfigError(f"roles takes {', '.join(ROLES)} (each names one of the models), got {given!r}")
    for role, name in given.items():
        if name not in models:
            raise ConfigError(f"roles.{role} must name one of the models ({', '.join(models)}), got {name!r}")
    return {**ROLES, **given}


def difference_of(roles: dict) -> str:
    """The cell name of a paired difference, robust minus standard model: `pgd_at - erm`."""
    return f"{roles['robust']} - {roles['standard']}"


def check_comparisons(given, names: list[str]) -> dict:
    """comparisons: {MODEL: BASE}, each naming a model or constructed set of the study (MODEL - BASE, paired by
    seed)."""
    if not isinstance(given, dict):
        raise ConfigError(f"comparisons maps a model to the base it is compared with ({{d_rand_all: d_rand}}), got "
                          f"{given!r}")
    for model, base in given.items():
        for what, name in (("", model), (f".{model}", base)):
            if name not in names:
                raise ConfigError(f"comparisons{what}: {name!r} is not a model or constructed set of this study "
                                  f"(choose from {', '.join(names)})")
    return given


def check_matched_accuracy(given, models: dict, roles: dict) -> list[str]:
    """matched_accuracy: [MODEL, ...]: at least two robust models tested under MedMNIST-C, in increasing training
    epsilon (not the standard model, the one they are matched to)."""
    if not isinstance(given, list) or (given and len(given) < 2):
        raise ConfigError(f"matched_accuracy lists at least two robust models in increasing training epsilon, got "
                          f"{given!r}")
    for name in given:
        if name not in models or name == roles["standard"] or not models[name].get("corruptions"):
            raise ConfigError(f"matched_accuracy: {name!r} must be a model with corruptions: true other than the "
                              f"standard model {roles['standard']!r} (models: {', '.join(models)})")
    return given


def check_dataset_models(entry: dict, study: Study) -> None:
    """A dataset's `models: [MODEL, ...]`: models of the study, including every model its constructions, roles and
    endpoints use (a dataset may leave out only models nothing else needs, such as a point of the matched-accuracy
    curve), and at least two of the curve's models when the study has one."""
    names = entry.get("models")
    if names is None:
        return
    where = f"datasets[{entry['flag']}].models"
    if not isinstance(names, list) or not names or any(name not in study.models for name in names):
        raise ConfigError(f"{where} lists models of the study ({', '.join(study.models)}), got {names!r}")
    needed = {spec[key] for spec in study.constructions.values() for key in ("source", "leakage") if spec.get(key)}
    needed |= set(study.roles.values()) | {e.model for e in study.endpoints["primary"]}
    needed |= {name for pair in study.pairs().values() for name in pair}
    missing = [name for name in study.models if name in needed and name not in names]
    if missing:
        raise ConfigError(f"{where} leaves out {', '.join(missing)}, which the constructions, roles, comparisons or "
                          "endpoints need")
    if study.matched_accuracy and sum(name in names for name in study.matched_accuracy) < 2:
        raise ConfigError(f"{where} keeps fewer than two models of the matched_accuracy curve "
                          f"({', '.join(study.matched_accuracy)})")


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

    flag = dataset_info(entry["flag"]).flag
    path = Path(entry.get("root") or default_root()) / npz_name(flag, entry.get("size", 28))
    return path if path.is_file() else None


def construction_kind(name: str, spec: dict) -> str:
    """The Ilyas et al. kind of a named constructed set: its `kind:` key, else its name (d_rand, d_det, ...)."""
    return str(spec.get("kind", name))


#: keys of a construction entry that are not constructions.Settings (`reuse: NAME`: train on the set built for
#: entry NAME, for knobs of the constructed model only: epochs, normalisation; `leakage: MODEL`: the L2-robust model
#: that measures robust-feature leakage, studies.nonrobust.leakage; `require_assigned: true`: the source must assign
#: the relabelled images to their new label above chance, else the set is broken)
CONSTRUCTION_META = ("source", "kind", "training", "reuse", "leakage", "require_assigned")


def construction_settings(name: str, spec: dict, defaults: dict) -> tuple:
    """(constructions.Settings, limit) of construction `name`: construction_defaults with the entry's own settings on
    top (`epsilon: auto` with `search: {grid, target, images, step_fraction}` chooses the budget per dataset, D_rand
    and D_det only); a bad setting is one ConfigError naming the entry."""
    from constructions import Settings
    from constructions.budget import check_searchable

    settings = {**defaults, **{k: v for k, v in spec.items() if k not in CONSTRUCTION_META}}
    limit = settings.pop("limit", None)
    try:
        built = Settings(**settings)
        if built.auto:
            check_searchable(construction_kind(name, spec))
    except (TypeError, ConfigError) as err:
        raise ConfigError(f"constructions.{name}: {err}") from None
    if built.auto and spec.get("leakage") is not None:  # the leakage model is trained before the search picks a budget
        raise ConfigError(f"constructions.{name}: leakage: {spec['leakage']} measures leakage at the budget it was "
                          "trained at, and epsilon: auto picks the budget after it is trained; give epsilon as a "
                          "number (the leakage model's) or drop leakage")
    return built, limit


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
