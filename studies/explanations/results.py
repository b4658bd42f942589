"""The explanation study's results: one results.csv row per model, the correlation across models of the two
robustness measures, the regularised model's paired differences, and the verdicts."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Optional

import numpy as np

from attacks.threat_model import epsilon_label, format_epsilon
from core.errors import ConfigError
from datamodules.info import dataset_info
from evaluation.layout import RunLayout
from evaluation.record import read_record
from lightning_modules.metrics import MetricKey
from lightning_modules.registry import method_of_class

from ..runner import mean_sd
from .config import EXPLANATION_AXIS, Study

def _model_kind(spec: dict) -> tuple[str, Optional[float]]:
    """(training method as lightning_modules.registry names it, TRADES beta) of a model spec, from its config and
    overrides; a method with the explanation penalty is expl_reg(METHOD)."""
    import yaml

    config = yaml.safe_load(Path(spec["config"]).read_text()) or {}
    model = config.get("model") or {}
    args = {**(model.get("init_args") or {}),
            **{k.removeprefix("model.init_args."): v for k, v in (spec.get("overrides") or {}).items()
               if k.startswith("model.init_args.")}}
    kind = method_of_class(str((spec.get("overrides") or {}).get("model.class_path", model.get("class_path", ""))))
    if kind == "expl_reg":
        kind = f"expl_reg({args.get('base', 'erm')})"
    elif any("ExplanationPenalty" in str(term) for term in args.get("loss_terms") or ()):
        kind = f"expl_reg({kind})"  # a method's config that adds the penalty as a loss term
    beta = args.get("beta", 6.0) if "trades" in kind else None
    return kind, beta


def result_row(dataset: dict, model: str, spec: dict, seed: int, summary: dict, epsilon: float) -> dict:
    """One results.csv row: clean and robust accuracy and the explanation measures from the model's report."""
    info = dataset_info(dataset["flag"])
    kind, beta = _model_kind(spec)
    label = epsilon_label(epsilon)
    record = read_record(summary["report"]) if summary.get("report") else None
    tested = record.metrics() if record is not None else {}
    row: dict[str, Any] = {"dataset": info.flag, "size": dataset.get("size", 28), "model": model, "training": kind,
                           "beta": beta, "seed": seed, "epsilon": format_epsilon(epsilon),
                           "clean_bacc": tested.get(MetricKey("test", "clean", "bacc"))}
    aa = record.autoattack.get(label) if record is not None else None
    row["adv_bacc"] = tested.get(MetricKey("test", "adv", "bacc", label))
    row["aa_bacc"] = tested.get(MetricKey("test", "aa", "bacc", label))
    if row["aa_bacc"] is None:
        raise ConfigError(f"{info.flag} {model} seed {seed}: {summary.get('report')} has no AutoAttack number at "
                          f"{format_epsilon(epsilon)}: the study attacks every model with AutoAttack (its autoattack "
                          "block); delete that step folder to test it again")
    row["aa_examples"] = (aa.settings.get("info") or {}).get("n_examples") if aa else None
    row["aa_attacks"] = "+".join((aa.settings.get("info") or {}).get("planned") or []) if aa else None
    row["pgd_minus_aa"] = row["adv_bacc"] - row["aa_bacc"] if row["adv_bacc"] is not None else None
    # the headline classification robustness: AutoAttack where it ran on the whole test split, else PGD
    whole = aa and row["aa_examples"] == record.provenance.dataset.get("n_examples")
    row["robust_bacc"] = row["aa_bacc"] if whole else row["adv_bacc"]
    row["robust_attack"] = "AutoAttack" if whole else "PGD"
    expl = record.explanations.get(label) if record is not None else None
    for name in ("topk", "spearman", "cosine", "topk_random", "spearman_random", "cosine_random", "sensmax", "kept",
                 "kept_random"):
        row[f"expl_{name}"] = tested.get(MetricKey("test", "expl", name, label))
    row["expl_examples"] = expl.settings.get("n_examples") if expl else None
    row["report"] = summary.get("report")
    row["best_checkpoint"] = summary.get("best_checkpoint")
    return row


def seed_summary(rows: list[dict]) -> list[dict]:
    """One results.csv row per dataset and model with seed = `all` (studies.measures.summary_rows: means over
    seeds), and the t interval over seeds (evaluation.statistics.seed_interval) of PGD's and AutoAttack's robust
    bacc and of their difference in `<measure>_low` / `<measure>_high`."""
    from evaluation.statistics import seed_interval

    from ..measures import summary_rows

    plain = [{k: v for k, v in r.items() if k not in ("report", "best_checkpoint")} for r in rows]
    out = summary_rows(plain, keys=("dataset", "size", "model", "training"))
    for row in out:
        sel = [r for r in plain if all(r.get(k) == row.get(k) for k in ("dataset", "size", "model", "training"))]
        for column in ("adv_bacc", "aa_bacc", "pgd_minus_aa"):
            stats = seed_interval([r.get(column) for r in sel])
            row[column], row[f"{column}_low"], row[f"{column}_high"] = stats["mean"], stats["low"], stats["high"]
    return out


def correlation(x: list[float], y: list[float], n: int = 10000, seed: int = 0, level: float = 0.95) -> dict:
    """Pearson r and Spearman rho of paired values, one pair per model (average a model's seeds first: its seeds
    are not independent models), with Fisher z intervals and Spearman's permutation p-value over `n` permutations
    (every one for up to 7 models); evaluation.statistics owns both. A bootstrap over 6 models was far too narrow."""
    from scipy.stats import pearsonr, spearmanr

    from evaluation.statistics import correlation_interval, spearman_permutation_p

    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    out: dict[str, Any] = {"n": int(len(x)), "level": level}
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return {**out, "pearson": math.nan, "spearman": math.nan, "pearson_ci": [math.nan] * 2,
                "spearman_ci": [math.nan] * 2, "spearman_p": math.nan}
    out["pearson"], out["spearman"] = float(pearsonr(x, y)[0]), float(spearmanr(x, y)[0])
    out["pearson_ci"] = list(correlation_interval(out["pearson"], len(x), level))
    out["spearman_ci"] = list(correlation_interval(out["spearman"], len(x), level, spearman=True))
    out["spearman_p"] = spearman_permutation_p(x, y, n, seed)
    return out


def model_means(rows: list[dict], columns: tuple[str, ...]) -> list[dict]:
    """One entry per model: the mean over its seeds of each column (the unit of a correlation across models)."""
    return [{"model": model, **{c: mean_sd([r[c] for r in rows if r["model"] == model])[0] for c in columns}}
            for model in dict.fromkeys(r["model"] for r in rows)]


def paired_difference(rows_a: dict, rows_b: dict, epsilon: float, n: int = 1000, seed: int = 0) -> dict:
    """Model a minus model b on the same test examples, with 95% paired bootstrap intervals
    (evaluation.statistics.paired_bootstrap, one random stream for all measures): explanation top-k under attack
    (the reports' per-example values), PGD balanced accuracy (per-example predictions of the reports' PGD,
    evaluation.runs.test_predictions) and AutoAttack balanced accuracy (the reports' per-example AutoAttack
    predictions; absent from reports written before they were kept)."""
    import torch

    from evaluation.runs import score, test_predictions
    from evaluation.statistics import bootstrap, paired_bootstrap

    rng = np.random.default_rng(seed)
    out = {}
    label = epsilon_label(epsilon)
    per = []
    for row in (rows_a, rows_b):
        scored = read_record(row["report"]).explanations[label]
        per.append(np.asarray(scored.per_example(EXPLANATION_AXIS), dtype=float))
    if len(per[0]) == len(per[1]):
        diff = per[0] - per[1]  # paired per example: the mean of the differences
        got = bootstrap(lambda i: diff[i].mean(), len(diff), n, rng)
        out["expl"] = {"value": got["value"], "ci": [got["low"], got["high"]], "n": len(diff)}
    predictions = [test_predictions(RunLayout.of_checkpoint(row["best_checkpoint"]).root, row["best_checkpoint"])
                   for row in (rows_a, rows_b)]
    adv = [[s for s in p["scores"] if s[0] == "adv" and s[1] is not None and math.isclose(s[1], epsilon)]
           for p in predictions]
    task, classes = predictions[0]["task"], predictions[0]["num_classes"]

    def paired_bacc(probs: list, targets) -> dict:
        def bacc(model: int):
            def on(index: np.ndarray) -> float:
                i = torch.from_numpy(index)
                return score(probs[model][i], targets[i], task, classes, ("bacc",))["bacc"]
            return on

        got = paired_bootstrap(bacc(0), bacc(1), len(targets), n, rng)
        return {"value": got["value"], "ci": [got["low"], got["high"]], "n": int(len(targets))}

    if all(adv):
        out["adv"] = paired_bacc([a[0][2] for a in adv], predictions[0]["targets"])
    aa = [read_record(row["report"]).autoattack.get(label) for row in (rows_a, rows_b)]
    kept = [(s.settings.get("per_example") if s is not None else None) for s in aa]
    if all(kept) and kept[0]["index"] == kept[1]["index"]:  # the same seeded test subset
        onehot = [torch.nn.functional.one_hot(torch.tensor(k["prediction"]), classes).float() for k in kept]
        out["aa"] = paired_bacc(onehot, torch.tensor(kept[0]["label"]))
    return out


def _excludes_zero(entry: Optional[dict]) -> Optional[bool]:
    if not entry or any(math.isnan(v) for v in entry["ci"]):
        return None
    return entry["ci"][0] > 0 or entry["ci"][1] < 0


def analyse(rows: list[dict], study: Study) -> dict:
    """Per dataset: the correlation across models, the attack-vs-noise check and the regularised-model verdicts."""
    out = {}
    for dataset in dict.fromkeys(r["dataset"] for r in rows):
        sel = [r for r in rows if r["dataset"] == dataset]
        means = model_means(sel, ("robust_bacc", "expl_topk"))
        c = correlation([m["robust_bacc"] for m in means], [m["expl_topk"] for m in means])
        attack = mean_sd([r["expl_topk"] for r in sel])[0]
        noise = mean_sd([r["expl_topk_random"] for r in sel])[0]
        below = sum(1 for r in sel if r["expl_topk"] is not None and r["expl_topk_random"] is not None
                    and r["expl_topk"] < r["expl_topk_random"])
        sanity = (f"Mean top-k intersection over models: {attack:.3f} under the attack, {noise:.3f} under random "
                  f"noise of the same radius; the attack lowered it more than noise for {below} of {len(sel)} models.")
        compare = []
        for a, b in study.compare.items():
            for seed in sorted({r["seed"] for r in sel}):
                ra = next((r for r in sel if r["model"] == a and r["seed"] == seed), None)
                rb = next((r for r in sel if r["model"] == b and r["seed"] == seed), None)
                if ra is None or rb is None:
                    continue
                diff = paired_difference(ra, rb, study.epsilon, study.bootstrap, seed)
                on = "aa" if diff.get("aa") else "adv"  # the claim rests on the stronger attack where it has one
                verdict = move_verdict(_excludes_zero(diff.get("expl")), _excludes_zero(diff.get(on)))
                if on == "aa" and diff.get("adv"):
                    pgd = move_verdict(_excludes_zero(diff.get("expl")), _excludes_zero(diff.get("adv")))
                    verdict += "" if pgd == verdict else f" (on PGD alone: {pgd})"
                elif on == "adv":
                    verdict += " (on PGD: the reports keep no per-example AutoAttack predictions)"
                compare.append({"a": a, "b": b, "seed": seed, **diff, "verdict": verdict})
        out[dataset] = {"correlation": c, "correlation_verdict": verdict_text(c),
                        "sanity": sanity, "compare": compare,
                        "masking": masking_check(sel, study.autoattack["masking_margin"])}
    return out


def move_verdict(moved_expl: Optional[bool], moved_adv: Optional[bool]) -> str:
    """What the regularised model moved, from whether each paired interval excludes 0."""
    if moved_expl and not moved_adv:
        return "moved explanation robustness without classification robustness"
    if moved_expl and moved_adv:
        return "moved both"
    if moved_adv:
        return "moved classification robustness only"
    return "moved neither (both intervals include 0)"


def masking_check(rows: list[dict], margin: float) -> list[dict]:
    """Per model (means over its seeds): PGD and AutoAttack robust bacc, PGD - AutoAttack, whether AutoAttack is
    below PGD (expected: it is the stronger attack), and `flagged` when PGD exceeds AutoAttack by more than `margin`
    (PGD overestimates robustness: possible gradient masking). A row without both numbers fails in one line."""
    for r in rows:
        if r.get("adv_bacc") is None or r.get("aa_bacc") is None:
            raise ConfigError(f"{r.get('dataset', '')} {r['model']} seed {r.get('seed')}: no "
                              f"{'PGD' if r.get('adv_bacc') is None else 'AutoAttack'} robust bacc; the masking check "
                              "needs both for every model")
    out = []
    for m in model_means(rows, ("adv_bacc", "aa_bacc")):
        gap = m["adv_bacc"] - m["aa_bacc"]
        order = "AutoAttack below PGD" if gap > 1e-9 else "AutoAttack equal to PGD" if gap >= -1e-9 else \
            "AutoAttack above PGD"
        gaps = [r["adv_bacc"] - r["aa_bacc"] for r in rows if r["model"] == m["model"]]
        training = next(r.get("training", "") for r in rows if r["model"] == m["model"])
        out.append({"model": m["model"], "training": training, "pgd": m["adv_bacc"], "aa": m["aa_bacc"],
                    "gap": gap, "max_seed_gap": max(gaps), "order": order, "flagged": gap > margin, "margin": margin})
    return out


def verdict_text(c: dict) -> str:
    if c["n"] < 3 or math.isnan(c["pearson"]):
        return f"Not enough models with both measures ({c['n']}) for a correlation."
    if math.isnan(c["pearson_ci"][0]):
        return f"With {c['n']} models the correlation has no interval (Fisher z needs 4 or more): no verdict."
    if c["pearson_ci"][0] > 0:
        strength = "strongly" if c["pearson_ci"][0] > 0.5 else "positively"
        return (f"The two robustness measures are {strength} correlated across these {c['n']} models "
                "(the interval lies above 0).")
    if c["pearson_ci"][1] < 0:
        return f"The two robustness measures are negatively correlated across these {c['n']} models (interval below 0)."
    return (f"No evidence of a correlation across these {c['n']} models: the interval includes 0 "
            "(with this few models it is wide; more seeds or betas narrow it).")
