"""The gradient-masking screen of an entry: PGD with many steps and restarts beside AutoAttack at every epsilon, and
PGD at a budget so large that every image can reach the same grey image (L-inf 128/255), where a model whose
predictions come from its gradients' honest use must fall to chance. What it finds are flags, not verdicts."""
from __future__ import annotations

from typing import Any

from datamodules.info import MULTILABEL
from lightning_modules.metrics import MetricKey

METRIC = "bacc"


def chance_bacc(task: str, num_classes: int) -> float:
    """Balanced accuracy of a constant prediction: 1/C for single-label heads, 0.5 per label for multi-label."""
    return 0.5 if task == MULTILABEL else 1.0 / num_classes


def masking_screen(threats: dict[str, dict[str, dict]], large: dict[str, Any], chance: float,
                   settings: dict[str, Any]) -> dict[str, Any]:
    """{'checks': [...], 'flags': [...], ...} from the scored sets `threats[norm]['pgd' | 'autoattack'][label]`, the
    large-epsilon PGD scores `large` and the chance balanced accuracy; tolerances from the protocol's `screen`."""
    checks, flags = [], []
    for norm, sections in threats.items():
        for label, pgd in sections["pgd"].items():
            aa = sections["autoattack"].get(label)
            if aa is None:
                continue
            gap = pgd[METRIC] - aa[METRIC]
            check = {"norm": norm, "epsilon": label, "pgd": pgd[METRIC], "autoattack": aa[METRIC], "gap": gap,
                     "key": str(MetricKey("test", "aa", METRIC, label))}
            checks.append(check)
            where = f"{norm} {label}: PGD {METRIC} {pgd[METRIC]:.4f}, AutoAttack {aa[METRIC]:.4f}"
            if gap > settings["pgd_above_aa"]:
                flags.append(f"{where}: PGD is {gap:.4f} above AutoAttack (tolerance {settings['pgd_above_aa']}); "
                             "PGD's gradients may be masked")
            if -gap > settings["aa_above_pgd"]:
                flags.append(f"{where}: AutoAttack is {-gap:.4f} above PGD (tolerance {settings['aa_above_pgd']}); "
                             "AutoAttack should be the stronger attack")
    reached = large[METRIC]
    if reached > chance + settings["chance_margin"]:
        flags.append(f"linf {large['label']}: PGD leaves {METRIC} {reached:.4f}, above chance {chance:.4f} + "
                     f"{settings['chance_margin']}: at this budget every image can reach the same grey image")
    return {"metric": METRIC, "chance": chance, "large_epsilon": large, "checks": checks, "flags": flags}
