"""Classifier backbones. Every model takes images in [0, 1]; normalization is its first layer."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
import torchvision

from core.errors import ConfigError

ARCHITECTURES = ("small_cnn", "resnet18_28", "resnet18", "resnet50")


class Normalize(nn.Module):
    """(x - mean) / std per channel, so attacks and epsilons live in [0, 1] pixel space."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class SmallCNN(nn.Module):
    """Four 3x3 conv layers, a 4 x 4 pooled grid (keeps where things are) and an MLP head.

    Trains on 28 px MedMNIST on a CPU in minutes; any input size works.
    """

    def __init__(self, in_channels: int, num_classes: int, width: int = 32):
        super().__init__()

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            )

        self.features = nn.Sequential(block(in_channels, width), block(width, 2 * width))
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(32 * width, 128), nn.ReLU(inplace=True),
            nn.Linear(128, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _resnet(name: str, in_channels: int, num_classes: int, small_input: bool) -> nn.Module:
    net = getattr(torchvision.models, name)(weights=None, num_classes=num_classes)
    if small_input:  # CIFAR-style stem: 28 px images would shrink to 1 px after the 7x7 stride-2 stem and pool
        net.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
        net.maxpool = nn.Identity()
    elif in_channels != 3:
        net.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
    return net


def build_model(
    arch: str,
    in_channels: int,
    num_classes: int,
    mean: Sequence[float] | float = 0.5,
    std: Sequence[float] | float = 0.5,
) -> nn.Sequential:
    """A [0, 1]-input classifier: Normalize followed by the named backbone."""
    if arch not in ARCHITECTURES:
        raise ConfigError(f"unknown architecture {arch!r}: choose one of {', '.join(ARCHITECTURES)}")
    mean = [mean] * in_channels if isinstance(mean, (int, float)) else list(mean)
    std = [std] * in_channels if isinstance(std, (int, float)) else list(std)
    if len(mean) != in_channels or len(std) != in_channels or min(std) <= 0:
        raise ConfigError(f"normalization needs {in_channels} means and {in_channels} positive stds, got {mean}, {std}")
    if arch == "small_cnn":
        backbone = SmallCNN(in_channels, num_classes)
    else:
        backbone = _resnet(arch.removesuffix("_28"), in_channels, num_classes, small_input=arch.endswith("_28"))
    return nn.Sequential(Normalize(mean, std), backbone)
