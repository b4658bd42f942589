"""Explainer: every method on every shipped architecture, the pixel contract, seeds, modes and bad input."""
import pytest
import torch
from torch import nn

from attacks.explanation import input_gradient_map
from conftest import MLP, SIZE
from core.errors import ConfigError
from explanations import METHODS, Explainer, explained_classes, gradcam_layer
from lightning_modules.models import ARCHITECTURES, build_model

FAST = {"samples": 3, "steps": 4}


def size_for(arch):
    """Small images that leave Grad-CAM's stage a 2 x 2 grid at least."""
    return 8 if arch.startswith("small") else 16 if arch.endswith("_28") else 64


@pytest.mark.parametrize("arch, size", [(arch, size_for(arch)) for arch in ARCHITECTURES])
def test_every_method_gives_one_nonnegative_map_per_image_for_every_architecture(arch, size):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = build_model(arch, 3, 4)
    x = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    model.train()  # the explainer switches to eval mode and back
    for method in METHODS:
        maps = Explainer(model, method, **FAST)(x, torch.tensor([0, 3]))
        assert maps.shape == (2, size, size) and not maps.requires_grad, method
        assert torch.isfinite(maps).all() and maps.min() >= 0, method
        assert model.training and all(m.training for m in model.modules()), method
        if method == "saliency":  # |gradient| summed over the 3 channels, as the attacks compute it
            model.eval()
            assert torch.allclose(maps, input_gradient_map(model, x, torch.tensor([0, 3])), rtol=1e-4, atol=1e-7)
            model.train()
        spread = maps.flatten(1).std(1)  # the sizes leave Grad-CAM a 2 x 2 grid at least
        if method == "gradcam":  # a random net's class map may be negative everywhere: ReLU'd to zero
            spread = spread[maps.flatten(1).amax(1) > 0]
        assert len(spread) and spread.min() > 0, method


def test_saliency_is_the_absolute_input_gradient_summed_over_channels(small_cnn):
    model, x, y = small_cnn
    assert torch.allclose(Explainer(model, "saliency")(x, y), input_gradient_map(model, x, y), atol=1e-6)


def test_maps_explain_the_requested_class(small_cnn):
    model, x, y = small_cnn
    explainer = Explainer(model, "saliency")
    assert not torch.allclose(explainer(x, torch.zeros_like(y)), explainer(x, torch.ones_like(y)))
    with torch.no_grad():
        predicted = model(x).argmax(1)
    assert torch.equal(explainer(x), explainer(x, predicted))


def test_smoothgrad_is_seeded_and_averages_noisy_gradients(small_cnn):
    model, x, y = small_cnn
    first, again = Explainer(model, "smoothgrad", seed=0)(x, y), Explainer(model, "smoothgrad", seed=0)(x, y)
    assert torch.equal(first, again)
    assert not torch.equal(first, Explainer(model, "smoothgrad", seed=1)(x, y))
    assert torch.allclose(Explainer(model, "smoothgrad", noise=0.0, samples=2)(x, y), Explainer(model)(x, y), atol=1e-6)


def test_integrated_gradients_are_complete(small_cnn):
    """Captum's IG: with many steps the signed attributions sum to logit(x) - logit(baseline); our maps are their
    channel-summed absolute values, so on a grey image the map's sum bounds the logit difference from above."""
    model, x, y = small_cnn
    maps = Explainer(model, "integrated_gradients", steps=64, baseline=0.5)(x, y)
    with torch.no_grad():
        gap = (model(x) - model(torch.full_like(x, 0.5))).gather(1, y.view(-1, 1)).squeeze(1)
    assert (maps.flatten(1).sum(1) >= gap.abs() * 0.97).all()
    assert torch.equal(Explainer(model, "integrated_gradients", baseline=0.5)(torch.full_like(x, 0.5), y),
                       torch.zeros_like(maps))


def test_gradcam_explains_the_last_convolutional_stage(small_cnn):
    model, x, y = small_cnn
    assert gradcam_layer(model, x) is model[1].features
    resnet = build_model("resnet18_28", 1, 2)
    assert gradcam_layer(resnet, torch.rand(1, 1, 16, 16)) is resnet[1].layer4  # 2 x 2 at 16 px
    assert gradcam_layer(resnet, torch.rand(1, 1, 8, 8)) is resnet[1].layer3  # layer4 is 1 x 1 at 8 px
    explicit = Explainer(model, "gradcam", layer="1.features")(x, y)
    assert torch.equal(Explainer(model, "gradcam")(x, y), explicit)
    assert not torch.equal(Explainer(model, "gradcam", layer="1.features.0")(x, y), explicit)


def test_timm_backbones_and_a_vit():
    """A timm ResNet: every method; a ViT: the gradient methods, and Grad-CAM refused (its only convolution is the
    patch embedding) unless a layer is named."""
    pytest.importorskip("timm")
    torch.manual_seed(0)  # Grad-CAM's ReLU zeroes a whole map where a random head's class evidence is all negative
    resnet = build_model("timm/test_resnet", 1, 2)
    vit = build_model("timm/test_vit", 3, 3, model_kwargs={"img_size": 16, "patch_size": 4})
    for model, x in ((resnet, torch.rand(2, 1, 32, 32)), (vit, torch.rand(2, 3, 16, 16))):
        for method in METHODS:
            if model is vit and method == "gradcam":
                with pytest.raises(ConfigError, match="followed by attention"):
                    Explainer(model, method)
                maps = Explainer(model, method, layer="1.net.patch_embed.proj")(x)
            else:
                maps = Explainer(model, method, **FAST)(x)
            assert maps.shape == (2, *x.shape[2:]) and maps.min() >= 0 and maps.flatten(1).std(1).min() > 0


def test_explained_classes_for_indices_none_and_multi_label(small_cnn):
    model, x, y = small_cnn
    with torch.no_grad():
        top = model(x).argmax(1)
    assert torch.equal(explained_classes(model, x, y), y)
    assert torch.equal(explained_classes(model, x), top)
    assert torch.equal(explained_classes(model, x, torch.zeros(len(x), 2)), top)  # multi-hot: the top-scoring label


def test_bad_input_is_one_config_error(small_cnn):
    model, x, y = small_cnn
    with pytest.raises(ConfigError, match="unknown explanation method 'lime'"):
        Explainer(model, "lime")
    with pytest.raises(ConfigError, match="no nn.Conv2d"):
        Explainer(MLP(), "gradcam")
    with pytest.raises(ConfigError, match="one class per example"):
        Explainer(model)(x, torch.zeros(len(x), 2))
    with pytest.raises(ConfigError, match=r"\[0, 1\]"):
        Explainer(model)(x * 2 - 0.5, y)
    with pytest.raises(ConfigError, match="layer 'nope' not found"):
        Explainer(model, "gradcam", layer="nope")
    with pytest.raises(ConfigError, match="samples"):
        Explainer(model, "smoothgrad", samples=0)
    with pytest.raises(ConfigError, match="noise"):
        Explainer(model, "smoothgrad", noise=-1)
    with pytest.raises(ConfigError, match="targets must be"):
        explained_classes(model, x, torch.zeros(len(x), 2, 2))
    with torch.inference_mode(), pytest.raises(ConfigError, match="inference_mode"):
        Explainer(model)(x, y)
    assert isinstance(MLP().body[2], nn.ReLU) and SIZE == x.shape[-1]
