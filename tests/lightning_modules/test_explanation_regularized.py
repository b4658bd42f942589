"""Explanation-regularised training as the previous version's configs write it: the penalty is second order (it
changes the parameter gradient), it trains with every base loss (the base method's class composed with an
ExplanationPenalty), and its checkpoints reload as their own class."""
import lightning as L
import pytest
import torch

from core.errors import ConfigError
from datamodules.medmnist import MedMNISTDataModule
from evaluation.checkpoints import load_module
from lightning_modules.adversarial import PGDAT, TRADES
from lightning_modules.erm import ERM
from lightning_modules.explanation_regularized import ExplanationRegularized
from lightning_modules.losses import ExplanationPenalty

BASE_CLASSES = {"erm": ERM, "pgd_at": PGDAT, "trades": TRADES}


def _batch(n=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 28, 28, generator=g), torch.randint(0, 2, (n,), generator=g)


def _gradient(module, x, y):
    module.zero_grad()
    torch.manual_seed(1)  # the same random start for both
    loss, _ = module.training_objective(x, y)
    loss.backward()
    return torch.cat([p.grad.flatten() for p in module.parameters()]).clone()


def test_the_penalty_changes_the_parameter_gradient_and_leaves_the_model_as_it_was():
    torch.manual_seed(0)
    module = ExplanationRegularized(expl_weight=1.0, expl_epsilon="8/255", expl_steps=1).train()
    x, y = _batch()
    with_penalty = _gradient(module, x, y)
    relus = sum(isinstance(m, torch.nn.ReLU) for m in module.modules())
    assert relus > 0 and module.training  # softplus swap and eval mode undone
    (term,) = module.loss_terms
    assert isinstance(term, ExplanationPenalty) and term.epsilon == pytest.approx(8 / 255)
    term.weight = 0.0
    without = _gradient(module, x, y)
    assert not torch.allclose(with_penalty, without)
    torch.manual_seed(1)
    penalty = term.penalty(module.model, x, y)
    assert penalty > 0
    grads = torch.autograd.grad(penalty, [p for p in module.parameters() if p.requires_grad], allow_unused=True)
    assert sum(float(g.abs().sum()) for g in grads if g is not None) > 0


def test_the_inner_steps_find_a_worse_neighbour_than_the_random_start():
    torch.manual_seed(0)
    module = ExplanationRegularized(expl_epsilon="8/255", expl_steps=0).eval()
    (term,) = module.loss_terms
    x, y = _batch()
    torch.manual_seed(3)
    random = float(term.penalty(module.model, x, y))
    term.steps = 3
    torch.manual_seed(3)
    searched = float(term.penalty(module.model, x, y))
    assert searched > random


@pytest.mark.parametrize("base, inputs", [("erm", "clean"), ("pgd_at", "adv"), ("trades", "clean")])
def test_trains_with_each_base_and_the_checkpoint_reloads(synthetic_root, tmp_path, base, inputs):
    root = synthetic_root("pneumoniamnist", n_train=32, n_val=16, n_test=16)
    dm = MedMNISTDataModule("pneumoniamnist", root=str(root), verify_md5=False, batch_size=16, augment=False)
    L.seed_everything(0, verbose=False)
    module = ExplanationRegularized(base=base, steps=1, expl_epsilon="4/255")
    assert isinstance(module, ExplanationRegularized) and isinstance(module, BASE_CLASSES[base])
    assert module.train_inputs == inputs
    before = [p.detach().clone() for p in module.parameters()]
    trainer = L.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu", default_root_dir=str(tmp_path),
                        limit_val_batches=0)
    trainer.fit(module, datamodule=dm)
    assert any(not torch.equal(a, b) for a, b in zip(before, module.parameters()))
    metrics = trainer.callback_metrics
    assert torch.isfinite(metrics["train/expl_penalty"]) and f"train/{inputs}_bacc" in metrics
    path = tmp_path / "expl.ckpt"
    trainer.save_checkpoint(path)
    loaded = load_module(path)
    assert isinstance(loaded, ExplanationRegularized) and isinstance(loaded, BASE_CLASSES[base])
    assert loaded.base == base and "loss_terms" not in loaded.hparams
    (term,) = loaded.loss_terms
    assert term.epsilon == pytest.approx(4 / 255)
    for a, b in zip(loaded.state_dict().values(), module.state_dict().values()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("kwargs, message", [
    ({"base": "madry"}, "unknown base 'madry'"),
    ({"expl_weight": -1}, "expl_.* weight must be"),
    ({"expl_steps": -1}, "expl_.* steps must be"),
    ({"expl_epsilon": "-1/255"}, "expl_.* epsilon"),
    ({"softplus_beta": 0}, "expl_.* softplus_beta"),
    ({"loss_terms": [ExplanationPenalty()]}, "builds its loss term from the expl_. keys"),
])
def test_bad_settings_are_one_line_config_errors(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        ExplanationRegularized(**kwargs)
