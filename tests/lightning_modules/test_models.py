import pytest
import torch

from core.errors import ConfigError
from lightning_modules.models import ARCHITECTURES, Normalize, build_model


@pytest.mark.parametrize("arch,size", [("small_cnn", 28), ("resnet18_28", 28), ("resnet18", 64), ("resnet50", 64)])
def test_architectures_give_logits(arch, size):
    model = build_model(arch, in_channels=1, num_classes=5).eval()
    with torch.no_grad():
        assert model(torch.rand(2, 1, size, size)).shape == (2, 5)


def test_normalization_is_the_first_layer():
    model = build_model("small_cnn", 3, 2, mean=[0.1, 0.2, 0.3], std=[0.5, 0.5, 0.5])
    assert isinstance(model[0], Normalize)
    x = torch.full((1, 3, 2, 2), 0.6)
    assert torch.allclose(model[0](x)[0, :, 0, 0], torch.tensor([1.0, 0.8, 0.6]))


def test_resnet18_28_keeps_spatial_resolution():
    model = build_model("resnet18_28", 1, 2)
    stem = model[1].conv1
    assert stem.kernel_size == (3, 3) and stem.stride == (1, 1)
    assert isinstance(model[1].maxpool, torch.nn.Identity)


def test_bad_architecture_and_normalization():
    assert "small_cnn" in ARCHITECTURES
    with pytest.raises(ConfigError, match="unknown architecture"):
        build_model("vgg", 1, 2)
    with pytest.raises(ConfigError, match="positive stds"):
        build_model("small_cnn", 1, 2, std=0.0)


@pytest.mark.parametrize(
    "arch,size,channels,dim",
    [("small_cnn", 28, 1, 128), ("small_cnn", 32, 3, 128), ("resnet18_28", 28, 1, 512), ("resnet18", 32, 3, 512),
     ("resnet50", 32, 1, 2048)],
)
def test_features_are_what_the_last_layer_reads(arch, size, channels, dim):
    from lightning_modules.models import classifier_layer, features

    torch.manual_seed(0)
    model = build_model(arch, in_channels=channels, num_classes=3).eval()
    x = torch.rand(2, channels, size, size)
    with torch.no_grad():
        z = features(model, x)
        assert z.shape == (2, dim)
        assert torch.allclose(classifier_layer(model)(z), model(x), atol=1e-5)
    if arch == "small_cnn":
        assert z.min() >= 0  # after the ReLU
    x.requires_grad_(True)
    (grad,) = torch.autograd.grad(features(model, x).square().sum(), x)
    assert grad.abs().sum() > 0  # differentiable in the input: representation matching needs it


def test_features_accept_a_module_holding_the_model_and_refuse_others():
    from lightning_modules.erm import ERM
    from lightning_modules.models import features

    module = ERM(num_classes=2, in_channels=1).eval()
    x = torch.rand(1, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(features(module, x), features(module.model, x))
    with pytest.raises(ConfigError, match="needs a model from build_model"):
        features(torch.nn.Linear(4, 2), x)
