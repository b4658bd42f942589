"""A constructed set audited before a model is trained on it: its labels checked against the originals, the source's
assignment of its images to their new label, and robust-feature leakage measured at the construction's own budget.

Leakage (Goh 2019, in the Distill discussion of Ilyas et al.): a perturbation within the budget can carry a little of
the new label's robust (visible) features, and a model trained on D_rand can learn those instead of nonrobust ones.
A model adversarially trained at the construction's own L2 budget (the config's `leakage: MODEL` of a construction)
does not change its answer under any perturbation of that size that only moves nonrobust features, so whatever it reads
of the new label from a constructed image is a robust feature the perturbation put there. It scores every constructed
image: `leakage_share`, the share of the relabelled images (new label != original) it assigns to their new label, and
`leakage_auroc`, its AUROC against the new labels over all constructed images, and `leakage_auroc_original`, the
same on the original images the set was built from (what a robust model reads of the new label before any
perturbation). D_rand draws its labels independently of the images, so without leakage the robust model's AUROC
against them is 0.5 (up to sampling) on either.

Finding 1 for D_rand net of leakage (`auroc_net_of_leakage`): the D_rand model's test AUROC less the leakage
baseline, `auroc - (leakage_auroc - 0.5)`, per seed (the seed redraws source, construction and both models), so it
holds when the D_rand model ranks real test images above chance by more than robust features inside the perturbation
rank the constructed images by their new label. The baseline is what the budget's robust features reveal, not a proven
bound on what a model trained on them reaches on real images; the positive control's amplitude-0 arm (no nonrobust
feature at all) checks that it is large enough (configs/study/positive_control.yaml).

D_det's labels are a function of the original ones ((y + 1) mod C), so its no-leakage AUROC is not 0.5 but what the
robust model reads of the new label on the original images; D_det net of leakage is `auroc - (leakage_auroc -
leakage_auroc_original)`. The four-class positive control (configs/study/positive_control_multiclass.yaml) showed the
need: with no nonrobust feature, a D_det model learned the faint copy of the new class's bar that the perturbation
drew and read the real labels above chance.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch

from core.errors import MedRobustError
from core.files import write_json_atomic

AUDIT_VERSION = 2  # 2: leakage_auroc_original
NET = "auroc_net_of_leakage"  #: the measure (studies.measures.MEASURES) of finding 1 for D_rand net of leakage


class ConstructionBroken(MedRobustError):
    """A constructed set that fails its audit: no model is trained on it."""


def audit_path(npz: Path) -> Path:
    return Path(npz).with_suffix(".audit.json")


def audit(npz: Path, source_checkpoint, leakage_checkpoint=None, batch_size: int = 512) -> dict:
    """The audit of one constructed npz (its sidecar names the official file it was built from): labels equal to the
    originals, the source's and (with `leakage_checkpoint`) the robust model's assignment of the relabelled images to
    their new label, and the robust model's AUROC against the new labels on the constructed and the original images."""
    from constructions.dataset import sidecar_path
    from datamodules.info import dataset_info
    from datamodules.tensors import to_channels_first
    from evaluation.checkpoints import load_module
    from evaluation.scoring import predict

    from ..measures import Scorer

    sidecar = json.loads(sidecar_path(npz).read_text())
    info = dataset_info(sidecar["flag"])
    with np.load(npz) as constructed:
        images, new = constructed["train_images"], constructed["train_labels"].reshape(len(constructed["train_labels"]),
                                                                                         -1)[:, 0].astype(np.int64)
    with np.load(sidecar["official_file"]) as official:
        original = official["train_labels"][:len(new)].reshape(len(new), -1)[:, 0].astype(np.int64)
        unperturbed = official["train_images"][:len(new)]
    x = to_channels_first(images)
    new_t, relabelled = torch.from_numpy(new), torch.from_numpy(new != original)
    k = info.num_classes
    run = dict(task=info.task, num_classes=k, batch_size=batch_size)

    def assigned(model) -> tuple[torch.Tensor, float]:
        p = predict(model, x, **run)
        hit = p.argmax(1) == new_t
        return p, float(hit[relabelled].float().mean()) if relabelled.any() else float("nan")

    out = {"version": AUDIT_VERSION, "kind": sidecar["kind"], "n": len(new), "num_classes": k,
           "labels_agree_with_original": float((new == original).mean()), "relabelled": int(relabelled.sum()),
           "source_assigned_relabelled": assigned(load_module(source_checkpoint))[1]}
    if leakage_checkpoint is not None:
        robust = load_module(leakage_checkpoint)
        p, share = assigned(robust)
        out["leakage_share"] = share
        if len(np.unique(new)) > 1:
            p_original = predict(robust, to_channels_first(unperturbed), **run)
            out["leakage_auroc"] = Scorer(info.task, k, "auroc")(p, new_t)
            out["leakage_auroc_original"] = Scorer(info.task, k, "auroc")(p_original, new_t)
        else:
            out["leakage_auroc"] = out["leakage_auroc_original"] = float("nan")
    return out


def failures(result: dict, require_assigned: bool = False) -> list[str]:
    """What a constructed set must satisfy before a model is trained on it (empty: sound). D_rand's labels are drawn
    independently of the images: they equal the originals at chance, 1 / C (two-sided, |z| > 3.3, p < 0.001); D_det's
    never do. With `require_assigned` (a set whose perturbation must carry its new label, as in the positive control's
    pattern arms), the source assigns the relabelled images to their new label above chance (one-sided, z > 3.1):
    without the perturbation it assigns them to their old one."""
    out = []
    n, k, agree = result["n"], result["num_classes"], result["labels_agree_with_original"]
    chance = 1.0 / k
    if result["kind"] == "d_rand" and abs(agree - chance) > 3.3 * math.sqrt(chance * (1 - chance) / n):
        out.append(f"D_rand's labels equal the original labels on {agree:.1%} of its {n} images; D_rand draws them "
                   f"independently of the originals (chance: {chance:.0%})")
    if result["kind"] == "d_det" and agree > 0:
        out.append(f"D_det's labels equal the original labels on {agree:.1%} of its images; D_det's are (y + 1) mod C")
    relabelled, share = result["relabelled"], result["source_assigned_relabelled"]
    if require_assigned and relabelled and not share - chance > 3.1 * math.sqrt(chance * (1 - chance) / relabelled):
        out.append(f"the source assigns {share:.1%} of the {relabelled} relabelled images to their new label (chance: "
                   f"{chance:.0%}): the perturbation does not carry the new label")
    return out


def audit_step(npz: Path, name: str, spec: dict, trained: dict) -> dict:
    """The audit of construction `name` (kept beside its npz and reused while its models are the same); a broken set
    ends the study in one ConstructionBroken line before any model is trained on it."""
    leakage = spec.get("leakage")
    checkpoints = {"source": trained[spec["source"]]["best_checkpoint"],
                   "leakage": trained[leakage]["best_checkpoint"] if leakage else None}
    path = audit_path(npz)
    result = None
    if path.is_file():
        kept = json.loads(path.read_text())
        if kept.get("checkpoints") == checkpoints and kept.get("version") == AUDIT_VERSION:
            result = kept
    if result is None:
        result = {**audit(npz, checkpoints["source"], checkpoints["leakage"]), "checkpoints": checkpoints,
                  "leakage_model": leakage}
        write_json_atomic(path, result)
    broken = failures(result, bool(spec.get("require_assigned")))
    if broken:
        raise ConstructionBroken(f"constructions.{name} ({npz}) is broken: " + "; ".join(broken)
                                 + "; no model is trained on it")
    return result


def diagnostics(result: dict) -> dict:
    """The audit's results.csv columns (a constructed model's diagnostics)."""
    keys = ("labels_agree_with_original", "source_assigned_relabelled", "leakage_share", "leakage_auroc",
            "leakage_auroc_original")
    return {key: result[key] for key in keys if key in result}


def net_of_leakage(measured: dict, result: dict, kind: str) -> dict:
    """`measured` (pipeline.measure_step) with finding 1's measure net of leakage added: the test AUROC and its draws
    over test examples less the leakage excess (module docstring): `leakage_auroc - 0.5` for D_rand, whose labels are
    independent of the images; `leakage_auroc - leakage_auroc_original` for D_det, whose are not."""
    baseline = result.get("leakage_auroc")
    auroc = measured["measures"].get("auroc")
    null = {"d_rand": 0.5, "d_det": result.get("leakage_auroc_original")}.get(kind)
    if auroc is not None and None not in (baseline, null) and not math.isnan(baseline) and not math.isnan(null):
        excess = baseline - null
        measured["measures"][NET] = {"value": auroc["value"] - excess, "draws": np.asarray(auroc["draws"]) - excess}
    return measured
