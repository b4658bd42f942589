"""Loss terms: any training method adds the explanation penalty through its config, the penalty is taken in the
model's current (training) mode, and a method's config, checkpoint and train.py run carry the term."""
import json
import sys
from pathlib import Path

import pytest
import torch

import train
from attacks.explanation import input_gradient_map, map_distance, softplus_relus
from core.errors import ConfigError
from evaluation.checkpoints import load_module
from lightning_modules.adversarial import FGSMRS, PGDAT, TRADES
from lightning_modules.erm import ERM
from lightning_modules.losses import ExplanationPenalty, build_loss_terms

REPO = Path(__file__).resolve().parents[2]
PENALTY = "lightning_modules.losses.ExplanationPenalty"


def _batch(n=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 28, 28, generator=g), torch.randint(0, 2, (n,), generator=g)


@pytest.mark.parametrize("method", [ERM, PGDAT, TRADES, FGSMRS])
def test_every_method_adds_the_penalty_to_its_own_loss(method):
    x, y = _batch()
    extra = {} if method is ERM else {"epsilon": "2/255"}
    torch.manual_seed(0)
    plain = method(**extra)
    torch.manual_seed(0)
    regularised = method(loss_terms=[{"class_path": PENALTY, "init_args": {"epsilon": "8/255", "steps": 0}}], **extra)
    (term,) = regularised.loss_terms
    torch.manual_seed(1)
    own, _ = plain.training_objective(x, y)
    torch.manual_seed(1)
    total, _ = regularised.training_objective(x, y)
    torch.manual_seed(1)
    regularised.training_loss(x, y)  # the method's loss draws its random numbers first, then the penalty
    penalty = term.value(regularised, x, y, regularised(x))
    assert float(penalty) > 0 and torch.allclose(total, own + penalty, atol=1e-6)


def test_the_penalty_is_taken_in_training_mode():
    """The bug the explanation penalty's docstring describes: an eval-mode penalty flattened BatchNorm's running
    statistics alone. With no search steps the value is the training-mode map distance at the random start."""
    torch.manual_seed(0)
    module = ERM(loss_terms=[ExplanationPenalty(epsilon="8/255", steps=0)]).train()
    module(torch.rand(64, 1, 28, 28))  # running statistics that differ from a batch's own
    (term,) = module.loss_terms
    x, y = _batch()
    torch.manual_seed(2)
    value = term.value(module, x, y, module(x))
    torch.manual_seed(2)
    delta = (torch.rand_like(x) * 2 - 1) * term.epsilon
    expected = {}
    for mode in (True, False):
        module.model.train(mode)
        with softplus_relus(module.model, term.softplus_beta):
            moved = input_gradient_map(module.model, (x + delta).clamp(0, 1), y, create_graph=True)
            expected[mode] = map_distance(moved, input_gradient_map(module.model, x, y, create_graph=True)).mean()
    assert torch.allclose(value, expected[True]) and not torch.allclose(value, expected[False])


@pytest.mark.parametrize("terms, message", [
    (["expl"], "loss_terms holds 'expl'"),
    ([{"class_path": "lightning_modules.losses.Nothing"}], "cannot be imported"),
    ([{"class_path": PENALTY, "init_args": {"weight": -1}}], "weight must be"),
    ([{"class_path": PENALTY, "init_args": {"steps": 1.5}}], "steps must be"),
])
def test_bad_loss_terms_are_one_line_config_errors(terms, message):
    with pytest.raises(ConfigError, match=message):
        build_loss_terms(terms)


def test_train_py_adds_the_term_to_pgd_at_and_the_checkpoint_reloads_with_it(synthetic_root, tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["train.py"])
    monkeypatch.chdir(REPO)
    root = synthetic_root("pneumoniamnist", n_train=32, n_val=16, n_test=16)
    callback = "--trainer.callbacks.init_args."
    terms = [{"class_path": PENALTY, "init_args": {"weight": 1.0, "epsilon": "4/255", "steps": 0}}]
    result = train.run(["fit", "--config", "configs/pgd_at.yaml", "--data.root", str(root),
                        "--data.verify_md5", "false", "--data.batch_size", "16", "--trainer.max_epochs", "1",
                        "--trainer.default_root_dir", str(tmp_path / "run"), "--trainer.enable_progress_bar", "false",
                        "--model.init_args.steps", "1", "--model.init_args.loss_terms", json.dumps(terms),
                        f"{callback}val_samples", "8", f"{callback}val_steps", "1", f"{callback}test_steps", "1",
                        f"{callback}test_restarts", "1", f"{callback}autoattack", "false",
                        f"{callback}corruption_epoch", "false", "--test_after_fit", "false"])
    assert {"train/expl_penalty", "train/adv_bacc"} <= set(result.history[-1])
    loaded = load_module(result.best_checkpoint)
    (term,) = loaded.loss_terms
    assert type(loaded) is PGDAT and isinstance(term, ExplanationPenalty) and term.steps == 0
