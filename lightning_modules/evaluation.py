"""Batched clean and adversarial scoring of a model on in-memory images: one loop for every caller."""
from __future__ import annotations

from typing import Callable, Iterable, Optional

import torch
from torch import nn
from tqdm.auto import tqdm

from datamodules.tensors import to_unit_range
from .metrics import make_metrics, probabilities

Attack = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def evaluate(
    model: nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor,
    task: str,
    num_classes: int,
    attack: Optional[Attack] = None,
    batch_size: int = 256,
    progress: Optional[str] = None,
) -> dict[str, float]:
    """{'bacc', 'acc', 'auroc'} of `model` on images (uint8 or [0, 1] floats), attacked if `attack` is given.

    Metrics are torchmetrics objects: under DDP each rank passes its shard and `compute` reduces them.
    """
    device = model_device(model)
    metrics = make_metrics(task, num_classes).to(device)
    was_training = model.training
    model.eval()
    batches: Iterable[int] = range(0, len(images), batch_size)
    if progress:
        batches = tqdm(batches, desc=progress, leave=False, total=-(-len(images) // batch_size))
    try:
        for start in batches:
            x = to_unit_range(images[start : start + batch_size].to(device))
            y = targets[start : start + batch_size].to(device)
            if attack is not None:
                x = attack(x, y)
            with torch.no_grad():
                metrics.update(probabilities(model(x), task), y.long() if y.is_floating_point() else y)
        return {name: float(value) for name, value in metrics.compute().items()}
    finally:
        model.train(was_training)

