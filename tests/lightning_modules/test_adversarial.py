import copy

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback

from core.errors import ConfigError
from datamodules.medmnist import MedMNISTDataModule
from lightning_modules.adversarial import FGSMRS, PGDAT, TRADES, trades_divergence
from lightning_modules.erm import ERM


def _batch(n=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 28, 28, generator=g), torch.randint(0, 2, (n,), generator=g)


def test_epsilon_accepts_text_and_rejects_impossible_values():
    assert PGDAT(epsilon="8/255").epsilon == pytest.approx(8 / 255)
    with pytest.raises(ConfigError, match="epsilon"):
        PGDAT(epsilon="1.5")
    with pytest.raises(ConfigError, match="beta"):
        TRADES(beta=-1)


def test_pgd_at_trains_on_examples_with_higher_loss_than_clean():
    torch.manual_seed(0)
    module = PGDAT(epsilon="8/255", steps=5)
    x, y = _batch()
    module.train()
    adv_loss, _ = module.training_loss(x, y)
    clean_loss, _ = ERM.training_loss(module, x, y)
    assert adv_loss > clean_loss
    assert module.training  # the attack restored train mode


def test_trades_with_beta_zero_is_the_clean_loss_and_divergence_is_a_kl():
    torch.manual_seed(0)
    module = TRADES(epsilon="8/255", beta=0.0, steps=2).eval()  # eval: BN gives the same logits twice
    x, y = _batch()
    loss, logits = module.training_loss(x, y)
    assert torch.allclose(loss, module.loss(module(x), y))
    a, b = torch.randn(4, 3), torch.randn(4, 3)
    assert torch.allclose(trades_divergence(a, a, "multiclass"), torch.zeros(4), atol=1e-6)
    assert (trades_divergence(a, b, "multiclass") > 0).all()
    assert (trades_divergence(a, b, "multilabel") > 0).all()
    module.beta = 6.0
    assert module.training_loss(x, y)[0] > loss


def test_warmup_grows_epsilon_linearly():
    module = PGDAT(epsilon=0.03, warmup_epochs=2)

    class FakeTrainer:
        current_epoch = 0

    values = []
    for epoch in range(4):
        module._trainer = FakeTrainer()
        FakeTrainer.current_epoch = epoch
        values.append(module.current_epsilon())
    assert values == pytest.approx([0.01, 0.02, 0.03, 0.03])


class _PretendBestGuard(Callback):
    """Before the guard runs at the end of epoch 1, pretend the best guard accuracy was perfect."""

    def on_train_epoch_end(self, trainer, module):
        if trainer.current_epoch == 1:
            module._best_guard = 1.0
            module._best_state = copy.deepcopy(module.model.state_dict())
            self.saved = copy.deepcopy(module._best_state)


def test_fgsm_rs_guard_rolls_back_and_stops_on_collapse(synthetic_root):
    root = synthetic_root("breastmnist", n_train=64)
    dm = MedMNISTDataModule("breastmnist", root=str(root), verify_md5=False, batch_size=32)
    # at epsilon 0.5 PGD breaks any model: guard accuracy falls far below the pretended 1.0
    module = FGSMRS(epsilon=0.5, guard_drop=0.2, lr=0.01)
    spy = _PretendBestGuard()
    trainer = L.Trainer(max_epochs=5, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[spy], limit_val_batches=0)
    trainer.fit(module, datamodule=dm)
    assert trainer.current_epoch == 2  # stopped after epoch index 1 instead of running 5 epochs
    for name, value in module.model.state_dict().items():
        assert torch.equal(value, spy.saved[name]), name


def test_fgsm_rs_guard_does_not_stop_healthy_training(synthetic_root):
    root = synthetic_root("breastmnist", n_train=64)
    dm = MedMNISTDataModule("breastmnist", root=str(root), verify_md5=False, batch_size=32)
    module = FGSMRS(epsilon="2/255", guard_drop=1.0)
    trainer = L.Trainer(max_epochs=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0)
    trainer.fit(module, datamodule=dm)
    assert trainer.current_epoch == 2 and "train/guard_adv_acc" in trainer.callback_metrics
