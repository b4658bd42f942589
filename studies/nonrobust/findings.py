"""The study's verdicts in plain sentences: finding 1 (nonrobust features alone are useful) from the constructed
models' intervals against chance, finding 2 (adversarial training trades clean accuracy for corruption robustness)
from the robust-minus-standard model's paired intervals."""
from __future__ import annotations

from typing import Optional

from .. import corruption_drop, measures
from ..runner import mean_sd
from .config import ROLES
from .results import column_keys, construction_of, difference_of, ordered_models, title

VERDICT_MEASURES = (("auroc", "AUROC"), ("bacc_recal", "bacc with a threshold fitted on real val"),
                    ("bacc_adabn", "bacc after AdaBN"), ("bacc", "bacc at the default threshold"))
WHY = """## Which measure each verdict uses, and why

- **Finding 1 (nonrobust features alone are useful) is judged on test AUROC** against the real labels (chance
  0.5): whether the model's scores rank real images of one class above the other, whatever its decision threshold.
  A model trained on D_rand / D_det sees only perturbed images (every one moved by the construction's L2 budget), so
  its BatchNorm statistics and its bias fit the constructed set, not clean images; at the default threshold it can
  call nearly every real image one class (balanced accuracy at chance) while ranking them well. That is a shift of
  the operating point, not an absence of useful features. Balanced accuracy is also given at a threshold (per-class
  bias) fitted on the real validation split only, and after AdaBN (BatchNorm statistics re-estimated on unlabeled
  real validation images: no labels, no threshold), each with its own verdict.
- Every verdict is read from the interval, not a fixed margin: **holds** when its lower bound is above chance,
  **does not hold** when its upper bound is not above chance, **undecided at this sample size** when it contains
  chance with room above it (the upper bound says how large an effect the data still allow).
- For D_det, a model that learned the robust (visible) features scores below chance against the real labels and
  above chance against the D_det label `(y + 1) mod C` (`bacc_vs_new_label`)."""


def findings(rows: list[dict], cells: Optional[dict] = None, drops: Optional[dict] = None,
             roles: Optional[dict] = None) -> str:
    """Plain sentences: does each of the study's two findings hold here, read from intervals against chance (and,
    for finding 2, against no difference between the robust and the standard model, `roles`: PGD-AT and ERM)."""
    cells, drops = cells or {}, drops or {}
    out = ["## Findings", ""]
    for d in dict.fromkeys(r["dataset"] for r in rows):
        out += finding_1(rows, cells, d)
        out += finding_2(rows, drops, d, roles or ROLES)
    return "\n".join(out)


def finding_1(rows: list[dict], cells: dict, d: str) -> list[str]:
    """Finding 1 on dataset `d`: each model trained on D_rand or D_det, its test AUROC against chance."""
    out = []
    chance = next(r["chance_bacc"] for r in rows if r["dataset"] == d)
    num_classes = round(1 / chance)
    for model in ordered_models([r for r in rows if r["dataset"] == d]):
        kind = construction_of(rows, model)
        if kind not in ("d_rand", "d_det"):
            continue
        c = cells.get((d, model))
        if not c or "auroc" not in c:
            values = [r["clean_bacc"] for r in rows if r["dataset"] == d and r["model"] == model]
            mean = mean_sd(values)[0]
            out.append(f"- {d}, {model}: test balanced accuracy {mean:.3f} vs chance {chance:.3f} "
                       f"({mean - chance:+.3f}); no per-example measures, so no interval: finding 1 "
                       f"{measures.UNDECIDED}.")
            continue
        head = c["auroc"]
        main = measures.verdict(head["low"], head["high"], 0.5)
        parts = []
        for m, name in VERDICT_MEASURES[1:]:
            if m in c:
                ch = measures.chance_of(m, num_classes)
                parts.append(f"{name} {measures.describe(c[m], ch)} "
                             f"({measures.verdict(c[m]['low'], c[m]['high'], ch)})")
        room = f"; effects up to AUROC {head['high']:.3f} not excluded" if main == measures.UNDECIDED else ""
        out.append(f"- {d}, {model} ({head['seeds']} seed{'s' if head['seeds'] > 1 else ''}): test AUROC "
                   f"{measures.describe(head, 0.5)} vs chance 0.500: **finding 1 (nonrobust features alone are "
                   f"useful) {main}**{room}. Also: " + "; ".join(parts) + ".")
        if kind == "d_det" and "bacc_vs_new_label" in c:
            n = c["bacc_vs_new_label"]
            out.append(f"  Against the D_det label (y + 1) mod C: bacc {measures.describe(n, chance)} "
                       "(a model that learned the robust, visible features would score above chance here).")
    return out


def finding_2(rows: list[dict], drops: dict, d: str, roles: dict) -> list[str]:
    """Finding 2 on dataset `d`: the robust minus the standard model, paired over test examples when their drops
    were measured, else from point estimates."""
    std, rob = title(roles["standard"]), title(roles["robust"])
    standard = [r for r in rows if r["dataset"] == d and r["model"] == roles["standard"]
                and r.get("corr_bacc") is not None]
    robust = [r for r in rows if r["dataset"] == d and r["model"] == roles["robust"] and r.get("corr_bacc") is not None]
    paired = drops.get((d, difference_of(roles)))
    if paired:
        everything = f"corr_drop@{corruption_drop.ALL}"
        gain, clean = paired[everything], paired["clean_bacc"]
        absolute = paired[f"corr_bacc@{corruption_drop.ALL}"]
        verdict = measures.verdict(gain["low"], gain["high"], 0.0)
        cost = measures.verdict(-clean["high"], -clean["low"], 0.0)
        families = [key.condition for key in column_keys(paired, "corr", "drop") if key.unstaged() != everything]
        wins = [f for f in families if paired[f"corr_drop@{f}"]["low"] > 0]
        losses = [f for f in families if paired[f"corr_drop@{f}"]["high"] < 0]
        return [f"- {d}, {rob} - {std} ({gain['seeds']} seed{'s' if gain['seeds'] > 1 else ''}, paired over "
                f"test examples): clean bacc {measures.describe(clean, 0.0)} (a clean cost: {cost}); "
                f"corrupted minus round-tripped clean {measures.describe(gain, 0.0)} over all corruptions "
                f"(**{rob} loses less under corruption: {verdict}**); corrupted bacc "
                f"{measures.describe(absolute, 0.0)}. Families where {rob} loses less: "
                f"{', '.join(wins) or 'none'}; more: {', '.join(losses) or 'none'}. Finding 2 (AT trades clean "
                f"accuracy for corruption robustness) is read from these two verdicts."]
    if standard and robust:
        ce, ca = mean_sd([r["clean_bacc"] for r in standard])[0], mean_sd([r["clean_bacc"] for r in robust])[0]
        me, ma = mean_sd([r["corr_bacc"] for r in standard])[0], mean_sd([r["corr_bacc"] for r in robust])[0]
        verdict = "holds" if ca <= ce and ma > me else ("partly holds" if ma > me else "does not hold")
        return [f"- {d}, {std} -> {rob}: clean {ce:.3f} -> {ca:.3f} ({ca - ce:+.3f}), MedMNIST-C {me:.3f} -> "
                f"{ma:.3f} ({ma - me:+.3f}): finding 2 (AT trades clean accuracy for corruption robustness) "
                f"{verdict} (point estimates; no interval over test examples for MedMNIST-C yet)."]
    return []
