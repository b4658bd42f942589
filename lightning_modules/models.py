"""Classifier backbones. Every model takes images in [0, 1]; normalization is its first layer."""
from __future__ import annotations

from typing import Any, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn
import torchvision

from core.errors import ConfigError
from .backbones import TimmBackbone, is_timm

ARCHITECTURES = ("small_cnn", "small_cnn_gn", "resnet18_28", "resnet18", "resnet50")  # _gn: GroupNorm, not BatchNorm


class Normalize(nn.Module):
    """(x - mean) / std per channel, so attacks and epsilons live in [0, 1] pixel space.

    With `size`, batches of another size are first resized to size x size (bilinear, antialiased when shrinking)
    on their device: `data.resize` lets a 224 px backbone read 28 px files, while attacks still perturb (and
    epsilon still measures) the images the DataModule serves.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float], size: Optional[int] = None):
        super().__init__()
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32).view(1, -1, 1, 1))
        self.size = None if size is None else int(size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.size is not None and tuple(x.shape[-2:]) != (self.size, self.size):
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False,
                              antialias=self.size < min(x.shape[-2:]))
        return (x - self.mean) / self.std

    def extra_repr(self) -> str:
        return f"size={self.size}" if self.size is not None else ""


class SmallCNN(nn.Module):
    """Four 3x3 conv layers, a 4 x 4 pooled grid (keeps where things are) and an MLP head.

    Trains on 28 px MedMNIST on a CPU in minutes; any input size works.
    """

    def __init__(self, in_channels: int, num_classes: int, width: int = 32, group_norm: bool = False):
        super().__init__()

        def norm(channels: int) -> nn.Module:  # GroupNorm (8 groups): no running statistics to shift
            return nn.GroupNorm(8, channels) if group_norm else nn.BatchNorm2d(channels)

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(cin, cout, 3, padding=1, bias=False), norm(cout), nn.ReLU(inplace=True),
                nn.Conv2d(cout, cout, 3, padding=1, bias=False), norm(cout), nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            )

        self.features = nn.Sequential(block(in_channels, width), block(width, 2 * width))
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(32 * width, 128), nn.ReLU(inplace=True),
            nn.Linear(128, num_classes),
        )

    def penultimate(self, x: torch.Tensor) -> torch.Tensor:
        """The 128-d hidden layer after its ReLU: what the last linear layer reads."""
        return self.head[:-1](self.features(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head[-1](self.penultimate(x))


def _resnet(name: str, in_channels: int, num_classes: int, small_input: bool) -> nn.Module:
    net = getattr(torchvision.models, name)(weights=None, num_classes=num_classes)
    if small_input:  # CIFAR-style stem: 28 px images would shrink to 1 px after the 7x7 stride-2 stem and pool
        net.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
        net.maxpool = nn.Identity()
    elif in_channels != 3:
        net.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
    return net


def _resnet_penultimate(net: torchvision.models.ResNet, x: torch.Tensor) -> torch.Tensor:
    """torchvision's ResNet forward up to the pooled, flattened vector that `fc` reads."""
    x = net.maxpool(net.relu(net.bn1(net.conv1(x))))
    x = net.layer4(net.layer3(net.layer2(net.layer1(x))))
    return torch.flatten(net.avgpool(x), 1)


def classifier_layer(model: nn.Module) -> nn.Linear:
    """The last linear layer (features -> logits) of a `build_model` model."""
    backbone = _backbone(model)
    if isinstance(backbone, TimmBackbone):
        return backbone.classifier()
    return backbone.head[-1] if isinstance(backbone, SmallCNN) else backbone.fc


def features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Penultimate-layer representation (N x D) of [0, 1] images for a `build_model` model (or a module
    holding one as `.model`, like ERM): small_cnn's 128-d hidden layer, a ResNet's pooled vector before fc, a
    timm backbone's pre-logits vector."""
    normalize, backbone = _unpack(model)
    x = normalize(x)
    if isinstance(backbone, TimmBackbone):
        return backbone.features(x)
    if isinstance(backbone, SmallCNN):
        return backbone.penultimate(x)
    return _resnet_penultimate(backbone, x)


def _unpack(model: nn.Module) -> tuple[nn.Module, nn.Module]:
    """(Normalize, backbone) of a `build_model` model, or a ConfigError naming what was given."""
    inner = model if isinstance(model, nn.Sequential) else getattr(model, "model", None)
    if (
        isinstance(inner, nn.Sequential) and len(inner) == 2 and isinstance(inner[0], Normalize)
        and isinstance(inner[1], (SmallCNN, torchvision.models.ResNet, TimmBackbone))
    ):
        return inner[0], inner[1]
    raise ConfigError(f"features() needs a model from build_model (Normalize + backbone), got {type(model).__name__}")


def _backbone(model: nn.Module) -> nn.Module:
    return _unpack(model)[1]


def build_model(
    arch: str,
    in_channels: int,
    num_classes: int,
    mean: Sequence[float] | float | None = None,
    std: Sequence[float] | float | None = None,
    input_size: Optional[int] = None,
    **timm_options: Any,
) -> nn.Sequential:
    """A [0, 1]-input classifier: Normalize (resizing to `input_size` when given) followed by the named backbone.

    mean, std: per channel or one value; None: 0.5 for the built-in archs, the backbone's own for timm ones.
    `timm/NAME` builds a timm backbone (lightning_modules.backbones.build); `timm_options` are that function's
    keywords: pretrained, finetune, lora_*, model_kwargs.
    """
    if input_size is not None and int(input_size) < 1:
        raise ConfigError(f"input_size must be a positive number of pixels, got {input_size}")
    if is_timm(arch):
        from .backbones import build

        backbone, own_mean, own_std = build(arch, in_channels, num_classes, input_size=input_size, **timm_options)
        mean, std = own_mean if mean is None else mean, own_std if std is None else std
        return nn.Sequential(Normalize(*_normalization(mean, std, in_channels), size=input_size), backbone)
    if arch not in ARCHITECTURES:
        raise ConfigError(f"unknown architecture {arch!r}: choose one of {', '.join(ARCHITECTURES)} or timm/NAME")
    options = [k for k in ("pretrained", "model_kwargs") if timm_options.get(k)]
    options += ["finetune"] if timm_options.get("finetune", "full") != "full" else []
    if options:
        raise ConfigError(f"{', '.join(options)} need a timm backbone (arch: timm/NAME), not {arch}")
    mean, std = _normalization(0.5 if mean is None else mean, 0.5 if std is None else std, in_channels)
    if arch in ("small_cnn", "small_cnn_gn"):
        backbone = SmallCNN(in_channels, num_classes, group_norm=arch == "small_cnn_gn")
    else:
        backbone = _resnet(arch.removesuffix("_28"), in_channels, num_classes, small_input=arch.endswith("_28"))
    return nn.Sequential(Normalize(mean, std, size=input_size), backbone)


def _normalization(mean, std, in_channels: int) -> tuple[list[float], list[float]]:
    mean = [mean] * in_channels if isinstance(mean, (int, float)) else list(mean)
    std = [std] * in_channels if isinstance(std, (int, float)) else list(std)
    if len(mean) != in_channels or len(std) != in_channels or min(std) <= 0:
        raise ConfigError(f"normalization needs {in_channels} means and {in_channels} positive stds, got {mean}, {std}")
    return mean, std
