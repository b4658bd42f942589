"""The result record: what one evaluated checkpoint produced, typed and versioned, with one writer and one reader.

A record holds the scored sets (clean; PGD and AutoAttack per epsilon; the explanation measures per radius), the
MedMNIST-C table (per corruption and severity, with mCE against a baseline), the confidence settings, the threat
model, randomized smoothing's certified accuracy per radius (`certified`) and the provenance (config, checkpoint
and its sha256, data MD5, seed, package versions, time). Its numbers are read as `record.metrics()`, `{MetricKey:
value}` in the one grammar of lightning_modules.metrics, or as `record.measurements()` with the number of examples
and the settings of the attack or measure beside each value.

On disk it is the robustness report's JSON (`*.robustness.json`), so readers of that file keep working, plus
`record_version`. `read_record` migrates reports written before the record (version 0, no `record_version`) and
refuses a version it does not know in one line.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Optional

from core.errors import ConfigError
from core.files import file_digest, write_json_atomic
from lightning_modules.calibration import COUNTS
from lightning_modules.metrics import MetricKey

RECORD_VERSION = 1
#: report section -> MetricKey kind of its scores (the one copy of this mapping)
ATTACK_KINDS = {"pgd": "adv", "autoattack": "aa"}
#: entries of a scored set that describe it rather than score it
SET_SETTINGS = ("epsilon", "attack", "info", "clean_bacc_same_examples", "norm", "method", "k", "steps", "n_examples",
                "per_example")
#: the MedMNIST-C table's means -> their metric
TABLE_MEANS = {"mean_bacc": "bacc", "mean_be": "be", "mean_rbe": "rbe"}


@dataclass
class Measurement:
    """One number of a record with what it was measured on: examples (None where the report does not say) and the
    settings of the attack or measure."""

    value: float
    n_examples: Optional[int] = None
    settings: dict = field(default_factory=dict)


@dataclass
class ScoredSet:
    """One scored set of test images: clean, one attack at one epsilon, or the explanation measures at one radius.
    `scores` are the numbers (bacc, acc, auroc, confidence measures and their counts, explanation means)."""

    scores: dict[str, float]
    settings: dict = field(default_factory=dict)

    @classmethod
    def from_dict(cls, entry: dict, where: str) -> "ScoredSet":
        if not isinstance(entry, dict):
            raise ConfigError(f"record section {where} is not a mapping: {entry!r}")
        scores = {k: v for k, v in entry.items() if k not in SET_SETTINGS and _is_number(v)}
        return cls(scores, {k: v for k, v in entry.items() if k not in scores})

    def to_dict(self) -> dict:
        return {**self.scores, **self.settings}

    @property
    def epsilon(self) -> Optional[float]:
        return self.settings.get("epsilon")

    @property
    def n_examples(self) -> Optional[int]:
        """How many test examples the set scored (its own count, else the confidence measures' count)."""
        info = self.settings.get("info") if isinstance(self.settings.get("info"), dict) else {}
        n = self.settings.get("n_examples", info.get("n_examples", self.scores.get("n")))
        return None if n is None else int(n)

    def per_example(self, measure: str) -> list[float]:
        """An explanation measure's value on every example (the explanation sets keep them)."""
        values = (self.settings.get("per_example") or {}).get(measure)
        if values is None:
            raise ConfigError(f"the record keeps no per-example values of {measure!r} for this set")
        return values


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass
class Provenance:
    """Where the numbers came from: the checkpoint (path and sha256), the model, the data (dataset, DataModule
    settings, MD5 of the official file where it was checked), the training config, the seed, versions, time."""

    created: Optional[str] = None
    checkpoint: Optional[str] = None
    checkpoint_sha256: Optional[str] = None
    model: dict = field(default_factory=dict)
    dataset: dict = field(default_factory=dict)
    datamodule: dict = field(default_factory=dict)
    data_md5: Optional[str] = None
    config: Optional[dict] = None
    seed: Optional[int] = None
    versions: dict = field(default_factory=dict)


PROVENANCE = tuple(f.name for f in fields(Provenance))
SECTIONS = ("threat_model", "clean", "pgd", "autoattack", "corruptions", "explanations", "confidence", "certified",
            "seconds")
#: the certified section's per-radius scores -> their metric (test/cert_bacc@r0_5, test/cert_acc@r0_5)
CERTIFIED_METRICS = ("bacc", "acc")
#: the certified section's settings, kept beside each certified number
CERTIFIED_SETTINGS = ("sigma", "n0", "n", "alpha", "seed")


@dataclass
class ResultRecord:
    """What one evaluated checkpoint produced (see the module docstring). `corruptions` is the MedMNIST-C table,
    `mce` the mean corruption error against a baseline (evaluation.mce), `extra` any report entry this schema does
    not name, kept as written."""

    provenance: Provenance = field(default_factory=Provenance)
    threat_model: dict = field(default_factory=dict)
    clean: Optional[ScoredSet] = None
    pgd: dict[str, ScoredSet] = field(default_factory=dict)
    autoattack: dict[str, ScoredSet] = field(default_factory=dict)
    corruptions: Optional[dict] = None  # the MedMNIST-C table, CorruptionScores.to_dict() without `mce`
    mce: Optional[dict] = None
    explanations: dict[str, ScoredSet] = field(default_factory=dict)
    confidence: Optional[dict] = None
    #: randomized smoothing (evaluation.evaluators.certified): sigma, n0, n, alpha, n_examples, abstention_rate,
    #: radii {label: {radius, bacc, acc}}, per_example {index, label, prediction, radius}
    certified: Optional[dict] = None
    seconds: Optional[float] = None
    extra: dict = field(default_factory=dict)
    version: int = RECORD_VERSION

    # ---- numbers by metric key ---------------------------------------------------------------------------------
    def measurements(self, stage: str = "test") -> dict[MetricKey, Measurement]:
        """Every number of the record under its metric key, with examples and settings where known."""
        out: dict[MetricKey, Measurement] = {}

        def add(kind: str, scored: ScoredSet, condition=None) -> None:
            for name, value in scored.scores.items():
                if name not in COUNTS:
                    out[MetricKey(stage, kind, name, condition)] = Measurement(value, scored.n_examples,
                                                                               self._settings_of(kind, scored))

        if self.clean is not None:
            add("clean", self.clean)
        for section, kind in ATTACK_KINDS.items():
            for label, scored in getattr(self, section).items():
                add(kind, scored, label)
        for label, scored in self.explanations.items():
            add("expl", scored, label)
        out.update(self._corruption_measurements(stage))
        out.update(self._certified_measurements(stage))
        return out

    def metrics(self, stage: str = "test") -> dict[MetricKey, float]:
        """{MetricKey: value}: `test/clean_bacc`, `test/adv_bacc@4_255`, `test/aa_bacc@4_255`, `test/corr_bacc`,
        `test/corr_bacc@gaussian_noise`, `test/clean_bacc@roundtrip`, `test/corr_mce`, `test/expl_topk@4_255`, ..."""
        return {key: m.value for key, m in self.measurements(stage).items()}

    def _settings_of(self, kind: str, scored: ScoredSet) -> dict:
        settings = {k: v for k, v in scored.settings.items() if k not in ("per_example", "n_examples")}
        if kind in ("adv", "aa") and "norm" in self.threat_model:
            settings.setdefault("norm", self.threat_model["norm"])
        return settings

    def _corruption_measurements(self, stage: str) -> dict[MetricKey, Measurement]:
        table = self.corruptions
        if table is None:
            return {}
        n = (self.provenance.dataset or {}).get("n_examples")
        settings = {name: table.get(name) for name in ("protocol", "severities", "size")}
        out = {MetricKey(stage, "corr", metric): Measurement(table[mean], n, settings)
               for mean, metric in TABLE_MEANS.items() if _is_number(table.get(mean))}
        out.update({MetricKey(stage, "corr", "bacc", name): Measurement(value, n, settings)
                    for name, value in (table.get("corruption_bacc") or {}).items()})
        if _is_number(table.get("roundtrip_bacc")):
            out[MetricKey(stage, "clean", "bacc", "roundtrip")] = Measurement(table["roundtrip_bacc"], n, settings)
        pooled = (table.get("confidence") or {}).get("all") or {}
        pooled_n = pooled.get("n")
        out.update({MetricKey(stage, "corr", name): Measurement(value, pooled_n, settings)
                    for name, value in pooled.items() if name not in COUNTS and _is_number(value)})
        if self.mce and _is_number(self.mce.get("mce")):
            out[MetricKey(stage, "corr", "mce")] = Measurement(
                self.mce["mce"], n, {"baseline": self.mce.get("baseline"), **settings})
        return out

    def _certified_measurements(self, stage: str) -> dict[MetricKey, Measurement]:
        section = self.certified
        if not section:
            return {}
        n = section.get("n_examples")
        settings = {name: section.get(name) for name in CERTIFIED_SETTINGS if name in section}
        out = {MetricKey(stage, "cert", metric, label):
               Measurement(scores[metric], n, {**settings, "radius": scores.get("radius")})
               for label, scores in (section.get("radii") or {}).items()
               for metric in CERTIFIED_METRICS if _is_number(scores.get(metric))}
        if _is_number(section.get("abstention_rate")):
            out[MetricKey(stage, "cert", "abstain")] = Measurement(section["abstention_rate"], n, settings)
        return out

    # ---- sections ------------------------------------------------------------------------------------------------
    def attack(self, kind: str) -> dict[str, ScoredSet]:
        """The scored sets of an attack by its MetricKey kind (`adv`: PGD, `aa`: AutoAttack), by epsilon label."""
        for section, known in ATTACK_KINDS.items():
            if known == kind:
                return getattr(self, section)
        raise ConfigError(f"no attack of kind {kind!r}: the record's attacks are {', '.join(ATTACK_KINDS.values())}")

    def corruption_table(self) -> Optional[dict]:
        """The MedMNIST-C table (CorruptionScores.to_dict()) as evaluation.mce and the report read it, with `mce`
        when measured."""
        if self.corruptions is None:
            return None
        return dict(self.corruptions) if self.mce is None else {**self.corruptions, "mce": self.mce}

    # ---- the JSON form -------------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        """The on-disk JSON: the robustness report's keys (provenance at the top level) and `record_version`."""
        out: dict[str, Any] = {"record_version": self.version, **asdict(self.provenance),
                               "threat_model": self.threat_model}
        if self.clean is not None:
            out["clean"] = self.clean.to_dict()
        out["pgd"] = {label: s.to_dict() for label, s in self.pgd.items()}
        out["autoattack"] = {label: s.to_dict() for label, s in self.autoattack.items()}
        if self.corruptions is not None:
            out["corruptions"] = self.corruption_table()
        if self.explanations:
            out["explanations"] = {label: s.to_dict() for label, s in self.explanations.items()}
        for name in ("confidence", "certified", "seconds"):
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        return {**out, **self.extra}

    @classmethod
    def from_dict(cls, data: dict, source: str = "record") -> "ResultRecord":
        """A record from its JSON form; a report written before the record (version 0) is migrated first."""
        data = migrate(data, source)
        table = data.get("corruptions")
        return cls(
            provenance=Provenance(**{name: data[name] for name in PROVENANCE if data.get(name) is not None}),
            threat_model=dict(data.get("threat_model") or {}),
            clean=None if data.get("clean") is None else ScoredSet.from_dict(data["clean"], f"{source}: clean"),
            pgd=_scored_sets(data, "pgd", source),
            autoattack=_scored_sets(data, "autoattack", source),
            corruptions=None if table is None else _corruption_table(table, source),
            mce=None if table is None else table.get("mce"),
            explanations=_scored_sets(data, "explanations", source),
            confidence=data.get("confidence"),
            certified=_certified(data.get("certified"), source),
            seconds=data.get("seconds"),
            extra={k: v for k, v in data.items() if k not in (*PROVENANCE, *SECTIONS, "record_version")},
        )


def _scored_sets(data: dict, section: str, source: str) -> dict[str, ScoredSet]:
    entries = data.get(section) or {}
    if not isinstance(entries, dict):
        raise ConfigError(f"{source}: section {section!r} is not a mapping of epsilon labels")
    return {label: ScoredSet.from_dict(entry, f"{source}: {section}.{label}") for label, entry in entries.items()}


def _certified(section, source: str) -> Optional[dict]:
    if section is not None and not (isinstance(section, dict) and isinstance(section.get("radii", {}), dict)):
        raise ConfigError(f"{source}: the certified section is not a mapping with radii by label")
    return section


def _corruption_table(table, source: str) -> dict:
    """The MedMNIST-C table without its mCE (a field of its own in the record)."""
    if not isinstance(table, dict):
        raise ConfigError(f"{source}: the MedMNIST-C table (corruptions) is not a mapping")
    return {k: v for k, v in table.items() if k != "mce"}


# ---- versions ----------------------------------------------------------------------------------------------------
def migrate(data, source: str = "record") -> dict:
    """The JSON form of the current version: version 0 (a robustness report before the record, no
    `record_version`) gains the version and keeps every entry; a later version than this code knows is refused."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source} is not a result record (a JSON object), got {type(data).__name__}")
    version = data.get("record_version", 0)
    if not isinstance(version, int) or isinstance(version, bool) or not 0 <= version <= RECORD_VERSION:
        raise ConfigError(f"{source} has record_version {version!r}; this medrobust reads versions 0 to "
                          f"{RECORD_VERSION}: update medrobust, or evaluate the checkpoint again")
    if version == 0:
        data = {**data, "record_version": 1}
    return data


# ---- the one reader and the one writer ---------------------------------------------------------------------------
def read_record(path) -> ResultRecord:
    """The record at `path` (a report written before the record is migrated); ConfigError when it is missing,
    not JSON, or of a version this code does not know."""
    path = Path(path).expanduser()
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"no result record at {path}") from None
    except (OSError, ValueError) as err:
        raise ConfigError(f"{path} is not a JSON result record: {err}") from None
    return ResultRecord.from_dict(data, str(path))


def write_record(path, record: ResultRecord) -> Path:
    """The record as JSON at `path`, written atomically."""
    if not isinstance(record, ResultRecord):
        raise ConfigError(f"write_record writes a ResultRecord, got {type(record).__name__}")
    return write_json_atomic(path, record.to_dict())


def merge_record(path, new: ResultRecord) -> ResultRecord:
    """`new` on top of the record already at `path` for the same checkpoint, so a later evaluation (say,
    corruptions only) adds to the attacks measured before instead of erasing them. A file that cannot be read,
    or that is of another checkpoint (path, or bytes where both know them), is replaced."""
    try:
        old = read_record(path)
    except ConfigError:
        return new
    mine, theirs = new.provenance, old.provenance
    same = mine.checkpoint and theirs.checkpoint == mine.checkpoint and (
        not (mine.checkpoint_sha256 and theirs.checkpoint_sha256) or mine.checkpoint_sha256 == theirs.checkpoint_sha256)
    if not same:
        return new
    merged = ResultRecord.from_dict({**old.to_dict(), **new.to_dict()}, str(path))
    merged.pgd, merged.autoattack = {**old.pgd, **new.pgd}, {**old.autoattack, **new.autoattack}
    epsilons = {label: scored.epsilon for label, scored in merged.pgd.items()}
    merged.threat_model = {**new.threat_model, "epsilons": sorted(epsilons.values()),
                           "epsilon_labels": sorted(epsilons, key=epsilons.get)}
    return merged


def with_provenance(record: ResultRecord, data_verified: bool = False) -> ResultRecord:
    """The record with the provenance a report leaves out filled in where it can be known: the checkpoint's
    sha256, the official MD5 of the test data when the DataModule checked it (`data_verified`, no custom npz),
    and the training config the run saved (evaluation.layout)."""
    from evaluation.layout import RunLayout

    p = record.provenance
    checkpoint = Path(p.checkpoint) if p.checkpoint else None
    if checkpoint is not None and checkpoint.is_file():
        p.checkpoint_sha256 = p.checkpoint_sha256 or file_digest(checkpoint)
        config = RunLayout.of_checkpoint(checkpoint).config_file()
        if p.config is None and config is not None:
            import yaml

            p.config = yaml.safe_load(config.read_text())
    if p.data_md5 is None and data_verified and not (p.datamodule or {}).get("train_npz") and p.dataset.get("flag"):
        from datamodules.info import expected_md5

        p.data_md5 = expected_md5(p.dataset["flag"], p.dataset.get("size", 28))
    return record
