"""A constructed set as a MedMNIST-format npz: the training split replaced by float32 constructed images, val and
test copied from the official file, and a sidecar JSON saying how it was made."""
from __future__ import annotations

import os
import shutil
import time
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from core.errors import ConfigError
from core.files import atomic_write, write_json_atomic
from datamodules.info import MULTILABEL, dataset_info
from datamodules.medmnist import default_root
from datamodules.npz import SPLITS, load_split, locate
from datamodules.tensors import to_channels_first
from evaluation.reports import package_versions, timestamp
from .budget import search_budget
from .builder import Constructed, Settings, build, check_kind, resolve_device
from .source import Source, load_source


def sidecar_path(out: str | os.PathLike) -> Path:
    """Where the JSON beside a constructed npz lives: d_rand.npz -> d_rand.json."""
    return Path(out).with_suffix(".json")


def parts_path(out: str | os.PathLike) -> Path:
    """The folder that keeps finished batches of an unfinished build: d_rand.npz -> d_rand.npz.parts/."""
    return Path(f"{out}.parts")


def budget_columns(sidecar: dict) -> dict:
    """A PGD set's budget for the results tables: `budget_l2`, the L2 radius on the image (after any scaling), and
    for a searched budget (epsilon auto) `budget_search_assigned`, the source's share on the search sample."""
    out = {}
    if "epsilon" in (sidecar.get("resolved") or {}):
        out["budget_l2"] = sidecar["resolved"]["epsilon"]
    if sidecar.get("budget"):
        out["budget_search_assigned"] = sidecar["budget"]["assigned_share"]
    return out


def check_output(out: str | os.PathLike, overwrite: bool) -> Path:
    out = Path(out)
    if out.suffix != ".npz":
        raise ConfigError(f"output {out} must end in .npz")
    if out.exists() and not overwrite:
        raise ConfigError(f"{out} exists: pass --overwrite to replace it")
    if out.is_dir():
        raise ConfigError(f"{out} is a folder")
    return out


def warn_if_wrong_source(kind: str, source: Source) -> None:
    """D_R needs an L2-robust source and D_NR a standard one: other sources build, with a warning."""
    if kind == "d_r" and source.adversarial_norm != "l2":
        warnings.warn(f"d_r expects an L2 adversarially trained source, but {source.path.name} is {source.training}: "
                      "the set will hold its (non-robust) features", stacklevel=2)
    if kind == "d_nr" and source.adversarial_norm is not None:
        warnings.warn(f"d_nr expects a standard (ERM) source, but {source.path.name} is {source.training}",
                      stacklevel=2)


def to_medmnist_layout(images: torch.Tensor) -> np.ndarray:
    """float32 N x C x H x W -> N x H x W (grey) or N x H x W x 3, as MedMNIST stores images."""
    array = images.float().numpy()
    return np.ascontiguousarray(array[:, 0] if array.shape[1] == 1 else array.transpose(0, 2, 3, 1))


def write_constructed(out: Path, official: Path, result: Constructed, label_dtype, sidecar: dict) -> None:
    """The npz (official val/test arrays untouched) and its sidecar, each written atomically; npz first."""
    with np.load(official) as npz:
        arrays = {key: npz[key] for key in npz.files if not key.startswith("train_")}
    arrays["train_images"] = to_medmnist_layout(result.images)
    arrays["train_labels"] = result.labels.numpy().astype(label_dtype).reshape(-1, 1)
    with atomic_write(out, "wb") as handle:
        np.savez(handle, **arrays)
    write_json_atomic(sidecar_path(out), sidecar)


def construct_file(
    kind: str,
    ckpt: str | os.PathLike,
    flag: str,
    out: str | os.PathLike,
    size: int = 28,
    root: Optional[str] = None,
    settings: Settings = Settings(),
    limit: Optional[int] = None,
    seed: int = 0,
    overwrite: bool = False,
    verify_md5: bool = True,
    device: Optional[str] = None,
    progress: bool = True,
) -> dict:
    """Build `kind` from the training split of `flag` at `size` with the checkpoint's model; write `out` (npz) and
    its sidecar JSON; return the sidecar. Finished batches wait in `<out>.parts/` until the npz is written. With
    epsilon auto the budget is searched first (constructions.budget) and the sidecar's `budget` says which and why."""
    kind = check_kind(kind)
    out = check_output(out, overwrite)
    device = resolve_device(device)
    info = dataset_info(flag)
    if info.task == MULTILABEL:
        raise ConfigError(f"{info.flag} is multi-label: there is no single class to target or relabel, so "
                          "D_rand, D_det, D_NR and D_R are defined for single-label datasets only")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ConfigError(f"limit must be a positive integer, got {limit!r}")
    source = load_source(ckpt, info, size)
    warn_if_wrong_source(kind, source)
    official = locate(root or default_root(), info.flag, size, verify=verify_md5)
    images, labels = load_split(official, "train", info, size)
    for split in SPLITS[1:]:
        load_split(official, split, info, size)  # a broken val/test split fails now, not after the build
    x, y = to_channels_first(images), torch.from_numpy(labels[:, 0].astype(np.int64))  # what the build reads
    budget = None
    if settings.auto:  # the budget is a property of the dataset: searched on a sample of the whole training split
        budget = search_budget(kind, source.model, x, y, info.num_classes, settings, seed, device)
        settings = settings.at(budget["epsilon"])
    if limit is not None:
        labels, x, y = labels[:limit], x[:limit], y[:limit]

    parts = parts_path(out)
    if overwrite and parts.exists():
        shutil.rmtree(parts)
    reused = len(list(parts.glob("batch_*.npz")))
    started = time.perf_counter()
    result = build(kind, source.model, x, y, info.num_classes, settings, seed=seed, parts_dir=parts, device=device,
                   progress=progress,
                   fingerprint={"source_sha256": source.sha256, "flag": info.flag, "size": size, "limit": limit})
    seconds = time.perf_counter() - started
    n = len(result.labels)
    sidecar = {
        "kind": kind,
        "flag": info.flag,
        "size": size,
        "official_file": str(official),
        "source": source.summary(),
        "settings": asdict(settings),
        "resolved": result.resolved,
        "seed": seed,
        "limit": limit,
        "label_rule": {"d_rand": "uniformly random class", "d_det": "(y + 1) mod C",
                       "d_nr": "label of the image whose representation is matched",
                       "d_r": "label of the image whose representation is matched"}[kind],
        "counts": {
            "train": n,
            "new_labels": np.bincount(result.labels.numpy(), minlength=info.num_classes).tolist(),
            "original_labels": np.bincount(labels[:, 0], minlength=info.num_classes).tolist(),
        },
        "assigned_share": result.assigned_share,
        "stats": result.stats(),
        **({"budget": budget} if budget is not None else {}),
        "build": {"device": str(device), "seconds": round(seconds, 2), "batch_size": settings.batch_size,
                  "batches_reused": reused, "images_per_second": round(n / seconds, 2) if seconds > 0 else None},
        "versions": package_versions(),
        "created": timestamp(),
    }
    write_constructed(out, official, result, labels.dtype, sidecar)
    shutil.rmtree(parts, ignore_errors=True)
    return sidecar
