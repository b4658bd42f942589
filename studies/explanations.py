"""Classification vs explanation robustness (Chen et al., arXiv 2403.06013) in one command:
`python -m studies reproduce configs/study/explanations_quick.yaml --out runs/study/explanations_quick`.

For each dataset and seed: train models over a range of classification robustness (ERM, PGD-AT, TRADES at several
betas) and the explanation-regularised model (lightning_modules.explanation_regularized); test each with the
RobustnessCallback, whose report holds classification robustness (PGD; AutoAttack where the config asks) and
explanation robustness at the same radius (the saliency map under the top-k explanation attack on the softplus
network, and under random noise of the same radius; max-sensitivity). Then write `results.csv`, `results.md`
(the correlation between the two robustness measures across models with a Fisher z interval; whether the
regularised model moved one without the other, with paired bootstrap intervals over test examples) and figures
(`expl_scatter.png`: explanation against classification robustness; `expl_maps.png`: clean and attacked maps of a
few test images). Every training step is kept under --out and reused on a rerun.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Optional, Union

import numpy as np

from attacks.threat_model import epsilon_label, format_epsilon, parse_epsilon
from core.errors import ConfigError
from core.files import write_text_atomic
from datamodules.info import dataset_info
from evaluation.layout import RunLayout, StepLayout
from evaluation.record import read_record
from lightning_modules.metrics import MetricKey
from lightning_modules.registry import method_of_class

from .runner import (
    cell, check_datasets, check_seeds, check_training_spec, done, load_study, mean_sd, train_step, write_csv,
)

EXPLANATION_KEYS = {"method", "k", "steps", "samples", "val_samples", "val_steps", "every_epoch"}
CALLBACK = "trainer.callbacks.init_args."
#: the explanation-robustness measure on the study's y axis, and the one under random noise beside it
EXPLANATION_AXIS, NOISE_AXIS = "topk", "topk_random"


@dataclass
class Study:
    """A parsed, validated explanation study config (see configs/study/explanations_quick.yaml): the YAML's keys are
    its fields (less `source`, the file), checked when it is built (unknown explanation method, k larger than the
    image, a negative radius: one ConfigError line)."""

    DESCRIPTION: ClassVar[str] = ("classification vs explanation robustness (Chen et al. 2403.06013): train, measure "
                                  "both, correlate")

    name: str = ""
    seeds: list[int] = field(default_factory=lambda: [0])
    datasets: list[dict] = field(default_factory=list)
    train: dict = field(default_factory=dict)
    models: dict[str, dict] = field(default_factory=dict)
    epsilon: Union[float, str] = "4/255"
    norm: str = "linf"
    explanation: dict = field(default_factory=dict)
    compare: dict[str, str] = field(default_factory=dict)
    examples: int = 3
    bootstrap: int = 1000
    source: Path = Path("study.yaml")

    def __post_init__(self) -> None:
        from explanations import METHODS

        models = self.models = self.models or {}
        if len(models) < 3:
            raise ConfigError("the study needs at least 3 models (a correlation across models): "
                              "models: {erm: ..., pgd_at: ..., trades_6: ...}")
        for name, spec in models.items():
            check_training_spec(f"models.{name}", spec)
        try:
            self.epsilon = parse_epsilon(self.epsilon, self.norm)
        except ConfigError as err:
            raise ConfigError(f"epsilon: {err}") from None
        if self.epsilon == 0:
            raise ConfigError("epsilon must be > 0: both robustness measures are taken at this radius")
        explanation = self.explanation = {"method": "saliency", "k": 0.1, "steps": 20, "samples": 200,
                                          **(self.explanation or {})}
        extra = sorted(set(explanation) - EXPLANATION_KEYS)
        if extra:
            raise ConfigError(f"unknown explanation key(s) {', '.join(extra)}: use {', '.join(sorted(EXPLANATION_KEYS))}")
        if explanation["method"] not in METHODS:
            raise ConfigError(f"unknown explanation method {explanation['method']!r}: choose from {', '.join(METHODS)}")
        k = explanation["k"]
        if isinstance(k, bool) or not (isinstance(k, int) and k >= 1 or isinstance(k, float) and 0 < k < 1):
            raise ConfigError(f"explanation.k is a number of pixels (an integer >= 1) or a share in (0, 1), got {k!r}")
        _positive_int("explanation.steps", explanation["steps"])
        _positive_int("explanation.samples", explanation["samples"], allow_none=True)
        self.datasets = check_datasets(self.datasets or [])
        for entry in self.datasets:
            size = entry.get("size", 28)
            if isinstance(k, int) and k > size * size:
                raise ConfigError(f"explanation.k {k} is larger than the image ({size} x {size} = {size * size} pixels)")
        self.seeds = check_seeds(self.seeds)
        compare = self.compare or {}
        if not isinstance(compare, dict):
            raise ConfigError("compare maps a regularised model to the model it is compared with: {expl_reg: erm}")
        for a, b in compare.items():
            if a not in models or b not in models:
                raise ConfigError(f"compare.{a}: {b} must both be models of the study ({', '.join(models)})")
        self.compare, self.train = dict(compare), dict(self.train or {})
        self.examples = _positive_int("examples", self.examples)
        self.bootstrap = _positive_int("bootstrap", self.bootstrap)
        self.name = str(self.name or Path(self.source).stem)

    def callback_overrides(self) -> dict:
        """The RobustnessCallback settings every model is tested with: one radius for both robustness measures."""
        e = self.explanation
        label = format_epsilon(self.epsilon)
        return {f"{CALLBACK}norm": self.norm, f"{CALLBACK}epsilons": [label],
                f"{CALLBACK}explanation_report": True, f"{CALLBACK}explanation_epsilons": [label],
                f"{CALLBACK}explanation_method": e["method"], f"{CALLBACK}explanation_k": e["k"],
                f"{CALLBACK}explanation_test_steps": e["steps"], f"{CALLBACK}explanation_test_samples": e["samples"],
                f"{CALLBACK}explanation_epoch": bool(e.get("every_epoch", False)),
                f"{CALLBACK}explanation_samples": e.get("val_samples", 32),
                f"{CALLBACK}explanation_steps": e.get("val_steps", 5)}

    def reproduce(self, out: Path, log=print) -> list[dict]:
        """Run (or reuse) every step under `out` and write the results (studies.framework.Study)."""
        return reproduce(self, Path(out), log)


def _positive_int(name: str, value, allow_none: bool = False):
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name} must be a positive integer{' or null' if allow_none else ''}, got {value!r}")
    return value


def load(path: str | Path, overrides: Optional[list[str]] = None) -> Study:
    """Read an explanation study YAML, apply `--set key=value` overrides, and check every key before any training."""
    return load_study(Study, path, overrides)


# ---- results ------------------------------------------------------------------------------------------------
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
    row["aa_examples"] = (aa.settings.get("info") or {}).get("n_examples") if aa else None
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
    (evaluation.statistics.paired_bootstrap, one random stream for both measures): explanation top-k under attack
    (the reports' per-example values) and PGD balanced accuracy (per-example predictions of the reports' PGD,
    evaluation.runs.test_predictions)."""
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
    probs = []
    for p in predictions:
        adv = [s for s in p["scores"] if s[0] == "adv" and s[1] is not None and math.isclose(s[1], epsilon)]
        if not adv:
            return out
        probs.append(adv[0][2])
    targets, task, classes = predictions[0]["targets"], predictions[0]["task"], predictions[0]["num_classes"]

    def bacc(model: int):
        def on(index: np.ndarray) -> float:
            i = torch.from_numpy(index)
            return score(probs[model][i], targets[i], task, classes, ("bacc",))["bacc"]
        return on

    got = paired_bootstrap(bacc(0), bacc(1), len(targets), n, rng)
    out["adv"] = {"value": got["value"], "ci": [got["low"], got["high"]], "n": int(len(targets))}
    return out


def _interval(entry: dict) -> str:
    low, high = entry["ci"]
    return f"{entry['value']:+.3f} [{low:+.3f}, {high:+.3f}]"


def _excludes_zero(entry: Optional[dict]) -> Optional[bool]:
    if not entry or any(math.isnan(v) for v in entry["ci"]):
        return None
    return entry["ci"][0] > 0 or entry["ci"][1] < 0


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
                  f"| model | training | clean bacc | robust bacc ({attack}) | expl top-k, attack | expl top-k, random noise "
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
                      "| model - compared with | Δ expl top-k under attack [95% CI] | Δ robust bacc (PGD) [95% CI] | verdict |",
                      "|---|---|---|---|"]
            for entry in analysis[dataset]["compare"]:
                expl = _interval(entry["expl"]) if entry.get("expl") else "-"
                adv = _interval(entry["adv"]) if entry.get("adv") else "-"
                lines.append(f"| {entry['a']} - {entry['b']} (seed {entry['seed']}) | {expl} | {adv} | {entry['verdict']} |")
            lines += ["", "Paired bootstrap over the same test examples (1000 resamples); a difference counts as a move "
                      "when its interval excludes 0.", ""]
    return "\n".join(lines) + "\n"


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
        sanity = (f"Mean top-k intersection over models: {attack:.3f} under the attack, {noise:.3f} under random noise of "
                  f"the same radius; the attack lowered it more than noise for {below} of {len(sel)} models.")
        compare = []
        for a, b in study.compare.items():
            for seed in sorted({r["seed"] for r in sel}):
                ra = next((r for r in sel if r["model"] == a and r["seed"] == seed), None)
                rb = next((r for r in sel if r["model"] == b and r["seed"] == seed), None)
                if ra is None or rb is None:
                    continue
                diff = paired_difference(ra, rb, study.epsilon, study.bootstrap, seed)
                moved_expl, moved_adv = _excludes_zero(diff.get("expl")), _excludes_zero(diff.get("adv"))
                if moved_expl and not moved_adv:
                    verdict = "moved explanation robustness without classification robustness"
                elif moved_expl and moved_adv:
                    verdict = "moved both"
                elif moved_adv:
                    verdict = "moved classification robustness only"
                else:
                    verdict = "moved neither (both intervals include 0)"
                compare.append({"a": a, "b": b, "seed": seed, **diff, "verdict": verdict})
        out[dataset] = {"correlation": c, "correlation_verdict": verdict_text(c),
                        "sanity": sanity, "compare": compare}
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


# ---- figures ------------------------------------------------------------------------------------------------
def scatter_figure(rows: list[dict], analysis: dict, out: Path) -> None:
    from evaluation.plots import pyplot_agg, save_figure

    plt = pyplot_agg()
    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    fig, axes = plt.subplots(1, len(datasets), figsize=(5.2 * len(datasets), 4.2), squeeze=False)
    for ax, dataset in zip(axes[0], datasets):
        sel = [r for r in rows if r["dataset"] == dataset]
        for model in dict.fromkeys(r["model"] for r in sel):
            m = [r for r in sel if r["model"] == model]
            x, y = [r["robust_bacc"] for r in m], [r["expl_topk"] for r in m]
            noise = [r["expl_topk_random"] for r in m]
            marker = "*" if m[0]["training"].startswith("expl_reg") else "o"
            points = ax.scatter(x, y, s=90 if marker == "*" else 45, marker=marker, label=model, zorder=3)
            ax.scatter(x, noise, s=25, marker="x", color=points.get_facecolor()[0], alpha=0.6, zorder=2)
        c = analysis[dataset]["correlation"]
        ax.set_xlabel(f"classification robustness: robust bacc ({sel[0]['robust_attack']}, {sel[0]['epsilon']})")
        ax.set_ylabel(f"explanation robustness: top-k intersection ({sel[0]['epsilon']})")
        ax.set_ylim(0, 1.02)
        ax.set_title(f"{dataset}: r = {c['pearson']:+.2f} [{c['pearson_ci'][0]:+.2f}, {c['pearson_ci'][1]:+.2f}]",
                     fontsize=10)
        ax.legend(fontsize=7, title="o/*: attack, x: random noise", title_fontsize=7)
    save_figure(fig, out / "expl_scatter.png")


def maps_figure(rows: list[dict], study: Study, out: Path) -> None:
    """Clean and attacked saliency maps of `examples` test images for a non-robust, the most robust and the
    regularised model (first dataset, first seed)."""
    from attacks.explanation import TopKAttack
    from datamodules.medmnist import MedMNISTDataModule
    from datamodules.tensors import fixed_subset, to_unit_range
    from evaluation.checkpoints import load_module
    from explanations import Explainer, topk_intersection
    from evaluation.plots import pyplot_agg, save_figure

    first = [r for r in rows if r["dataset"] == rows[0]["dataset"] and r["seed"] == rows[0]["seed"]
             and r.get("best_checkpoint")]
    if not first:
        return
    chosen = [first[0]]
    robust = max(first, key=lambda r: r["robust_bacc"] or 0)
    for r in [robust, *[r for r in first if r["training"].startswith("expl_reg")]]:
        if r not in chosen:
            chosen.append(r)
    dataset = next(d for d in study.datasets if dataset_info(d["flag"]).flag == first[0]["dataset"])
    dm = MedMNISTDataModule(dataset["flag"], dataset.get("size", 28), root=dataset.get("root"),
                            verify_md5=dataset.get("verify_md5", True))
    split = dm.split("test")
    index = fixed_subset(len(split), study.examples, 0)
    x = to_unit_range(split.images[index])
    n = len(x)
    plt = pyplot_agg()
    fig, axes = plt.subplots(len(chosen), 1 + 2 * n, figsize=(1.7 * (1 + 2 * n), 1.9 * len(chosen)), squeeze=False)
    for row_axes, r in zip(axes, chosen):
        model = load_module(r["best_checkpoint"]).eval()
        explainer = Explainer(model, study.explanation["method"])
        clean = explainer(x)
        attack = TopKAttack(model, study.epsilon, steps=study.explanation["steps"], norm=study.norm,
                            k=study.explanation["k"])
        result = attack.run(x)
        attacked = explainer(result.x_adv)
        overlap = topk_intersection(clean, attacked, study.explanation["k"])
        row_axes[0].imshow(x[0].permute(1, 2, 0).squeeze(-1).numpy(), cmap="gray", vmin=0, vmax=1)
        row_axes[0].set_ylabel(f"{r['model']}\nrobust bacc {r['robust_bacc']:.2f}", fontsize=7)
        for j in range(n):
            for col, (maps, title) in enumerate(((clean, "clean"), (attacked, "attacked"))):
                ax = row_axes[1 + 2 * j + col]
                ax.imshow(maps[j].numpy(), cmap="hot")
                label = f"img {j + 1} {title}" + (f"\ntop-k {float(overlap[j]):.2f}" if col else "")
                label += "" if col == 0 or bool(result.kept[j]) else " (label changed)"
                ax.set_title(label, fontsize=6)
        for ax in row_axes:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle(f"{first[0]['dataset']}: {study.explanation['method']} maps, clean vs top-k attack at "
                 f"{format_epsilon(study.epsilon)} (first column: image 1)", fontsize=8)
    save_figure(fig, out / "expl_maps.png")


def write_results(rows: list[dict], study: Study, out: Path, figures: bool = True) -> dict:
    analysis = analyse(rows, study)
    write_csv([{k: v for k, v in r.items() if k not in ("report", "best_checkpoint")} for r in rows],
              out / "results.csv")
    write_text_atomic(out / "results.md", results_markdown(rows, analysis, study))
    if figures:
        scatter_figure(rows, analysis, out)
        maps_figure(rows, study, out)
    return analysis


# ---- the pipeline -------------------------------------------------------------------------------------------
def reproduce(study: Study, out: Path, log=print) -> list[dict]:
    """Train (or reuse) every model for every dataset and seed, then write the results; returns the rows."""
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    common = {**study.train, **study.callback_overrides()}
    for dataset in study.datasets:
        flag = dataset_info(dataset["flag"]).flag
        for seed in study.seeds:
            base = StepLayout(out).seed_dir(flag, dataset.get("size", 28), seed)
            for name, spec in study.models.items():
                log(f"[{flag} seed {seed}] train {name}" + (" (reused)" if done(base / name) else ""))
                summary = train_step(base / name, spec, common, dataset, seed)
                if not summary.get("report"):
                    raise ConfigError(f"{base / name} has no robustness report: the study needs the test to run")
                rows.append(result_row(dataset, name, spec, seed, summary, study.epsilon))
    log("analysis and figures ...")
    write_results(rows, study, out)
    return rows


DESCRIPTION = Study.DESCRIPTION
