"""`epsilon: auto`: the construction budget chosen per dataset. A budget that moves 784 grey pixels (PneumoniaMNIST:
the ERM source assigns ~100% of D_rand / D_det images to their new label at L2 1.0) moves only about half of a 5-class
RGB set's 2,352 values, so the smallest radius on a grid at which the source assigns at least a target share of a
seeded sample of training images to their new label is searched, and recorded with that share."""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from torch import nn

from core.errors import ConfigError
from .builder import ADVERSARIAL, Settings, build, check_kind


def search_sample(n: int, size: int, seed: int) -> np.ndarray:
    """The training images the search runs on: `size` of `n` drawn without replacement (all when fewer), sorted,
    seeded by the construction's seed apart from its label draw."""
    rng = np.random.default_rng([seed, 2])
    return np.sort(rng.choice(n, min(size, n), replace=False))


def check_searchable(kind: str) -> str:
    """`kind`, checked to have a PGD budget for epsilon: auto to pick (D_rand, D_det); else one ConfigError."""
    kind = check_kind(kind)
    if kind not in ADVERSARIAL:
        raise ConfigError(f"epsilon: auto picks the PGD budget of {' / '.join(ADVERSARIAL)}; {kind} has none (it "
                          "matches representations inside the image box)")
    return kind


def search_budget(kind: str, model: nn.Module, images: torch.Tensor, labels: torch.Tensor, num_classes: int,
                  settings: Settings, seed: int = 0, device: Optional[str | torch.device] = None) -> dict:
    """The smallest budget of `settings.search.grid` at which the source `model` assigns at least `search.target` of
    the relabelled images of a seeded training sample to their new label (the share Constructed.stats reports, which
    the audit measures again on the written set), each budget's set built exactly as the full one is (same kind,
    seed, steps, step / epsilon). Returns the record the sidecar keeps: the chosen `epsilon`, its `assigned_share`,
    the target, the sample size and every budget tried. No grid budget reaching the target is one ConfigError naming
    the best: a larger budget than the grid allows would carry more of the new label's visible features (leakage),
    and a set whose source mostly keeps the old label is not the set the study describes, so neither is chosen
    silently."""
    kind = check_searchable(kind)
    search = settings.search
    pick = torch.from_numpy(search_sample(len(images), search.images, seed))
    tried = []
    for epsilon in search.grid:
        at = settings.at(epsilon)
        built = build(kind, model, images[pick], labels[pick], num_classes, at, seed=seed, device=device,
                      progress=False)
        stats = built.stats()
        share = stats.get("assigned_share_relabelled")
        if share is None:
            raise ConfigError(f"epsilon: auto: none of the {len(pick)} sampled training images changes its label; "
                              "raise search.images")
        tried.append({"epsilon": epsilon, "resolved_epsilon": built.resolved["epsilon"], "assigned_share": share,
                      "relabelled": stats["relabelled"]})
        if share >= search.target:
            return {"epsilon": epsilon, "step": at.step, "assigned_share": share,
                    "target": search.target, "images": len(pick), "grid": list(search.grid), "tried": tried}
    best = max(tried, key=lambda t: t["assigned_share"])
    raise ConfigError(f"epsilon: auto: no budget on the grid {list(search.grid)} makes the source assign "
                      f"{search.target:.0%} of the relabelled training images to their new label (best: "
                      f"{best['assigned_share']:.1%} at L2 {best['epsilon']:g}, on {len(pick)} sampled images); "
                      "add larger budgets to search.grid or lower search.target")
