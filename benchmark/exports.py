"""An entry as the ecosystem reads it: RobustBench's `model_info/<dataset>/<threat>/<name>.json` (its field names,
percentages as strings, eps as "8/255", ours beside under `medrobust`) and a Hugging Face model card (`README.md` with
a `model-index` block: task, dataset with split, metrics with type and value)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import yaml

from benchmark.entry import Entry
from benchmark.scores import THREAT_NAMES, row
from core.files import write_json_atomic, write_text_atomic
from datamodules.info import dataset_info

MODEL_INFO = "model_info"
MODEL_CARDS = "model_cards"
CORRUPTIONS = "corruptions"


def _percent(value: Optional[float]) -> Optional[str]:
    return None if value is None else f"{100 * value:.2f}"


def dataset_name(entry: Entry) -> str:
    flag, size = entry.dataset
    return f"{flag}_{size}"


def model_info(entry: Entry, threat: str) -> dict[str, Any]:
    """RobustBench's model_info for one threat model (`Linf`, `L2` or `corruptions`); `medrobust` holds the balanced
    accuracies, the protocol version and the screen's flags."""
    norm = {v: k for k, v in THREAT_NAMES.items()}.get(threat)
    scores = row(entry, norm or entry.record.threat_model["norm"])
    model = entry.block.get("model", {})
    info: dict[str, Any] = {
        "name": entry.name, "link": None, "authors": None, "venue": None, "reported": None,
        "architecture": model.get("architecture"), "additional_data": bool(entry.block.get("additional_data")),
        "number_forward_passes": scores["forward_passes"], "dataset": dataset_name(entry),
        "clean_acc": _percent(scores["clean_acc"]),
        "footnote": None if entry.standard else "non-standard evaluation: " + "; ".join(entry.block["nonstandard"]),
    }
    ours = {"protocol": entry.protocol_label, "standard": entry.standard, "clean_bacc": scores["clean_bacc"],
            "clean_auroc": scores["clean_auroc"], "screen_flags": entry.flags, "n_examples": scores["n_examples"]}
    if norm is None:
        info.update(eps=None, corruptions_acc=_percent(scores["corr_bacc"]))
        ours.update(corruptions_metric="balanced accuracy (MedMNIST-C, mean over corruptions and severities)",
                    corr_bacc=scores["corr_bacc"], corr_be=scores["corr_be"], corr_rbe=scores["corr_rbe"],
                    corr_mce=scores["corr_mce"], mce_baseline=entry.block.get("mce_baseline"))
    else:
        info.update(eps=scores["eps"], autoattack_acc=_percent(scores["aa_acc"]))
        ours.update(autoattack_bacc=scores["aa_bacc"],
                    per_epsilon={e["eps"]: {k: e[k] for k in ("aa_bacc", "aa_acc", "pgd_bacc", "pgd_acc")}
                                 for e in scores["epsilons"]})
    info["medrobust"] = ours
    return info


def threats(entry: Entry) -> list[str]:
    out = [THREAT_NAMES[norm] for norm in entry.norms()]
    return out + ([CORRUPTIONS] if entry.record.corruptions else [])


def model_card(entry: Entry) -> str:
    """A Hugging Face model card: YAML front matter with `model-index`, then a short text with the numbers."""
    flag, size = entry.dataset
    pretty = dataset_info(flag).flag
    dataset = {"name": f"{pretty} ({size} px)", "type": f"medmnist/{flag}", "config": str(size), "split": "test"}
    metrics = []
    clean = row(entry, entry.record.threat_model["norm"])
    for metric, kind in (("bacc", "balanced_accuracy"), ("acc", "accuracy"), ("auroc", "roc_auc")):
        if clean[f"clean_{metric}"] is not None:
            metrics.append({"type": kind, "value": round(clean[f"clean_{metric}"], 4), "name": f"clean {kind}"})
    for norm in entry.norms():
        scores = row(entry, norm)
        for eps in scores["epsilons"]:
            for metric, kind in (("bacc", "balanced_accuracy"), ("acc", "accuracy")):
                value = eps[f"aa_{metric}"]
                if value is not None:
                    metrics.append({"type": f"robust_{kind}", "value": round(value, 4),
                                    "name": f"AutoAttack {kind} {THREAT_NAMES[norm]} {eps['eps']}",
                                    "args": {"threat_model": THREAT_NAMES[norm], "epsilon": eps["eps"]}})
    if clean["corr_bacc"] is not None:
        metrics.append({"type": "corruption_balanced_accuracy", "value": round(clean["corr_bacc"], 4),
                        "name": "MedMNIST-C balanced accuracy"})
    task = {"type": "image-classification", "name": "Image Classification"}
    front = {"tags": ["medrobust", "medmnist", "adversarial-robustness"], "library_name": "pytorch",
             "datasets": [f"medmnist/{flag}"],
             "model-index": [{"name": entry.name, "results": [{"task": task, "dataset": dataset, "metrics": metrics}]}]}
    lines = [f"# {entry.name}", "",
             f"{clean['model'].get('class')} ({clean['model'].get('architecture')}) on {pretty} at {size} px, "
             f"evaluated under the medrobust benchmark protocol `{entry.protocol_label}`"
             + ("" if entry.standard else " (non-standard: " + "; ".join(entry.block["nonstandard"]) + ")") + ".", "",
             "| metric | value |", "|---|---|"]
    lines += [f"| {m['name']} | {m['value']:.4f} |" for m in metrics]
    if entry.flags:
        lines += ["", "Gradient-masking screen:", *[f"- {flag}" for flag in entry.flags]]
    return "---\n" + yaml.safe_dump(front, sort_keys=False) + "---\n\n" + "\n".join(lines) + "\n"


def write_exports(entry: Entry, out: Path) -> list[Path]:
    """`OUT/model_info/<flag>_<size>/<threat>/<name>.json` per threat model and `OUT/model_cards/<name>/README.md`."""
    paths = [write_json_atomic(out / MODEL_INFO / dataset_name(entry) / threat / f"{entry.name}.json",
                               model_info(entry, threat)) for threat in threats(entry)]
    paths.append(write_text_atomic(out / MODEL_CARDS / entry.name / "README.md", model_card(entry)))
    return paths
