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
