import copy

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.strategies import SingleDeviceStrategy

from core.errors import ConfigError
from datamodules.medmnist import MedMNISTDataModule
from lightning_modules.adversarial import FGSMRS, PGDAT, TRADES, trades_divergence
from lightning_modules.erm import ERM
from lightning_modules.models import classifier_layer
from attacks.gradient import PGD


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


@pytest.mark.parametrize("task", ["binary", "multilabel"])
def test_trades_loss_is_clean_loss_plus_beta_times_kl_clean_to_adv_for_a_fixed_x_adv(task, monkeypatch):
    torch.manual_seed(0)
    num_classes = 2 if task == "binary" else 3
    module = TRADES(epsilon="8/255", beta=2.5, steps=1, num_classes=num_classes, task=task).train()
    x, labels = _batch(16)
    y = labels if task == "binary" else torch.randint(0, 2, (16, 3)).float()
    with torch.no_grad():  # confident, input-dependent predictions: KL(p || q) and KL(q || p) then differ clearly
        classifier_layer(module.model).weight.mul_(200)
    x_adv = _batch(16, seed=1)[0]  # any fixed images: the loss formula does not depend on where they come from
    seen = {}

    def fixed_attack(x_in, reference, loss):
        seen["reference"] = reference
        return x_adv

    monkeypatch.setattr(module, "inner_attack", fixed_attack)
    reference = copy.deepcopy(module.model).eval()  # TRADES attacks away from the eval-mode clean prediction
    replica = copy.deepcopy(module.model).train()  # the loss itself: train mode, as in the training step
    loss, _ = module.training_loss(x, y)

    with torch.no_grad():
        assert torch.allclose(seen["reference"], reference(x))
        clean, adv = replica(x), replica(x_adv)
        if task == "binary":
            p, log_p, log_q = clean.softmax(1), clean.log_softmax(1), adv.log_softmax(1)
            kl = (p * (log_p - log_q)).sum(1).mean()
            reverse = (log_q.exp() * (log_q - log_p)).sum(1).mean()
            expected = F.cross_entropy(clean, y) + 2.5 * kl
        else:  # each label a Bernoulli: KL summed over labels
            p, q = clean.sigmoid(), adv.sigmoid()
            log_p, log_1p = F.logsigmoid(clean), F.logsigmoid(-clean)  # log p, log(1 - p), without log(0)
            log_q, log_1q = F.logsigmoid(adv), F.logsigmoid(-adv)
            kl = (p * (log_p - log_q) + (1 - p) * (log_1p - log_1q)).sum(1).mean()
            reverse = (q * (log_q - log_p) + (1 - q) * (log_1q - log_1p)).sum(1).mean()
            expected = F.binary_cross_entropy_with_logits(clean, y) + 2.5 * kl
    assert kl > 0.05 and abs(kl - reverse) > 0.01 * kl  # beta matters, and so does the direction of the KL
    assert torch.allclose(loss, expected, rtol=1e-5, atol=1e-6), (loss, expected)


def test_fgsm_rs_trains_on_adversarial_inputs_inside_the_ball():
    torch.manual_seed(0)
    eps = 8 / 255
    module = FGSMRS(epsilon=eps).train()
    x, y = _batch()
    inputs = []
    hook = module.model.register_forward_pre_hook(
        lambda model, args: inputs.append((model.training, args[0].detach().clone())))
    loss, _ = module.training_loss(x, y)
    hook.remove()
    trained_on = [t for training, t in inputs if training]
    assert len(trained_on) == 1  # one train-mode forward: the batch the loss is computed on
    (x_train,) = trained_on
    assert not torch.equal(x_train, x)
    assert (x_train - x).abs().max() <= eps + 1e-6 and x_train.min() >= 0 and x_train.max() <= 1
    assert torch.allclose(loss, module.loss(copy.deepcopy(module.model)(x_train), y))
    clean_loss, _ = ERM.training_loss(module, x, y)
    assert loss > clean_loss
    assert module.training  # the attack restored train mode


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


class _CollapseAtEpoch(Callback):
    """Snapshots the weights the guard saw at the end of epoch 0, then damages the model at the end of
    `epoch` (callbacks run before the module's hook, so the guard scores the damaged weights)."""

    def __init__(self, epoch: int = 1):
        self.epoch, self.snapshot, self.damaged = epoch, None, None

    def on_train_epoch_start(self, trainer, module):
        if trainer.current_epoch == 1:
            self.snapshot = copy.deepcopy(module.model.state_dict())

    def on_train_epoch_end(self, trainer, module):
        if trainer.current_epoch == self.epoch:
            head = classifier_layer(module.model)
            with torch.no_grad():  # flipped logits: what the model got right it now gets wrong
                head.weight.neg_()
                head.bias.neg_()
            self.damaged = copy.deepcopy(module.model.state_dict())


def _fit_fgsm_rs(root, callbacks=(), max_epochs=2, **kwargs):
    L.seed_everything(0)
    dm = MedMNISTDataModule("breastmnist", root=str(root), verify_md5=False, batch_size=32, augment=False)
    module = FGSMRS(lr=3e-3, guard_samples=64, guard_steps=3, **kwargs)
    trainer = L.Trainer(max_epochs=max_epochs, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=list(callbacks), limit_val_batches=0)
    trainer.fit(module, datamodule=dm)
    return trainer, module


def test_fgsm_rs_guard_restores_the_best_weights_exactly_and_stops_on_collapse(synthetic_root):
    root = synthetic_root("breastmnist", n_train=128)
    collapse = _CollapseAtEpoch(epoch=1)
    trainer, module = _fit_fgsm_rs(root, [collapse], max_epochs=5, epsilon="2/255", guard_drop=0.2)
    assert trainer.current_epoch == 2  # stopped after epoch index 1 instead of running 5 epochs
    assert trainer.callback_metrics["train/catastrophic_overfitting"] == 1.0
    restored = module.model.state_dict()
    assert any(not torch.equal(collapse.damaged[k], restored[k]) for k in restored)
    for name, value in restored.items():  # weights and BatchNorm statistics, bit for bit
        assert torch.equal(value, collapse.snapshot[name]), name


def _guard_ready(strategy=None):
    """An FGSMRS module with a guard batch and a stand-in trainer, for calling the guard directly."""
    module = FGSMRS(epsilon="8/255", guard_samples=16, guard_steps=2)
    module._guard_batch = _batch(16)
    module.train()

    class FakeTrainer:  # the guard reads the epoch (for epsilon), averages over ranks and may set should_stop
        current_epoch, should_stop = 0, False

    FakeTrainer.strategy = strategy or SingleDeviceStrategy("cpu")
    module._trainer = FakeTrainer()
    module.log = module.print = lambda *args, **kwargs: None
    return module


def _guard_accuracy(module):
    """What the guard measures on this rank: eval-mode accuracy on its seeded PGD examples."""
    x, y = module._guard_batch
    x_adv = PGD(module.model, module.epsilon, steps=module.guard_steps, seed=0)(x, y)
    with torch.no_grad():
        return (module.model.eval()(x_adv).argmax(1) == y).float().mean().item()


def test_fgsm_rs_guard_scores_in_eval_mode_without_moving_batchnorm_statistics():
    module = _guard_ready()
    expected = _guard_accuracy(module)
    module.train()
    before = copy.deepcopy(module.model.state_dict())
    modes = [m.training for m in module.modules()]
    module.on_train_epoch_end()
    for name, value in module.model.state_dict().items():  # running_mean/var and num_batches_tracked included
        assert torch.equal(value, before[name]), name
    assert [m.training for m in module.modules()] == modes
    assert module._best_guard == expected


def test_fgsm_rs_guard_decides_on_the_mean_over_ddp_ranks():
    class OtherRankCollapsed:  # two ranks: this rank's accuracy and 0 from the other
        def reduce(self, tensor, reduce_op):
            assert reduce_op == "mean"
            return tensor / 2

    module = _guard_ready(OtherRankCollapsed())
    x, _ = module._guard_batch
    with torch.no_grad():  # labels the model gets right: this rank alone keeps a high guard accuracy
        module._guard_batch = (x, module.model.eval()(x).argmax(1))
    own = _guard_accuracy(module)
    assert own > 0.5
    module.train()
    module._best_guard, module._best_state = own, copy.deepcopy(module.model.state_dict())
    module.on_train_epoch_end()  # alone: own >= best, no stop; mean over ranks: own / 2 < own - 0.2
    assert module.trainer.should_stop


def test_fgsm_rs_guard_does_not_stop_healthy_training(synthetic_root):
    root = synthetic_root("breastmnist", n_train=64)
    dm = MedMNISTDataModule("breastmnist", root=str(root), verify_md5=False, batch_size=32)
    module = FGSMRS(epsilon="2/255", guard_drop=1.0)
    trainer = L.Trainer(max_epochs=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0)
    trainer.fit(module, datamodule=dm)
    assert trainer.current_epoch == 2 and "train/guard_adv_acc" in trainer.callback_metrics
