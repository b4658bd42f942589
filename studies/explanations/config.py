"""The explanation study's config (configs/study/explanations_quick.yaml): the `Study` dataclass, its checks and
the RobustnessCallback settings every model is tested with."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Optional, Union

from attacks.threat_model import format_epsilon, parse_epsilon
from core.errors import ConfigError

from ..runner import StudyConfig, check_datasets, check_seeds, check_training_spec, load_study

EXPLANATION_KEYS = {"method", "k", "steps", "samples", "val_samples", "val_steps", "every_epoch"}
CALLBACK = "trainer.callbacks.init_args."
#: the study's AutoAttack block: evaluation.evaluators.settings.AutoAttackSettings' fields (less `enabled`: every
#: model is attacked) and the margin by which PGD may exceed AutoAttack before a model is flagged
AUTOATTACK_DEFAULTS = {"version": "custom", "attacks": ["apgd-ce", "apgd-t", "square"], "samples": None,
                       "square_queries": 1000, "masking_margin": 0.02}
#: the block's fields that are the callback's AutoAttack settings (its `autoattack` group)
AUTOATTACK_SETTINGS = ("version", "attacks", "samples", "square_queries")
#: the explanation-robustness measure on the study's y axis, and the one under random noise beside it
EXPLANATION_AXIS, NOISE_AXIS = "topk", "topk_random"


@dataclass
class Study(StudyConfig):
    """A parsed, validated explanation study config (see configs/study/explanations_quick.yaml): the YAML's keys are
    its fields (less `source`, the file), checked when it is built (unknown explanation method, k larger than the
    image, a negative radius: one ConfigError line). `autoattack`: the AutoAttack every model is tested with beside
    PGD (AUTOATTACK_DEFAULTS) and the PGD - AutoAttack margin above which a model is flagged."""

    DESCRIPTION: ClassVar[str] = ("classification vs explanation robustness (Chen et al. 2403.06013): train, measure "
                                  "both, correlate")

    epsilon: Union[float, str] = "4/255"
    norm: str = "linf"
    explanation: dict = field(default_factory=dict)
    compare: dict[str, str] = field(default_factory=dict)
    autoattack: dict = field(default_factory=dict)
    examples: int = 3
    bootstrap: int = 1000
    source: Path = Path("study.yaml")

    def __post_init__(self) -> None:
        from explanations import METHODS

        models = self.models = self.models or {}
        if len(models) < 3:
            raise ConfigError("the study needs at least 3 models (a correlation across models): "
                              "models: {erm: ..., pgd_at: ..., trades_6: ...}")
        for name, spec in models.items():
            check_training_spec(f"models.{name}", spec)
        try:
            self.epsilon = parse_epsilon(self.epsilon, self.norm)
        except ConfigError as err:
            raise ConfigError(f"epsilon: {err}") from None
        if self.epsilon == 0:
            raise ConfigError("epsilon must be > 0: both robustness measures are taken at this radius")
        explanation = self.explanation = {"method": "saliency", "k": 0.1, "steps": 20, "samples": 200,
                                          **(self.explanation or {})}
        extra = sorted(set(explanation) - EXPLANATION_KEYS)
        if extra:
            raise ConfigError(f"unknown explanation key(s) {', '.join(extra)}: "
                              f"use {', '.join(sorted(EXPLANATION_KEYS))}")
        if explanation["method"] not in METHODS:
            raise ConfigError(f"unknown explanation method {explanation['method']!r}: choose from {', '.join(METHODS)}")
        k = explanation["k"]
        if isinstance(k, bool) or not (isinstance(k, int) and k >= 1 or isinstance(k, float) and 0 < k < 1):
            raise ConfigError(f"explanation.k is a number of pixels (an integer >= 1) or a share in (0, 1), got {k!r}")
        _positive_int("explanation.steps", explanation["steps"])
        _positive_int("explanation.samples", explanation["samples"], allow_none=True)
        self.datasets = check_datasets(self.datasets or [])
        for entry in self.datasets:
            size = entry.get("size", 28)
            if isinstance(k, int) and k > size * size:
                raise ConfigError(f"explanation.k {k} is larger than the image "
                                  f"({size} x {size} = {size * size} pixels)")
        self.seeds = check_seeds(self.seeds)
        compare = self.compare or {}
        if not isinstance(compare, dict):
            raise ConfigError("compare maps a regularised model to the model it is compared with: {expl_reg: erm}")
        for a, b in compare.items():
            if a not in models or b not in models:
                raise ConfigError(f"compare.{a}: {b} must both be models of the study ({', '.join(models)})")
        self.compare, self.train = dict(compare), dict(self.train or {})
        self.autoattack = _autoattack_block(self.autoattack, self.train)
        self.examples = _positive_int("examples", self.examples)
        self.bootstrap = _positive_int("bootstrap", self.bootstrap)
        self.name = str(self.name or Path(self.source).stem)

    def callback_overrides(self) -> dict:
        """The RobustnessCallback settings every model is tested with: one radius for both robustness measures."""
        e = self.explanation
        label = format_epsilon(self.epsilon)
        return {f"{CALLBACK}norm": self.norm, f"{CALLBACK}epsilons": [label],
                f"{CALLBACK}explanation_report": True, f"{CALLBACK}explanation_epsilons": [label],
                f"{CALLBACK}explanation_method": e["method"], f"{CALLBACK}explanation_k": e["k"],
                f"{CALLBACK}explanation_test_steps": e["steps"], f"{CALLBACK}explanation_test_samples": e["samples"],
                f"{CALLBACK}explanation_epoch": bool(e.get("every_epoch", False)),
                f"{CALLBACK}explanation_samples": e.get("val_samples", 32),
                f"{CALLBACK}explanation_steps": e.get("val_steps", 5),
                # the grouped spelling: a flat `autoattack_samples null` reaches jsonargparse as the string "None"
                f"{CALLBACK}autoattack": {"enabled": True,
                                          **{name: self.autoattack[name] for name in AUTOATTACK_SETTINGS}}}

    def reproduce(self, out: Path, log=print) -> list[dict]:
        """Run (or reuse) every step under `out` and write the results (studies.explanations.pipeline)."""
        from .pipeline import reproduce

        return reproduce(self, Path(out), log)


def _positive_int(name: str, value, allow_none: bool = False):
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name} must be a positive integer{' or null' if allow_none else ''}, got {value!r}")
    return value


def _autoattack_block(block, train: dict) -> dict:
    """The study's `autoattack` block with its defaults, checked by the AutoAttack evaluator itself (attack names)
    and here (counts, margin); AutoAttack keys under `train` are refused: the block is their one place."""
    from attacks.autoattack import VERSIONS
    from evaluation.evaluators.adversarial import AdversarialEvaluator, AutoAttackEvaluator
    from evaluation.evaluators.settings import AdversarialSettings, AutoAttackSettings

    if block is not None and not isinstance(block, dict):
        raise ConfigError(f"autoattack is a mapping of {', '.join(AUTOATTACK_DEFAULTS)}, got {block!r}")
    aa = {**AUTOATTACK_DEFAULTS, **(block or {})}
    extra = sorted(set(aa) - set(AUTOATTACK_DEFAULTS))
    if extra:
        raise ConfigError(f"unknown autoattack key(s) {', '.join(extra)}: use {', '.join(AUTOATTACK_DEFAULTS)}")
    clash = sorted(k for k in train if k.startswith(CALLBACK)
                   and (k.removeprefix(CALLBACK).startswith("autoattack") or k.endswith("square_queries")))
    if clash:
        raise ConfigError(f"train: {', '.join(clash)}: the study sets AutoAttack in its own autoattack block "
                          f"({', '.join(AUTOATTACK_DEFAULTS)})")
    if aa["version"] not in VERSIONS:
        raise ConfigError(f"autoattack.version must be one of {', '.join(VERSIONS)}, got {aa['version']!r}")
    if aa["version"] == "standard":
        aa["attacks"] = None  # the standard version fixes its attacks
    elif not isinstance(aa["attacks"], list) or not aa["attacks"]:
        raise ConfigError(f"autoattack.attacks is a list of attacks, got {aa['attacks']!r}")
    _positive_int("autoattack.samples", aa["samples"], allow_none=True)
    _positive_int("autoattack.square_queries", aa["square_queries"], allow_none=True)
    margin = aa["masking_margin"]
    if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not 0 <= margin < 1:
        raise ConfigError(f"autoattack.masking_margin is a balanced-accuracy difference in [0, 1), got {margin!r}")
    settings = AutoAttackSettings(version=aa["version"], attacks=aa["attacks"], samples=aa["samples"],
                                  square_queries=aa["square_queries"])
    try:
        AutoAttackEvaluator(settings, AdversarialEvaluator(AdversarialSettings()))  # it refuses unknown attacks
    except ConfigError as err:
        raise ConfigError(f"autoattack.attacks: {err}") from None
    return aa


def load(path: str | Path, overrides: Optional[list[str]] = None) -> Study:
    """Read an explanation study YAML, apply `--set key=value` overrides, and check every key before any training."""
    return load_study(Study, path, overrides)
