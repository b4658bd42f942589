"""The explanation penalty is taken in the model's training mode (BatchNorm batch statistics): an eval-mode penalty
let training flatten the eval-mode network alone, which then predicted one class (validation bAcc 0.500)."""
import pytest
import torch
from torch import nn

from lightning_modules.erm import ERM
from lightning_modules.explanation_regularized import ExplanationRegularized
from lightning_modules.losses import ExplanationPenalty


def _set_running_statistics(module, mean: float, var: float) -> int:
    layers = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for layer in layers:
        layer.running_mean.fill_(mean)
        layer.running_var.fill_(var)
    return len(layers)


def _training_loss(module, x, y, mean: float, var: float) -> torch.Tensor:
    """One training step's loss with the BatchNorm running statistics set to (mean, var) first, same random start."""
    assert _set_running_statistics(module, mean, var) > 0
    torch.manual_seed(1)
    return module.training_step((x, y), 0).detach()


@pytest.mark.parametrize("build", [
    lambda: ExplanationRegularized(expl_weight=10.0, expl_epsilon="8/255", expl_steps=0),
    lambda: ERM(loss_terms=[ExplanationPenalty(weight=10.0, epsilon="8/255", steps=0)]),
], ids=["explanation_regularized", "erm_loss_term"])
def test_the_penalty_uses_batch_statistics_in_training_mode(build):
    """With a random neighbour (0 search steps) nothing of a training step may read the running statistics: the
    loss is the same whatever they hold. In eval mode the same step does read them (the check can see a mode)."""
    torch.manual_seed(0)
    module = build()
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(16, 1, 28, 28, generator=g), torch.randint(0, 2, (16,), generator=g)
    with pytest.warns(UserWarning):  # self.log without a trainer: Lightning's own warning
        module.train()
        ordinary = _training_loss(module, x, y, 0.0, 1.0)
        shifted = _training_loss(module, x, y, 0.7, 25.0)
        assert module.training
        assert torch.allclose(ordinary, shifted, rtol=1e-6, atol=1e-7), (ordinary, shifted)
        module.eval()
        assert not torch.allclose(_training_loss(module, x, y, 0.0, 1.0), _training_loss(module, x, y, 0.7, 25.0))
