"""Tiny MLPs trained on separable 1x8x8 synthetic images, shared by the attack and AutoAttack tests."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

IMAGE = (1, 8, 8)
N = 256


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors gain nothing from threads, and threads spinning on a shared 2-core box cost seconds."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class TinyNet(nn.Module):
    """MLP on [0, 1] pixels with its normalization inside; records the mode seen at each forward."""

    def __init__(self, n_outputs: int):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, n_outputs))
        self.modes_seen = []

    def forward(self, x):
        self.modes_seen.append(self.training)
        return self.body((x - 0.5) / 0.25)


def separable_data(n_outputs: int, multilabel: bool = False, seed: int = 0):
    """Class (or label) patterns of amplitude 0.05 under noise 0.1: learnable, and breakable near 8/255."""
    g = torch.Generator().manual_seed(seed)
    patterns = torch.randn((n_outputs, *IMAGE), generator=g).sign()
    if multilabel:
        y = (torch.rand((N, n_outputs), generator=g) < 0.5).float()
        signal = 0.05 * torch.einsum("nl,lchw->nchw", y, patterns)
    else:
        y = torch.randint(n_outputs, (N,), generator=g)
        signal = 0.05 * patterns[y]
    x = (0.5 + signal + 0.1 * torch.randn((N, *IMAGE), generator=g)).clamp(0, 1)
    return x, y


def trained(n_outputs: int, multilabel: bool = False):
    x, y = separable_data(n_outputs, multilabel)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = TinyNet(n_outputs)
    loss = F.binary_cross_entropy_with_logits if multilabel else F.cross_entropy
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(150):
        optimizer.zero_grad()
        loss(model(x), y).backward()
        optimizer.step()
    model.zero_grad(set_to_none=True)
    model.eval()
    model.modes_seen.clear()
    return model, x, y
