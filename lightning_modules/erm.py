"""Empirical risk minimisation: the base LightningModule that adversarial training subclasses."""
from __future__ import annotations

from typing import Sequence, Union

import lightning as L
import torch
from torch import nn

from core.errors import ConfigError
from .metrics import make_metrics, metric_key, probabilities, task_loss
from .models import build_model

OPTIMIZERS = ("adam", "adamw", "sgd")


class ERM(L.LightningModule):
    """A classifier on [0, 1] images trained on clean inputs.

    Subclasses change only `training_loss` (what the model is trained on); metrics, logging keys
    (`train/loss`, `train/clean_bacc`, `val/clean_bacc`, `test/clean_auroc`, ...) and the optimizer are shared.
    """

    train_inputs = "clean"  # what the training metrics are measured on: clean or adv(ersarial) inputs

    def __init__(
        self,
        arch: str = "small_cnn",
        num_classes: int = 2,
        in_channels: int = 1,
        task: str = "binary",
        optimizer: str = "adam",
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        momentum: float = 0.9,
        lr_milestones: Sequence[float] = (0.5, 0.75),
        lr_gamma: float = 0.1,
        norm_mean: Union[float, Sequence[float]] = 0.5,
        norm_std: Union[float, Sequence[float]] = 0.5,
        channels_last: bool = False,
        compile: bool = False,
    ):
        """
        Args:
            arch: small_cnn, resnet18_28 (3x3 stem, no max-pool), resnet18 or resnet50.
            num_classes, in_channels, task: set from the DataModule by train.py.
            optimizer: adam, adamw or sgd; lr, weight_decay and momentum (sgd) go with it.
            lr_milestones: fractions of max_epochs at which the learning rate is multiplied by lr_gamma.
            norm_mean, norm_std: the normalization layer inside the model (inputs stay in [0, 1]).
            channels_last: keep conv weights (and so activations) in channels-last memory format: faster with
                bf16 autocast on recent GPUs (`trainer.precision: bf16-mixed`); no effect on results.
            compile: run the model's forward through `torch.compile` (training, attacks and evaluation alike);
                checkpoints keep the plain parameter names. Pays off on a GPU for long runs.
        """
        super().__init__()
        self.save_hyperparameters()
        if optimizer not in OPTIMIZERS:
            raise ConfigError(f"unknown optimizer {optimizer!r}: choose one of {', '.join(OPTIMIZERS)}")
        if not all(0 < m <= 1 for m in lr_milestones):
            raise ConfigError(f"lr_milestones are fractions of max_epochs in (0, 1], got {list(lr_milestones)}")
        self.task = task
        self.model = build_model(arch, in_channels, num_classes, norm_mean, norm_std)
        metrics = make_metrics(task, num_classes)
        self.train_metrics = metrics.clone(prefix=f"train/{self.train_inputs}_")
        self.val_metrics = metrics.clone(prefix="val/clean_")
        self.test_metrics = metrics.clone(prefix="test/clean_")

    def configure_model(self) -> None:
        """The opt-in fast paths, applied once when the Trainer sets the model up (fit, test, predict)."""
        if self.hparams.get("channels_last"):
            self.model.to(memory_format=torch.channels_last)
        if self.hparams.get("compile") and "forward" not in vars(self.model):
            # an instance attribute, not a submodule: state_dict keys stay those of the plain model
            self.model.forward = torch.compile(self.model.forward)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return task_loss(logits, target)

    def training_loss(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss to minimise, logits to score) for one training batch; ERM uses the clean batch."""
        logits = self(x)
        return self.loss(logits, y), logits

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss, logits = self.training_loss(x, y)
        self.train_metrics.update(probabilities(logits.detach(), self.task), self._metric_target(y))
        self.log("train/loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(x), sync_dist=True)
        self.log_dict(self.train_metrics, on_step=False, on_epoch=True)
        return loss

    def _evaluate(self, batch, metrics, stage: str) -> None:
        x, y = batch
        logits = self(x)
        self.log(metric_key(stage, "clean", "loss"), self.loss(logits, y), batch_size=len(x), sync_dist=True)
        metrics.update(probabilities(logits, self.task), self._metric_target(y))
        self.log_dict(metrics, on_step=False, on_epoch=True, prog_bar=stage == "val")

    def validation_step(self, batch, batch_idx: int) -> None:
        self._evaluate(batch, self.val_metrics, "val")

    def test_step(self, batch, batch_idx: int) -> None:
        self._evaluate(batch, self.test_metrics, "test")

    def predict_step(self, batch, batch_idx: int) -> torch.Tensor:
        return probabilities(self(batch[0]), self.task)

    @staticmethod
    def _metric_target(y: torch.Tensor) -> torch.Tensor:
        return y.long() if y.is_floating_point() else y

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Record the class, so evaluation.checkpoints.load_module rebuilds the right module from the file alone."""
        checkpoint["medrobust_class"] = f"{type(self).__module__}.{type(self).__qualname__}"

    def configure_optimizers(self):
        hp = self.hparams
        params = self.parameters()
        if hp.optimizer == "sgd":
            opt = torch.optim.SGD(params, lr=hp.lr, momentum=hp.momentum, weight_decay=hp.weight_decay, nesterov=True)
        elif hp.optimizer == "adamw":
            opt = torch.optim.AdamW(params, lr=hp.lr, weight_decay=hp.weight_decay)
        else:
            opt = torch.optim.Adam(params, lr=hp.lr, weight_decay=hp.weight_decay)
        epochs = self.trainer.max_epochs if self.trainer and self.trainer.max_epochs and self.trainer.max_epochs > 0 else 100
        milestones = sorted({max(1, round(m * epochs)) for m in hp.lr_milestones})
        schedule = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=milestones, gamma=hp.lr_gamma)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": schedule, "interval": "epoch"}}
