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


def gradcam_layer(model: nn.Module, images: Optional[Tensor] = None) -> nn.Module:
    """The layer Grad-CAM explains by default: the output of the network's last convolutional stage, i.e. the last
    module run (containers finish after their children) with a 4-D output of more than 1 x 1 pixels, not a pooling
    layer, from the first convolution on: `features` of small_cnn, `layer4` of a ResNet. Without images (to check a
    model before a run), the last registered nn.Conv2d. ConfigError for a model without nn.Conv2d, and for one whose
    last convolution is followed by attention (a ViT's only convolution is its patch embedding): pass layer=."""
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ConfigError(f"Grad-CAM needs a convolutional layer, and {type(model).__name__} has no nn.Conv2d "
                          f"(choose saliency, smoothgrad or integrated_gradients)")
    if images is None:
        modules = list(model.modules())
        _refuse_attention_after(modules.index(convs[-1]), modules)
        return convs[-1]
    runs = []  # (module, output shape or None), in the order the modules finish
    hooks = [m.register_forward_hook(lambda module, inputs, output: runs.append(
        (module, tuple(output.shape) if isinstance(output, Tensor) else None))) for m in model.modules()]
    try:
        with attack_mode(model), torch.no_grad():
            model(autograd_ready(images[:1]))
    finally:
        for hook in hooks:
            hook.remove()
    first_conv = next(i for i, (m, _) in enumerate(runs) if isinstance(m, nn.Conv2d))
    stages = [(i, shape) for i, (m, shape) in enumerate(runs) if i >= first_conv and shape is not None
              and len(shape) == 4 and "Pool" not in type(m).__name__]
    spatial = [i for i, shape in stages if shape[2] * shape[3] > 1]
    chosen = (spatial or [i for i, _ in stages])[-1]
    _refuse_attention_after(chosen, [m for m, _ in runs])
    return runs[chosen][0]


def _refuse_attention_after(index: int, modules: list) -> None:
    if any(_is_attention(m) for m in modules[index + 1:]):
        raise ConfigError("Grad-CAM needs convolutional feature maps at the end of the network, and this model's "
                          "last convolution is followed by attention (a ViT's patch embedding): choose saliency, "
                          "smoothgrad or integrated_gradients, or pass the layer to explain as layer=")


def _is_attention(module: nn.Module) -> bool:
    return isinstance(module, nn.MultiheadAttention) or "Attention" in type(module).__name__


last_conv_layer = gradcam_layer  # the name the first version had


class Explainer:
    """A saliency method built on Captum, called as ``explainer(images, targets) -> (N, H, W) maps``.

    saliency              Saliency (|input gradient|, Simonyan et al. 2014)
    smoothgrad            NoiseTunnel(Saliency), `samples` draws of Gaussian noise with sd `noise` in pixel units
    integrated_gradients  IntegratedGradients from a constant `baseline` image in `steps` steps
    gradcam               LayerGradCam on `layer` (an nn.Module or a dotted name; default `gradcam_layer`: the
                          output of the last convolutional stage), ReLU'd and upsampled bilinearly

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
            gradcam_layer(model)  # a model without a conv stage is refused now, not at the first call

    def __repr__(self) -> str:
        options = {"saliency": "", "smoothgrad": f", samples={self.samples}, noise={self.noise:g}",
                   "integrated_gradients": f", steps={self.steps}, baseline={self.baseline:g}",
                   "gradcam": f", layer={type(self.layer).__name__ if self.layer is not None else 'last conv stage'}"}
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
        layer = self.layer if self.layer is not None else gradcam_layer(self.model, x)
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
