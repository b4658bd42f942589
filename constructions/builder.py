"""The four constructed training sets of Ilyas et al. (2019), built batch by batch from in-memory images.

D_rand / D_det: targeted L2 PGD (attacks.PGD) on a source model towards a random / the next class, relabelled as
that class. D_NR / D_R: from another random training image, normalized-gradient L2 descent (the same PGD, run on the
model's penultimate features with a box-sized ball) towards a training image's representation, labelled as it.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from attacks.gradient import PGD
from attacks.threat_model import parse_epsilon
from core.checks import positive_int
from core.errors import ConfigError
from core.files import atomic_write, write_json_atomic
from datamodules.tensors import to_unit_range
from lightning_modules.models import features

KINDS = ("d_rand", "d_det", "d_nr", "d_r")
ADVERSARIAL = ("d_rand", "d_det")  # targeted PGD towards a new label
MATCHING = ("d_nr", "d_r")  # representation matching
REFERENCE_DIM = 32 * 32 * 3  # CIFAR-10, where Ilyas et al. chose epsilon 0.5 and step 0.1
DEFAULT_STEPS = {"d_rand": 100, "d_det": 100, "d_nr": 1000, "d_r": 1000}


def check_kind(kind: str) -> str:
    name = str(kind).lower().replace("-", "_")
    if name not in KINDS:
        raise ConfigError(f"unknown construction kind {kind!r}: choose one of {', '.join(KINDS)}")
    return name


AUTO = "auto"  #: epsilon: auto, the smallest budget of a search grid that moves the sample (constructions.budget)


@dataclass(frozen=True)
class BudgetSearch:
    """How `epsilon: auto` picks the budget (constructions.budget.search_budget): the smallest L2 radius on `grid` (in
    the units of epsilon, so scaled like it) at which the source assigns at least `target` of a seeded sample of
    `images` training images to their new label (the relabelled ones), with the PGD step `step_fraction` x the radius
    (0.2: Ilyas et al.'s 0.1 / 0.5, and the quick study's 0.2 / 1.0)."""

    grid: tuple = (0.5, 1.0, 2.0, 4.0)
    target: float = 0.95
    images: int = 256
    step_fraction: float = 0.2

    def __post_init__(self):
        grid = self.grid if isinstance(self.grid, (list, tuple)) else [self.grid]
        try:
            values = tuple(sorted(parse_epsilon(value, "l2") for value in grid))
        except ConfigError:
            values = ()
        if not values or min(values) <= 0 or not all(math.isfinite(v) for v in values):
            raise ConfigError(f"search.grid must list positive L2 budgets, got {self.grid!r}")
        object.__setattr__(self, "grid", values)
        for name, low, high in (("target", 0.0, 1.0), ("step_fraction", 0.0, 1.0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not low < value <= high:
                raise ConfigError(f"search.{name} must lie in ({low:g}, {high:g}], got {value!r}")
        positive_int("search.images", self.images)


@dataclass(frozen=True)
class Settings:
    """How a set is constructed. epsilon and step are L2 sizes at 32x32x3 (Ilyas et al.: 0.5 and 0.1), scaled
    to the image by sqrt(d / 3072) unless scale=False (then they are used as given); steps default to 100
    (PGD) or 1000 (representation matching). epsilon `auto` (D_rand / D_det) chooses the budget per dataset by
    `search` (a BudgetSearch or its fields; the step is then its step_fraction x the budget, so no step is given);
    `at(epsilon)` gives the settings of one budget."""

    epsilon: float | str = 0.5
    step: Optional[float] = None  # None: 0.1, Ilyas et al.'s step
    steps: Optional[int] = None
    scale: bool = True
    random_start: bool = False
    batch_size: int = 256
    search: Optional[BudgetSearch | dict] = None

    def __post_init__(self):
        if self.auto:
            if self.step is not None:
                raise ConfigError(f"with epsilon: auto the step follows the chosen budget (search.step_fraction x "
                                  f"epsilon): give search.step_fraction instead of step {self.step!r}")
            search = self.search if isinstance(self.search, BudgetSearch) else self._search(self.search or {})
            object.__setattr__(self, "search", search)
            object.__setattr__(self, "epsilon", AUTO)
        else:
            if self.search is not None:
                raise ConfigError(f"search picks the budget of epsilon: auto, but epsilon is {self.epsilon!r}: "
                                  "drop search or set epsilon: auto")
            if self.step is None:
                object.__setattr__(self, "step", 0.1)
            for name in ("epsilon", "step"):
                value = getattr(self, name)
                try:
                    number = parse_epsilon(value, "l2")  # numbers, or text such as "0.5" or "128/255"
                except ConfigError:
                    number = -1.0
                if number <= 0:
                    raise ConfigError(f"{name} must be a positive number, got {value!r}"
                                      + (" (or auto: chosen per dataset)" if name == "epsilon" else ""))
                object.__setattr__(self, name, number)
        if self.steps is not None:
            positive_int("steps", self.steps)
        positive_int("batch_size", self.batch_size)

    @staticmethod
    def _search(given) -> BudgetSearch:
        if not isinstance(given, dict) or set(given) - set(BudgetSearch.__dataclass_fields__):
            raise ConfigError(f"search takes {', '.join(BudgetSearch.__dataclass_fields__)}, got {given!r}")
        return BudgetSearch(**given)

    @property
    def auto(self) -> bool:
        """Whether the budget is chosen per dataset (epsilon: auto) rather than given."""
        return isinstance(self.epsilon, str) and self.epsilon.strip().lower() == AUTO

    def at(self, epsilon: float) -> "Settings":
        """These settings at one budget of an `auto` search: that epsilon, the step search.step_fraction x it."""
        return replace(self, epsilon=epsilon, step=self.search.step_fraction * epsilon, search=None)

    def resolved(self, kind: str, image_shape: tuple[int, ...]) -> dict:
        """The sizes actually used on images of shape C x H x W: epsilon (PGD kinds only), step, steps."""
        kind = check_kind(kind)
        if self.auto:
            raise ConfigError("epsilon auto is chosen before the build (constructions.budget.search_budget, then "
                              "Settings.at)")
        factor = math.sqrt(math.prod(image_shape) / REFERENCE_DIM) if self.scale else 1.0
        out = {"step": self.step * factor, "steps": self.steps or DEFAULT_STEPS[kind], "scale_factor": factor}
        if kind in ADVERSARIAL:
            out["epsilon"] = self.epsilon * factor
        return out


@dataclass
class Constructed:
    """A constructed set: float32 N x C x H x W images in [0, 1], their new labels, whether the source model
    assigns each image to its new label, and per-example distances (perturbation or representation)."""

    images: Tensor
    labels: Tensor
    assigned: Tensor
    distances: dict[str, Tensor] = field(default_factory=dict)
    resolved: dict = field(default_factory=dict)
    original_labels: Optional[Tensor] = None

    @property
    def assigned_share(self) -> float:
        return float(self.assigned.float().mean()) if len(self.assigned) else float("nan")

    def stats(self) -> dict:
        """Summary numbers for the sidecar: the assigned share (also among images whose label changed, as a D_rand
        target may be the original class) and mean / min / max of every distance."""
        out = {"assigned_share": self.assigned_share}
        if self.original_labels is not None:
            changed = self.labels != self.original_labels
            out["relabelled"] = int(changed.sum())
            out["assigned_share_relabelled"] = float(self.assigned[changed].float().mean()) if changed.any() else None
        for name, values in self.distances.items():
            out[name] = {"mean": float(values.mean()), "max": float(values.max()), "min": float(values.min())}
        return out


class _Penultimate(nn.Module):
    """The model's penultimate features as a module, so PGD can run on them."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return features(self.model, x)


def _feature_distance(feats: Tensor, target: Tensor) -> Tensor:
    return (feats - target).flatten(1).norm(dim=1)


def _plan(kind: str, labels: Tensor, num_classes: int, seed: int) -> tuple[Tensor, Optional[Tensor]]:
    """(new label per example, start image index per example for matching kinds): drawn once for the whole set,
    so they do not depend on batching or interruption."""
    n = len(labels)
    rng = np.random.default_rng([seed, 0])
    if kind == "d_rand":
        return torch.from_numpy(rng.integers(0, num_classes, n)).long(), None
    if kind == "d_det":
        return (labels + 1) % num_classes, None
    if n < 2:
        raise ConfigError(f"{kind} needs at least 2 images (each starts from another one), got {n}")
    starts = (np.arange(n) + rng.integers(1, n, n)) % n  # another image than itself
    return labels.clone(), torch.from_numpy(starts).long()


def _batch_seed(seed: int, batch: int) -> int:
    return int(np.random.SeedSequence([seed, 1, batch]).generate_state(1)[0])


def _fingerprint(kind, model, images, labels, num_classes, resolved, settings, seed, extra) -> dict:
    """What the parts of a resumable build depend on: a rerun with anything else must not reuse them."""
    digest = hashlib.sha256()
    for tensor in (*model.state_dict().values(), images, labels):
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return {"kind": kind, "n": len(images), "shape": list(images.shape[1:]), "num_classes": num_classes,
            "batch_size": settings.batch_size, "random_start": settings.random_start, "seed": seed,
            "resolved": resolved, "inputs_sha256": digest.hexdigest(), **(extra or {})}


def _claim_parts(parts_dir: Path, fingerprint: dict) -> None:
    """Create the parts folder with its manifest, or check that an existing one was made by the same build."""
    manifest = parts_dir / "manifest.json"
    if manifest.exists():
        try:
            old = json.loads(manifest.read_text())
        except ValueError:
            old = None
        if old != json.loads(json.dumps(fingerprint, default=str)):
            raise ConfigError(
                f"{parts_dir} holds batches of a different build (other settings, seed, model or images): "
                "remove it or pass overwrite to start again"
            )
        return
    parts_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(manifest, fingerprint)


def _save_part(path: Path, part: dict[str, Tensor]) -> None:
    with atomic_write(path, "wb") as handle:
        np.savez(handle, **{k: v.numpy() for k, v in part.items()})


def _load_part(path: Path) -> dict[str, Tensor]:
    with np.load(path) as npz:
        return {k: torch.from_numpy(npz[k]) for k in npz.files}


def _construct_batch(kind, model, x, new_labels, resolved, settings, seed, start_x=None, target_x=None) -> dict:
    """One batch on the model's device: the constructed images, whether the model assigns the new label, and the
    per-example distances (L2 perturbation for PGD kinds; representation distance before and after matching)."""
    if kind in ADVERSARIAL:
        attack = PGD(model, resolved["epsilon"], alpha=resolved["step"], steps=resolved["steps"], norm="l2",
                     random_start=settings.random_start, targeted=True, seed=seed)
        x_new = attack(x, new_labels, target=new_labels)
        distances = {"perturbation_l2": (x_new - x).flatten(1).norm(dim=1)}
    else:
        encoder = _Penultimate(model)
        box = math.sqrt(x[0].numel())  # the L2 diameter of [0, 1]^d: the ball never binds, only the box does
        with torch.no_grad():
            target = encoder.eval()(target_x)
            before = _feature_distance(encoder(start_x), target)
        attack = PGD(encoder, box, alpha=resolved["step"], steps=resolved["steps"], norm="l2",
                     random_start=settings.random_start, targeted=True, loss=_feature_distance, seed=seed)
        x_new = attack(start_x, target, target=target)
        with torch.no_grad():
            after = _feature_distance(encoder(x_new), target)
        distances = {"representation_start": before, "representation_end": after,
                     "representation_ratio": after / before.clamp_min(1e-12)}
    with torch.no_grad():
        assigned = model.eval()(x_new).argmax(1) == new_labels
    part = {"images": x_new.float(), "labels": new_labels, "assigned": assigned, **distances}
    return {k: v.detach().cpu() for k, v in part.items()}


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """The given device (checked), or CUDA when available, else the CPU."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"unknown device {device!r}: use cpu or cuda") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device cuda asked for, but no CUDA GPU is available")
    return device


def build(
    kind: str,
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    num_classes: int,
    settings: Settings = Settings(),
    seed: int = 0,
    parts_dir: str | os.PathLike | None = None,
    device: str | torch.device | None = None,
    progress: bool = True,
    fingerprint: Optional[dict] = None,
) -> Constructed:
    """Construct `kind` from images (N x C x H x W, uint8 or [0, 1] floats) with class labels (N) and a source
    model from `build_model` (moved to `device`). With `parts_dir`, every finished batch is kept there and a rerun skips
    it; each batch is seeded on its own, so the result does not depend on interruptions."""
    kind = check_kind(kind)
    labels = torch.as_tensor(labels)
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1 or labels.is_floating_point():
        raise ConfigError(
            f"constructions need one class index per image, got labels of shape {tuple(labels.shape)}: "
            "multi-label tasks (chestmnist) have no single class to target or relabel"
        )
    labels = labels.long()
    if images.ndim != 4 or len(images) != len(labels):
        raise ConfigError(f"images must be N x C x H x W with N = {len(labels)} labels, got {tuple(images.shape)}")
    if not len(labels):
        raise ConfigError("no images to construct from")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ConfigError(f"labels must lie in [0, {num_classes - 1}]")
    if num_classes < 2:
        raise ConfigError(f"constructions need at least 2 classes, got {num_classes}")
    images = to_unit_range(images).float()
    resolved = settings.resolved(kind, tuple(images.shape[1:]))
    new_labels, starts = _plan(kind, labels, num_classes, seed)

    device = resolve_device(device)
    model = model.to(device).eval()
    parts = Path(parts_dir) if parts_dir is not None else None
    if parts is not None:
        _claim_parts(parts, _fingerprint(kind, model, images, labels, num_classes, resolved, settings, seed,
                                         fingerprint))

    size = settings.batch_size
    results = []
    bar = tqdm(total=len(images), desc=f"constructing {kind}", unit="img", disable=not progress)
    for b, first in enumerate(range(0, len(images), size)):
        index = slice(first, first + size)
        path = parts / f"batch_{b:06d}.npz" if parts is not None else None
        if path is not None and path.exists():
            results.append(_load_part(path))
        else:
            extra = {}
            if starts is not None:
                extra = {"start_x": images[starts[index]].to(device), "target_x": images[index].to(device)}
            part = _construct_batch(kind, model, images[index].to(device), new_labels[index].to(device), resolved,
                                    settings, _batch_seed(seed, b), **extra)
            if path is not None:
                _save_part(path, part)
            results.append(part)
        bar.update(len(results[-1]["labels"]))
    bar.close()
    joined = {k: torch.cat([r[k] for r in results]) for k in results[0]}
    distances = {k: v for k, v in joined.items() if k not in ("images", "labels", "assigned")}
    return Constructed(joined["images"], joined["labels"].long(), joined["assigned"].bool(), distances, resolved,
                       labels.cpu() if kind in ADVERSARIAL else None)
