"""MedMNIST-C scores of a model: balanced accuracy per corruption and severity, BE and rBE as medmnistc/eval.py.

The formulas are the MedMNIST-C paper's (medmnistc's `Evaluator.populate_summary`): with balanced error
e = 1 - balanced accuracy, averaged over the severities of corruption c,
    BE_c  = e_c / e_c(AlexNet)
    rBE_c = (e_c - e_ref) / (e_c(AlexNet) - e_clean(AlexNet))
and the mean BE / rBE average over corruptions. e_ref is the error on the clean test images resampled exactly as
the corrupted ones (to 224 px and back, `rbe_reference: "roundtrip"`) under the resampling protocols
(`upsample224-corrupt-box`, `official224-corrupt-box`), so rBE measures the corruption and not the resampling;
under `native224` it is the clean error (`rbe_reference: "clean"`, medmnistc's own definition). The AlexNet errors
(`medmnistc.utils.baselines.BASELINES`) were measured on the native 224 px MedMNIST-C; under another protocol they
are a fixed scale that keeps runs of the same protocol comparable, not a comparison with the published numbers.
Predictions follow eval.py: binary tasks threshold the positive-class probability, multi-label tasks average the
per-label balanced accuracy at a threshold per label, multi-class and ordinal tasks take the argmax.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Mapping, Sequence

import numpy as np
import torch

from core.errors import ConfigError, DataError
from datamodules.info import DatasetInfo
from evaluation.scoring import predict as predict_probabilities
from lightning_modules.calibration import confidence_measures
from lightning_modules.metrics import DEFAULT_THRESHOLD, task_balanced_accuracy


@dataclass(frozen=True)
class CorruptionScores:
    """One model's MedMNIST-C table. `bacc[c]` holds one balanced accuracy per entry of `severities`."""

    flag: str
    protocol: str
    size: int
    severities: tuple[int, ...]
    clean_bacc: float
    roundtrip_bacc: float | None  # clean images resampled like the corrupted ones; None under native224
    rbe_reference: str  # "roundtrip" or "clean": whose error rBE subtracts
    bacc: dict[str, tuple[float, ...]]
    corruption_bacc: dict[str, float]  # mean over severities
    be: dict[str, float]
    rbe: dict[str, float]
    mean_bacc: float  # mean corrupted balanced accuracy over corruptions
    mean_be: float
    mean_rbe: float
    # confidence and calibration (lightning_modules.calibration) of the corrupted predictions, when asked for:
    # {'all': pooled over corruptions and severities, 'per_corruption': {c: ...}, 'per_severity': {s: ...}}
    confidence: dict | None = None

    def to_dict(self) -> dict:
        """Plain JSON-able dict (for loggers and result files)."""
        return asdict(self)


def _alexnet(flag: str) -> dict:
    from medmnistc.utils.baselines import BASELINES

    if flag not in BASELINES:
        raise ConfigError(f"medmnistc has no AlexNet baseline for {flag!r}")
    return BASELINES[flag]


def scores_from_probabilities(info: DatasetInfo, labels: np.ndarray, clean_probabilities: np.ndarray,
                              corrupted_probabilities: Mapping[str, np.ndarray], *, protocol: str, size: int,
                              clean_labels: np.ndarray | None = None, severities: Sequence[int] = (1, 2, 3, 4, 5),
                              threshold: float | Sequence[float] = DEFAULT_THRESHOLD,
                              roundtrip_probabilities: np.ndarray | None = None,
                              confidence_bins: int | None = None) -> CorruptionScores:
    """The table from probabilities: clean N x C, and per corruption (len(severities) * N) x C stacked
    severity-major (medmnistc's `Evaluator.evaluate` input); `labels` are MedMNIST's N x 1 or N x L, and
    `clean_labels` default to them. With `roundtrip_probabilities` (N x C, the round-tripped clean images,
    scored against `labels`) rBE subtracts their error instead of the clean one. With `confidence_bins` the
    table also carries the corrupted predictions' confidence and calibration (ECE with that many bins)."""
    labels = _as_2d(labels)
    n, baseline = len(labels), _alexnet(info.flag)
    clean_labels = labels if clean_labels is None else _as_2d(clean_labels)
    clean_bacc = task_balanced_accuracy(info.task, clean_labels, clean_probabilities, threshold)
    roundtrip_bacc = None if roundtrip_probabilities is None else \
        task_balanced_accuracy(info.task, labels, roundtrip_probabilities, threshold)
    reference_bacc = clean_bacc if roundtrip_bacc is None else roundtrip_bacc
    bacc, be, rbe = {}, {}, {}
    for corruption, stacked in corrupted_probabilities.items():
        stacked = np.asarray(stacked)
        if len(stacked) != len(severities) * n:
            raise DataError(f"{corruption}: {len(stacked)} predictions, expected {len(severities)} x {n}")
        bacc[corruption] = tuple(task_balanced_accuracy(info.task, labels, stacked[s * n:(s + 1) * n], threshold)
                                 for s in range(len(severities)))
        if corruption not in baseline["raw_scores"]:
            raise ConfigError(f"medmnistc has no AlexNet error for {info.flag}/{corruption}")
        error, alexnet_error = 1.0 - float(np.mean(bacc[corruption])), baseline["raw_scores"][corruption]
        be[corruption] = error / alexnet_error
        rbe[corruption] = (error - (1.0 - reference_bacc)) / (alexnet_error - baseline["clean_score"])
    corruption_bacc = {c: float(np.mean(v)) for c, v in bacc.items()}
    confidence = None if confidence_bins is None else \
        _confidence(info.task, labels, corrupted_probabilities, severities, confidence_bins)
    return CorruptionScores(info.flag, protocol, int(size), tuple(severities), clean_bacc, roundtrip_bacc,
                            "clean" if roundtrip_bacc is None else "roundtrip", bacc, corruption_bacc,
                            be, rbe, float(np.mean(list(corruption_bacc.values()))),
                            float(np.mean(list(be.values()))), float(np.mean(list(rbe.values()))), confidence)


def _confidence(task: str, labels: np.ndarray, corrupted: Mapping[str, np.ndarray], severities: Sequence[int],
                bins: int) -> dict:
    """Confidence and calibration of the corrupted predictions: pooled, per corruption and per severity."""
    n, stacks = len(labels), {c: np.asarray(p) for c, p in corrupted.items()}
    if not stacks:
        return {}
    tiled = np.concatenate([labels] * len(severities))

    def measures(probabilities, targets):
        return confidence_measures(probabilities, targets, task, bins)

    return {
        "all": measures(np.concatenate(list(stacks.values())), np.concatenate([tiled] * len(stacks))),
        "per_corruption": {c: measures(p, tiled) for c, p in stacks.items()},
        "per_severity": {str(s): measures(np.concatenate([p[i * n:(i + 1) * n] for p in stacks.values()]),
                                          np.concatenate([labels] * len(stacks)))
                         for i, s in enumerate(severities)},
        "bins": bins,
    }


def _as_2d(labels) -> np.ndarray:
    labels = np.asarray(labels)
    return labels.reshape(-1, 1) if labels.ndim == 1 else labels


def corruption_scores(model: torch.nn.Module, corrupted, *, clean_images: torch.Tensor | None = None,
                      clean_labels: np.ndarray | torch.Tensor | None = None, batch_size: int = 512,
                      threshold: float | Sequence[float] = DEFAULT_THRESHOLD,
                      confidence_bins: int | None = None) -> CorruptionScores:
    """Score `model` (images in [0, 1] -> logits) on a `CorruptedTestSet`; the clean error comes from the set's own
    clean images unless `clean_images`/`clean_labels` (uint8 N x C x H x W, MedMNIST N x L labels) are given, and
    rBE's reference from the set's round-tripped clean images when it has them."""
    info, labels = corrupted.info, corrupted.raw_labels
    clean = corrupted.clean_images() if clean_images is None else clean_images
    if clean_labels is not None:
        clean_labels = clean_labels.cpu().numpy() if isinstance(clean_labels, torch.Tensor) else clean_labels

    def predict(images):
        return predict_probabilities(model, images, info.task, info.num_classes, batch_size=batch_size).double().numpy()

    clean_probabilities = predict(clean)
    roundtrip = corrupted.roundtrip_images()
    stacked = {c: np.concatenate([predict(corrupted.images_for(c, s)) for s in corrupted.severities])
               for c in corrupted.corruptions}
    return scores_from_probabilities(info, labels, clean_probabilities, stacked, clean_labels=clean_labels,
                                     protocol=corrupted.protocol, size=corrupted.size,
                                     severities=corrupted.severities, threshold=threshold,
                                     roundtrip_probabilities=None if roundtrip is None else predict(roundtrip),
                                     confidence_bins=confidence_bins)


def format_table(result: CorruptionScores, digits: int = 3) -> str:
    """Plain-text table: balanced accuracy per corruption and severity, its mean, BE and rBE, then the means."""
    name_width = max(len("corruption"), *(len(c) for c in result.bacc))
    number = f"{{:>{digits + 4}.{digits}f}}"
    heads = [f"s{s}" for s in result.severities] + ["mean", "BE", "rBE"]
    head = f"{'corruption':<{name_width}}" + "".join(f"{h:>{digits + 4}}" for h in heads)
    lines = [
        f"MedMNIST-C {result.flag} {result.size}px, protocol {result.protocol}",
        f"clean balanced accuracy {result.clean_bacc:.{digits}f}" + (
            " (rBE reference)" if result.roundtrip_bacc is None else
            f", round-tripped clean {result.roundtrip_bacc:.{digits}f} (rBE reference: resampled like the corrupted "
            "images, not corrupted)"),
        head,
        "-" * len(head),
    ]
    for corruption, per_severity in result.bacc.items():
        values = [*per_severity, result.corruption_bacc[corruption], result.be[corruption], result.rbe[corruption]]
        lines.append(f"{corruption:<{name_width}}" + "".join(number.format(v) for v in values))
    lines.append("-" * len(head))
    pad = " " * ((digits + 4) * len(result.severities))
    means = (result.mean_bacc, result.mean_be, result.mean_rbe)
    lines.append(f"{'mean':<{name_width}}{pad}" + "".join(number.format(v) for v in means))
    return "\n".join(lines)
