"""Saliency maps from Captum behind one signature: ``Explainer(model, method, **options)(images, targets)``.

Every method returns one map per image, (N, H, W), non-negative and detached: the absolute attribution summed
over the input channels (Grad-CAM: the ReLU'd class activation map of a convolutional layer, bilinearly upsampled
to the image). Images are in [0, 1] (normalization is inside the model); the model runs in eval mode under
torch.enable_grad() and every module's mode is restored after; random draws (SmoothGrad's noise) are seeded.
"""
from __future__ import annotations

import math
from typing import Optional, Union

import torch
from torch import Tensor, nn

from attacks.gradient import attack_mode, autograd_ready, check_pixels
from core.checks import positive_int
from core.errors import ConfigError

METHODS = ("saliency", "smoothgrad", "integrated_gradients", "gradcam")


def explained_classes(model: nn.Module, images: Tensor, targets: Optional[Tensor] = None) -> Tensor:
    """The class each map explains, (N,) long: integer class indices as given; for None (and for float
    multi-hot multi-label targets (N, L)) the top-scoring class or label of the model on the clean images."""
    if targets is not None and _class_indices(targets, len(images)):
        return autograd_ready(targets).long()
    if targets is not None and not (targets.is_floating_point() and targets.ndim == 2 and len(targets) == len(images)):
        raise ConfigError(f"targets must be class indices of shape ({len(images)},) or multi-hot labels "
                          f"({len(images)}, L), got {tuple(targets.shape)} {targets.dtype}")
    with attack_mode(model), torch.no_grad():
        return model(autograd_ready(images)).argmax(1)


def _class_indices(targets: Tensor, n: int) -> bool:
    return targets.shape == (n,) and not targets.is_floating_point() and targets.dtype != torch.bool


def last_conv_layer(model: nn.Module, images: Optional[Tensor] = None) -> nn.Module:
    """The last nn.Conv2d the forward pass runs (the order of registration when no images are given)."""
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ConfigError(f"Grad-CAM needs a convolutional layer, and {type(model).__name__} has no nn.Conv2d "
                          f"(choose saliency, smoothgrad or integrated_gradients)")
    if images is None:
        return convs[-1]
    order = []
    hooks = [m.register_forward_hook(lambda module, inputs, output: order.append(module)) for m in convs]
    try:
        with attack_mode(model), torch.no_grad():
            model(autograd_ready(images[:1]))
    finally:
        for hook in hooks:
            hook.remove()
    return order[-1] if order else convs[-1]


class Explainer:
    """A saliency method built on Captum, called as ``explainer(images, targets) -> (N, H, W) maps``.

    saliency              Saliency (|input gradient|, Simonyan et al. 2014)
    smoothgrad            NoiseTunnel(Saliency), `samples` draws of Gaussian noise with sd `noise` in pixel units
    integrated_gradients  IntegratedGradients from a constant `baseline` image in `steps` steps
    gradcam               LayerGradCam on `layer` (an nn.Module or a dotted name; default the last conv layer run)

    targets: integer class indices (N,), or None for the model's predicted class. A map explains one class, so
    multi-label targets (N, L) are refused: pass `explained_classes(model, images, y)` (the top-scoring label).
    """

    def __init__(self, model: nn.Module, method: str = "saliency", *, samples: int = 16, noise: float = 0.1,
                 steps: int = 16, baseline: float = 0.0, layer: Union[nn.Module, str, None] = None, seed: int = 0):
        if method not in METHODS:
            raise ConfigError(f"unknown explanation method {method!r}: choose one of {', '.join(METHODS)}")
        self.model = model
        self.method = method
        self.samples = positive_int("samples", samples)
        self.steps = positive_int("steps", steps)
        self.noise = _finite("noise", noise, minimum=0.0)
        self.baseline = _finite("baseline", baseline, minimum=0.0, maximum=1.0)
        self.seed = int(seed)
        self.layer = _named_layer(model, layer) if layer is not None else None
        if method == "gradcam" and self.layer is None:
            last_conv_layer(model)  # a model without a conv layer is refused now, not at the first call

    def __repr__(self) -> str:
        options = {"saliency": "", "smoothgrad": f", samples={self.samples}, noise={self.noise:g}",
                   "integrated_gradients": f", steps={self.steps}, baseline={self.baseline:g}",
                   "gradcam": f", layer={type(self.layer).__name__ if self.layer is not None else 'last conv'}"}
        return f"Explainer({self.method!r}{options[self.method]}, seed={self.seed})"

    def __call__(self, images: Tensor, targets: Optional[Tensor] = None) -> Tensor:
        if images.ndim != 4:
            raise ConfigError(f"explanations need images of shape (N, C, H, W), got {tuple(images.shape)}")
        check_pixels(images)
        if targets is None:
            targets = explained_classes(self.model, images)
        elif not _class_indices(targets, len(images)):
            raise ConfigError(
                f"{self.method} explains one class per example: pass class indices of shape ({len(images)},), "
                f"got {tuple(targets.shape)} {targets.dtype} (for multi-label labels, explained_classes(model, "
                f"images, y) picks the top-scoring label)")
        x = autograd_ready(images).float().requires_grad_(True)
        targets = autograd_ready(targets).long()
        with attack_mode(self.model), torch.random.fork_rng(devices=_cuda_devices(x)):
            torch.manual_seed(self.seed)
            maps = self._attribute(x, targets)
        return maps.detach()

    def _attribute(self, x: Tensor, targets: Tensor) -> Tensor:
        from captum.attr import IntegratedGradients, LayerAttribution, LayerGradCam, NoiseTunnel, Saliency

        if self.method == "saliency":
            return Saliency(self.model).attribute(x, target=targets, abs=True).sum(1)
        if self.method == "smoothgrad":
            tunnel = NoiseTunnel(Saliency(self.model))
            return tunnel.attribute(x, nt_type="smoothgrad", nt_samples=self.samples, stdevs=self.noise,
                                    target=targets, abs=True).sum(1)
        if self.method == "integrated_gradients":
            ig = IntegratedGradients(self.model)
            return ig.attribute(x, baselines=self.baseline, target=targets, n_steps=self.steps).abs().sum(1)
        layer = self.layer if self.layer is not None else last_conv_layer(self.model, x)
        cam = LayerGradCam(self.model, layer).attribute(x, target=targets, relu_attributions=True)
        return LayerAttribution.interpolate(cam, tuple(x.shape[2:]), "bilinear").sum(1).clamp_min(0)


def _cuda_devices(x: Tensor) -> list:
    return [x.device] if x.device.type == "cuda" else []


def _finite(name: str, value, minimum: float, maximum: float = math.inf) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not minimum <= value <= maximum:
        bound = f"in [{minimum:g}, {maximum:g}]" if math.isfinite(maximum) else f">= {minimum:g}"
        raise ConfigError(f"{name} must be a number {bound}, got {value!r}")
    return float(value)


def _named_layer(model: nn.Module, layer: Union[nn.Module, str]) -> nn.Module:
    if isinstance(layer, nn.Module):
        return layer
    modules = dict(model.named_modules())
    if layer not in modules:
        raise ConfigError(f"layer {layer!r} not found in the model (names look like "
                          f"{', '.join(list(modules)[1:4]) or 'none'}, ...)")
    return modules[layer]
