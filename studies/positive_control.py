"""The nonrobust-features study's positive control: the study itself (studies.nonrobust: train.py steps, the
construction, last-epoch scoring, recalibration and AdaBN on the real validation split, the leakage audit) run on a
synthetic dataset where finding 1 is true by construction, at the study's own construction budget, with the planted
pattern's amplitude swept (0: no pattern) to give a detection curve.

The dataset (datamodules.synthetic.write_positive_control_npz, the MedMNIST npz layout of a grey single-label flag,
whose classes it takes) carries its label twice: in a large bright bar (robust: erasing it costs far more than the
budget; it shows the class on a share of the training images) and in a faint pattern of the class (nonrobust: with
two classes a checkerboard whose sign is the class, with more one of C orthogonal patterns; an L2 perturbation of
datamodules.synthetic.pattern_flip_l2 moves it to another class's, below the budget). Each amplitude is one run of
the nonrobust study, config and all, with its own data folder; the seed redraws source, construction, leakage model
and the models trained on the constructed sets together.

The control passes when
- every constructed set is sound (studies.nonrobust.leakage.failures: D_rand's labels independent of the originals;
  with the pattern, the source assigns the relabelled images to their new label): checked before training on it;
- at every amplitude from `detect_from` up, the D_rand model's test AUROC net of leakage is above chance (interval over
  seeds, a t interval; with one seed the bootstrap over test examples): the pattern is detected;
- at amplitude 0 it is not above chance: without a nonrobust feature, finding 1 does not read as "holds" once the
  leakage baseline is taken off (the uncorrected AUROC is reported beside it);
- with a D_det set in the config (configs/study/positive_control_multiclass.yaml): the D_det model's test AUROC on
  the real labels net of leakage (studies.nonrobust.leakage) is above chance from `detect_from` up and not at 0,
  and with C > 2 its balanced accuracy against
  the D_det label (y + 1) mod C is not above chance 1 / C where the pattern is planted (it did not learn the visible
  bar that D_det's labels shift; with C = 2 that measure is 1 - bacc and says nothing more).

    python -m studies reproduce configs/study/positive_control.yaml --out runs/study/positive_control
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import ClassVar, Optional

from core.errors import ConfigError
from core.files import write_json_atomic, write_text_atomic
from datamodules.info import MULTILABEL, dataset_info
from datamodules.synthetic import PATTERN_CLASSES, pattern_flip_l2

from . import measures
from .nonrobust.config import Study as NonrobustStudy, construction_kind
from .nonrobust.leakage import NET, ConstructionBroken
from .runner import load_study, write_csv

#: write_positive_control_npz's settings a config may give under `synthetic:`, and their defaults
SYNTHETIC = {"n_train": 512, "n_val": 128, "n_test": 256, "seed": 0, "shape_contrast": 0.5, "noise": 2 / 255,
             "shape_agreement": 0.75, "contrast_jitter": 0.5}
#: the D_rand model's measures the curve reports: (column, what), verdicts on the first two
CURVE = (("auroc", "test AUROC"), (NET, "test AUROC net of leakage"), ("leakage_auroc", "leakage AUROC"),
         ("leakage_share", "leakage share"), ("source_assigned_relabelled", "source assigns new label"),
         ("bacc_recal", "bacc, recalibrated"), ("bacc_adabn", "bacc, AdaBN"))
#: the D_det model's (a config with a D_det set): verdicts on the first four, each against its own chance
D_DET_CURVE = (("auroc", "test AUROC"), (NET, "test AUROC net of leakage"), ("bacc", "bacc"),
               ("bacc_vs_new_label", "bacc vs D_det label (y+1) mod C"), ("leakage_auroc", "leakage AUROC"),
               ("leakage_auroc_original", "leakage AUROC, original images"),
               ("source_assigned_relabelled", "source assigns new label"))


@dataclass
class Study(NonrobustStudy):
    """The positive control's config (configs/study/positive_control.yaml): a nonrobust-features study config (its
    datasets entry names the flag whose layout the synthetic files take; their root is written per amplitude) plus
    the synthetic data's settings, the amplitudes swept and the smallest amplitude that must be detected."""

    DESCRIPTION: ClassVar[str] = ("the positive control of the nonrobust-features study: its real pipeline on "
                                  "synthetic data, pattern amplitude swept")
    amplitudes: list = field(default_factory=lambda: [0.0, 2 / 255])
    detect_from: Optional[float] = None
    synthetic: dict = field(default_factory=dict)
    classes: int = field(default=2, init=False)  # the flag's, which the synthetic data take

    def __post_init__(self) -> None:
        self.synthetic = check_synthetic(self.synthetic or {})
        self.datasets = self.datasets or [{"flag": "pneumoniamnist"}]
        super().__post_init__()
        if len(self.datasets) != 1:
            raise ConfigError("positive control: one datasets entry (the flag whose layout the synthetic files take)")
        info, size = dataset_info(self.datasets[0]["flag"]), self.datasets[0].get("size", 28)
        if info.task == MULTILABEL or info.n_channels != 1:
            raise ConfigError(f"positive control: the synthetic data are grey with one label per image; {info.flag} "
                              "is not")
        if info.num_classes > 2 and (info.num_classes > PATTERN_CLASSES or size % 4):
            raise ConfigError(f"positive control: the synthetic patterns cover up to {PATTERN_CLASSES} classes at a "
                              f"size divisible by 4; {info.flag} at {size} px is not")
        self.classes = info.num_classes
        self.amplitudes, self.detect_from = check_amplitudes(self.amplitudes, self.detect_from, self.d_rand_budget,
                                                             size, self.classes)
        self.d_det  # at most one D_det set, checked here

    @property
    def d_rand(self) -> str:
        """The construction the control reads: the one D_rand set with a leakage model."""
        names = [n for n, s in self.constructions.items() if construction_kind(n, s) == "d_rand" and s.get("leakage")]
        if len(names) != 1:
            raise ConfigError("positive control: constructions needs exactly one d_rand set with a leakage model "
                              "({d_rand: {source: erm, leakage: robust_l2, epsilon: 1.0, ...}}), got "
                              f"{len(names)}")
        return names[0]

    @property
    def d_det(self) -> Optional[str]:
        """The D_det construction the control also reads, if the config has one."""
        names = [n for n, s in self.constructions.items() if construction_kind(n, s) == "d_det"]
        if len(names) > 1:
            raise ConfigError(f"positive control: constructions holds at most one d_det set, got {len(names)}")
        return names[0] if names else None

    @property
    def d_rand_budget(self) -> float:
        spec = {**self.construction_defaults, **self.constructions[self.d_rand]}
        from constructions import Settings

        return float(spec.get("epsilon", Settings().epsilon))

    def arm(self, amplitude: float, root: Path) -> NonrobustStudy:
        """The nonrobust study of one amplitude: the data under `root`; with the pattern, every constructed set must
        carry its new labels to the source (the pattern is moved within the budget), checked before training."""
        dataset = {**self.datasets[0], "root": str(root), "verify_md5": False}
        constructions = {name: {**spec, "require_assigned": amplitude > 0} for name, spec in self.constructions.items()}
        keys = {f.name: getattr(self, f.name) for f in fields(NonrobustStudy) if f.init}
        keys.update(datasets=[dataset], constructions=constructions, endpoints=self.given_endpoints)
        return NonrobustStudy(**keys)

    @property
    def given_endpoints(self) -> dict:
        """The endpoints as the config gave them (the parent checks them into a plan): D_rand's net measure."""
        plan = self.endpoints
        return {"primary": {e.model: e.measure for e in plan["primary"]}, "correction": plan["correction"]} \
            if plan["declared"] else None

    def reproduce(self, out: Path, log=print) -> list[dict]:
        """Run (or reuse) every amplitude's study under `out` and write the detection curve and the verdict."""
        return reproduce(self, Path(out), log)


def check_synthetic(given: dict) -> dict:
    """synthetic: write_positive_control_npz's settings (SYNTHETIC), checked."""
    if not isinstance(given, dict) or set(given) - set(SYNTHETIC):
        raise ConfigError(f"positive control: synthetic takes {', '.join(SYNTHETIC)}, got {given!r}")
    out = {**SYNTHETIC, **given}
    for name in ("n_train", "n_val", "n_test"):
        n = out[name]
        if isinstance(n, bool) or not isinstance(n, int) or n < 32:
            raise ConfigError(f"positive control: synthetic.{name} needs at least 32 images, got {n!r}")
    for name in ("shape_contrast", "noise", "shape_agreement", "contrast_jitter"):
        value = out[name]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise ConfigError(f"positive control: synthetic.{name} must be a number >= 0, got {value!r}")
    if not 0.5 <= out["shape_agreement"] <= 1:
        raise ConfigError(f"positive control: synthetic.shape_agreement must lie in [0.5, 1], got "
                          f"{out['shape_agreement']!r}")
    if not 0 <= out["contrast_jitter"] < 1:
        raise ConfigError(f"positive control: synthetic.contrast_jitter must lie in [0, 1), got "
                          f"{out['contrast_jitter']!r}")
    return out


def check_amplitudes(amplitudes, detect_from, budget: float, size: int,
                     classes: int = 2) -> tuple[list[float], float]:
    """The amplitudes swept (0, the control, and at least one pattern whose move to another class's,
    datamodules.synthetic.pattern_flip_l2, is below the construction's budget) and the smallest that must be
    detected (default: the smallest above 0)."""
    if not isinstance(amplitudes, list) or not amplitudes:
        raise ConfigError(f"positive control: amplitudes must be a list of pattern amplitudes, got {amplitudes!r}")
    values = sorted({_number("amplitudes", a) for a in amplitudes})
    if values[0] < 0 or 0.0 not in values or len(values) < 2:
        raise ConfigError("positive control: amplitudes needs 0 (the control: no pattern) and at least one amplitude "
                          f"above 0, none negative; got {amplitudes!r}")
    for a in values:
        if pattern_flip_l2(a, size, classes) >= budget:
            raise ConfigError(f"positive control: the pattern at amplitude {a:.4f} is flipped by L2 "
                              f"{pattern_flip_l2(a, size, classes):.3f}, not below the construction's budget "
                              f"{budget}: lower it")
    detect = values[1] if detect_from is None else _number("detect_from", detect_from)
    if detect not in values[1:]:
        raise ConfigError(f"positive control: detect_from must be one of the amplitudes above 0, got {detect_from!r}")
    return values, detect


def _number(name: str, value) -> float:
    from attacks.threat_model import parse_epsilon

    try:
        return float(parse_epsilon(value, "l2")) if isinstance(value, str) else float(value)
    except (TypeError, ValueError, ConfigError):
        raise ConfigError(f"positive control: {name} takes numbers (2/255 works), got {value!r}") from None


def load(path: str | Path, overrides: Optional[list[str]] = None) -> Study:
    return load_study(Study, path, overrides)


# ---- the sweep ---------------------------------------------------------------------------------------------------
def arm_folder(out: Path, amplitude: float) -> Path:
    return out / f"amplitude_{amplitude * 255:g}_255"


def run_arm(study: Study, amplitude: float, out: Path, log=print) -> dict:
    """One amplitude: its data written (once), then the nonrobust study run on it; {'rows': the D_rand model's
    results rows[, 'd_det_rows': the D_det model's]} or {'broken': the audit's line} when a construction fails the
    audit."""
    from datamodules.synthetic import write_positive_control_npz

    from .nonrobust.pipeline import reproduce as run_study

    folder = arm_folder(out, amplitude)
    root = folder / "data"
    entry = study.datasets[0]
    if not any(root.glob("*.npz")):
        write_positive_control_npz(root, amplitude, flag=entry["flag"], size=entry.get("size", 28), **study.synthetic)
    try:
        rows = run_study(study.arm(amplitude, root), folder, log=lambda line: log(f"[amplitude {amplitude:.4f}] "
                                                                                  + line))
    except ConstructionBroken as err:
        return {"broken": str(err)}
    arm = {"rows": [r for r in rows if r["model"] == study.d_rand]}
    if study.d_det:
        arm["d_det_rows"] = [r for r in rows if r["model"] == study.d_det]
    return arm


def summarise(rows: list[dict], level: float, over_seeds: bool, curve: tuple = CURVE, classes: int = 2) -> dict:
    """{column: {mean, sd, low, high, seeds[, verdict]}} of a constructed model over seeds (`curve`'s columns: the
    D_rand model's, CURVE, or the D_det model's, D_DET_CURVE): a t interval over seeds
    (evaluation.statistics.seed_interval), or with one seed its bootstrap interval over test examples; a verdict
    against chance (measures.chance_of: 0.5 for AUROC, 1 / C for balanced accuracy) for the curve's verdict
    columns."""
    from evaluation.statistics import seed_interval

    judged = ("auroc", NET) if curve is CURVE else tuple(column for column, _ in curve[:4])
    out = {}
    for column, _ in curve:
        values = [r.get(column) for r in rows if isinstance(r.get(column), (int, float))]
        if not values:
            continue
        if over_seeds and len(values) > 1 or f"{column}_low" not in rows[0]:
            stats = seed_interval(values, level)
        else:
            stats = {"mean": values[0], "sd": 0.0, "low": rows[0][f"{column}_low"], "high": rows[0][f"{column}_high"],
                     "seeds": 1}
        if column in judged:
            chance = measures.chance_of(NET if column == NET else column, classes)
            stats["verdict"] = measures.verdict(stats["low"], stats["high"], chance)
        out[column] = stats
    return out


def failures(curve: dict, detect_from: float, classes: int = 2) -> list[str]:
    """What the control requires of the curve ({amplitude: {'summary': summarise(...)[, 'd_det': the D_det
    model's]} or {'broken': line}}), as failures (empty: it passes): module docstring."""
    out = []
    for amplitude, arm in curve.items():
        if "broken" in arm:
            out.append(f"amplitude {amplitude:.4f}: {arm['broken']}")
            continue
        net = arm["summary"].get(NET)
        if net is None:
            out.append(f"amplitude {amplitude:.4f}: no AUROC net of leakage (the D_rand set names no leakage model)")
        elif amplitude == 0 and net["verdict"] == measures.HOLDS:
            out.append(f"without the pattern (amplitude 0), the D_rand model's test AUROC net of leakage {_fmt(net)} "
                       "is above chance: the leakage correction does not remove what robust features carry")
        elif amplitude >= detect_from and net["verdict"] != measures.HOLDS:
            out.append(f"with the pattern at amplitude {amplitude:.4f}, the D_rand model's test AUROC net of leakage "
                       f"{_fmt(net)} is not above chance: finding 1 is not seen where it is true")
        if "d_det" in arm:
            out += d_det_failures(arm["d_det"], amplitude, detect_from, classes)
    return out


def d_det_failures(summary: dict, amplitude: float, detect_from: float, classes: int) -> list[str]:
    """What the control requires of the D_det model at one amplitude (module docstring): read net of leakage."""
    out, net, shifted = [], summary.get(NET), summary.get("bacc_vs_new_label")
    if net is None:
        return [f"amplitude {amplitude:.4f}: no D_det AUROC net of leakage (the D_det set names no leakage model)"]
    if amplitude == 0 and net["verdict"] == measures.HOLDS:
        out.append(f"without the pattern (amplitude 0), the D_det model's test AUROC on the real labels net of "
                   f"leakage {_fmt(net)} is above chance: D_det reads as finding 1 with no nonrobust feature to "
                   "carry it")
    elif amplitude >= detect_from:
        if net["verdict"] != measures.HOLDS:
            out.append(f"with the pattern at amplitude {amplitude:.4f}, the D_det model's test AUROC on the real "
                       f"labels net of leakage {_fmt(net)} is not above chance: D_det's finding is not seen where it "
                       "is true")
        if classes > 2 and shifted is not None and shifted["verdict"] == measures.HOLDS:
            out.append(f"with the pattern at amplitude {amplitude:.4f}, the D_det model's balanced accuracy against "
                       f"(y + 1) mod {classes} {_fmt(shifted)} is above chance {1 / classes:.3f}: it learned the "
                       "visible features D_det's labels shift")
    return out


def over_seeds(values: list[float], level: float, chance: float = 0.5) -> dict:
    """Mean, sd and a t interval over seeds, and the verdict against `chance` (evaluation.statistics.seed_interval
    owns the interval)."""
    from evaluation.statistics import seed_interval

    stats = seed_interval(values, level)
    return {**stats, "values": [float(v) for v in values], "verdict": measures.verdict(stats["low"], stats["high"],
                                                                                       chance)}


def reproduce(study: Study, out: Path, log=print) -> list[dict]:
    out.mkdir(parents=True, exist_ok=True)
    level = study.statistics["level"]
    curve, rows = {}, []
    for amplitude in study.amplitudes:
        arm = run_arm(study, amplitude, out, log)
        if "rows" in arm:
            arm["summary"] = summarise(arm["rows"], level, study.over_seeds, CURVE, study.classes)
            rows += csv_rows(amplitude, study.d_rand, arm["rows"], arm["summary"], CURVE)
        if "d_det_rows" in arm:
            arm["d_det"] = summarise(arm["d_det_rows"], level, study.over_seeds, D_DET_CURVE, study.classes)
            rows += csv_rows(amplitude, study.d_det, arm["d_det_rows"], arm["d_det"], D_DET_CURVE)
        curve[amplitude] = arm
    failed = failures(curve, study.detect_from, study.classes)
    summary = {a: ({"broken": arm["broken"]} if "broken" in arm else
                   {key: arm[key] for key in ("summary", "d_det") if key in arm}) for a, arm in curve.items()}
    write_json_atomic(out / "results.json", {"amplitudes": study.amplitudes, "detect_from": study.detect_from,
                                             "classes": study.classes,
                                             "curve": {f"{a:.6f}": s for a, s in summary.items()},
                                             "failures": failed, "passed": not failed})
    write_csv(rows, out / "results.csv")
    write_text_atomic(out / "results.md", markdown(study, summary, failed))
    log(("passed" if not failed else "FAILED: " + "; ".join(failed)) + f" ({out / 'results.md'})")
    return rows


def csv_rows(amplitude: float, model: str, rows: list[dict], summary: dict, curve: tuple) -> list[dict]:
    """results.csv's rows of one constructed model at one amplitude: one per seed, then the summary over seeds."""
    out = [{"amplitude": amplitude, "seed": r["seed"], "model": model,
            **{k: r[k] for column, _ in curve for k in (column, f"{column}_low", f"{column}_high") if k in r}}
           for r in rows]
    return out + [{"amplitude": amplitude, "seed": measures.SUMMARY_SEED, "model": model,
                   **{f"{column}{suffix}": stats[key] for column, stats in summary.items()
                      for suffix, key in (("", "mean"), ("_low", "low"), ("_high", "high"))},
                   "n_seeds": len(rows)}]


def markdown(study: Study, curve: dict, failed: list[str]) -> str:
    spec = {**study.construction_defaults, **study.constructions[study.d_rand]}
    size = study.datasets[0].get("size", 28)
    how = ("t interval over seeds" if study.over_seeds else "bootstrap interval over test examples")
    lines = ["# Positive control: the nonrobust-features study on data where finding 1 is true by construction", "",
             f"The study's own pipeline (studies.nonrobust) on synthetic {size} px data with {study.classes} classes "
             f"({study.synthetic['n_train']} training images), D_rand at L2 {spec.get('epsilon')} "
             f"({spec.get('steps')} steps of {spec.get('step')}), leakage model `{spec.get('leakage')}`; seeds "
             f"{study.seeds}. Cells: D_rand model on the real test split, mean ± sd [{study.statistics['level']:.0%} "
             f"{how}]; the net AUROC takes off the leakage baseline (studies.nonrobust.leakage). The pattern must be "
             f"detected (net AUROC above chance) from amplitude {study.detect_from * 255:g}/255 up, and not at 0.", ""]
    lines += _table(study, curve, "summary", CURVE, ("auroc", NET))
    if study.d_det:
        lines += ["", f"The D_det model (`{study.d_det}`), on the same test split: its AUROC on the real labels net "
                  "of leakage (less the leakage model's AUROC against the new labels on the constructed images above "
                  f"the same on the original ones) must be above chance from {study.detect_from * 255:g}/255 up and "
                  "not at 0; "
                  + (f"against the D_det label (y + 1) mod {study.classes} (chance {1 / study.classes:.3f}) it must "
                     "not be above chance where the pattern is planted (it did not learn the visible bar that D_det's "
                     "labels shift)." if study.classes > 2 else
                     "with two classes (y + 1) mod 2 = 1 - y, so the balanced accuracy against it is 1 - bacc and "
                     "says nothing more."), ""]
        lines += _table(study, curve, "d_det", D_DET_CURVE, tuple(c for c, _ in D_DET_CURVE[:4]))
    lines += ["", "**Passed**: the pipeline detects the nonrobust pattern where it is planted, and, net of leakage, "
              "not where it is not." if not failed else "**Failed**:\n" + "\n".join(f"- {f}" for f in failed)]
    return "\n".join(lines) + "\n"


def _table(study: Study, curve: dict, key: str, columns: tuple, judged: tuple) -> list[str]:
    """One constructed model's curve as a markdown table: a row per amplitude, its measures and verdicts."""
    size = study.datasets[0].get("size", 28)
    out = ["| amplitude | flipped by L2 | " + " | ".join(name for _, name in columns) + " | "
           + " | ".join(f"verdict ({dict(columns)[c]})" for c in judged) + " |",
           "|---|---|" + "---|" * (len(columns) + len(judged))]
    for amplitude, arm in curve.items():
        head = f"| {amplitude * 255:g}/255 | {pattern_flip_l2(amplitude, size, study.classes):.3f} | "
        if "broken" in arm:
            out.append(head + "construction broken (below) |" + " |" * (len(columns) + len(judged) - 1))
            continue
        s = arm.get(key, {})
        out.append(head + " | ".join(_fmt(s[c]) if c in s else "-" for c, _ in columns) + " | "
                   + " | ".join(s[c]["verdict"] if c in s else "-" for c in judged) + " |")
    return out


def _fmt(stats: dict) -> str:
    return measures.describe(stats, 0.5)


DESCRIPTION = Study.DESCRIPTION
