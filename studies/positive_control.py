"""The nonrobust-features study's positive control: can the pipeline see finding 1 when it is true, and only then?

A synthetic two-class dataset in the MedMNIST format (datamodules.synthetic.positive_control_arrays) carries its label
twice: in a large bright bar (robust: erasing it costs far more than the attack budget; it shows the class on 3 of 4
training images) and in a faint checkerboard whose sign is the class (nonrobust: an L2 perturbation below the budget
flips it). A standard small CNN trained on it is the source; D_rand is built from it with the project's construction
(constructions.build: targeted L2 PGD towards a random label, relabelled); a fresh small CNN trained on D_rand is
scored on the real test split and on probes that carry only the pattern (no bar) or only the bar.

Every seed redraws the data, the source, the construction and the D_rand model, so the seed is the unit of
replication: each number is a mean over seeds with a t interval over seeds (per-seed bootstrap intervals over test
examples are in results.json). The control passes when
- with the pattern, the D_rand model's test AUROC is above chance (finding 1 seen where it is true), and so is its
  AUROC on pattern-only probes (what it learned is the pattern);
- without the pattern (the control arm), its test AUROC is not above chance (no finding where there is none).
The bar-only AUROC is reported, not tested: a model trained on labels independent of the bar still prefers one
orientation by chance (a per-seed AUROC near 0 or 1 on bar-only probes, of random sign), and small perturbations
along the bar can carry a little of the label (robust-feature leakage, Goh 2019, in the Distill discussion of Ilyas
et al.): the control arm's mean says how much.

    python -m studies reproduce configs/study/positive_control.yaml --out runs/study/positive_control
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import ClassVar, Optional

import numpy as np
import torch

from core.errors import ConfigError
from core.files import write_json_atomic, write_text_atomic
from evaluation.statistics import percentile_interval, seed_interval

from . import measures
from .runner import load_study

ARMS = ("pattern", "control")  # with the faint pattern; without it
PROBES = ("test", "pattern_only", "bar_only")


@dataclass(frozen=True)
class Settings:
    """One positive-control run (defaults: about two minutes on a 2-core CPU)."""

    size: int = 28
    n_train: int = 512
    n_test: int = 256
    amplitude: float = 2 / 255        # pattern amplitude per pixel; flipping it costs L2 2 * amplitude * size
    shape_contrast: float = 0.5
    noise: float = 2 / 255
    shape_agreement: float = 0.75      # share of training images whose bar shows their class: the pattern is needed
    contrast_jitter: float = 0.5       # bar contrast drawn from [0.5, 1] x shape_contrast
    epsilon: float = 0.5               # the construction's L2 budget (Ilyas et al.'s CIFAR-10 value)
    steps: int = 10
    epochs: int = 20                   # the source's and the D_rand model's
    width: int = 16                    # the project's small CNN (lightning_modules.models.SmallCNN) at this width
    batch_size: int = 64
    lr: float = 3e-3
    seed: int = 0                      # the first seed; seeds seed, seed + 1, ...
    seeds: int = 5
    level: float = 0.95
    bootstrap: int = 200

    def check(self) -> "Settings":
        """ConfigError (one line) for a setting the control cannot be built with."""
        for name in ("size", "n_train", "n_test", "steps", "epochs", "width", "batch_size", "bootstrap", "seeds"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"positive control: {name} must be a positive integer, got {value!r}")
        for name in ("amplitude", "shape_contrast", "noise", "epsilon", "lr"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise ConfigError(f"positive control: {name} must be a positive number, got {value!r}")
        if self.seeds < 2:
            raise ConfigError(f"positive control: seeds {self.seeds}: the interval over seeds needs at least 2 "
                              "(3 or more for a useful one)")
        if not 0.5 <= self.level < 1:
            raise ConfigError(f"positive control: level must lie in [0.5, 1), got {self.level!r}")
        if self.size < 8:
            raise ConfigError(f"positive control: size {self.size} px leaves no room for the bar; use 8 or more")
        if min(self.n_train, self.n_test) < 32:
            raise ConfigError("positive control: n_train and n_test need at least 32 images each")
        if self.bootstrap < 100:
            raise ConfigError(f"positive control: bootstrap needs at least 100 draws, got {self.bootstrap}")
        flip = self.flip_l2
        if flip >= self.epsilon:
            raise ConfigError(f"positive control: the pattern (amplitude {self.amplitude:.4f}, flipped by L2 "
                              f"{flip:.3f}) is not below the attack budget epsilon {self.epsilon}: lower amplitude "
                              "or raise epsilon")
        if not 0 <= self.contrast_jitter < 1:
            raise ConfigError(f"positive control: contrast_jitter must lie in [0, 1), got {self.contrast_jitter!r}")
        if not 0.5 <= self.shape_agreement <= 1:
            raise ConfigError(f"positive control: shape_agreement must lie in [0.5, 1], got {self.shape_agreement!r}")
        if self.amplitude + 0.3 + self.shape_contrast > 1.0:
            raise ConfigError("positive control: background 0.3 + shape_contrast + amplitude must stay within 1")
        return self

    @property
    def flip_l2(self) -> float:
        """The L2 size of the perturbation that turns one class's pattern into the other's."""
        return 2 * self.amplitude * self.size


def settings_from(mapping: dict) -> Settings:
    names = {f.name for f in fields(Settings)}
    unknown = sorted(set(mapping) - names)
    if unknown:
        raise ConfigError(f"positive control: unknown setting(s) {', '.join(unknown)}: use {', '.join(sorted(names))}")
    try:
        return Settings(**mapping).check()
    except TypeError as err:
        raise ConfigError(f"positive control: {err}") from None


# ---- one seed of one arm ----------------------------------------------------------------------------------------
def _images(settings: Settings, n: int, seed: int, pattern: bool, **kw):
    from datamodules.synthetic import positive_control_arrays

    kw.setdefault("shape_agreement", settings.shape_agreement)
    kw.setdefault("contrast_jitter", settings.contrast_jitter)
    images, labels = positive_control_arrays(n, settings.size, settings.amplitude, pattern, settings.shape_contrast,
                                             settings.noise, seed, **kw)
    return torch.from_numpy(images)[:, None], torch.from_numpy(labels[:, 0].astype(np.int64))


def train_small_cnn(images: torch.Tensor, labels: torch.Tensor, settings: Settings, seed: int):
    """A standard (ERM) small CNN of lightning_modules.models at `settings.width`, trained with Adam on the images."""
    from lightning_modules.models import SmallCNN

    torch.manual_seed(seed)
    model = SmallCNN(1, 2, width=settings.width)
    optimizer = torch.optim.Adam(model.parameters(), lr=settings.lr)
    x, y = to_float(images), labels
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(settings.epochs):
        order = torch.randperm(len(x), generator=generator)
        for start in range(0, len(x), settings.batch_size):
            batch = order[start:start + settings.batch_size]
            loss = torch.nn.functional.cross_entropy(model(x[batch]), y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model.eval()


def run_arm(settings: Settings, pattern: bool, seed: int, build=None) -> dict:
    """One arm at one seed: a source model; D_rand built from it; its construction checked (construction_failures);
    then, unless the construction is broken, a fresh model trained on D_rand and its AUROC against the real labels (with
    a bootstrap interval over examples) on the real test split and on pattern-only and bar-only probes. `build`
    replaces constructions.build (the tests break the construction)."""
    from constructions import Settings as ConstructionSettings, build as construct
    from evaluation.runs import score
    from evaluation.scoring import predict

    build = build or construct
    s = seed * 10
    train_x, train_y = _images(settings, settings.n_train, s, pattern)
    test_x, test_y = _images(settings, settings.n_test, s + 2, pattern)
    probe = settings.n_test // 2
    probes = {"test": (test_x, test_y), "pattern_only": _images(settings, probe, s + 3, True, shape=False),
              "bar_only": _images(settings, probe, s + 4, False, shape_agreement=1.0)}
    source = train_small_cnn(train_x, train_y, settings, s)
    run = dict(task="multiclass", num_classes=2)

    def auroc(net, x, y) -> dict:
        predictions = {"task": "multiclass", "num_classes": 2, "targets": y,
                       "variants": {"default": predict(net, x, **run)}}
        entry = measures.draws(predictions, settings.bootstrap, s)["auroc"]
        low, high = percentile_interval(entry["draws"], settings.level)
        return {"value": entry["value"], "low": low, "high": high}

    out = {"seed": seed, "source": {"test": auroc(source, test_x, test_y),
                                    "pattern_only": auroc(source, *probes["pattern_only"]),
                                    "train_acc": score(predict(source, train_x, **run), train_y, "multiclass", 2,
                                                       ("acc",))["acc"]}}
    step = 2.5 * settings.epsilon / settings.steps
    made = build("d_rand", source, train_x, train_y, 2,
                 ConstructionSettings(epsilon=settings.epsilon, step=step, steps=settings.steps, scale=False,
                                      batch_size=256), seed=s + 5, progress=False)
    relabelled = made.labels != train_y
    assigned = predict(source, made.images, **run).argmax(1) == made.labels
    construction = {"labels_agree_with_original": float((~relabelled).float().mean()),
                    "relabelled": int(relabelled.sum()),
                    "assigned_share_relabelled": float(assigned[relabelled].float().mean()) if relabelled.any()
                    else float("nan"),
                    "perturbation_l2": float((made.images - to_float(train_x)).flatten(1).norm(dim=1).mean())}
    out["d_rand"] = {"construction": construction}
    broken = construction_failures(construction, settings.n_train, pattern)
    if broken:  # no model is trained on a construction known to be broken
        out["d_rand"]["broken"] = broken
        return out
    model = train_small_cnn(made.images, made.labels, settings, s + 5)
    out["d_rand"].update({name: auroc(model, x, y) for name, (x, y) in probes.items()})
    return out


def construction_failures(construction: dict, n_train: int, pattern: bool = True) -> list[str]:
    """What D_rand's construction must satisfy before a model is trained on it (empty: nothing broken).

    Its labels are drawn independently of the images' classes: they agree with the originals at chance (two-sided
    binomial, p < 0.001). With the pattern, its images carry their new labels: the source assigns the relabelled
    images to their new label above chance (one-sided binomial, p < 0.001), as the pattern is flipped within the
    budget; without the perturbation it would assign them to the old one. Without the pattern nothing below the
    budget need flip the source (that is the control), so the share is reported, not tested."""
    out = []
    agree = construction["labels_agree_with_original"]
    if abs(agree - 0.5) > 3.3 * math.sqrt(0.25 / n_train):
        out.append(f"D_rand's labels equal the original labels on {agree:.1%} of its images; D_rand draws them "
                   "independently of the originals (chance: 50%)")
    relabelled, assigned = construction["relabelled"], construction["assigned_share_relabelled"]
    if pattern and relabelled and not assigned - 0.5 > 3.1 * math.sqrt(0.25 / relabelled):
        out.append(f"the source assigns {assigned:.1%} of D_rand's {relabelled} relabelled images to their new label "
                   "(chance: 50%): the perturbation does not carry the new label")
    return out


def to_float(images: torch.Tensor) -> torch.Tensor:
    from datamodules.tensors import to_unit_range

    return to_unit_range(images.clone()).float()


# ---- over seeds -------------------------------------------------------------------------------------------------
def over_seeds(values: list[float], level: float, chance: float = 0.5) -> dict:
    """Mean, sd and a t interval over seeds (the seed redraws data, source, construction and model), and the verdict
    against `chance` (AUROC 0.5; 0 for a difference); evaluation.statistics.seed_interval owns the interval."""
    stats = seed_interval(values, level)
    return {**stats, "values": np.asarray(values, dtype=float).tolist(),
            "verdict": measures.verdict(stats["low"], stats["high"], chance)}


def run(settings: Settings, arms=ARMS, build=None, log=None) -> dict:
    """{arm: {'seeds': [run_arm per seed], 'summary': {probe: over_seeds(...)}}} for the chosen arms. An arm stops at
    the first seed whose construction is broken (its summary is then None: there is no model to summarise)."""
    out = {}
    for arm in arms:
        per_seed = []
        for seed in range(settings.seed, settings.seed + settings.seeds):
            if log:
                log(f"[positive control] {arm}, seed {seed}: source, D_rand, model on D_rand")
            per_seed.append(run_arm(settings, arm == "pattern", seed, build))
            if "broken" in per_seed[-1]["d_rand"]:
                if log:
                    log(f"[positive control] {arm}, seed {seed}: construction broken; the arm stops here")
                break
        broken = any("broken" in r["d_rand"] for r in per_seed)
        summary = None if broken else {probe: over_seeds([r["d_rand"][probe]["value"] for r in per_seed],
                                                         settings.level) for probe in PROBES}
        out[arm] = {"seeds": per_seed, "summary": summary, "level": settings.level, "n_train": settings.n_train}
    return out


def failures(arms: dict) -> list[str]:
    """What the control requires of the arms given, as failures (empty: it passes).

    On every seed, D_rand's construction is sound (construction_failures: labels independent of the originals,
    images that carry their new labels). With the pattern, the D_rand model's test AUROC and its AUROC on
    pattern-only probes are above chance over seeds (finding 1 is seen where it is true, and what was learned is the
    pattern). Without the pattern, the D_rand model's test AUROC is lower, seed by seed (the arms share every image
    but the pattern): a t interval on the paired differences above 0. The control is not required to sit at chance:
    at this budget the perturbation carries a little of the bar itself (robust-feature leakage), and its AUROC is
    reported as what that leakage is worth."""
    out = []
    for arm, result in arms.items():
        for r in result["seeds"]:
            out += [f"{arm} arm, seed {r['seed']}: {f}" for f in r["d_rand"].get("broken", [])]
    summaries = {arm: result["summary"] for arm, result in arms.items() if result["summary"] is not None}
    if "pattern" in summaries:
        d_rand = summaries["pattern"]
        if d_rand["test"]["verdict"] != measures.HOLDS:
            out.append(f"with the pattern, the D_rand model's test AUROC {_fmt(d_rand['test'])} is not above chance: "
                       "finding 1 is not seen where it is true")
        if d_rand["pattern_only"]["verdict"] != measures.HOLDS:
            out.append(f"with the pattern, the D_rand model's AUROC on pattern-only probes "
                       f"{_fmt(d_rand['pattern_only'])} is not above chance: it did not learn the pattern")
    if "pattern" in summaries and "control" in summaries:
        gain = pattern_gain(arms)
        if gain["low"] <= 0:
            out.append(f"the D_rand model's test AUROC with the pattern minus without it, {_fmt(gain)} (paired by "
                       "seed), is not above 0: the pipeline's finding does not come from the nonrobust pattern")
    return out


def pattern_gain(arms: dict) -> dict:
    """The D_rand model's test AUROC with the pattern minus without it, seed by seed, over seeds (t interval)."""
    with_pattern = arms["pattern"]["summary"]["test"]["values"]
    without = arms["control"]["summary"]["test"]["values"]
    level = arms["pattern"].get("level", 0.95)
    return over_seeds([a - b for a, b in zip(with_pattern, without)], level, chance=0.0)


def _fmt(entry: dict) -> str:
    if "mean" in entry:
        return f"{entry['mean']:.3f} ± {entry['sd']:.3f} [{entry['low']:.3f}, {entry['high']:.3f}]"
    return f"{entry['value']:.3f} [{entry['low']:.3f}, {entry['high']:.3f}]"


# ---- as a study: python -m studies reproduce configs/study/positive_control.yaml --------------------------------
@dataclass
class Study:
    """A positive-control study config: its YAML keys are name and settings (Settings' fields)."""

    DESCRIPTION: ClassVar[str] = "the positive control of the nonrobust-features study (synthetic, a few minutes)"

    name: str = ""
    settings: Settings = field(default_factory=Settings)
    source: Path = Path("positive_control.yaml")

    def __post_init__(self) -> None:
        if self.settings is None or isinstance(self.settings, dict):
            self.settings = settings_from(self.settings or {})
        elif not isinstance(self.settings, Settings):
            raise ConfigError(f"settings must be a mapping, got {self.settings!r}")
        self.name = str(self.name or Path(self.source).stem)

    def reproduce(self, out: Path, log=print) -> list[dict]:
        """Run (or reuse) every step under `out` and write the results (studies.framework.Study)."""
        return reproduce(self, Path(out), log)


def load(path: str | Path, overrides: Optional[list[str]] = None) -> Study:
    return load_study(Study, path, overrides)


def reproduce(study: Study, out: Path, log=print) -> list[dict]:
    from .runner import write_csv

    out.mkdir(parents=True, exist_ok=True)
    arms = run(study.settings, log=log)
    failed = failures(arms)
    rows = [{"arm": arm, "seed": r["seed"], "probe": probe,
             **{f"auroc{suffix}": r["d_rand"][probe][key] for suffix, key in (("", "value"), ("_low", "low"),
                                                                               ("_high", "high"))}}
            for arm, result in arms.items() for r in result["seeds"] if "broken" not in r["d_rand"]
            for probe in PROBES]
    write_json_atomic(out / "results.json", {"settings": asdict(study.settings), "arms": arms, "failures": failed,
                                             "passed": not failed})
    write_csv(rows, out / "results.csv")
    write_text_atomic(out / "results.md", markdown(study.settings, arms, failed))
    log(("passed" if not failed else "FAILED: " + "; ".join(failed)) + f" ({out / 'results.md'})")
    return rows


def markdown(settings: Settings, arms: dict, failed: list[str]) -> str:
    lines = ["# Positive control: finding 1 where it is true by construction, and not where it is not", "",
             f"{settings.size} px, {settings.n_train} training images; pattern amplitude {settings.amplitude:.4f} "
             f"(flipped by L2 {settings.flip_l2:.3f}) below the construction's budget L2 {settings.epsilon}; "
             f"{settings.steps} PGD steps; {settings.seeds} seeds, each redrawing data, source, constructed sets and "
             f"models. Cells: AUROC against the real labels, mean ± sd over seeds [{settings.level:.0%} t interval "
             "over seeds]. Tested: with the pattern, test and pattern-only AUROC above chance; the test AUROC with the "
             "pattern minus without it (paired by seed) above 0. The control arm's own AUROC is the robust-feature "
             "leakage of the construction at this budget (reported, not tested).", "",
             "| arm | D_rand test AUROC | pattern-only probes | bar-only probes | verdict (test AUROC) |",
             "|---|---|---|---|---|"]
    for arm, result in arms.items():
        summary = result["summary"]
        lines.append(f"| {arm} | construction broken (below) | | | |" if summary is None else
                     f"| {arm} | {_fmt(summary['test'])} | {_fmt(summary['pattern_only'])} | "
                     f"{_fmt(summary['bar_only'])} | {summary['test']['verdict']} |")
    if all(arms.get(arm, {}).get("summary") for arm in ARMS):
        gain = pattern_gain(arms)
        lines += ["", f"D_rand test AUROC with the pattern minus without it, paired by seed: {_fmt(gain)} "
                  f"({'above 0' if gain['low'] > 0 else 'not above 0'})."]
    lines += ["", "Per seed (AUROC [bootstrap interval over test examples]; the source's test AUROC; D_rand's labels "
              "equal to the originals (chance 50%); the share of its relabelled images the source assigns to their new "
              "label; the mean perturbation L2):", "",
              "| arm | seed | source test AUROC | labels = originals | assigned | perturbation L2 | test "
              "| pattern-only "
              "| bar-only |", "|---|---|---|---|---|---|---|---|---|"]
    for arm, result in arms.items():
        for r in result["seeds"]:
            d, c = r["d_rand"], r["d_rand"]["construction"]
            cells = " | ".join(_fmt(d[probe]) if probe in d else "not trained" for probe in PROBES)
            lines.append(f"| {arm} | {r['seed']} | {_fmt(r['source']['test'])} | {c['labels_agree_with_original']:.3f} "
                         f"| {c['assigned_share_relabelled']:.3f} | {c['perturbation_l2']:.3f} | {cells} |")
    lines += ["", "**Passed**: the pipeline sees useful nonrobust features where they exist, and not where they do not."
              if not failed else "**Failed**:\n" + "\n".join(f"- {f}" for f in failed)]
    return "\n".join(lines) + "\n"


DESCRIPTION = Study.DESCRIPTION
