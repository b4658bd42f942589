"""Gaussian noise augmentation for randomized smoothing (ERM's noise_sigma): the training-mode forward pass of any
method sees its input plus attacks.smoothing.gaussian_noise, eval-mode passes see none, sigma 0 draws nothing."""
import math

import pytest
import torch

from attacks.smoothing import gaussian_noise
from core.errors import ConfigError
from lightning_modules.adversarial import FGSMRS, PGDAT, TRADES
from lightning_modules.erm import ERM


def _batch(n=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand((n, 1, 28, 28), generator=g), torch.randint(0, 2, (n,), generator=g)


class Recorder(torch.nn.Module):
    """Wraps the model and keeps each input it was given."""

    def __init__(self, model):
        super().__init__()
        self.model, self.inputs = model, []

    def forward(self, x):
        self.inputs.append(x.detach().clone())
        return self.model(x)


def test_sigma_zero_draws_nothing_and_changes_nothing():
    module = ERM()
    module.train()
    x, _ = _batch()
    state = torch.random.get_rng_state()
    assert torch.equal(module(x), module.model(x))
    assert torch.equal(torch.random.get_rng_state(), state)


def test_training_forward_adds_the_shared_noise_and_eval_does_not():
    module = ERM(noise_sigma=0.25)
    module.model = Recorder(module.model)
    x, _ = _batch()
    module.train()
    torch.manual_seed(3)
    module(x)
    torch.manual_seed(3)
    assert torch.equal(module.model.inputs[-1], gaussian_noise(x, 0.25))
    assert module.model.inputs[-1].min() < 0  # unclamped, as smoothing certifies it
    module.eval()
    module(x)
    assert torch.equal(module.model.inputs[-1], x)


@pytest.mark.parametrize("cls", [PGDAT, TRADES, FGSMRS])
def test_adversarial_methods_attack_in_the_box_and_train_on_noisy_inputs(cls):
    module = cls(noise_sigma=0.5, epsilon="8/255")
    module.model = Recorder(module.model)
    module.train()
    x, y = _batch()
    loss, logits = module.training_loss(x, y)
    assert torch.isfinite(loss) and logits.shape == (8, 2)
    outside = [inp for inp in module.model.inputs if inp.min() < 0 or inp.max() > 1]
    assert outside, "the training pass should see noisy (unclamped) inputs"
    assert len(outside) < len(module.model.inputs), "the attack's passes should see in-box inputs"


@pytest.mark.parametrize("sigma", [-0.1, math.inf, math.nan, "0.25", True])
def test_bad_noise_sigma_is_one_config_error_line(sigma):
    with pytest.raises(ConfigError, match="noise_sigma") as err:
        ERM(noise_sigma=sigma)
    assert "\n" not in str(err.value)
