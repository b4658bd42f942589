"""Finding 2's measure: how much balanced accuracy a model loses under MedMNIST-C, per corruption family, with a
bootstrap interval over test examples.

The drop of a family is (mean balanced accuracy over its corruptions and severities) minus the balanced accuracy on
the clean test images resampled exactly as the corrupted ones (the round-trip reference: under
`upsample224-corrupt-box` every corrupted image went to 224 px and back, which is a shift of its own); under
`native224` the reference is the clean image. Families are medmnistc's own grouping of its corruptions (the module
each one lives in: noise, digital, blur, colour, task-specific). Draws use the same resampled test indices as every
other study measure (studies.measures.example_draws), so two models' draws are paired and their difference is an
interval too.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np
import torch

from core.errors import ConfigError

from .measures import best_checkpoint, example_draws, samplewise_bacc

#: medmnistc's corruption modules -> the MedMNIST-C paper's family names
FAMILY_OF_MODULE = {"noise": "noise", "compression": "digital", "filter": "blur", "enhance": "colour",
                    "microscopy": "task-specific"}
ALL = "all"
CACHE_VERSION = 1  # what the cached predictions mean (evaluation.cache keys on it)


def measure_names() -> list[str]:
    """Every measure drop_draws can give, whatever the dataset's families: clean and reference balanced accuracy,
    and per family (and `all`) the corrupted balanced accuracy and its drop (what a config's endpoint may name)."""
    every = [*dict.fromkeys(FAMILY_OF_MODULE.values()), ALL]
    return ["clean_bacc", "reference_bacc", *(f"corr_{m}@{f}" for m in ("bacc", "drop") for f in every)]


def families(flag: str) -> dict[str, str]:
    """{corruption: family} for a dataset's MedMNIST-C corruptions, read from medmnistc's registry."""
    from medmnistc.corruptions.registry import CORRUPTIONS_DS

    if flag not in CORRUPTIONS_DS:
        raise ConfigError(f"medmnistc has no corruptions for {flag!r}")
    out = {}
    for name, corruption in CORRUPTIONS_DS[flag].items():
        module = type(corruption).__module__.rsplit(".", 1)[-1]
        out[name] = FAMILY_OF_MODULE.get(module, module)
    return out


def corruption_predictions(run_dir, checkpoint, batch_size: int = 512) -> dict[str, Any]:
    """Per-example test probabilities of a run's checkpoint on the clean, round-tripped and every corrupted test image
    (severity-major, medmnistc's layout), with the corrupted set its RobustnessCallback used. Cached beside the
    checkpoint (evaluation.cache)."""
    from evaluation.cache import PredictionCache
    from evaluation.runs import robustness_settings, run_config

    ckpt = best_checkpoint(run_dir, checkpoint)
    config = run_config(run_dir)
    data = dict(config["data"])
    callback = robustness_settings(config)
    chosen = {"cache": callback["corruption_cache"], "seed": callback["seed"], "corruptions": callback["corruptions"]}
    return PredictionCache(ckpt, "study-corruptions", {"data": data, **chosen}, CACHE_VERSION).get(
        lambda: _predict_corrupted(ckpt, data, chosen, batch_size))


def _predict_corrupted(ckpt, data: dict, chosen: dict, batch_size: int) -> dict[str, Any]:
    """`corruption_predictions` computed (not cached)."""
    from datamodules.medmnist import MedMNISTDataModule
    from datamodules.medmnist_c import load_corrupted
    from evaluation.checkpoints import load_module
    from evaluation.scoring import predict

    dm = MedMNISTDataModule(**data)
    corrupted = load_corrupted(dm.flag, dm.size, dm.root, chosen["cache"], seed=chosen["seed"],
                               as_rgb=dm.hparams.as_rgb, corruptions=chosen["corruptions"],
                               verify=dm.hparams.verify_md5)
    model = load_module(ckpt)

    def probabilities(images):
        return predict(model, images, dm.task, dm.num_classes, batch_size=batch_size)

    roundtrip = corrupted.roundtrip_images()
    out = {"flag": dm.flag, "task": dm.task, "num_classes": dm.num_classes,
           "protocol": corrupted.protocol, "severities": list(corrupted.severities),
           "targets": torch.as_tensor(np.asarray(corrupted.raw_labels)).reshape(-1).long(),
           "clean": probabilities(corrupted.clean_images()),
           "reference": "clean" if roundtrip is None else "roundtrip",
           "corrupted": {c: torch.cat([probabilities(corrupted.images_for(c, s)) for s in corrupted.severities])
                         for c in corrupted.corruptions}}
    out["roundtrip"] = out["clean"] if roundtrip is None else probabilities(roundtrip)
    return out


def drop_draws(predictions: dict, n: int = 1000, seed: int = 0) -> dict[str, dict[str, Any]]:
    """{measure: {'value', 'draws'}}: `corr_bacc@F` (corrupted balanced accuracy of family F, mean over its
    corruptions and severities), `corr_drop@F` (that minus the reference), for every family and `all`, and
    `clean_bacc` / `reference_bacc`. Binary and multi-class tasks (MedMNIST-C's multi-label ChestMNIST: not here)."""
    from datamodules.info import MULTILABEL

    if predictions["task"] == MULTILABEL:
        raise ConfigError("corruption drops with intervals cover one-label tasks; multi-label keeps the report's table")
    targets = predictions["targets"]
    count = len(targets)
    indices = torch.stack(example_draws(count, n, seed))
    every = torch.cat([torch.arange(count)[None], indices])  # row 0: every example (the point estimate)

    def per_draw(probabilities: torch.Tensor) -> np.ndarray:
        return samplewise_bacc(probabilities, targets, every)

    severities = len(predictions["severities"])
    per_corruption = {c: np.mean([per_draw(stacked[s * count:(s + 1) * count]) for s in range(severities)], axis=0)
                      for c, stacked in predictions["corrupted"].items()}
    reference = per_draw(predictions["roundtrip"])
    grouping = families(predictions["flag"])
    groups: dict[str, list[str]] = {}
    for name in per_corruption:
        groups.setdefault(grouping.get(name, name), []).append(name)
    groups[ALL] = list(per_corruption)
    out = {"clean_bacc": per_draw(predictions["clean"]), "reference_bacc": reference}
    for family, names in groups.items():
        corrupted = np.mean([per_corruption[c] for c in names], axis=0)
        out[f"corr_bacc@{family}"] = corrupted
        out[f"corr_drop@{family}"] = corrupted - reference
    return {name: {"value": float(values[0]), "draws": values[1:]} for name, values in out.items()}


def at_matched_clean(curve: Sequence[tuple[float, float]], clean: float) -> Optional[float]:
    """Corrupted balanced accuracy read off a robust-model curve, [(clean, corrupted) balanced accuracy] at several
    training epsilons in increasing order, at clean balanced accuracy `clean`: linear between the first two adjacent
    epsilons whose clean accuracies bracket it. None when `clean` lies outside the curve's range (not reachable:
    no epsilon on the curve has that clean accuracy, and the curve is not extrapolated)."""
    for (c0, k0), (c1, k1) in zip(curve, curve[1:]):
        if min(c0, c1) <= clean <= max(c0, c1):
            return k0 if c1 == c0 else k0 + (clean - c0) / (c1 - c0) * (k1 - k0)
    return None


def difference(a: dict, b: dict) -> dict[str, dict[str, Any]]:
    """a - b for every measure both have, draw by draw (paired: the draws resample the same test examples)."""
    return {m: {"value": a[m]["value"] - b[m]["value"], "draws": a[m]["draws"] - b[m]["draws"]}
            for m in a if m in b}
