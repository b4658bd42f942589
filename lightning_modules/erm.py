"""Empirical risk minimisation: the base LightningModule that adversarial training subclasses."""
from __future__ import annotations

from typing import Optional

import lightning as L
import torch

from attacks.smoothing import gaussian_noise, noise_level
from core.errors import ConfigError
from .metrics import make_metrics, metric_key, probabilities, task_loss
from .backbones import is_timm, parameter_counts
from .losses import LossTerm, build_loss_terms
from .models import build_model
from .settings import FinetuningSettings, NetworkSettings, OptimizationSettings, grouped, setting

OPTIMIZERS = ("adam", "adamw", "sgd")
#: what a timm model records about itself in its hparams (so the test report shows it); not constructor arguments,
#: so they are left out of the checkpoint's hyper_parameters and recomputed when it is loaded
MODEL_FACTS = ("backbone", "trainable_parameters", "total_parameters")
PRETRAINED_KEY = "medrobust_pretrained"  # where a checkpoint keeps the weights its model started from


class ERM(L.LightningModule):
    """A classifier on [0, 1] images trained on clean inputs.

    Subclasses change only `training_loss` (what the model is trained on); metrics, logging keys
    (`train/loss`, `train/clean_bacc`, `val/clean_bacc`, `test/clean_auroc`, ...), the optimizer and the
    `loss_terms` any method adds to its loss (lightning_modules.losses) are shared.
    """

    train_inputs = "clean"  # what the training metrics are measured on: clean or adv(ersarial) inputs

    def __init__(
        self,
        num_classes: int = 2,
        in_channels: int = 1,
        task: str = "binary",
        input_size: Optional[int] = None,
        network: NetworkSettings = NetworkSettings(),
        optimization: OptimizationSettings = OptimizationSettings(),
        finetuning: FinetuningSettings = FinetuningSettings(),
        loss_terms: Optional[list[LossTerm]] = None,
        noise_sigma: float = 0.0,
        **flat,
    ):
        """
        Args:
            num_classes, in_channels, task: set from the DataModule by train.py.
            input_size: the model's input layer resizes batches to this many pixels on their device (linked from
                data.resize by train.py); attacks and epsilon stay on the images the DataModule serves.
            network: the classifier (arch, norm_mean, norm_std, channels_last, compile, model_kwargs);
                lightning_modules.settings documents every group and holds the defaults.
            optimization: optimizer, lr, weight_decay, momentum, lr_milestones, lr_gamma.
            finetuning: timm backbones: pretrained, mode (full, linear or lora), lora_rank, lora_alpha, lora_dropout,
                lora_targets. Checkpoints hold every weight: reloading needs no weights file.
            loss_terms: regularisers added to the method's loss, each logged as train/NAME
                ([{class_path: lightning_modules.losses.ExplanationPenalty, init_args: {weight: 1.0}}]).
            noise_sigma: Gaussian noise augmentation for randomized smoothing (Cohen et al. 2019), in [0, 1] pixel
                units and unclamped (attacks.smoothing.gaussian_noise): every training-mode forward pass sees its
                input plus N(0, sigma^2), i.e. the clean batch for ERM, the attacked batch for PGD-AT and FGSM-RS,
                both for TRADES (attacks and their references run in eval mode, noise-free). 0: off.
            flat: the earlier flat keywords (arch, lr, pretrained, finetune, ...), as old checkpoints saved them,
                mapped into their groups by lightning_modules.settings.LEGACY_KEYS (deprecated).
        """
        super().__init__()
        self.save_hyperparameters()
        settings = grouped(dict(network=network, optimization=optimization, finetuning=finetuning), flat,
                           owner=type(self).__name__)
        for key in flat:
            self.hparams.pop(key, None)
        self.hparams.update(settings.hparams())
        self.settings = settings
        net, opt, tune = settings.network, settings.optimization, settings.finetuning
        if opt.optimizer not in OPTIMIZERS:
            raise ConfigError(f"unknown optimizer {opt.optimizer!r}: choose one of {', '.join(OPTIMIZERS)}")
        if not all(0 < m <= 1 for m in opt.lr_milestones):
            raise ConfigError(f"lr_milestones are fractions of max_epochs in (0, 1], got {list(opt.lr_milestones)}")
        self.task = task
        self.noise_sigma = noise_level(noise_sigma)
        self.loss_terms = build_loss_terms(loss_terms)
        timm_options = dict(pretrained=tune.pretrained, finetune=tune.mode, model_kwargs=net.model_kwargs)
        if is_timm(net.arch):
            timm_options.update(lora_rank=tune.lora_rank, lora_alpha=tune.lora_alpha, lora_dropout=tune.lora_dropout,
                                lora_targets=tune.lora_targets)
        self.model = build_model(net.arch, in_channels, num_classes, net.norm_mean, net.norm_std, input_size,
                                 **timm_options)
        if is_timm(net.arch):
            trainable, total = parameter_counts(self.model)
            self.hparams.update(backbone=self.model[1].description, trainable_parameters=trainable,
                                total_parameters=total)
        metrics = make_metrics(task, num_classes)
        self.train_metrics = metrics.clone(prefix=f"train/{self.train_inputs}_")
        self.val_metrics = metrics.clone(prefix="val/clean_")
        self.test_metrics = metrics.clone(prefix="test/clean_")

    def configure_model(self) -> None:
        """The opt-in fast paths, applied once when the Trainer sets the model up (fit, test, predict)."""
        if self.settings.network.channels_last:
            self.model.to(memory_format=torch.channels_last)
        if self.settings.network.compile and "forward" not in vars(self.model):
            # an instance attribute, not a submodule: state_dict keys stay those of the plain model
            self.model.forward = torch.compile(self.model.forward)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(self.training_noise(x))

    def training_noise(self, x: torch.Tensor) -> torch.Tensor:
        """x plus the smoothing noise when the model is in training mode and noise_sigma > 0; else x untouched (no
        random draw, so runs without noise keep their numbers). Eval-mode passes (attacks, checks) see no noise."""
        if self.noise_sigma == 0 or not self.model.training:
            return x
        return gaussian_noise(x, self.noise_sigma)

    def on_fit_start(self) -> None:
        if "trainable_parameters" in self.hparams:
            hp = self.hparams
            share = 100 * hp.trainable_parameters / hp.total_parameters
            self.print(f"{hp.backbone}: trainable params: {hp.trainable_parameters:,} || all params: "
                       f"{hp.total_parameters:,} || trainable%: {share:.4f}")

    def loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return task_loss(logits, target)

    def training_loss(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss to minimise, logits to score) for one training batch; ERM uses the clean batch."""
        logits = self(x)
        return self.loss(logits, y), logits

    def training_objective(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(the method's loss plus every weighted loss term, logits to score) for one training batch."""
        loss, logits = self.training_loss(x, y)
        for term in self.loss_terms:
            value = term.value(self, x, y, logits)
            if value is None:
                continue
            if self._trainer is not None:
                self.log(f"train/{term.name}", value.detach(), on_step=False, on_epoch=True, batch_size=len(x))
            loss = loss + term.weight * value
        return loss, logits

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss, logits = self.training_objective(x, y)
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
        saved = checkpoint.get("hyper_parameters")
        if isinstance(saved, dict) and is_timm(setting(saved, "arch", "")):
            for key in MODEL_FACTS:
                saved.pop(key, None)
            # every weight is in the state dict: rebuilding the model must not need (or download) the weights file
            checkpoint[PRETRAINED_KEY] = setting(saved, "pretrained", False)
            saved["finetuning"] = {**saved.get("finetuning", {}), "pretrained": False}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """The weights the model started from, as the run recorded them (the checkpoint rebuilds it without)."""
        if PRETRAINED_KEY in checkpoint:
            self.hparams["finetuning"] = {**self.hparams["finetuning"], "pretrained": checkpoint[PRETRAINED_KEY]}

    def configure_optimizers(self):
        hp = self.settings.optimization
        params = [p for p in self.parameters() if p.requires_grad]  # a frozen backbone's weights stay out
        if hp.optimizer == "sgd":
            opt = torch.optim.SGD(params, lr=hp.lr, momentum=hp.momentum, weight_decay=hp.weight_decay, nesterov=True)
        elif hp.optimizer == "adamw":
            opt = torch.optim.AdamW(params, lr=hp.lr, weight_decay=hp.weight_decay)
        else:
            opt = torch.optim.Adam(params, lr=hp.lr, weight_decay=hp.weight_decay)
        trainer = self.trainer
        epochs = trainer.max_epochs if trainer and trainer.max_epochs and trainer.max_epochs > 0 else 100
        milestones = sorted({max(1, round(m * epochs)) for m in hp.lr_milestones})
        schedule = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=milestones, gamma=hp.lr_gamma)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": schedule, "interval": "epoch"}}
