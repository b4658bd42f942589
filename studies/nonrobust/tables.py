"""results.md: every measure per model and dataset with its interval and chance beside it, the constructed models'
diagnostics, robust accuracy, clean vs MedMNIST-C, finding 2's drops, and the findings."""
from __future__ import annotations

from typing import Optional

from attacks.threat_model import format_epsilon
from lightning_modules.metrics import MetricKey

from .. import corruption_drop, measures
from ..runner import cell, mean_sd
from .config import STATISTICS, Study
from .findings import WHY, findings
from .results import column_keys, difference_of, ordered_models, roles_of, title, trained_on

TABLE_MEASURES = (("bacc", "bacc, default threshold"), ("auroc", "AUROC"),
                  ("bacc_recal", "bacc, threshold fitted on real val"), ("bacc_adabn", "bacc, AdaBN on real val"),
                  ("auroc_adabn", "AUROC, AdaBN"))
DIAGNOSTICS = (("train_acc_constructed", "train acc on its constructed set"),
               ("source_agreement", "source model agrees with the new labels"),
               ("budget_l2", "L2 budget of the perturbation"),
               ("source_assigned_relabelled", "source assigns relabelled images to the new label"),
               ("mean_p1_constructed", "mean p(class 1), constructed train"),
               ("mean_p1_real_test", "mean p(class 1), real test"),
               ("prob_shift_tv", "shift of mean probabilities (TV)"),
               ("labels_agree_with_original", "new labels = originals"),
               ("leakage_share", "leakage: robust model assigns relabelled images to the new label"),
               ("leakage_auroc", "leakage: robust model's AUROC vs the new labels"),
               ("leakage_auroc_original", "leakage: the same on the original images"),
               ("bacc_vs_new_label", "bacc vs D_det label (y+1) mod C"))


def results_markdown(rows: list[dict], cells: Optional[dict] = None, study: Optional[Study] = None,
                     drops: Optional[dict] = None) -> str:
    """The study's tables: every measure per model and dataset with its interval and chance beside it, the
    constructed models' diagnostics, clean vs MedMNIST-C, and a verdict per finding with the measure it uses."""
    cells = cells or {}
    roles = roles_of(study)
    seeds = sorted({r["seed"] for r in rows})
    stats = study.statistics if study else STATISTICS
    if study.over_seeds if study else len(seeds) > 1:
        how = "Student t over the per-seed estimates, the seed being the unit of replication"
    else:
        how = f"bootstrap over test examples, {stats['bootstrap']} draws"
    lines = [f"# Study reproduction: measures on the real test split (seeds {seeds})", ""]
    if cells:
        lines += [f"Each cell: mean ± sd over seeds [{stats['level']:.0%} interval: {how}]. Chance: AUROC 0.5, "
                  "balanced accuracy 1 / classes. Verdicts are given for the pre-registered primary endpoints only "
                  "(Findings, Holm-adjusted); every table is descriptive.", ""]
    for d in dict.fromkeys(r["dataset"] for r in rows):
        lines += measures_table(rows, cells, d)
    lines += differences_table(cells)
    lines += diagnostics_table(rows, cells)
    lines += robust_table(rows)
    lines += corruption_tables(rows, roles)
    lines += drop_table(drops or {}, roles)
    if cells:
        lines += ["", WHY]
    lines += ["", findings(rows, cells, drops, roles, study)]
    return "\n".join(lines) + "\n"


def measures_table(rows: list[dict], cells: dict, d: str) -> list[str]:
    """Dataset `d`'s table: every measure of every model with its interval (test balanced accuracy alone when
    no per-example measures were taken)."""
    chance = next(r["chance_bacc"] for r in rows if r["dataset"] == d)
    lines = [f"## {d} (chance balanced accuracy {chance:.3f}, AUROC 0.500)", ""]
    if not any(key[0] == d for key in cells):
        lines += ["| model | trained on | test balanced accuracy |", "|---|---|---|"]
        for model in ordered_models([r for r in rows if r["dataset"] == d]):
            lines.append(f"| {model} | {trained_on(rows, model)} | "
                         f"{cell([r['clean_bacc'] for r in rows if r['model'] == model and r['dataset'] == d])} |")
        return lines + [""]
    lines += ["| model | trained on | seeds | " + " | ".join(name for _, name in TABLE_MEASURES) + " |",
              "|---|---|---|" + "---|" * len(TABLE_MEASURES)]
    for model in ordered_models([r for r in rows if r["dataset"] == d]):
        c = cells.get((d, model), {})
        note = {m: next((r[m] for r in rows if r["model"] == model and r["dataset"] == d
                         and isinstance(r.get(m), str)), "-") for m, _ in TABLE_MEASURES}
        values = [measures.describe(c[m], chance) if m in c else note[m] for m, _ in TABLE_MEASURES]
        n = len([r for r in rows if r["model"] == model and r["dataset"] == d])
        lines.append(f"| {model} | {trained_on(rows, model)} | {n} | " + " | ".join(values) + " |")
    return lines + [""]


def differences_table(cells: dict) -> list[str]:
    """Every paired difference `a - b` (finding 2's pair, the config's comparisons: scale knobs against their base
    row) of every measure, paired by seed and over the same test examples within a seed; descriptive."""
    names = [key for key in cells if " - " in key[1]]
    if not names:
        return []
    lines = ["## Paired differences (descriptive)", "",
             "a - b, paired by seed (with one seed: over the same resampled test examples); 0: no difference.", "",
             "| dataset | a - b | seeds | " + " | ".join(name for _, name in TABLE_MEASURES) + " |",
             "|---|---|---|" + "---|" * len(TABLE_MEASURES)]
    for d, name in names:
        c = cells[(d, name)]
        seeds = next(iter(c.values()))["seeds"] if c else 0
        lines.append(f"| {d} | {name} | {seeds} | " + " | ".join(
            measures.describe(c[m], 0.0) if m in c else "-" for m, _ in TABLE_MEASURES) + " |")
    return lines + [""]


def corruption_tables(rows: list[dict], roles: dict) -> list[str]:
    """Clean vs MedMNIST-C per model, then the robust minus the standard model under each corruption."""
    corr_rows = [r for r in rows if r.get("corr_bacc") is not None]
    if not corr_rows:
        return []
    std, rob = title(roles["standard"]), title(roles["robust"])
    lines = ["", "## Clean vs MedMNIST-C (mean over corruptions and severities)", "",
             "| dataset | model | clean bacc | clean bacc, round-tripped | corrupted bacc | "
             "corrupted - round-tripped clean | mean rBE |", "|---|---|---|---|---|---|---|"]
    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    for d in datasets:
        for model in ordered_models(corr_rows):
            sel = [r for r in corr_rows if r["dataset"] == d and r["model"] == model]
            if sel:
                lines.append(f"| {d} | {model} | {cell([r['clean_bacc'] for r in sel])} | "
                             f"{cell([r['corr_clean_reference_bacc'] for r in sel])} | "
                             f"{cell([r['corr_bacc'] for r in sel])} | "
                             f"{cell([r['corr_bacc'] - r['corr_clean_reference_bacc'] for r in sel])} | "
                             f"{cell([r['corr_rbe'] for r in sel])} |")
    lines += ["", f"## {rob} minus {std} under each corruption (corrupted balanced accuracy)", ""]
    for d in datasets:
        standard = [r for r in corr_rows if r["dataset"] == d and r["model"] == roles["standard"]]
        robust = [r for r in corr_rows if r["dataset"] == d and r["model"] == roles["robust"]]
        if not standard or not robust:
            continue
        names = [key.condition for key in column_keys(standard[0], "corr", "bacc")]
        lines += [f"**{d}**", "", f"| corruption | {std} | {rob} | {rob} - {std} | {std}: corrupted - round-tripped "
                  f"clean | {rob}: corrupted - round-tripped clean |", "|---|---|---|---|---|---|"]
        for name in names:
            e = mean_sd([r.get(f"corr_bacc@{name}") for r in standard])[0]
            a = mean_sd([r.get(f"corr_bacc@{name}") for r in robust])[0]
            de = mean_sd([r.get(f"corr_delta@{name}") for r in standard])[0]
            da = mean_sd([r.get(f"corr_delta@{name}") for r in robust])[0]
            lines.append(f"| {name} | {e:.3f} | {a:.3f} | {a - e:+.3f} | {de:+.3f} | {da:+.3f} |")
        lines.append("")
    return lines


def drop_table(drops: dict, roles: Optional[dict] = None) -> list[str]:
    """Finding 2's table: corrupted minus round-tripped clean balanced accuracy per corruption family, the standard
    and the robust model (ERM, PGD-AT) and their difference (paired over test examples), each with its interval."""
    if not drops:
        return []
    roles = roles or roles_of(None)
    std, rob = title(roles["standard"]), title(roles["robust"])
    lines = ["", "## Finding 2: corrupted minus round-tripped clean balanced accuracy, per corruption family", "",
             "Mean over the family's corruptions and severities, minus the clean test images resampled as the "
             f"corrupted ones (the round-trip reference; the clean image under native224). {rob} - {std} is paired: "
             f"the same resampled test examples for both models. Above 0: {rob} loses less.", ""]
    for dataset in dict.fromkeys(key[0] for key in drops):
        models = [m for m in (roles["standard"], roles["robust"], difference_of(roles)) if (dataset, m) in drops]
        names = [m for m in drops[(dataset, models[0])] if m.startswith("corr_drop@")]
        names = sorted(names, key=lambda m: (m == f"corr_drop@{corruption_drop.ALL}", m))
        lines += [f"**{dataset}**", "", "| family | " + " | ".join(models) + " |", "|---|" + "---|" * len(models)]
        for extra in ("clean_bacc", "reference_bacc"):
            lines.append(f"| {extra.replace('_bacc', ' bacc')} | " + " | ".join(
                measures.describe(drops[(dataset, m)][extra], 0.0) if extra in drops[(dataset, m)] else "-"
                for m in models) + " |")
        for name in names:
            lines.append(f"| {MetricKey.parse(name, 'test').condition} | " + " | ".join(
                measures.describe(drops[(dataset, m)][name], 0.0) if name in drops[(dataset, m)] else "-"
                for m in models) + " |")
        lines.append("")
    return lines


def robust_table(rows: list[dict]) -> list[str]:
    """Test balanced accuracy under attack of the models trained on the real split: PGD (the callback's test
    attack) and, where the study asks for it, AutoAttack (paper.yaml: standard AutoAttack on the whole test split),
    mean ± sd over seeds."""
    real = [r for r in rows if r.get("kind") == "real"]
    keys = sorted({key for r in real for kind in ("adv", "aa") for key in column_keys(r, kind, "bacc")},
                  key=MetricKey.sort_key)
    columns = [key.unstaged() for key in keys]
    if not columns:
        return []
    lines = ["## Robust balanced accuracy on the real test split (mean ± sd over seeds)", "",
             "| dataset | model | clean | " + " | ".join(("AutoAttack " if key.kind == "aa" else "PGD ") +
                                                         format_epsilon(key.epsilon) for key in keys) + " |",
             "|---|---|---|" + "---|" * len(columns)]
    for d in dict.fromkeys(r["dataset"] for r in real):
        for model in ordered_models([r for r in real if r["dataset"] == d]):
            sel = [r for r in real if r["dataset"] == d and r["model"] == model]
            values = [cell([r.get(k) for r in sel if r.get(k) is not None]) if any(r.get(k) is not None for r in sel)
                      else "-" for k in columns]
            lines.append(f"| {d} | {model} | {cell([r['clean_bacc'] for r in sel])} | " + " | ".join(values) + " |")
    return lines + [""]


def diagnostics_table(rows: list[dict], cells: dict) -> list[str]:
    """The models trained on constructed sets: how well they fit their set, and how their probabilities shift."""
    constructed = [r for r in rows if r.get("kind") == "constructed" and "train_acc_constructed" in r]
    if not constructed:
        return []
    lines = ["## Diagnostics of the models trained on constructed sets (mean over seeds)", "",
             "| dataset | model | " + " | ".join(name for _, name in DIAGNOSTICS) + " |",
             "|---|---|" + "---|" * len(DIAGNOSTICS)]
    for d in dict.fromkeys(r["dataset"] for r in constructed):
        for model in ordered_models([r for r in constructed if r["dataset"] == d]):
            sel = [r for r in constructed if r["dataset"] == d and r["model"] == model]
            values = []
            for key, _ in DIAGNOSTICS:
                if key == "bacc_vs_new_label" and key in cells.get((d, model), {}):
                    values.append(measures.describe(cells[(d, model)][key], 0.0))
                    continue
                got = [r.get(key) for r in sel if isinstance(r.get(key), (int, float))]
                values.append(f"{mean_sd(got)[0]:.3f}" if got else "-")
            lines.append(f"| {d} | {model} | " + " | ".join(values) + " |")
    return lines + [""]
