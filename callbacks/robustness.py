"""Clean and adversarial accuracy every epoch, and a full robustness report at test time."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Optional, Sequence, Union

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from core.checks import positive_int
from core.errors import ConfigError
from datamodules.info import MULTILABEL
from datamodules.medmnist_c import corruption_names
from datamodules.tensors import fixed_subset, to_unit_range
from attacks.gradient import PGD
from attacks.autoattack import AUTOATTACK_ATTACKS, attack_plan, run_autoattack
from attacks.threat_model import epsilon_label, format_epsilon, parse_epsilon, parse_norm
from evaluation.scoring import evaluate
from lightning_modules.metrics import metric_key
from lightning_modules.calibration import CONFIDENCE_METRICS, DEFAULT_BINS, ConfidenceMetrics
from evaluation.corruption_scores import format_table
from evaluation.corruption import CorruptionEvaluation
from evaluation.layout import RunLayout, report_beside
from evaluation.record import ATTACK_KINDS, ResultRecord, merge_record, with_provenance, write_record
from evaluation.reports import package_versions, timestamp


def _shard(indices: torch.Tensor, trainer: L.Trainer) -> torch.Tensor:
    """This rank's share of a subset: under DDP each rank attacks a disjoint slice."""
    return indices[trainer.global_rank :: trainer.world_size]


class RobustnessCallback(Callback):
    """Logs `val/adv_bacc@4_255` (and accuracy) on a fixed, seeded validation subset every
    `every_n_epochs`; at test time attacks the whole test split with PGD (restarts) and AutoAttack,
    logs `test/adv_bacc@4_255` and `test/aa_bacc@4_255`, and writes a JSON report next to the
    checkpoint. Works inside Lightning's no-grad/inference-mode loops: attacks re-enable autograd.
    """

    def __init__(
        self,
        epsilons: Sequence[Union[float, str]] = ("4/255",),
        norm: str = "linf",
        every_n_epochs: int = 1,
        val_samples: Optional[int] = 192,
        val_steps: int = 5,
        test_steps: int = 50,
        test_restarts: int = 2,
        autoattack: bool = True,
        autoattack_version: str = "custom",
        autoattack_attacks: Optional[Sequence[str]] = ("apgd-ce", "apgd-t"),
        autoattack_samples: Optional[int] = 500,
        square_queries: Optional[int] = None,
        batch_size: int = 256,
        seed: int = 0,
        corruption_epoch: bool = True,
        corruption_report: bool = True,
        corruptions: Optional[Sequence[str]] = None,
        corruption_severities: Sequence[int] = (3,),
        corruption_val_samples: int = 64,
        corruption_cache: str = "~/.medmnist-c",
        corruption_workers: Optional[int] = None,
        explanation_epoch: bool = False,
        explanation_report: bool = False,
        explanation_method: str = "saliency",
        explanation_samples: int = 32,
        explanation_epsilons: Sequence[Union[float, str]] = ("4/255",),
        explanation_steps: int = 5,
        explanation_k: Union[int, float] = 0.1,
        explanation_test_samples: Optional[int] = 200,
        explanation_test_steps: int = 20,
        confidence: bool = True,
        confidence_bins: int = DEFAULT_BINS,
        corruption_baseline: Optional[str] = None,
    ):
        """
        Args:
            epsilons: evaluation budgets in [0, 1] pixel units ("4/255" works); [] scores only
                clean and corrupted images.
            norm: threat model, linf or l2.
            val_samples: size of the fixed validation subset attacked each epoch (None: all).
            val_steps: PGD steps for the per-epoch check; test_steps/test_restarts for the final one.
            autoattack: run AutoAttack at test time on `autoattack_samples` test images (None: all).
            autoattack_version: 'custom' (the `autoattack_attacks` list) or 'standard'
                (apgd-ce, apgd-t, fab-t, square with 5,000 queries: about 2 s per image on a CPU).
            square_queries: cap on Square's queries, when Square runs.
            seed: fixes the subsets and every attack's random start.
            corruption_epoch: log `val/corr_bacc` (and per corruption) each check, on
                `corruption_val_samples` validation images under `corruptions` (default: all of the
                dataset's MedMNIST-C corruptions) at `corruption_severities`.
            corruption_report: add the MedMNIST-C table (balanced accuracy, BE, rBE over all severities of
                the `corruptions`) to the test report; corrupted test sets are cached in `corruption_cache`.
            explanation_epoch: log explanation robustness each check (`val/expl_topk@4_255`, `val/expl_spearman@...`,
                `val/expl_sensmax@...`, ...; see `explanations.EXPLANATION_METRICS`) on `explanation_samples` fixed
                validation images: the `explanation_method` map under the top-k attack (Ghorbani et al., softplus
                network, `explanation_steps` steps, top `explanation_k` pixels) and under random noise, at each of
                `explanation_epsilons` (the callback's norm). Off by default; cheap when on (bench: callback).
            explanation_report: add the same measures on `explanation_test_samples` test images (None: all), with
                `explanation_test_steps` attack steps, to the test report (`test/expl_topk@4_255`, ...).
            confidence: confidence and calibration (lightning_modules.calibration: `conf`, `ece` with
                `confidence_bins` bins, `nll`, `brier`, each also `_correct` / `_wrong`) of every set the callback
                scores, from the probabilities it already has (no extra forward pass): `val/clean_ece@subset`,
                `val/adv_ece@4_255` (on the early-stopped per-epoch attack), `val/corr_ece`, `test/clean_ece`,
                `test/adv_ece@4_255`, `test/aa_ece@4_255`, `test/corr_ece`, ... and in the report's sections.
            corruption_baseline: a baseline model's robustness report (or its run folder, e.g. the ERM point of a
                sweep): the test report adds the mean corruption error against it (evaluation.mce, ImageNet-C's
                definition) as `corruptions.mce`, logged as `test/corr_mce`; needs `corruption_report`.
        """
        super().__init__()
        self.norm = parse_norm(norm)
        self.epsilons = [parse_epsilon(e, self.norm) for e in epsilons]
        positive_int("every_n_epochs", every_n_epochs)
        if autoattack_version == "standard":
            autoattack_attacks = None
        elif autoattack and not set(autoattack_attacks or ()) <= set(AUTOATTACK_ATTACKS):
            raise ConfigError(f"unknown AutoAttack attacks {autoattack_attacks}: choose from {', '.join(AUTOATTACK_ATTACKS)}")
        self.every_n_epochs = every_n_epochs
        self.val_samples, self.val_steps = val_samples, val_steps
        self.test_steps, self.test_restarts = test_steps, test_restarts
        self.autoattack, self.autoattack_version = autoattack, autoattack_version
        self.autoattack_attacks = None if autoattack_attacks is None else list(autoattack_attacks)
        self.autoattack_samples, self.square_queries = autoattack_samples, square_queries
        self.batch_size, self.seed = batch_size, seed
        self.corruption = CorruptionEvaluation(
            corruptions, corruption_severities, corruption_val_samples, corruption_cache, corruption_workers, seed
        ) if corruption_epoch or corruption_report else None
        self.corruption_epoch, self.corruption_report = corruption_epoch, corruption_report
        self._init_explanations(explanation_epoch, explanation_report, explanation_method, explanation_samples,
                                explanation_epsilons, explanation_steps, explanation_k, explanation_test_samples,
                                explanation_test_steps)
        self.confidence, self.confidence_bins = bool(confidence), positive_int("confidence_bins", confidence_bins)
        if corruption_baseline is not None and not corruption_report:
            raise ConfigError("corruption_baseline needs corruption_report: true (mCE compares MedMNIST-C tables)")
        self.corruption_baseline = corruption_baseline
        self.report: Optional[dict] = None
        self.report_path: Optional[Path] = None

    # ---- settings against the dataset, when the run starts -------------------------------------
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Settings that depend on the dataset fail here, before any training, not after it: unknown corruptions
        for the flag, or an AutoAttack list that no attack of can run on this head (multi-label heads use the
        PGD-BCE fallback, binary heads the adapted list: both recorded in the report)."""
        dm = self._datamodule(trainer)
        if self.corruption is not None and self.corruption.corruptions is not None:
            names = corruption_names(dm.flag)
            unknown = [name for name in self.corruption.corruptions if name not in names]
            if unknown:
                raise ConfigError(f"{dm.flag} has no MedMNIST-C corruption {', '.join(unknown)}: choose from "
                                  f"{', '.join(names)}")
        self._check_explanations(pl_module, dm)
        self._check_corruption_baseline(dm)
        if self.autoattack and self.epsilons and dm.task != MULTILABEL and self.autoattack_attacks is not None:
            plan, notes = attack_plan(self.autoattack_attacks, dm.num_classes)
            if not plan:
                raise ConfigError(f"no AutoAttack attack of {self.autoattack_attacks} can run on {dm.flag}'s "
                                  f"{dm.num_classes} classes: {'; '.join(notes)}")

    def logged_keys(self, dm) -> dict[str, set[str]]:
        """{'val': keys, 'test': keys}: every metric this callback will log for the DataModule `dm`, so sweeps and
        studies can check objectives and constraints before any training (they never rebuild this list)."""
        val, test = set(), set()
        if self.epsilons:
            val.add(metric_key("val", "clean", "bacc", "subset"))
        for eps in self.epsilons:
            for metric in ("bacc", "acc"):
                val.add(metric_key("val", "adv", metric, eps))
                test.add(metric_key("test", "adv", metric, eps))
                if self.autoattack:
                    test.add(metric_key("test", "aa", metric, eps))
        if self.corruption_epoch:
            val.add(metric_key("val", "corr", "bacc"))
            val.update(metric_key("val", "corr", "bacc", name)
                       for name in self.corruption.corruptions or corruption_names(dm.flag))
        if self.corruption_report:
            test.update(metric_key("test", "corr", metric) for metric in ("bacc", "be", "rbe"))
            test.add(metric_key("test", "clean", "bacc", "roundtrip"))
        val.update(self._explanation_keys("val") if self.explanation_epoch else ())
        test.update(self._explanation_keys("test") if self.explanation_report else ())
        for stage, keys in self._confidence_keys().items():
            (val if stage == "val" else test).update(keys)
        if self.corruption_baseline is not None:
            test.add(metric_key("test", "corr", "mce"))
        return {"val": val, "test": test}

    # ---- per-epoch validation check ------------------------------------------------------------
    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or (trainer.current_epoch + 1) % self.every_n_epochs:
            return
        split = self._datamodule(trainer).split("val")
        index = _shard(fixed_subset(len(split), self.val_samples, self.seed), trainer)
        images, targets = split.images[index], split.targets[index]
        logged = {}
        with torch.inference_mode(False):
            clean = self._score(pl_module, images, targets, None, confidence=True)
            logged[metric_key("val", "clean", "bacc", "subset")] = clean["bacc"]
            logged.update(self._confidence_logged("val", "clean", clean, "subset"))
            for eps in self.epsilons:
                # accuracy only: stopping at each example's first success gives the same numbers for less work
                attack = PGD(pl_module, eps, steps=self.val_steps, norm=self.norm, seed=self.seed, early_stop=True)
                adv = self._score(pl_module, images, targets, attack, confidence=True)
                logged[metric_key("val", "adv", "bacc", eps)] = adv["bacc"]
                logged[metric_key("val", "adv", "acc", eps)] = adv["acc"]
                logged.update(self._confidence_logged("val", "adv", adv, eps))
            if self.corruption_epoch:
                dm = self._datamodule(trainer)
                logged.update(self.corruption.epoch_metrics(pl_module, dm, trainer.global_rank, trainer.world_size,
                                                            self.confidence_bins if self.confidence else None))
            if self.explanation_epoch:
                logged.update(self._explanation_epoch_metrics(pl_module, split))
        for key, value in logged.items():
            pl_module.log(key, value, prog_bar=key.startswith("val/adv_bacc"), rank_zero_only=True)

    # ---- test-time report ------------------------------------------------------------------------
    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        dm = self._datamodule(trainer)
        split = dm.split("test")
        index = _shard(torch.arange(len(split)), trainer)
        images, targets = split.images[index], split.targets[index]
        started = time.time()
        report = {
            "created": timestamp(),
            "checkpoint": trainer.ckpt_path,
            "model": {"class": type(pl_module).__name__, "hparams": dict(pl_module.hparams)},
            "dataset": {"flag": dm.flag, "size": dm.size, "task": dm.task, "split": "test", "n_examples": len(split)},
            "datamodule": {k: dm.hparams[k] for k in ("root", "as_rgb", "train_npz", "subsample_test", "subsample_seed")},
            "threat_model": {"norm": self.norm, "epsilons": self.epsilons,
                             "epsilon_labels": [epsilon_label(e) for e in self.epsilons]},
            "seed": self.seed,
            "versions": package_versions(),
        }
        with torch.inference_mode(False):
            report["clean"] = self._score(pl_module, images, targets, None, confidence=True)
            report["pgd"], report["autoattack"] = {}, {}
            for eps in self.epsilons:
                label = epsilon_label(eps)
                attack = PGD(pl_module, eps, steps=self.test_steps, restarts=self.test_restarts, norm=self.norm, seed=self.seed)
                scores = self._score(pl_module, images, targets, attack, progress=f"PGD-{self.test_steps} eps={format_epsilon(eps)}",
                                     confidence=True)
                report["pgd"][label] = {**scores, "epsilon": eps, "attack": repr(attack)}
                if self.autoattack:
                    report["autoattack"][label] = self._autoattack(pl_module, dm, split, eps, trainer)
            if self.corruption_report and trainer.is_global_zero:
                table = self.corruption.test_table(pl_module, dm, self.confidence_bins if self.confidence else None)
                report["corruptions"] = table.to_dict()
                if self.corruption_baseline is not None:
                    report["corruptions"]["mce"] = self._corruption_mce(pl_module, report["corruptions"])
                rank_zero_info(f"MedMNIST-C ({table.protocol}, {dm.flag} at {dm.size} px):\n{format_table(table)}")
                for metric, value in (("bacc", table.mean_bacc), ("be", table.mean_be), ("rbe", table.mean_rbe)):
                    pl_module.log(metric_key("test", "corr", metric), value, rank_zero_only=True)
                if table.roundtrip_bacc is not None:  # rBE's reference: clean images resampled like the corrupted
                    pl_module.log(metric_key("test", "clean", "bacc", "roundtrip"), table.roundtrip_bacc,
                                  rank_zero_only=True)
            if self.explanation_report:
                report["explanations"] = self._explanation_report(pl_module, split)
        report["seconds"] = round(time.time() - started, 1)
        for section, kind in ATTACK_KINDS.items():
            for scores in report[section].values():
                for metric in ("bacc", "acc"):
                    pl_module.log(metric_key("test", kind, metric, scores["epsilon"]), scores[metric], rank_zero_only=True)
        self._log_confidence(pl_module, report)
        self.report = report
        if trainer.is_global_zero:
            path = self._report_path(trainer)
            record = with_provenance(ResultRecord.from_dict(report), data_verified=bool(dm.hparams.get("verify_md5")))
            record = merge_record(path, record)
            self.report_path = write_record(path, record)
            self.report = record.to_dict()
            rank_zero_info(f"robustness report: {self.report_path}")

    # ---- explanation robustness (explanations package; off unless explanation_epoch / explanation_report) --------
    def _init_explanations(self, epoch, report, method, samples, epsilons, steps, k, test_samples, test_steps) -> None:
        self.explanation_epoch, self.explanation_report, self.explanation_method = epoch, report, method
        self.explanation_samples = positive_int("explanation_samples", samples)
        self.explanation_test_samples = None if test_samples is None else positive_int("explanation_test_samples",
                                                                                        test_samples)
        self.explanation_steps = positive_int("explanation_steps", steps)
        self.explanation_test_steps = positive_int("explanation_test_steps", test_steps)
        try:
            self.explanation_epsilons = [parse_epsilon(e, self.norm) for e in epsilons]
        except ConfigError as err:
            raise ConfigError(f"explanation_epsilons: {err}") from None
        if isinstance(k, bool) or not (isinstance(k, int) and k >= 1 or isinstance(k, float) and 0 < k < 1):
            raise ConfigError(f"explanation_k is a number of pixels (an integer >= 1) or a share of the image in (0, 1), "
                              f"got {k!r}")
        self.explanation_k = k
        if epoch or report:
            from explanations import METHODS

            if method not in METHODS:
                raise ConfigError(f"unknown explanation method {method!r}: choose from {', '.join(METHODS)}")
            if not self.explanation_epsilons:
                raise ConfigError("explanation_epsilons is empty: give at least one radius, e.g. [4/255]")

    def check_settings(self, pl_module, dm) -> None:
        """The settings checks that need the model and the DataModule, callable before the Trainer starts (train.py
        calls it before fit, so a bad setting writes nothing); `setup` repeats them for other callers."""
        self._check_explanations(pl_module, dm)
        self._check_corruption_baseline(dm)

    def _check_explanations(self, pl_module, dm) -> None:
        """Explanation settings that depend on the model or the images fail before training."""
        if not (self.explanation_epoch or self.explanation_report):
            return
        pixels = dm.size * dm.size
        if isinstance(self.explanation_k, int) and self.explanation_k > pixels:
            raise ConfigError(f"explanation_k {self.explanation_k} is larger than the image ({dm.size} x {dm.size} = "
                              f"{pixels} pixels): give fewer pixels or a share in (0, 1)")
        if self.explanation_method == "gradcam":
            from explanations import last_conv_layer

            last_conv_layer(pl_module)  # ConfigError for a model without a convolutional layer

    def _explanation_keys(self, stage: str) -> set[str]:
        from explanations import EXPLANATION_METRICS

        return {metric_key(stage, "expl", name, eps) for eps in self.explanation_epsilons for name in EXPLANATION_METRICS}

    def _explanation_measures(self, pl_module, images, steps: int) -> dict[float, dict[str, torch.Tensor]]:
        """{epsilon: {measure: per-example values}} on uint8 or [0, 1] images, in batches of `batch_size`: the
        explained class is the model's prediction (multi-label heads: the top-scoring label)."""
        from explanations import explanation_robustness

        device = next(pl_module.parameters()).device
        out = {}
        for eps in self.explanation_epsilons:
            parts = []
            for start in range(0, len(images), self.batch_size):
                x = to_unit_range(images[start : start + self.batch_size].to(device))
                parts.append(explanation_robustness(pl_module, x, None, eps, method=self.explanation_method,
                                                    norm=self.norm, k=self.explanation_k, steps=steps,
                                                    seed=self.seed, reduce=False,
                                                    multilabel=getattr(pl_module, "task", None) == MULTILABEL))
            out[eps] = {name: torch.cat([p[name].detach().float().cpu() for p in parts]) for name in parts[0]}
        return out

    def _explanation_epoch_metrics(self, pl_module, split) -> dict[str, float]:
        """`val/expl_*@eps` on the fixed validation subset of `explanation_samples` images."""
        index = fixed_subset(len(split), self.explanation_samples, self.seed)
        measures = self._explanation_measures(pl_module, split.images[index], self.explanation_steps)
        return {metric_key("val", "expl", name, eps): float(values.mean())
                for eps, per_eps in measures.items() for name, values in per_eps.items()}

    def _explanation_report(self, pl_module, split) -> dict:
        """The report's `explanations` section (means and per-example values per epsilon); logs `test/expl_*@eps`."""
        index = fixed_subset(len(split), self.explanation_test_samples, self.seed)
        measures = self._explanation_measures(pl_module, split.images[index], self.explanation_test_steps)
        section = {}
        for eps, per_eps in measures.items():
            means = {name: float(values.mean()) for name, values in per_eps.items()}
            for name, value in means.items():
                pl_module.log(metric_key("test", "expl", name, eps), value, rank_zero_only=True)
            section[epsilon_label(eps)] = {
                **means, "epsilon": eps, "norm": self.norm, "method": self.explanation_method,
                "k": self.explanation_k, "steps": self.explanation_test_steps, "n_examples": len(index),
                "attack": "top-k (Ghorbani et al. 2019) on the softplus network (every ReLU -> Softplus(beta=10)); "
                          "an example whose label the attack changed counts as a kept map",
                "per_example": {name: [round(float(v), 5) for v in values] for name, values in per_eps.items()},
            }
        return section

    def _autoattack(self, pl_module, dm, split, eps: float, trainer: L.Trainer) -> dict:
        index = _shard(fixed_subset(len(split), self.autoattack_samples, self.seed), trainer)
        device = next(pl_module.parameters()).device
        x = to_unit_range(split.images[index].to(device))
        y = split.targets[index].to(device)
        x_adv, info = run_autoattack(
            pl_module, x, y, eps, norm=self.norm, version=self.autoattack_version, attacks=self.autoattack_attacks,
            num_classes=dm.num_classes, multilabel=dm.task == MULTILABEL, seed=self.seed,
            batch_size=self.batch_size, n_queries_square=self.square_queries,
        )
        clean = self._score(pl_module, x, y, None)
        scores = self._score(pl_module, x_adv, y, None, confidence=True)
        return {**scores, "clean_bacc_same_examples": clean["bacc"], "epsilon": eps, "info": info}

    def _score(self, pl_module, images, targets, attack, progress: Optional[str] = None,
               confidence: bool = False) -> dict[str, float]:
        """bacc, acc, auroc; with `confidence` (and the callback's `confidence` on) also the confidence measures of
        the same probabilities."""
        meter = ConfidenceMetrics(pl_module.task, self.confidence_bins) if confidence and self.confidence else None
        scores = evaluate(pl_module, images, targets, pl_module.task, pl_module.hparams.num_classes, attack=attack,
                          batch_size=self.batch_size, progress=progress, confidence=meter)
        return scores if meter is None else {**scores, **meter.compute()}

    # ---- mean corruption error against a baseline report (evaluation.mce) ----------------------------------------
    def _check_corruption_baseline(self, dm) -> None:
        """A baseline that cannot serve fails before training: missing, another dataset or size, or lacking the
        corruptions this run scores (protocol and severities are compared with the test table)."""
        if self.corruption_baseline is None:
            return
        from evaluation.mce import load_report

        path, baseline = load_report(self.corruption_baseline, "corruption_baseline")
        table = baseline["corruptions"]
        if (table.get("flag"), table.get("size")) != (dm.flag, dm.size):
            raise ConfigError(f"corruption_baseline {path} is of {table.get('flag')} at {table.get('size')} px, this "
                              f"run of {dm.flag} at {dm.size} px")
        missing = [c for c in self.corruption.corruptions or corruption_names(dm.flag) if c not in table["bacc"]]
        if missing:
            raise ConfigError(f"corruption_baseline {path} has no scores for {', '.join(missing)}")

    def _corruption_mce(self, pl_module, table: dict) -> dict:
        """mCE of this run's MedMNIST-C table against the baseline's; logged as `test/corr_mce`. A baseline that
        turns out to differ in protocol or severities leaves the reason in the report instead of losing the report."""
        from evaluation.mce import load_report, mean_corruption_error

        try:
            path, baseline = load_report(self.corruption_baseline, "corruption_baseline")
            result = {**mean_corruption_error(table, baseline["corruptions"]), "baseline": str(path),
                      "baseline_checkpoint": baseline.get("checkpoint")}
        except ConfigError as err:
            rank_zero_warn(f"no mCE: {err}")
            return {"error": str(err), "baseline": str(self.corruption_baseline)}
        pl_module.log(metric_key("test", "corr", "mce"), result["mce"], rank_zero_only=True)
        rank_zero_info(f"mCE against {path}: {result['mce']:.3f}")
        return result

    # ---- confidence and calibration (lightning_modules.calibration; no forward pass of its own) ------------------
    def _confidence_keys(self) -> dict[str, set[str]]:
        """{'val': keys, 'test': keys} of the confidence measures this callback logs."""
        if not self.confidence:
            return {"val": set(), "test": set()}
        val = [("clean", "subset")] + [("adv", eps) for eps in self.epsilons]
        test = [("clean", None)] + [("adv", eps) for eps in self.epsilons]
        test += [("aa", eps) for eps in self.epsilons] if self.autoattack else []
        val += [("corr", None)] if self.corruption_epoch else []
        test += [("corr", None)] if self.corruption_report else []
        return {stage: {metric_key(stage, kind, name, condition) for kind, condition in sets for name in CONFIDENCE_METRICS}
                for stage, sets in (("val", val), ("test", test))}

    def _confidence_logged(self, stage: str, kind: str, scores: dict, condition=None) -> dict[str, float]:
        """The confidence measures in `scores` under their metric keys ({} when confidence is off)."""
        if not self.confidence:
            return {}
        return {metric_key(stage, kind, name, condition): scores[name] for name in CONFIDENCE_METRICS}

    def _log_confidence(self, pl_module, report: dict) -> None:
        """Logs `test/clean_ece`, `test/adv_ece@eps`, `test/aa_ece@eps`, `test/corr_ece`, ... from the report."""
        if not self.confidence:
            return
        report["confidence"] = {"bins": self.confidence_bins, "measures": list(CONFIDENCE_METRICS),
                                "definitions": "lightning_modules.calibration (top-label ECE by torchmetrics)"}
        logged = self._confidence_logged("test", "clean", report["clean"])
        for section, kind in ATTACK_KINDS.items():
            for scores in report[section].values():
                logged.update(self._confidence_logged("test", kind, scores, scores["epsilon"]))
        pooled = (report.get("corruptions") or {}).get("confidence") or {}
        if "all" in pooled:
            logged.update(self._confidence_logged("test", "corr", pooled["all"]))
        for key, value in logged.items():
            pl_module.log(key, value, rank_zero_only=True)

    @staticmethod
    def _datamodule(trainer: L.Trainer):
        dm = trainer.datamodule
        if dm is None or not hasattr(dm, "split"):
            raise ConfigError("RobustnessCallback needs the MedMNISTDataModule (it reads its in-memory splits)")
        return dm

    @staticmethod
    def _report_path(trainer: L.Trainer) -> Path:
        if trainer.ckpt_path:
            return report_beside(trainer.ckpt_path)
        return RunLayout(trainer.default_root_dir).default_report
