"""Tiny models for the explanation tests: a small_cnn trained for a few steps on separable 1x12x12 images, and
models without a conv layer (an MLP), smooth (softplus) and linear."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

SIZE = 12


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny tensors gain nothing from threads, and threads spinning on a shared 2-core box cost seconds."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def separable(n=128, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(2, (n,), generator=g)
    patterns = torch.randn((2, 1, SIZE, SIZE), generator=g).sign()
    return (0.5 + 0.05 * patterns[y] + 0.1 * torch.randn((n, 1, SIZE, SIZE), generator=g)).clamp(0, 1), y


def fit(model, x, y, steps=30):
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(1)
    model.train()
    for _ in range(steps):
        index = torch.randint(0, len(x), (64,), generator=g)
        optimizer.zero_grad()
        F.cross_entropy(model(x[index]), y[index]).backward()
        optimizer.step()
    model.eval()
    return model


@pytest.fixture(scope="module")
def small_cnn():
    """(model, 32 images, their labels): build_model('small_cnn') fitted for 30 Adam steps."""
    from lightning_modules.models import build_model

    x, y = separable()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = build_model("small_cnn", 1, 2)
    fit(model, x, y)
    return model, x[:32], y[:32]


class MLP(nn.Module):
    def __init__(self, activation=nn.ReLU, outputs=2):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(SIZE * SIZE, 32), activation(), nn.Linear(32, outputs))

    def forward(self, x):
        return self.body((x - 0.5) / 0.25)


@pytest.fixture(scope="module")
def smooth_mlp():
    """(model, 16 images): a softplus MLP fitted briefly, whose maps vary smoothly with the input."""
    x, y = separable()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = MLP(lambda: nn.Softplus(beta=2.0))
    return fit(model, x, y), x[:16]
