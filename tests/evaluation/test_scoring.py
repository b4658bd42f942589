"""predict/evaluate reuse the logits a PGD attack computed on its returned images, but only for the model it
attacked."""

import pytest
import torch
from torch import nn

from attacks.gradient import FGSM, PGD
from datamodules.info import MULTICLASS
from evaluation.scoring import evaluate, predict


class Counted(nn.Module):
    """A small CNN on [0, 1] images that counts its forward passes."""

    def __init__(self, seed: int):
        super().__init__()
        torch.manual_seed(seed)
        self.body = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
        self.forwards = 0

    def forward(self, x):
        self.forwards += 1
        return self.body(x - 0.5)


@pytest.fixture
def data():
    g = torch.Generator().manual_seed(0)
    return torch.rand((20, 1, 8, 8), generator=g), torch.randint(3, (20,), generator=g)


def attack_then_score(model, attack, x, y, batch_size):
    """The reference: the attack's images scored by a separate forward pass, batch by batch."""
    chunks = []
    for start in range(0, len(x), batch_size):
        x_adv = attack(x[start : start + batch_size], y[start : start + batch_size])
        with torch.no_grad():
            chunks.append(torch.softmax(model(x_adv), 1))
    return torch.cat(chunks)


@pytest.mark.parametrize("restarts", [1, 2])
def test_pgd_logits_are_reused_and_match_a_separate_forward(data, restarts):
    x, y = data
    model = Counted(0).eval()
    attack = PGD(model, "8/255", steps=3, restarts=restarts, seed=1)
    expected = attack_then_score(model, attack, x, y, batch_size=8)
    model.forwards = 0
    probs = predict(model, x, MULTICLASS, 3, attack=attack, targets=y, batch_size=8)
    torch.testing.assert_close(probs, expected, rtol=0, atol=1e-6)
    batches = 3
    assert model.forwards == batches * restarts * (3 + 1)  # steps + the final iterate's, nothing more


def test_a_transfer_attack_scores_the_target_model_itself(data):
    x, y = data
    target, surrogate = Counted(0).eval(), Counted(1).eval()
    attack = PGD(surrogate, "8/255", steps=2, seed=1)
    probs = predict(target, x, MULTICLASS, 3, attack=attack, targets=y, batch_size=32)
    assert target.forwards == 1
    torch.testing.assert_close(probs, attack_then_score(target, attack, x, y, batch_size=32), rtol=0, atol=1e-6)


def test_attacks_without_logits_are_scored_by_a_forward_pass(data):
    x, y = data
    model = Counted(0).eval()
    scores = evaluate(model, x, y, MULTICLASS, 3, attack=FGSM(model, "8/255"), batch_size=32)
    assert model.forwards == 2  # the gradient and the score
    plain = evaluate(model, x, y, MULTICLASS, 3, attack=lambda a, b: FGSM(model, "8/255")(a, b), batch_size=32)
    assert scores == plain
