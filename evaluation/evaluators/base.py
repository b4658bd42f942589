"""What every evaluator shares: the one scoring loop (evaluation.scoring.evaluate with the confidence meter) and the
run it evaluates (model, DataModule, this rank's share, logging), plus the small protocol they follow."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, Protocol

import torch

from evaluation.scoring import evaluate
from lightning_modules.calibration import ConfidenceMetrics

#: (metric kind, condition) of a set an evaluator scores: ("clean", "subset"), ("adv", 4/255), ("corr", None)
ScoredSet = tuple[str, Any]


@dataclass(frozen=True)
class Scorer:
    """The scoring loop every evaluator uses: bacc, acc, auroc and, when `confidence_bins` is set and the caller asks,
    the confidence measures of the same probabilities (lightning_modules.calibration), in batches of `batch_size`."""

    batch_size: int = 256
    confidence_bins: Optional[int] = None  # None: confidence off

    def score(self, model, images: torch.Tensor, targets: torch.Tensor, attack=None, progress: Optional[str] = None,
              confidence: bool = False) -> dict[str, float]:
        meter = ConfidenceMetrics(model.task, self.confidence_bins) if confidence and self.confidence_bins else None
        scores = evaluate(model, images, targets, model.task, model.hparams.num_classes, attack=attack,
                          batch_size=self.batch_size, progress=progress, confidence=meter)
        return scores if meter is None else {**scores, **meter.compute()}


@dataclass
class EvaluationRun:
    """One evaluation of `model` on the DataModule `dm`: this rank's share of the work, and the metrics logged."""

    model: Any  # a LightningModule with `task` and `hparams.num_classes`
    dm: Any  # the MedMNISTDataModule (in-memory splits)
    scorer: Scorer
    rank: int = 0
    world_size: int = 1
    logged: dict[str, float] = field(default_factory=dict)
    #: (kind, condition, scores) of each set scored with the confidence meter in a per-epoch check
    scored: list[tuple[str, Any, dict]] = field(default_factory=list)

    def shard(self, indices: torch.Tensor) -> torch.Tensor:
        """This rank's share of a subset: under DDP each rank attacks a disjoint slice."""
        return indices[self.rank :: self.world_size]

    @property
    def is_global_zero(self) -> bool:
        return self.rank == 0

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def log(self, key: str, value: float) -> None:
        """A test-time metric: logged on the module (rank zero) and kept in `logged`."""
        self.logged[key] = value
        self.model.log(key, value, rank_zero_only=True)


class Evaluator(Protocol):
    """An evaluator of the RobustnessCallback: the keys it logs, its per-epoch metrics and its report section."""

    def keys(self, dm) -> dict[str, set[str]]:
        """{'val': keys, 'test': keys} it will log for the DataModule `dm`."""

    def scored_sets(self) -> dict[str, list[ScoredSet]]:
        """{'val': sets, 'test': sets} it scores with the confidence meter (the calibration evaluator's keys)."""

    def check(self, model, dm) -> None:
        """Settings that cannot apply to this model or dataset fail here, before training (ConfigError)."""

    def epoch_metrics(self, run: EvaluationRun) -> dict[str, float]:
        """Its `val/...` metrics for one per-epoch check."""

    def report_section(self, run: EvaluationRun, report: dict) -> None:
        """Adds its section to the test report and logs its `test/...` metrics."""


class EvaluatorBase:
    """Defaults for the protocol's optional parts: nothing scored, nothing to check, nothing per epoch."""

    def scored_sets(self) -> dict[str, list[ScoredSet]]:
        return {"val": [], "test": []}

    def check(self, model, dm) -> None:
        return None

    def epoch_metrics(self, run: EvaluationRun) -> dict[str, float]:
        return {}

    def report_section(self, run: EvaluationRun, report: dict) -> None:
        return None
