"""Batched clean and adversarial scoring of a model on in-memory images: one loop for every caller."""
from __future__ import annotations

from typing import Callable, Iterable, Optional

import torch
from torch import nn
from tqdm.auto import tqdm

from core.checks import positive_int
from core.errors import ConfigError
from datamodules.tensors import to_unit_range
from lightning_modules.calibration import ConfidenceMetrics
from lightning_modules.metrics import make_metrics, probabilities

Attack = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def model_device(model: nn.Module) -> torch.device:
    """Where the model's first parameter or buffer lives (the CPU for a model with neither)."""
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")


def attacked(attack: Attack, model: nn.Module, x: torch.Tensor, y: torch.Tensor):
    """(x_adv, logits of `model` on x_adv or None): attacks with a `scored` method (attacks.gradient) hand back the
    logits of their final forward pass, saving one, but only when they attacked this very model."""
    if hasattr(attack, "scored") and getattr(attack, "model", None) is model:
        return attack.scored(x, y)
    return attack(x, y), None


def predict(
    model: nn.Module,
    images: torch.Tensor,
    task: str,
    num_classes: int,
    attack: Optional[Attack] = None,
    targets: Optional[torch.Tensor] = None,
    batch_size: int = 256,
    progress: Optional[str] = None,
) -> torch.Tensor:
    """Class (or label) probabilities, N x C on the CPU, of `model` in eval mode on images that are uint8
    or [0, 1] floats, batch by batch on the model's device; attacked first when `attack` is given."""
    positive_int("batch_size", batch_size)
    if attack is not None and targets is None:
        raise ConfigError("an attack needs the targets")
    device = model_device(model)
    was_training = model.training
    model.eval()
    batches: Iterable[int] = range(0, len(images), batch_size)
    if progress:
        batches = tqdm(batches, desc=progress, leave=False, total=-(-len(images) // batch_size))
    chunks = []
    try:
        for start in batches:
            x = to_unit_range(images[start : start + batch_size].to(device))
            logits = None
            if attack is not None:
                x, logits = attacked(attack, model, x, targets[start : start + batch_size].to(device))
            if logits is None:
                with torch.no_grad():
                    logits = model(x)
            if logits.ndim != 2 or logits.shape[1] != num_classes:
                raise ConfigError(f"model returned {tuple(logits.shape)} logits; the task needs N x {num_classes}")
            chunks.append(probabilities(logits.float(), task).cpu())
    finally:
        model.train(was_training)
    return torch.cat(chunks) if chunks else torch.empty(0, num_classes)


def evaluate(
    model: nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor,
    task: str,
    num_classes: int,
    attack: Optional[Attack] = None,
    batch_size: int = 256,
    progress: Optional[str] = None,
    confidence: Optional[ConfidenceMetrics] = None,
) -> dict[str, float]:
    """{'bacc', 'acc', 'auroc'} of `model` on images (uint8 or [0, 1] floats), attacked if `attack` is given.

    Metrics are torchmetrics objects: under DDP each rank passes its shard and `compute` reduces them.
    `confidence` (a `lightning_modules.calibration.ConfidenceMetrics`) is fed the same probabilities: confidence
    and calibration at no extra forward pass.
    """
    probs = predict(model, images, task, num_classes, attack, targets, batch_size, progress)
    metrics = make_metrics(task, num_classes)
    targets = targets.cpu()
    if confidence is not None:
        confidence.update(probs, targets)
    metrics.update(probs, targets.long() if targets.is_floating_point() else targets)
    return {name: float(value) for name, value in metrics.compute().items()}
