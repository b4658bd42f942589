"""results.md of the explanation study: one line per model (mean ± sd over seeds) with PGD and AutoAttack side by
side, PGD against AutoAttack (the gradient-masking flag), the correlation across models, attack against random
noise, and the regularised model's verdicts."""
from __future__ import annotations

from attacks.threat_model import format_epsilon

from ..runner import cell
from .config import Study

def _interval(entry: dict) -> str:
    low, high = entry["ci"]
    return f"{entry['value']:+.3f} [{low:+.3f}, {high:+.3f}]"


def _attacks(rows: list[dict]) -> str:
    return ", ".join(dict.fromkeys(r.get("aa_attacks") or "?" for r in rows)).replace("+", " + ")


def _examples(rows: list[dict]) -> str:
    counts = sorted({r.get("aa_examples") for r in rows if r.get("aa_examples") is not None})
    return " / ".join(str(c) for c in counts) + " test images" if counts else "an unknown number of test images"


def _masking_section(masking: list[dict], study: Study) -> list[str]:
    """PGD against AutoAttack per model: AutoAttack below PGD is expected; PGD above AutoAttack by more than the
    margin flags the model (possible gradient masking), the regularised models named on their own."""
    margin = study.autoattack["masking_margin"]
    lines = ["### PGD against AutoAttack", "",
             f"| model | robust bacc, PGD | robust bacc, AutoAttack | PGD - AutoAttack | largest over seeds | "
             f"flag (PGD - AutoAttack > {margin:g}) |", "|---|---|---|---|---|---|"]
    for m in masking:
        flag = "**possible gradient masking**" if m["flagged"] else "-"
        lines.append(f"| {m['model']} | {m['pgd']:.3f} | {m['aa']:.3f} | {m['gap']:+.3f} | {m['max_seed_gap']:+.3f} "
                     f"| {flag} |")
    flagged = [m["model"] for m in masking if m["flagged"]]
    above = [m["model"] for m in masking if m["order"] == "AutoAttack above PGD"]
    lines += ["", f"AutoAttack is the stronger attack, so its robust bacc is expected at or below PGD's: below for "
              f"{sum(m['order'] == 'AutoAttack below PGD' for m in masking)} of {len(masking)} models, equal for "
              f"{sum(m['order'] == 'AutoAttack equal to PGD' for m in masking)}"
              + (f", above for {', '.join(above)} (PGD found adversarial examples AutoAttack missed)" if above else "")
              + ". " + (f"Flagged (PGD exceeds AutoAttack by more than {margin:g}: PGD overestimates their robustness, "
                        f"possibly by gradient masking): {', '.join(flagged)}." if flagged else
                        f"No model's PGD number exceeds its AutoAttack number by more than {margin:g}.")]
    for name in study.compare:
        m = next((m for m in masking if m["model"] == name), None)
        if m is not None:
            verdict = ("**flagged, possible gradient masking**: read its classification robustness on AutoAttack "
                       "only." if m["flagged"] else "within the margin, no sign of gradient masking at this radius.")
            lines += ["", f"The regularised model {name}: PGD {m['pgd']:.3f}, AutoAttack {m['aa']:.3f} "
                      f"({m['gap']:+.3f}): {verdict}"]
    return lines + [""]


def results_markdown(rows: list[dict], analysis: dict, study: Study) -> str:
    """The study's table (one line per model, mean ± sd over seeds), the correlation and the verdicts."""
    eps = format_epsilon(study.epsilon)
    seeds = sorted({r["seed"] for r in rows})
    norm = {"linf": "L-inf", "l2": "L2"}[study.norm]
    lines = [f"# Classification vs explanation robustness at {norm} {eps} (mean ± sd over seeds {seeds})", "",
             f"Study `{study.name}` ({study.source.name}); explanation method {study.explanation['method']}, top "
             f"{study.explanation['k']} pixels, explanation attack {study.explanation['steps']} steps.", ""]
    for dataset in dict.fromkeys(r["dataset"] for r in rows):
        sel = [r for r in rows if r["dataset"] == dataset]
        attack = sel[0]["robust_attack"]
        lines += [f"## {dataset}", "",
                  f"| model | training | clean bacc | robust bacc, PGD | robust bacc, AutoAttack ({_attacks(sel)}) "
                  "| expl top-k, attack | expl top-k, random noise "
                  "| expl Spearman, attack | max-sensitivity | label kept by the attack |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for model in dict.fromkeys(r["model"] for r in sel):
            m = [r for r in sel if r["model"] == model]
            training = m[0]["training"] + (f", beta {m[0]['beta']:g}" if m[0]["beta"] is not None else "")
            lines.append(f"| {model} | {training} | {cell([r['clean_bacc'] for r in m])} | "
                         f"{cell([r['adv_bacc'] for r in m])} | {cell([r['aa_bacc'] for r in m])} | "
                         f"{cell([r['expl_topk'] for r in m])} | "
                         f"{cell([r['expl_topk_random'] for r in m])} | {cell([r['expl_spearman'] for r in m])} | "
                         f"{cell([r['expl_sensmax'] for r in m])} | {cell([r['expl_kept'] for r in m])} |")
        n_expl = sel[0].get("expl_examples")
        lines += ["", f"Explanation measures on {n_expl} test images (top-k intersection with the clean map, 1 = "
                  "unchanged; an example whose label the attack changed counts as 1); PGD robust accuracy on the whole "
                  f"test split, AutoAttack's on {_examples(sel)}. The explanation attack differentiates the softplus "
                  "network (every ReLU -> Softplus(beta=10)), as Dombrowski et al. 2019 do; labels and maps are those "
                  "of the model as given.", ""]
        lines += _masking_section(analysis[dataset]["masking"], study)
        c = analysis[dataset]["correlation"]
        lines += ["### Correlation across models", "",
                  f"Classification robustness (robust bacc, {attack}) against explanation robustness (top-k under "
                  f"attack) over {c['n']} models, each the mean over its seeds (a model's seeds are not independent "
                  "models): "
                  f"Pearson r = {c['pearson']:+.2f} (95% Fisher z interval [{c['pearson_ci'][0]:+.2f}, "
                  f"{c['pearson_ci'][1]:+.2f}]), Spearman rho = {c['spearman']:+.2f} [{c['spearman_ci'][0]:+.2f}, "
                  f"{c['spearman_ci'][1]:+.2f}], permutation p = {c['spearman_p']:.3f}.", "",
                  analysis[dataset]["correlation_verdict"], ""]
        sanity = analysis[dataset]["sanity"]
        lines += ["### Attack vs random noise of the same radius", "", sanity, ""]
        if analysis[dataset]["compare"]:
            lines += ["### The explanation-regularised model", "",
                      "| model - compared with | Δ expl top-k under attack [95% CI] "
                      "| Δ robust bacc (AutoAttack) [95% CI] | Δ robust bacc (PGD) [95% CI] | verdict |",
                      "|---|---|---|---|---|"]
            for entry in analysis[dataset]["compare"]:
                expl, aa, adv = (_interval(entry[k]) if entry.get(k) else "-" for k in ("expl", "aa", "adv"))
                lines.append(f"| {entry['a']} - {entry['b']} (seed {entry['seed']}) | {expl} | {aa} | {adv} "
                             f"| {entry['verdict']} |")
            lines += ["", f"Paired bootstrap over the same test examples ({study.bootstrap} resamples); a difference "
                      "counts as a move when its interval excludes 0. Classification robustness is judged on "
                      "AutoAttack (the stronger attack), PGD beside it.", ""]
    return "\n".join(lines) + "\n"
