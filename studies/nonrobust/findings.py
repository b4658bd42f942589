"""The study's verdicts in plain sentences: one per pre-registered primary endpoint (studies.nonrobust.endpoints:
Holm-adjusted across all of them), whichever way it falls; every other number is stated as descriptive, against
chance (balanced accuracy 1 / C, AUROC 0.5) or against no difference."""
from __future__ import annotations

import math
from typing import Optional

from .. import corruption_drop, measures
from ..runner import mean_sd
from . import endpoints as ep
from .config import ROLES, Study
from .results import column_keys, construction_of, difference_of, matched_accuracy, ordered_models, title

DESCRIPTIVE_MEASURES = (("auroc", "AUROC"), ("auroc_net_of_leakage", "AUROC net of leakage"),
                        ("bacc_recal", "bacc with a threshold fitted on real val"),
                        ("bacc_adabn", "bacc after AdaBN"), ("bacc", "bacc at the default threshold"))
#: a descriptive reading of an unadjusted interval: words that are not verdicts
READING = {measures.HOLDS: "above chance", measures.NOT_HOLDS: "not above chance",
           measures.UNDECIDED: "interval contains chance"}
BINARY_D_DET = ("On a binary task (y + 1) mod 2 = 1 - y, so balanced accuracy against the D_det label is 1 - balanced "
                "accuracy against the real one: it repeats that measure and is no evidence that D_det ignored the "
                "visible features (finding 1 for D_det is judged on the real labels only).")
WHY = """## Which measure each verdict uses, and why

- **Verdicts are given for the pre-registered primary endpoints only** (the config's `endpoints.primary`, or the
  defaults where it names none, stated with the endpoints): finding 1 on each D_rand / D_det model's test AUROC
  against the real labels (chance 0.5) at its last epoch, finding 2 on absolute corrupted balanced accuracy, PGD-AT
  minus ERM, paired by seed (0: no difference). Holm's correction runs across every primary endpoint of every
  dataset; every other number in this file is descriptive.
- Why AUROC for finding 1: a model trained on D_rand / D_det sees only perturbed images, so its BatchNorm statistics
  and its bias fit the constructed set; at the default threshold it can call nearly every real image one class
  (balanced accuracy at chance) while ranking them well. Balanced accuracy is also given at a threshold (per-class
  bias) fitted on the real validation split only, and after AdaBN, as descriptive numbers.
- A verdict reads the Holm-adjusted p-value of the test dual to the interval (two-sided t test over seeds; with one
  seed, the bootstrap over test examples): **holds** when it is at most 1 - level with the estimate above chance (or
  above 0), **does not hold** when it is so with the estimate below, **undecided at this sample size** otherwise (the
  interval's upper bound says how large an effect the data still allow).
- For D_det with C > 2 classes, a model that learned the robust (visible) features scores below chance against the
  real labels and above chance against the D_det label `(y + 1) mod C` (`bacc_vs_new_label`). """ + BINARY_D_DET


def plan_from_rows(rows: list[dict], drops: dict, roles: dict) -> dict:
    """The default endpoints of results without a study config (studies.nonrobust.endpoints.default_primary)."""
    kinds = {m: construction_of(rows, m) for m in ordered_models(rows)}
    name = difference_of(roles)
    finding_2 = name if any(key[1] == name for key in drops) else None
    return ep.check_endpoints(None, kinds, {name: "roles"} if finding_2 else {}, finding_2)


def findings(rows: list[dict], cells: Optional[dict] = None, drops: Optional[dict] = None,
             roles: Optional[dict] = None, study: Optional[Study] = None) -> str:
    """The primary endpoints' verdicts (Holm-adjusted), then per dataset every other finding-1 and finding-2 number,
    labelled descriptive (`roles`: finding 2's robust and standard model, PGD-AT and ERM by default)."""
    cells, drops = cells or {}, drops or {}
    roles = roles or (study.roles if study else ROLES)
    level = study.statistics["level"] if study else 0.95
    plan = study.endpoints if study else plan_from_rows(rows, drops, roles)
    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    classes = {d: round(1 / next(r["chance_bacc"] for r in rows if r["dataset"] == d)) for d in datasets}
    results = ep.evaluate(plan, datasets, classes, cells, drops, level)
    out = ["## Findings", "", *primary_section(results, plan, level)]
    curve = study.matched_accuracy if study else []
    for d in datasets:
        out += ["", f"### {d}: descriptive (no verdicts)", ""]
        out += finding_1(rows, cells, d)
        out += finding_2(rows, drops, d, roles)
        if curve:
            out += matched_sentence(matched_accuracy(rows, d, roles["standard"], curve, level), roles)
    return "\n".join(out)


def primary_section(results: list[dict], plan: dict, level: float) -> list[str]:
    """The primary endpoints: where they come from, the correction, and one verdict sentence each."""
    measured = sum(1 for r in results if r["cell"])
    source = ("named in the config (`endpoints.primary`)" if plan["declared"] else
              "the defaults (the config names none): test AUROC of each D_rand / D_det model at its last epoch, and "
              "absolute corrupted balanced accuracy of the robust minus the standard model over all corruptions")
    if plan["correction"] == "holm":
        how = (f"Holm's correction across the {measured} measured endpoint{'s' if measured != 1 else ''} (family-wise "
               f"error {1 - level:.2f}), on the p-values of the tests dual to the intervals")
    else:
        how = "no correction for multiple endpoints (`endpoints.correction: none`)"
    out = ["### Primary endpoints: the only verdicts", "",
           f"Endpoints: {source}. Verdicts read {how}; each interval is the unadjusted {level:.0%} interval.", ""]
    for r in results:
        e, d = r["endpoint"], r["dataset"]
        name = title(e.model) if " - " not in e.model else " - ".join(title(m) for m in e.model.split(" - "))
        what = f"finding {e.finding} ({ep.FINDINGS[e.finding]})" if e.finding else "the endpoint"
        label = ep.measure_label(e.measure)
        if not r["cell"]:
            out.append(f"- {d}, {name}: {label}: not measured in this run, so no verdict on {what}.")
            continue
        c, null = r["cell"], r["null"]
        against = f"chance {null:.3f}" if " - " not in e.model and not e.measure.startswith("corr_drop") else "0"
        room = (f"; effects up to {c['high']:.3f} not excluded" if r["verdict"] == measures.UNDECIDED
                and not math.isnan(c["high"]) else "")
        adjusted = f", Holm-adjusted p = {r['p_adjusted']:.3g}" if plan["correction"] == "holm" else ""
        out.append(f"- {d}, {name} ({c['seeds']} seed{'s' if c['seeds'] > 1 else ''}): {label} "
                   f"{measures.describe(c, null)} vs {against} (p = {r['p']:.3g}{adjusted}): **{what} "
                   f"{r['verdict']}**{room}.")
    return out


def finding_1(rows: list[dict], cells: dict, d: str) -> list[str]:
    """Finding 1 on dataset `d`, descriptive: each model trained on D_rand or D_det, every measure against chance."""
    out = []
    chance = next(r["chance_bacc"] for r in rows if r["dataset"] == d)
    num_classes = round(1 / chance)
    for model in ordered_models([r for r in rows if r["dataset"] == d]):
        kind = construction_of(rows, model)
        if kind not in ep.FINDING_1_KINDS:
            continue
        c = cells.get((d, model))
        if not c or "auroc" not in c:
            values = [r["clean_bacc"] for r in rows if r["dataset"] == d and r["model"] == model]
            mean = mean_sd(values)[0]
            out.append(f"- {d}, {model}: test balanced accuracy {mean:.3f} vs chance {chance:.3f} "
                       f"({mean - chance:+.3f}); no per-example measures, so no interval: finding 1 "
                       f"{measures.UNDECIDED}.")
            continue
        parts = []
        for m, name in DESCRIPTIVE_MEASURES:
            if m in c:
                ch = measures.chance_of(m, num_classes)
                parts.append(f"{name} {measures.describe(c[m], ch)} vs chance {ch:.3f} "
                             f"({READING[measures.verdict(c[m]['low'], c[m]['high'], ch)]})")
        seeds = c["auroc"]["seeds"]
        out.append(f"- {d}, {model} ({seeds} seed{'s' if seeds > 1 else ''}, descriptive, unadjusted intervals): "
                   + "; ".join(parts) + ".")
        if kind == "d_det" and "bacc_vs_new_label" in c:
            n = c["bacc_vs_new_label"]
            if num_classes == 2:
                out.append(f"  Against the D_det label: bacc {measures.describe(n, chance)}. {BINARY_D_DET}")
            else:
                out.append(f"  Against the D_det label (y + 1) mod {num_classes}: bacc {measures.describe(n, chance)} "
                           f"vs chance {chance:.3f} ({READING[measures.verdict(n['low'], n['high'], chance)]}; a "
                           "model that learned the robust, visible features would score above chance here).")
    return out


def finding_2(rows: list[dict], drops: dict, d: str, roles: dict) -> list[str]:
    """Finding 2 on dataset `d`, descriptive: the robust minus the standard model, paired by seed (and over test
    examples within a seed) when their drops were measured, else from point estimates; each model against chance."""
    std, rob = title(roles["standard"]), title(roles["robust"])
    paired = drops.get((d, difference_of(roles)))
    chance = next(r["chance_bacc"] for r in rows if r["dataset"] == d)
    if paired:
        everything = f"corr_drop@{corruption_drop.ALL}"
        gain, clean = paired[everything], paired["clean_bacc"]
        families = [key.condition for key in column_keys(paired, "corr", "drop") if key.unstaged() != everything]
        wins = [f for f in families if paired[f"corr_drop@{f}"]["low"] > 0]
        losses = [f for f in families if paired[f"corr_drop@{f}"]["high"] < 0]
        out = [f"- {d}, {rob} - {std} ({gain['seeds']} seed{'s' if gain['seeds'] > 1 else ''}, paired by seed and "
               f"over test examples; descriptive): clean bacc {measures.describe(clean, 0.0)}; corrupted minus "
               f"round-tripped clean (the drop beside the primary estimand) {measures.describe(gain, 0.0)} over all "
               f"corruptions. Families whose drop interval lies above 0 ({rob} loses less): "
               f"{', '.join(wins) or 'none'}; below 0: {', '.join(losses) or 'none'}."]
        for model in (roles["standard"], roles["robust"]):
            own = drops.get((d, model)) or {}
            absolute = own.get(f"corr_bacc@{corruption_drop.ALL}")
            if "clean_bacc" in own and absolute:
                near = own["clean_bacc"]["low"] <= chance  # its clean interval reaches chance: little left to lose
                out.append(f"  {title(model)}: clean bacc {measures.describe(own['clean_bacc'], chance)}, corrupted "
                           f"{measures.describe(absolute, chance)} vs chance {chance:.3f}"
                           + (" (clean at chance: it cannot lose much under corruption, a floor effect, not "
                              "robustness)." if near else "."))
        return out
    standard = [r for r in rows if r["dataset"] == d and r["model"] == roles["standard"]
                and r.get("corr_bacc") is not None]
    robust = [r for r in rows if r["dataset"] == d and r["model"] == roles["robust"] and r.get("corr_bacc") is not None]
    if standard and robust:
        ce, ca = mean_sd([r["clean_bacc"] for r in standard])[0], mean_sd([r["clean_bacc"] for r in robust])[0]
        me, ma = mean_sd([r["corr_bacc"] for r in standard])[0], mean_sd([r["corr_bacc"] for r in robust])[0]
        return [f"- {d}, {std} -> {rob}: clean {ce:.3f} -> {ca:.3f} ({ca - ce:+.3f}), MedMNIST-C {me:.3f} -> "
                f"{ma:.3f} ({ma - me:+.3f}), chance {chance:.3f}: point estimates only (descriptive; no per-example "
                "corruption measures, so no interval and no verdict on finding 2)."]
    return []


def matched_sentence(matched: dict, roles: dict) -> list[str]:
    """Finding 2 at matched clean accuracy, descriptive: the robust curve read at the standard model's clean
    balanced accuracy, or "not reachable" where that accuracy lies outside the curve's range."""
    std = title(roles["standard"])
    per_seed, curve = matched["per_seed"], matched["curve"]
    if not per_seed or len(curve) < 2:
        return []
    unreachable = [str(s) for s, v in per_seed.items() if v is None]
    head = (f"- At matched clean accuracy (descriptive): the curve of {', '.join(curve)} (increasing training epsilon) "
            f"read at {std}'s clean balanced accuracy, minus {std}'s corrupted balanced accuracy")
    if len(unreachable) == len(per_seed):
        return [head + f": not reachable ({std}'s clean balanced accuracy lies outside the curve's range at every "
                "seed)."]
    c = matched["cell"]
    interval = f" [{c['low']:.3f}, {c['high']:.3f}]" if c["seeds"] > 1 else ""
    plural = "s" if len(unreachable) > 1 else ""
    tail = f"; not reachable at seed{plural} {', '.join(unreachable)}" if unreachable else ""
    return [head + f": {c['mean']:+.3f}{interval} over {c['seeds']} seed{'s' if c['seeds'] > 1 else ''}{tail}."]
