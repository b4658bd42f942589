"""MedMNIST-C corruption accuracy for the robustness callback: a fixed corrupted validation subset
scored every epoch, and the full corrupted test set (BE / rBE table) at test time."""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch

from datamodules.medmnist_c import DEFAULT_CACHE, corrupt_chunk, corruption_names, load_corrupted
from datamodules.tensors import fixed_subset, to_channels_first
from evaluation.corruption_scores import CorruptionScores, corruption_scores
from evaluation.scoring import evaluate
from lightning_modules.calibration import CONFIDENCE_METRICS, ConfidenceMetrics
from lightning_modules.metrics import metric_key


def _as_medmnist_arrays(images: torch.Tensor, n_channels: int) -> np.ndarray:
    """uint8 N x C x H x W tensors back to MedMNIST's N x H x W (grey) or N x H x W x 3 arrays."""
    return images[:, 0].numpy() if n_channels == 1 else images.permute(0, 2, 3, 1).contiguous().numpy()


class CorruptionEvaluation:
    """What the robustness callback needs for corruptions; the images come from `medmnistc`'s registry."""

    def __init__(
        self,
        corruptions: Optional[Sequence[str]] = None,
        severities: Sequence[int] = (3,),
        val_samples: int = 128,
        cache: str = DEFAULT_CACHE,
        workers: Optional[int] = None,
        seed: int = 0,
    ):
        self.corruptions = None if corruptions is None else list(corruptions)
        self.severities = list(severities)
        self.val_samples, self.cache, self.workers, self.seed = val_samples, cache, workers, seed
        self._val: Optional[tuple[dict[tuple[str, int], torch.Tensor], torch.Tensor]] = None

    def _validation_set(self, dm) -> tuple[dict[tuple[str, int], torch.Tensor], torch.Tensor]:
        """Corrupted copies of a fixed, seeded validation subset, built once per run."""
        if self._val is None:
            split = dm.split("val")
            index = fixed_subset(len(split), self.val_samples, self.seed)
            raw = _as_medmnist_arrays(split.images[index], dm.info.n_channels)
            names = self.corruptions or corruption_names(dm.flag)
            images = {
                (name, severity): to_channels_first(
                    corrupt_chunk(dm.flag, name, severity, raw, self.seed, dm.size), dm.hparams.as_rgb
                )
                for name in names
                for severity in self.severities
            }
            self._val = images, split.targets[index]
        return self._val

    def epoch_metrics(self, pl_module, dm, rank: int = 0, world_size: int = 1,
                      confidence_bins: Optional[int] = None) -> dict[str, float]:
        """`val/corr_bacc` (mean over the chosen corruptions and severities) and `val/corr_bacc@<corruption>`; with
        `confidence_bins`, also `val/corr_conf`, `val/corr_ece`, ... (lightning_modules.calibration) over all the
        corrupted predictions pooled, from the same probabilities."""
        images, targets = self._validation_set(dm)
        shard = slice(rank, None, world_size)
        per_corruption: dict[str, list[float]] = {}
        confidence = None if confidence_bins is None else ConfidenceMetrics(dm.task, confidence_bins)
        for (name, _), x in images.items():
            scores = evaluate(pl_module, x[shard], targets[shard], dm.task, dm.num_classes, confidence=confidence)
            per_corruption.setdefault(name, []).append(scores["bacc"])
        logged = {metric_key("val", "corr", "bacc", name): float(np.mean(v)) for name, v in per_corruption.items()}
        logged[metric_key("val", "corr", "bacc")] = float(np.mean(list(logged.values())))
        if confidence is not None:
            measured = confidence.compute()
            logged.update({metric_key("val", "corr", name): measured[name] for name in CONFIDENCE_METRICS})
        return logged

    def test_table(self, pl_module, dm, confidence_bins: Optional[int] = None) -> CorruptionScores:
        """Balanced accuracy per corruption (the chosen ones; default all) and severity, BE and rBE on the whole
        MedMNIST-C test set; with `confidence_bins`, the corrupted predictions' confidence and calibration too."""
        corrupted = load_corrupted(
            dm.flag, dm.size, dm.root, self.cache, seed=self.seed, as_rgb=dm.hparams.as_rgb,
            corruptions=self.corruptions, workers=self.workers, verify=dm.hparams.verify_md5,
        )
        return corruption_scores(pl_module, corrupted, confidence_bins=confidence_bins)
