"""A sweep is one YAML file: what to train (base config + dotted overrides), which points to search
(training epsilon grid or range, optional knobs, seeds), what to optimise (validation metric keys) and
where the study lives. `load_spec` reads it, applies command-line `--set key=value` overrides and checks
everything that can be checked without training or touching the study storage.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from attacks.threat_model import format_epsilon, parse_epsilon, parse_norm
from core.config import REPO, load_yaml_mapping, parse_assignment, resolve_path, set_key  # noqa: F401 (sweeps.training)
from core.errors import ConfigError
from core.files import file_digest
from lightning_modules.metrics import parse_metric_key
from lightning_modules.registry import METHODS, method as training_method


# sweep knob -> LightningCLI key it sets
KNOBS = {"epsilon": "model.init_args.epsilon", "lr": "model.init_args.lr", "beta": "model.init_args.beta"}
SAMPLERS = ("grid", "tpe", "nsga2", "random")
PRUNERS = ("none", "median", "hyperband")
DIRECTIONS = ("maximize", "minimize")
CLI_ROOTS = ("trainer", "model", "data", "checkpoint", "seed_everything", "optimizer", "lr_scheduler")
KEYS = {
    "study": "study name (letters, digits, - _ .)",
    "storage": "sqlite:///F.db (one process), journal:F.journal (processes on one machine), "
               "postgresql://... (machines)",
    "root": "folder of the trial runs: ROOT/STUDY/trial_N (default runs)",
    "method": "a training method of lightning_modules.registry (pgd_at, trades, fgsm_rs, erm, ...) or a list",
    "config": "base training config (default: configs/METHOD.yaml)",
    "overrides": "dotted LightningCLI keys of the base config (model.init_args.steps: 3)",
    "epsilon": "training epsilons: a list (grid) or {low, high[, step]} (range for a sampler)",
    "lr": "learning rate: a value, a list or {low, high, log}",
    "beta": "TRADES beta: a value, a list or {low, high}",
    "search_space": "other dotted LightningCLI keys to search: a list or {low, high[, step, log]}",
    "seeds": "training seeds per point: a list, or a count n for seeds 0..n-1 (default [0])",
    "objectives": "validation metric keys with a direction: {val/clean_bacc: maximize, ...}",
    "sampler": "grid (default when everything is a list), tpe, nsga2 or random; or {type, seed}",
    "n_trials": "trial budget (required for samplers; caps a grid)",
    "pruner": "none, median or hyperband (single-objective only; default median for samplers, none for grids)",
    "max_retries": "times a failed or killed trial is retried (default 2)",
    "heartbeat": "{interval: s, grace: s}: how often running trials say they are alive, and when silence is death",
    "wandb": "true/false or {enabled, project}: trials grouped under the study name, plus a summary run",
    "workers": "worker processes (default 1)",
    "gpus": "GPU ids, one worker per GPU (or per gpus_per_trial GPUs)",
    "gpus_per_trial": "GPUs per trial (DDP when > 1; default 1)",
}


@dataclass
class Dimension:
    """One searched parameter: `values` for a grid / categorical, else a numeric range."""

    name: str
    values: Optional[list] = None
    low: Optional[float] = None
    high: Optional[float] = None
    step: Optional[float] = None
    log: bool = False

    @property
    def is_grid(self) -> bool:
        return self.values is not None

    def as_dict(self) -> dict:
        if self.is_grid:
            return {"values": self.values}
        return {"low": self.low, "high": self.high, "step": self.step, "log": self.log}


@dataclass
class Objective:
    metric: str  # canonical val/... key
    direction: str


@dataclass
class SweepSpec:
    """A validated sweep (see KEYS for the meaning of each field)."""

    path: Path
    study: str
    storage: str
    root: Path
    methods: list[str]
    config: Optional[Path]
    overrides: dict[str, Any]
    dimensions: list[Dimension]
    fixed: dict[str, Any]
    seeds: list[int]
    objectives: list[Objective]
    sampler: str
    sampler_seed: int
    n_trials: Optional[int]
    pruner: str
    max_retries: int
    heartbeat_interval: int
    heartbeat_grace: int
    wandb: bool
    wandb_project: str
    workers: int
    gpus: list[str] = field(default_factory=list)
    gpus_per_trial: int = 1

    @property
    def is_grid(self) -> bool:
        return self.sampler == "grid"

    @property
    def study_dir(self) -> Path:
        return self.root / self.study

    def base_config(self, method: str) -> Path:
        return self.config or resolve_path(METHODS[method].config)

    def grid_space(self) -> dict[str, list]:
        """GridSampler's search space: every searched dimension, and the seed."""
        space = {d.name: list(d.values) for d in self.dimensions}
        space["seed"] = list(self.seeds)
        return space

    def settings(self) -> dict:
        """What defines the study's results; a study that exists with other settings is refused."""
        configs = {m: _file_digest(self.base_config(m)) for m in self.methods}
        return {
            "methods": self.methods,
            "configs": configs,
            "overrides": {k: v for k, v in self.overrides.items() if k != "data.root"},
            "dimensions": [d.__dict__ for d in self.dimensions],
            "fixed": self.fixed,
            "seeds": self.seeds,
            "objectives": [o.__dict__ for o in self.objectives],
            "sampler": [self.sampler, self.sampler_seed],
            "pruner": self.pruner,
        }

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(self.settings(), sort_keys=True, default=str).encode()).hexdigest()[:16]


def _file_digest(path: Path) -> str:
    return file_digest(path)[:16] if path.is_file() else "missing"


def apply_assignment(raw: dict, key: str, value: Any) -> None:
    """Set a sweep key from the command line (core.config.set_key): `n_trials`, `sampler.seed`,
    `overrides.trainer.max_epochs`, `search_space.model.init_args.steps`, or a training key directly
    (`trainer.max_epochs`, an override)."""
    head = key.partition(".")[0]
    if head in CLI_ROOTS:
        key = f"overrides.{key}"
    elif head not in KEYS:
        raise ConfigError(f"unknown sweep key {head!r} in --set {key}: known keys are {', '.join(KEYS)}")
    set_key(raw, key, value, flat=("overrides", "search_space"), as_mapping=_as_mapping)


def _as_mapping(head: str, node) -> dict:
    if head == "sampler" and isinstance(node, str):
        return {"type": node}
    if head == "wandb" and isinstance(node, bool):
        return {"enabled": node}
    raise ConfigError(f"sweep key {head!r} is not a mapping; set it whole: --set {head}=VALUE")


def load_spec(path: str | Path, assignments: list[str] = (), **flags) -> SweepSpec:
    """Read, override and validate a sweep YAML; `flags` are command-line options that win (storage, workers...)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"sweep file {path} not found")
    raw = load_yaml_mapping(path, "sweep file")
    for text in assignments:
        apply_assignment(raw, *parse_assignment(text))
    for key, value in flags.items():
        if value is not None:
            raw[key] = value
    return validate(raw, path)


def validate(raw: dict, path: Path) -> SweepSpec:
    unknown = sorted(set(raw) - set(KEYS))
    if unknown:
        raise ConfigError(f"unknown sweep key {unknown[0]!r} in {path}: known keys are {', '.join(KEYS)}")
    study = raw.get("study")
    if not isinstance(study, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", study):
        raise ConfigError(f"study must be a name of letters, digits, '-', '_' or '.', got {study!r}")
    root = resolve_root(raw.get("root", "runs"))
    storage = str(raw.get("storage") or f"journal:{root / study / 'study.journal'}")

    methods = raw.get("method", "pgd_at")
    methods = list(methods) if isinstance(methods, (list, tuple)) else [methods]
    if not methods:
        raise ConfigError("method is an empty list: name at least one of " + ", ".join(METHODS))
    for method in methods:
        training_method(method)
    config = raw.get("config")
    if config is not None:
        if len(methods) > 1:
            raise ConfigError("config names one base training config; searching several methods uses "
                              "configs/METHOD.yaml")
        config = resolve_path(config)
        if not config.is_file():
            raise ConfigError(f"base training config {config} not found")

    overrides = raw.get("overrides") or {}
    if not isinstance(overrides, dict):
        raise ConfigError("overrides must map dotted training keys to values (model.init_args.steps: 3)")
    overrides = {str(k): v for k, v in overrides.items()}
    norm = parse_norm(str(overrides.get("model.init_args.norm", "linf")))

    dimensions, fixed = [], {}
    if raw.get("epsilon") is None:
        raise ConfigError("epsilon is required: a list of training epsilons (grid) or {low, high} (range)")
    _dimension_or_fixed("epsilon", raw["epsilon"], dimensions, fixed, norm=norm, always_search=True)
    for knob in ("lr", "beta"):
        if raw.get(knob) is not None:
            _dimension_or_fixed(knob, raw[knob], dimensions, fixed)
    if raw.get("beta") is not None and methods != ["trades"]:
        raise ConfigError("beta is TRADES' weight: it needs method: trades")
    space = raw.get("search_space") or {}
    if not isinstance(space, dict):
        raise ConfigError("search_space must map dotted training keys to a list or {low, high}")
    for key, value in space.items():
        if key.split(".")[0] not in CLI_ROOTS:
            raise ConfigError(f"search_space key {key!r} is not a training key "
                              f"(starts with {', '.join(CLI_ROOTS)})")
        if key in KNOBS.values() or key in ("seed_everything", "model.class_path"):
            raise ConfigError(f"search {key!r} with the sweep key of the same meaning "
                              "(epsilon, lr, beta, seeds, method)")
        _dimension_or_fixed(key, value, dimensions, fixed, always_search=True)
    if len(methods) > 1:
        dimensions.append(Dimension("method", values=methods))
    else:
        fixed["method"] = methods[0]
    for key in list(overrides):
        if key in KNOBS.values() or key == "seed_everything" or key == "model.class_path":
            raise ConfigError(f"override {key!r} is set by the sweep: use the sweep keys epsilon, lr, beta, seeds, "
                              "method")

    seeds = raw.get("seeds", [0])
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        if seeds < 1:
            raise ConfigError(f"seeds must be a positive count or a list of seeds, got {seeds}")
        seeds = list(range(seeds))
    if (not isinstance(seeds, list) or not seeds
            or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds)):
        raise ConfigError(f"seeds must be a non-empty list of integers (or a count), got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"seeds has duplicates: {seeds}")

    objectives = _objectives(raw.get("objectives"))

    sampler = raw.get("sampler")
    sampler = {"type": sampler} if isinstance(sampler, str) or sampler is None else sampler
    if not isinstance(sampler, dict) or set(sampler) - {"type", "seed"}:
        raise ConfigError("sampler is a name (grid, tpe, nsga2, random) or {type: NAME, seed: N}")
    all_lists = all(d.is_grid for d in dimensions)
    kind = sampler.get("type") or ("grid" if all_lists else "tpe" if len(objectives) == 1 else "nsga2")
    if kind not in SAMPLERS:
        raise ConfigError(f"unknown sampler {kind!r}: choose from {', '.join(SAMPLERS)}")
    if kind == "grid" and not all_lists:
        ranged = next(d.name for d in dimensions if not d.is_grid)
        raise ConfigError(f"{ranged} is a range, which a grid cannot enumerate: give a list or use sampler "
                          "tpe/nsga2/random")
    sampler_seed = _int("sampler.seed", sampler.get("seed", 0), minimum=0)

    n_trials = raw.get("n_trials")
    if n_trials is not None:
        n_trials = _int("n_trials", n_trials, minimum=1)
    elif kind != "grid":
        raise ConfigError(f"n_trials (the trial budget) is required with sampler {kind}")

    pruner = raw.get("pruner") or ("median" if kind != "grid" and len(objectives) == 1 else "none")
    if pruner not in PRUNERS:
        raise ConfigError(f"unknown pruner {pruner!r}: choose from {', '.join(PRUNERS)}")
    if pruner != "none" and len(objectives) > 1:
        raise ConfigError("pruning needs a single objective; multi-objective studies give the Pareto front "
                          "(pruner: none)")

    heartbeat = raw.get("heartbeat") or {}
    if not isinstance(heartbeat, dict) or set(heartbeat) - {"interval", "grace"}:
        raise ConfigError("heartbeat is {interval: seconds, grace: seconds}")
    interval = _int("heartbeat.interval", heartbeat.get("interval", 10), minimum=1)
    grace = _int("heartbeat.grace", heartbeat.get("grace", 60), minimum=1)
    if grace <= interval:
        raise ConfigError(f"heartbeat.grace ({grace} s) must exceed heartbeat.interval ({interval} s)")

    wandb = raw.get("wandb", False)
    wandb = {"enabled": wandb} if isinstance(wandb, bool) else wandb
    if (not isinstance(wandb, dict) or set(wandb) - {"enabled", "project"}
            or not isinstance(wandb.get("enabled", False), bool)):
        raise ConfigError("wandb is true/false or {enabled: true, project: NAME}")

    gpus = raw.get("gpus")
    if gpus in (None, "", []):
        gpus = []
    elif isinstance(gpus, (str, int)):
        gpus = [g.strip() for g in str(gpus).split(",")]
    else:
        gpus = [str(g) for g in gpus]
    if not all(g.isdigit() for g in gpus):
        raise ConfigError(f"gpus is a comma-separated list of GPU ids (0,1,2,3), got {raw.get('gpus')!r}")
    per_trial = _int("gpus_per_trial", raw.get("gpus_per_trial", 1), minimum=1)
    if gpus and len(gpus) % per_trial:
        raise ConfigError(f"{len(gpus)} GPUs do not split into trials of {per_trial} GPUs")
    workers = raw.get("workers")
    workers = _int("workers", workers, minimum=1) if workers is not None else (len(gpus) // per_trial if gpus else 1)
    if gpus and workers > len(gpus) // per_trial:
        raise ConfigError(f"{workers} workers need {workers * per_trial} GPUs; --gpus gave {len(gpus)}")

    return SweepSpec(
        path=path, study=study, storage=storage, root=root, methods=methods, config=config, overrides=overrides,
        dimensions=dimensions, fixed=fixed, seeds=seeds, objectives=objectives, sampler=kind,
        sampler_seed=sampler_seed, n_trials=n_trials, pruner=pruner,
        max_retries=_int("max_retries", raw.get("max_retries", 2), minimum=0),
        heartbeat_interval=interval, heartbeat_grace=grace, wandb=bool(wandb.get("enabled", False)),
        wandb_project=str(wandb.get("project", "medrobust")), workers=workers, gpus=gpus, gpus_per_trial=per_trial,
    )


def resolve_root(text) -> Path:
    if not isinstance(text, (str, Path)) or not str(text).strip():
        raise ConfigError(f"root must be a folder path, got {text!r}")
    return Path(text).expanduser()


def _int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def _dimension_or_fixed(name, value, dimensions, fixed, norm=None, always_search=False) -> None:
    """A list becomes a grid dimension, {low, high} a range, a scalar a fixed value."""
    def check(v):
        if name == "epsilon":
            return parse_epsilon(v, norm)
        if isinstance(v, bool) or (not isinstance(v, (int, float, str)) and v is not None):
            raise ConfigError(f"{name}: values must be numbers or text, got {v!r}")
        if name in ("lr", "beta") and (not isinstance(v, (int, float)) or v < 0 or (name == "lr" and v == 0)):
            raise ConfigError(f"{name} must be a positive number, got {v!r}")
        return v

    if isinstance(value, list):
        if not value:
            raise ConfigError(f"{name} is an empty list: give at least one value")
        values = [check(v) for v in value]
        if len(set(map(json.dumps, values))) != len(values):
            shown = [format_epsilon(v) for v in values] if name == "epsilon" else values
            raise ConfigError(f"{name} lists a value twice: {shown}")
        dimensions.append(Dimension(name, values=values))
    elif isinstance(value, dict):
        if set(value) - {"low", "high", "step", "log"} or not {"low", "high"} <= set(value):
            raise ConfigError(f"{name} range is {{low, high[, step, log]}}, got {value!r}")
        low, high = check(value["low"]), check(value["high"])
        if not all(isinstance(v, (int, float)) for v in (low, high)) or not low < high:
            raise ConfigError(f"{name} range needs numbers low < high, got {value['low']!r}, {value['high']!r}")
        step = value.get("step")
        if step is not None:
            step = check(step) if name == "epsilon" else step
            if not isinstance(step, (int, float)) or step <= 0:
                raise ConfigError(f"{name} step must be a positive number, got {value['step']!r}")
        log = value.get("log", False)
        if log and (low <= 0 or step is not None):
            raise ConfigError(f"{name}: a log range needs low > 0 and no step")
        dimensions.append(Dimension(name, low=low, high=high, step=step, log=bool(log)))
    elif always_search:
        dimensions.append(Dimension(name, values=[check(value)]))
    else:
        fixed[name] = check(value)


def _objectives(raw) -> list[Objective]:
    if not raw:
        raise ConfigError("objectives is required: {val/clean_bacc: maximize, val/adv_bacc@4/255: maximize}")
    if isinstance(raw, dict):
        items = list(raw.items())
    elif isinstance(raw, list):
        items = []
        for entry in raw:
            if isinstance(entry, dict) and set(entry) == {"metric", "direction"}:
                items.append((entry["metric"], entry["direction"]))
            elif isinstance(entry, dict) and len(entry) == 1:
                items.append(next(iter(entry.items())))
            else:
                raise ConfigError(f"objective {entry!r}: write {{metric: KEY, direction: maximize}} "
                                  "or {KEY: maximize}")
    else:
        raise ConfigError("objectives maps metric keys to maximize or minimize")
    objectives = []
    for metric, direction in items:
        if direction not in DIRECTIONS:
            raise ConfigError(f"objective {metric}: direction must be maximize or minimize, got {direction!r}")
        key = parse_metric_key(str(metric), stage="val")
        if not key.startswith("val/"):
            raise ConfigError(f"objective {metric!r}: objectives use validation metrics (val/...); test metrics are "
                              "reported, never optimised")
        if key in [o.metric for o in objectives]:
            raise ConfigError(f"objective {key} is listed twice")
        objectives.append(Objective(key, direction))
    return objectives

