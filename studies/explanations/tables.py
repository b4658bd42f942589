"""results.md of the explanation study: one line per model (mean ± sd over seeds), the correlation across models,
attack against random noise, and the regularised model's verdicts."""
from __future__ import annotations

from attacks.threat_model import format_epsilon

from ..runner import cell
from .config import Study

def _interval(entry: dict) -> str:
    low, high = entry["ci"]
    return f"{entry['value']:+.3f} [{low:+.3f}, {high:+.3f}]"


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
                  f"| model | training | clean bacc | robust bacc ({attack}) | expl top-k, attack | "
                  "expl top-k, random noise "
                  "| expl Spearman, attack | max-sensitivity | label kept by the attack |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for model in dict.fromkeys(r["model"] for r in sel):
            m = [r for r in sel if r["model"] == model]
            training = m[0]["training"] + (f", beta {m[0]['beta']:g}" if m[0]["beta"] is not None else "")
            lines.append(f"| {model} | {training} | {cell([r['clean_bacc'] for r in m])} | "
                         f"{cell([r['robust_bacc'] for r in m])} | {cell([r['expl_topk'] for r in m])} | "
                         f"{cell([r['expl_topk_random'] for r in m])} | {cell([r['expl_spearman'] for r in m])} | "
                         f"{cell([r['expl_sensmax'] for r in m])} | {cell([r['expl_kept'] for r in m])} |")
        n_expl = sel[0].get("expl_examples")
        lines += ["", f"Explanation measures on {n_expl} test images (top-k intersection with the clean map, 1 = "
                  "unchanged; an example whose label the attack changed counts as 1); robust accuracy on the whole "
                  "test split. The explanation attack differentiates the softplus network (every ReLU -> "
                  "Softplus(beta=10)), as Dombrowski et al. 2019 do; labels and maps are those of the model as given.",
                  ""]
        c = analysis[dataset]["correlation"]
        lines += ["### Correlation across models", "",
                  f"Classification robustness (robust bacc) against explanation robustness (top-k under attack) over "
                  f"{c['n']} models, each the mean over its seeds (a model's seeds are not independent models): "
                  f"Pearson r = {c['pearson']:+.2f} (95% Fisher z interval [{c['pearson_ci'][0]:+.2f}, "
                  f"{c['pearson_ci'][1]:+.2f}]), Spearman rho = {c['spearman']:+.2f} [{c['spearman_ci'][0]:+.2f}, "
                  f"{c['spearman_ci'][1]:+.2f}], permutation p = {c['spearman_p']:.3f}.", "",
                  analysis[dataset]["correlation_verdict"], ""]
        sanity = analysis[dataset]["sanity"]
        lines += ["### Attack vs random noise of the same radius", "", sanity, ""]
        if analysis[dataset]["compare"]:
            lines += ["### The explanation-regularised model", "",
                      "| model - compared with | Δ expl top-k under attack [95% CI] | Δ robust bacc (PGD) [95% CI] "
                      "| verdict |",
                      "|---|---|---|---|"]
            for entry in analysis[dataset]["compare"]:
                expl = _interval(entry["expl"]) if entry.get("expl") else "-"
                adv = _interval(entry["adv"]) if entry.get("adv") else "-"
                lines.append(f"| {entry['a']} - {entry['b']} (seed {entry['seed']}) | {expl} | {adv} "
                             f"| {entry['verdict']} |")
            lines += ["", "Paired bootstrap over the same test examples (1000 resamples); a difference counts as a "
                      "move when its interval excludes 0.", ""]
    return "\n".join(lines) + "\n"
