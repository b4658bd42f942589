"""What a study says about one trained model, and how sure it can be: threshold-free and recalibrated measures on
the real test split, diagnostics of a model trained on a constructed set, intervals over test examples (the
bootstrap) and over seeds (a t interval), and a verdict against chance read from those intervals (both from
evaluation.statistics).

Measures (every one through the project's metrics, lightning_modules.metrics, never re-derived here):

- `bacc`: balanced accuracy at the default decision rule (argmax; binary: p1 > 0.5);
- `auroc`: AUROC (macro one-vs-rest for multi-class), threshold-free;
- `bacc_recal`: balanced accuracy after a bias on the log-probabilities, fitted on the real validation split only
  (binary: a threshold; multi-class: one bias per class, by coordinate ascent on validation balanced accuracy,
  shrunk toward no bias where 5-fold cross-validation within validation does not show it helping), then applied
  unchanged to test;
- `bacc_adabn`, `auroc_adabn`: the same model after its BatchNorm running statistics are re-estimated on the
  unlabeled real validation images (AdaBN, Li et al. 2016: no labels, no threshold); not defined for models
  without BatchNorm (the row says so);
- `bacc_vs_new_label` (D_det only): balanced accuracy against the D_det label (y + 1) mod C of each test image:
  a model that learned the robust (visible) features scores above chance here, and below chance on `bacc`.
"""
from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch
from torch import nn

from core.errors import ConfigError
from datamodules.info import MULTILABEL

#: measure -> (metric, prediction variant, what it is)
MEASURES = {
    "bacc": ("bacc", "default", "balanced accuracy at the default threshold"),
    "auroc": ("auroc", "default", "AUROC (threshold-free)"),
    "bacc_recal": ("bacc", "recal", "balanced accuracy, bias fitted on the real validation split"),
    "bacc_adabn": ("bacc", "adabn", "balanced accuracy after AdaBN on unlabeled real validation images"),
    "auroc_adabn": ("auroc", "adabn", "AUROC after AdaBN on unlabeled real validation images"),
    "bacc_vs_new_label": ("bacc", "new_label", "balanced accuracy against the D_det label (y + 1) mod C"),
    # D_rand / D_det with a leakage model (studies.nonrobust.leakage adds it; no prediction variant of its own)
    "auroc_net_of_leakage": ("auroc", "net_of_leakage", "AUROC net of robust-feature leakage (less an L2-robust "
                             "model's AUROC on the constructed set against its new labels, above its no-leakage "
                             "value: 0.5 for D_rand, the same on the original images for D_det)"),
}
HOLDS, NOT_HOLDS, UNDECIDED = "holds", "does not hold", "undecided at this sample size"
CACHE_VERSION = 4  # what the cached predictions mean (evaluation.cache keys on it): 2: AdaBN weights batches by
# size; 3: a binary threshold is the exact optimum; 4: a multi-class bias is shrunk by cross-validation on val


# ---- one metric definition, reused across many resamples ------------------------------------------------------
class Scorer:
    """`score(probabilities, targets)` for one metric of a task: the project's metric object (make_metrics), built
    once and reset after every call, so thousands of bootstrap resamples do not rebuild it each time."""

    def __init__(self, task: str, num_classes: int, metric: str):
        from lightning_modules.metrics import make_metrics

        self.metric = make_metrics(task, num_classes)[metric]

    def __call__(self, probabilities: torch.Tensor, targets: torch.Tensor) -> float:
        self.metric.update(probabilities, targets)
        value = float(self.metric.compute())
        self.metric.reset()
        return value


def _targets(targets: torch.Tensor, task: str) -> torch.Tensor:
    """Targets as the metrics take them (as evaluation.runs.score shapes them)."""
    targets = torch.as_tensor(targets)
    if task == MULTILABEL:
        return targets.long()
    return targets.reshape(len(targets), -1)[:, 0].long()


# ---- recalibration: a bias on the log-probabilities fitted on validation --------------------------------------
def apply_bias(probabilities: torch.Tensor, bias: np.ndarray) -> torch.Tensor:
    """softmax(log p + bias): the argmax moves, the ranking within a class does not."""
    logp = torch.log(probabilities.double().clamp_min(1e-300)) + torch.as_tensor(bias, dtype=torch.float64)
    return torch.softmax(logp, dim=1).float()


#: multi-class recalibration: the factors a fitted bias may be scaled by (held_out_shrinkage picks one)
SHRINKAGE = (0.0, 0.25, 0.5, 0.75, 1.0)
FOLDS = 5  # folds of the validation split for that choice (stratified by class, fixed seed)


def fit_bias(probabilities: torch.Tensor, targets: torch.Tensor, task: str, rounds: Optional[int] = None,
             candidates: int = 256, folds: int = FOLDS) -> np.ndarray:
    """A bias per class on the log-probabilities, fitted on these (validation) examples: binary heads get the
    threshold (the bias of class 1, class 0 at 0) that maximises balanced accuracy, exactly; multi-class heads the
    bias of coordinate ascent on balanced accuracy (`ascend_bias`), shrunk toward no bias by the factor that
    cross-validation within these examples picks (`held_out_shrinkage`). A threshold is one number; C - 1 free
    biases fitted to a step function on a small split follow its noise (a 5-class RGB dataset's 120 validation
    images: test balanced accuracy 0.375 -> 0.334), so a multi-class bias is kept only as far as it improves
    balanced accuracy on validation examples it was not fitted on by more than their noise. Simulated (5 classes,
    120 validation images, 40 splits, tests/studies/test_recalibration_shrinkage.py's model): with no class shifted
    the old fit lowered held-out balanced accuracy on every split (mean -0.022), this one by -0.002 on average; with
    a class shifted it keeps most of the old fit's gain (+0.157 of +0.174; +0.013 of +0.020 for a small shift)."""
    if task == MULTILABEL:
        raise ConfigError("recalibration is defined for single-label heads (one bias per class); this task is "
                          "multi-label")
    logp = torch.log(probabilities.double().clamp_min(1e-300)).numpy()
    labels = _targets(targets, task).numpy()[:, None]
    bias = ascend_bias(logp, labels, rounds, candidates)
    if logp.shape[1] == 2:
        return bias
    return held_out_shrinkage(logp, labels, folds, rounds, candidates) * bias + 0.0  # + 0.0: no -0.0 in records


def ascend_bias(logp: np.ndarray, labels: np.ndarray, rounds: Optional[int] = None,
                candidates: int = 256) -> np.ndarray:
    """The bias on log-probabilities `logp` (N x C) that maximises balanced accuracy against `labels` (N x 1):
    binary, the threshold over every point where an example's prediction changes (the exact optimum); multi-class,
    coordinate ascent (each class in turn, the other biases held) over at most `candidates` quantiles of those
    points per step."""
    k = logp.shape[1]
    score_of = _argmax_bacc(labels, k)
    bias = np.zeros(k)
    classes = [k - 1] if k == 2 else list(range(k))
    best = score_of(logp + bias)
    for _ in range(rounds or (1 if k == 2 else 3)):
        improved = False
        for c in classes:
            others = np.delete(logp + bias, c, axis=1).max(axis=1)
            ties = np.unique(others - logp[:, c])  # bias at which each example's argmax switches to / from c
            if k > 2 and len(ties) > candidates:
                ties = np.unique(np.quantile(ties, np.linspace(0, 1, candidates)))
            points = np.concatenate([[ties[0] - 1.0], (ties[:-1] + ties[1:]) / 2, [ties[-1] + 1.0]])
            for value in points:
                trial = bias.copy()
                trial[c] = value
                score = score_of(logp + trial)
                # ties in score keep the bias closest to zero (the model's own rule where recalibration does not help)
                if score > best + 1e-12 or (abs(score - best) <= 1e-12 and abs(value) < abs(bias[c])):
                    improved |= score > best + 1e-12
                    best, bias = score, trial
        if not improved:
            break
    return bias


def _argmax_bacc(labels: np.ndarray, k: int):
    """`score(logp)`: balanced accuracy of the argmax of N x k scores against `labels`, by the project's metric
    (one Scorer reused: a search scores thousands of candidate biases)."""
    scorer, targets = Scorer("multiclass", k, "bacc"), torch.from_numpy(np.asarray(labels).reshape(len(labels)))
    return lambda logp: scorer(torch.from_numpy(logp), targets)


def stratified_folds(labels: np.ndarray, folds: int) -> Optional[np.ndarray]:
    """The fold (0 .. folds - 1) of every example, each class dealt round the folds in a fixed-seed random order;
    None when there are fewer than two examples per fold to cross-validate with."""
    labels = np.asarray(labels).reshape(len(labels))
    if folds < 2 or len(labels) < 2 * folds:
        return None
    rng = np.random.default_rng(0)
    fold, dealt = np.empty(len(labels), dtype=np.int64), 0
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        fold[members] = (dealt + np.arange(len(members))) % folds
        dealt += len(members)
    return fold


def held_out_shrinkage(logp: np.ndarray, labels: np.ndarray, folds: int = FOLDS, rounds: Optional[int] = None,
                       candidates: int = 256) -> float:
    """The factor of SHRINKAGE to scale a multi-class bias by: each fold's bias is fitted on the other folds and,
    scaled by every factor, applied to that fold; of the pooled held-out predictions, the smallest factor whose
    balanced accuracy is within one standard error of the best factor's (the one-standard-error rule of
    cross-validation, Hastie et al., Elements of Statistical Learning, 7.10; the error of the paired difference over
    the same examples, `paired_bacc_se`) wins, so a bias is kept only where it helps on examples it was not fitted on
    by more than their noise (0: the model's own rule). Too few examples to cross-validate: 0."""
    fold = stratified_folds(labels, folds)
    if fold is None:
        return 0.0
    held = {factor: logp.copy() for factor in SHRINKAGE}
    for f in range(folds):
        out = fold == f
        bias = ascend_bias(logp[~out], labels[~out], rounds, candidates)
        for factor in SHRINKAGE:
            held[factor][out] += factor * bias
    score_of = _argmax_bacc(labels, logp.shape[1])
    scores = {factor: score_of(held[factor]) for factor in SHRINKAGE}
    best = max(SHRINKAGE, key=lambda factor: (scores[factor], -factor))
    return next(factor for factor in SHRINKAGE
                if scores[factor] >= scores[best] - paired_bacc_se(held[best], held[factor], labels) - 1e-12)


def paired_bacc_se(logp_a: np.ndarray, logp_b: np.ndarray, labels: np.ndarray) -> float:
    """Standard error of balanced accuracy under argmax of `logp_a` minus under `logp_b` on the same examples:
    within each class the per-example difference in correctness, its variance over the class's examples, summed
    over classes as balanced accuracy weights them (1 / C per class, 1 / n_c per example)."""
    labels = np.asarray(labels).reshape(len(labels))
    change = (logp_a.argmax(1) == labels).astype(float) - (logp_b.argmax(1) == labels).astype(float)
    classes = np.unique(labels)
    variance = sum(change[labels == c].var(ddof=1) / (labels == c).sum() for c in classes if (labels == c).sum() > 1)
    return float(np.sqrt(variance) / len(classes))


# ---- AdaBN: BatchNorm statistics from unlabeled images ----------------------------------------------------------
def batchnorm_layers(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def adabn(model: nn.Module, images: torch.Tensor, batch_size: int = 512) -> Optional[nn.Module]:
    """A copy of `model` whose BatchNorm running statistics are re-estimated on `images` (uint8 or [0, 1]; labels
    never used): each layer's statistics are the mean of the batch statistics weighted by batch size (a short last
    batch counts for its images only), every other weight unchanged. None when the model has no BatchNorm layer."""
    from datamodules.tensors import to_unit_range
    from evaluation.scoring import model_device

    adapted = copy.deepcopy(model)
    layers = batchnorm_layers(adapted)
    if not layers:
        return None
    adapted.eval()
    for layer in layers:
        layer.reset_running_stats()
        layer.train()
    device = model_device(adapted)
    seen = 0
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            batch = images[start:start + batch_size]
            seen += len(batch)
            for layer in layers:  # running = running + (batch - running) * n_batch / n_seen: a size-weighted mean
                layer.momentum = len(batch) / seen
            adapted(to_unit_range(batch.to(device)))
    return adapted.eval()


# ---- one model's predictions and diagnostics -------------------------------------------------------------------
def best_checkpoint(run_dir, checkpoint) -> Path:
    ckpt = Path(checkpoint or "")
    if not ckpt.is_file():
        raise ConfigError(f"run {run_dir} has no best checkpoint ({ckpt})")
    return ckpt


def model_predictions(run_dir, checkpoint, kind: str = "real", recalibration_split: str = "val",
                      sidecar: Optional[dict] = None, batch_size: int = 512) -> dict[str, Any]:
    """Per-example test probabilities of a finished run's checkpoint under every prediction variant (default,
    recalibrated on `recalibration_split`, AdaBN on its unlabeled images), the fitted bias, and for a model
    trained on a constructed set its diagnostics. Cached beside the checkpoint (evaluation.cache)."""
    from evaluation.cache import PredictionCache
    from evaluation.runs import run_config

    ckpt = best_checkpoint(run_dir, checkpoint)
    data = dict(run_config(run_dir)["data"])
    settings = {"data": data, "kind": kind, "recalibration_split": recalibration_split}
    return PredictionCache(ckpt, "study-measures", settings, CACHE_VERSION).get(
        lambda: _predict_variants(ckpt, data, kind, recalibration_split, sidecar, batch_size))


def _predict_variants(ckpt: Path, data: dict, kind: str, recalibration_split: str, sidecar: Optional[dict],
                      batch_size: int) -> dict[str, Any]:
    """`model_predictions` computed (not cached)."""
    from datamodules.medmnist import MedMNISTDataModule
    from evaluation.checkpoints import load_module
    from evaluation.scoring import predict

    dm = MedMNISTDataModule(**data)
    task, k = dm.task, dm.num_classes
    model = load_module(ckpt)
    run = dict(task=task, num_classes=k, batch_size=batch_size)
    val, test = dm.split(recalibration_split), dm.split("test")
    p_val = predict(model, val.images, **run)
    p_test = predict(model, test.images, **run)
    out: dict[str, Any] = {"task": task, "num_classes": k, "targets": _targets(test.targets, task),
                           "variants": {"default": p_test}, "notes": {}}
    if task != MULTILABEL:
        bias = fit_bias(p_val, val.targets, task)
        out["bias"] = bias.tolist()
        out["variants"]["recal"] = apply_bias(p_test, bias)
    else:
        out["notes"]["bacc_recal"] = "n/a: multi-label"
    adapted = adabn(model, val.images, batch_size)
    if adapted is None:
        out["notes"]["bacc_adabn"] = out["notes"]["auroc_adabn"] = "n/a: no BatchNorm"
    else:
        out["variants"]["adabn"] = predict(adapted, test.images, **run)
    if kind == "d_det" and task != MULTILABEL:
        out["variants"]["new_label"] = p_test
        out["new_targets"] = (out["targets"] + 1) % k
    if kind != "real":
        out["diagnostics"] = constructed_diagnostics(model, dm, p_test, sidecar, run)
    return out


def constructed_diagnostics(model, dm, p_test: torch.Tensor, sidecar: Optional[dict], run: dict) -> dict:
    """Training accuracy on the constructed set (against its new labels), the source model's agreement with the new
    labels (the construction sidecar's assigned share), and the mean predicted probability on constructed vs real
    test images: of the last class for two classes, the total-variation distance of the mean probability vectors
    otherwise."""
    from evaluation.runs import score
    from evaluation.scoring import predict

    train = dm.split("train")
    p_train = predict(model, train.images, **run)
    acc = score(p_train, train.targets, run["task"], run["num_classes"], ("acc",))["acc"]
    mean_train, mean_test = p_train.double().mean(0), p_test.double().mean(0)
    out = {"train_acc_constructed": acc,
           "source_agreement": (sidecar or {}).get("assigned_share"),
           "prob_shift_tv": float((mean_train - mean_test).abs().sum() / 2)}
    if run["num_classes"] == 2:
        out["mean_p1_constructed"], out["mean_p1_real_test"] = float(mean_train[1]), float(mean_test[1])
    return out


# ---- bootstrap over test examples (and seeds) ------------------------------------------------------------------
def measure_names(predictions: dict) -> list[str]:
    return [m for m, (_, variant, _) in MEASURES.items() if variant in predictions["variants"]]


def example_draws(n_examples: int, n: int, seed: int) -> list[torch.Tensor]:
    """The resampled test indices of every draw: the same for every model of a dataset (same test split), so
    models and seeds are compared on the same resamples."""
    from evaluation.statistics import resample_indices

    return [torch.from_numpy(i) for i in resample_indices(n_examples, n, [seed, n_examples])]


def draws(predictions: dict, n: int = 1000, seed: int = 0) -> dict[str, dict[str, Any]]:
    """{measure: {'value': on every example, 'draws': array of n resampled values}} for one model."""
    task, k = predictions["task"], predictions["num_classes"]
    targets = predictions["targets"]
    samples = example_draws(len(targets), n, seed)
    scorers = {metric: Scorer(task, k, metric) for metric in ("bacc", "auroc")}
    scorers["auroc"].metric.validate_args = False  # the point estimate below checks the inputs once
    out = {}
    for name in measure_names(predictions):
        metric, variant, _ = MEASURES[name]
        probs = predictions["variants"][variant]
        y = predictions["new_targets"] if variant == "new_label" else targets
        score = scorers[metric]
        value = Scorer(task, k, metric)(probs, y)
        if metric == "bacc" and task != MULTILABEL:
            values = samplewise_bacc(probs, y, torch.stack(samples))
        else:
            values = np.array([score(probs[i], y[i]) for i in samples])
        out[name] = {"value": value, "draws": values}
    return out


def samplewise_bacc(probabilities: torch.Tensor, targets: torch.Tensor, indices: torch.Tensor) -> np.ndarray:
    """Balanced accuracy of every resample (rows of `indices`) at once: the project's BalancedAccuracy with
    per-sample statistics (torchmetrics' samplewise reduction), the same definition as one call per resample."""
    from lightning_modules.metrics import BalancedAccuracy

    metric = BalancedAccuracy(probabilities.shape[1], multidim_average="samplewise")
    out = []
    for chunk in indices.split(250):
        metric.update(probabilities[chunk].permute(0, 2, 1), targets[chunk])
        out.append(np.atleast_1d(metric.compute().double().numpy()))
        metric.reset()
    return np.concatenate(out)


def cell(per_seed: Sequence[dict], level: float = 0.95, over_seeds: bool = True) -> dict:
    """Statistics of one measure over the seeds of a cell: mean and sd of the per-seed values and, with
    `over_seeds` and 2 seeds or more, the t interval over those values (evaluation.statistics.seed_interval: the
    seed is the unit of replication); else the bootstrap interval over test examples of the mean over seeds (every
    seed's draws resample the same test examples)."""
    from evaluation.statistics import percentile_interval, seed_interval

    values = np.array([m["value"] for m in per_seed], dtype=float)
    s = len(values)
    if over_seeds and s > 1:
        return seed_interval(values, level)
    combined = np.stack([m["draws"] for m in per_seed]).mean(axis=0)  # seeds x draws -> draws
    low, high = percentile_interval(combined, level)
    return {"mean": float(values.mean()), "sd": float(values.std(ddof=1)) if s > 1 else 0.0, "low": low,
            "high": high, "seeds": s}


SUMMARY_SEED = "all"  #: the `seed` of a results.csv row that summarises a cell over its seeds


def summary_rows(rows: list[dict], level: float = 0.95,
                 keys: Sequence[str] = ("dataset", "size", "model", "kind", "construction")) -> list[dict]:
    """One row per cell (rows sharing `keys`) with seed = `all`: every measure that has interval columns
    (`m`, `m_low`, `m_high`) as the mean and the t interval over the cell's seeds (seed_interval); every other
    numeric column as its mean over seeds; a note (text) when every seed has the same; `n_seeds`."""
    from evaluation.statistics import seed_interval

    out = []
    for cell_key in dict.fromkeys(tuple(r.get(k) for k in keys) for r in rows):
        sel = [r for r in rows if tuple(r.get(k) for k in keys) == cell_key]
        row: dict[str, Any] = {k: v for k, v in zip(keys, cell_key) if v is not None}
        row["seed"] = SUMMARY_SEED
        for column in dict.fromkeys(c for r in sel for c in r):
            if column in row or column == "seed" or column.endswith(("_low", "_high")):
                continue
            values = [r.get(column) for r in sel]
            numbers = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
            if any(f"{column}_low" in r for r in sel):
                stats = seed_interval(numbers, level)
                row[column], row[f"{column}_low"], row[f"{column}_high"] = stats["mean"], stats["low"], stats["high"]
            elif numbers:
                row[column] = float(np.mean(numbers))
            elif all(isinstance(v, str) for v in values) and len(set(values)) == 1:
                row[column] = values[0]
        row["n_seeds"] = len(sel)
        out.append(row)
    return out


def chance_of(measure: str, num_classes: int, task: str = "") -> float:
    """Chance level of a measure: 0.5 for AUROC, 1 / C for balanced accuracy (0.5 per label, multi-label)."""
    if MEASURES[measure][0] == "auroc" or task == MULTILABEL:
        return 0.5
    return 1.0 / num_classes


def verdict(low: float, high: float, chance: float) -> str:
    """From the interval alone: above chance (lower bound above it) holds; at or below chance (upper bound not
    above it) does not hold; an interval that contains chance with room above it is undecided at this sample size."""
    if math.isnan(low) or math.isnan(high):
        return UNDECIDED
    if low > chance:
        return HOLDS
    if high <= chance:
        return NOT_HOLDS
    return UNDECIDED


def describe(stats: dict, chance: float) -> str:
    """`0.853 ± 0.012 [0.821, 0.884]` (mean ± sd over seeds, interval), as one table cell."""
    spread = f" ± {stats['sd']:.3f}" if stats["seeds"] > 1 else ""
    return f"{stats['mean']:.3f}{spread} [{stats['low']:.3f}, {stats['high']:.3f}]"
