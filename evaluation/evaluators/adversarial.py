"""Adversarial evaluators: PGD on a fixed validation subset every check and on the whole test split (with the clean
scores it is read against), and AutoAttack at test time."""
from __future__ import annotations

import torch

from attacks.autoattack import AUTOATTACK_ATTACKS, attack_plan, run_autoattack
from attacks.gradient import PGD
from attacks.threat_model import epsilon_label, format_epsilon, parse_epsilon, parse_norm
from core.errors import ConfigError
from datamodules.info import MULTILABEL
from datamodules.tensors import fixed_subset, to_unit_range
from evaluation.evaluators.base import EvaluationRun, EvaluatorBase, ScoredSet
from evaluation.evaluators.settings import AdversarialSettings, AutoAttackSettings
from evaluation.scoring import predict
from lightning_modules.metrics import metric_key

METRICS = ("bacc", "acc")


class AdversarialEvaluator(EvaluatorBase):
    """`val/clean_bacc@subset` and `val/adv_{bacc,acc}@eps` (PGD, early-stopped: accuracy only) each check;
    the report's `clean` and `pgd` sections (PGD with restarts) and `test/adv_{bacc,acc}@eps` at test time."""

    def __init__(self, settings: AdversarialSettings, seed: int = 0):
        self.settings, self.seed = settings, seed
        self.norm = parse_norm(settings.norm)
        self.epsilons = [parse_epsilon(e, self.norm) for e in settings.epsilons]

    def keys(self, dm) -> dict[str, set[str]]:
        val = {metric_key("val", "clean", "bacc", "subset")} if self.epsilons else set()
        val.update(metric_key("val", "adv", metric, eps) for eps in self.epsilons for metric in METRICS)
        return {"val": val, "test": {metric_key("test", "adv", metric, eps)
                                     for eps in self.epsilons for metric in METRICS}}

    def scored_sets(self) -> dict[str, list[ScoredSet]]:
        return {"val": [("clean", "subset")] + [("adv", eps) for eps in self.epsilons],
                "test": [("clean", None)] + [("adv", eps) for eps in self.epsilons]}

    def epoch_metrics(self, run: EvaluationRun) -> dict[str, float]:
        split = run.dm.split("val")
        index = run.shard(fixed_subset(len(split), self.settings.val_samples, self.seed))
        images, targets = split.images[index], split.targets[index]
        clean = run.scorer.score(run.model, images, targets, None, confidence=True)
        logged = {metric_key("val", "clean", "bacc", "subset"): clean["bacc"]}
        run.scored.append(("clean", "subset", clean))
        for eps in self.epsilons:
            # accuracy only: stopping at each example's first success gives the same numbers for less work
            attack = PGD(run.model, eps, steps=self.settings.val_steps, norm=self.norm, seed=self.seed, early_stop=True)
            adv = run.scorer.score(run.model, images, targets, attack, confidence=True)
            logged[metric_key("val", "adv", "bacc", eps)] = adv["bacc"]
            logged[metric_key("val", "adv", "acc", eps)] = adv["acc"]
            run.scored.append(("adv", eps, adv))
        return logged

    def report_section(self, run: EvaluationRun, report: dict) -> None:
        split = run.dm.split("test")
        index = run.shard(torch.arange(len(split)))
        images, targets = split.images[index], split.targets[index]
        report["clean"] = run.scorer.score(run.model, images, targets, None, confidence=True)
        report["pgd"] = {}
        steps = self.settings.test_steps
        for eps in self.epsilons:
            attack = PGD(run.model, eps, steps=steps, restarts=self.settings.test_restarts, norm=self.norm,
                         seed=self.seed)
            scores = run.scorer.score(run.model, images, targets, attack, confidence=True,
                                      progress=f"PGD-{steps} eps={format_epsilon(eps)}")
            report["pgd"][epsilon_label(eps)] = {**scores, "epsilon": eps, "attack": repr(attack)}
            for metric in METRICS:
                run.log(metric_key("test", "adv", metric, eps), scores[metric])


class AutoAttackEvaluator(EvaluatorBase):
    """The report's `autoattack` section and `test/aa_{bacc,acc}@eps`: AutoAttack at each adversarial epsilon on a
    fixed, seeded subset of the test split (multi-label heads: the PGD-BCE fallback; binary: the adapted list)."""

    def __init__(self, settings: AutoAttackSettings, adversarial: AdversarialEvaluator, seed: int = 0):
        attacks = None if settings.version == "standard" else settings.attacks
        if settings.enabled and settings.version != "standard" and not set(attacks or ()) <= set(AUTOATTACK_ATTACKS):
            raise ConfigError(f"unknown AutoAttack attacks {attacks}: choose from {', '.join(AUTOATTACK_ATTACKS)}")
        self.settings, self.adversarial, self.seed = settings, adversarial, seed
        self.attacks = None if attacks is None else list(attacks)

    @property
    def epsilons(self) -> list[float]:
        return self.adversarial.epsilons if self.settings.enabled else []

    def keys(self, dm) -> dict[str, set[str]]:
        return {"val": set(), "test": {metric_key("test", "aa", metric, eps)
                                       for eps in self.epsilons for metric in METRICS}}

    def scored_sets(self) -> dict[str, list[ScoredSet]]:
        return {"val": [], "test": [("aa", eps) for eps in self.epsilons]}

    def check(self, model, dm) -> None:
        if self.epsilons and dm.task != MULTILABEL and self.attacks is not None:
            plan, notes = attack_plan(self.attacks, dm.num_classes)
            if not plan:
                raise ConfigError(f"no AutoAttack attack of {self.attacks} can run on {dm.flag}'s "
                                  f"{dm.num_classes} classes: {'; '.join(notes)}")

    def report_section(self, run: EvaluationRun, report: dict) -> None:
        report["autoattack"] = {}
        for eps in self.epsilons:
            scores = self._attack(run, eps)
            report["autoattack"][epsilon_label(eps)] = scores
            for metric in METRICS:
                run.log(metric_key("test", "aa", metric, eps), scores[metric])

    def _attack(self, run: EvaluationRun, eps: float) -> dict:
        dm = run.dm
        split = dm.split("test")
        index = run.shard(fixed_subset(len(split), self.settings.samples, self.seed))
        x = to_unit_range(split.images[index].to(run.device))
        y = split.targets[index].to(run.device)
        x_adv, info = run_autoattack(
            run.model, x, y, eps, norm=self.adversarial.norm, version=self.settings.version, attacks=self.attacks,
            num_classes=dm.num_classes, multilabel=dm.task == MULTILABEL, seed=self.seed,
            batch_size=run.scorer.batch_size, n_queries_square=self.settings.square_queries,
            multilabel_steps=self.settings.multilabel_steps, multilabel_restarts=self.settings.multilabel_restarts,
        )
        clean = run.scorer.score(run.model, x, y, None)
        scores = run.scorer.score(run.model, x_adv, y, None, confidence=True)
        out = {**scores, "clean_bacc_same_examples": clean["bacc"], "epsilon": eps, "info": info}
        if dm.task != MULTILABEL and run.world_size == 1:  # per example: what a paired comparison of two models needs
            probs = predict(run.model, x_adv, dm.task, dm.num_classes, batch_size=run.scorer.batch_size)
            out["per_example"] = {"index": index.tolist(), "label": y.reshape(len(y), -1)[:, 0].long().tolist(),
                                  "prediction": probs.argmax(1).tolist()}
        return out
