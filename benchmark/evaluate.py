"""`python -m benchmark evaluate CKPT --protocol NAME --out DIR`: a checkpoint scored under a protocol, one entry.

The scoring is the RobustnessCallback's evaluators (PGD and AutoAttack per threat model, MedMNIST-C with mCE against
a baseline, calibration of every set) run outside a Trainer on the protocol's settings, plus the gradient-masking
screen (benchmark.screen). Every check of the input happens before any scoring, and nothing is written until the
whole entry is ready.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch

from attacks.threat_model import epsilon_label, parse_epsilon
from benchmark.baseline import SELF, baseline_identity, name_in_table, own_baseline
from benchmark.entry import BLOCK, ENTRY_VERSION, Entry
from benchmark.protocol import Protocol
from benchmark.screen import chance_bacc, masking_screen
from core.errors import ConfigError
from datamodules.medmnist_c import DEFAULT_CACHE
from evaluation.checkpoints import check_checkpoint, load_module, read_checkpoint
from evaluation.evaluators import (
    AdversarialEvaluator, AdversarialSettings, AutoAttackSettings, ConfidenceSettings, CorruptionSettings,
    EvaluationRun, RobustnessSettings, Scorer,
)
from evaluation.record import ResultRecord, with_provenance
from evaluation.reports import timestamp
from lightning_modules.settings import setting

#: the datamodule settings a checkpoint's model input depends on (taken from the checkpoint)
INPUT_SETTINGS = ("as_rgb", "resize")


class _Run(EvaluationRun):
    """An evaluation outside a Trainer: metrics are kept, not logged on the module."""

    def log(self, key: str, value: float) -> None:
        self.logged[key] = value


@dataclass
class _ForwardCounter:
    """Images passed through the model's forward, counted by a hook (every attack and scoring pass)."""

    images: int = 0

    def __call__(self, module, args, output) -> None:
        self.images += int(args[0].shape[0]) if args and torch.is_tensor(args[0]) else 0


def check_input_contract(model, path) -> None:
    """Budgets are in [0, 1] pixel units, so the model must normalise its own input: a model with no normalisation
    layer (lightning_modules.models.Normalize) was trained on inputs normalised outside it and is refused."""
    from lightning_modules.models import Normalize

    if not any(isinstance(module, Normalize) for module in model.modules()):
        raise ConfigError(f"{path}: the model has no normalisation layer, so it expects inputs normalised outside it; "
                          "benchmark epsilons are in [0, 1] pixel units: put the normalisation inside the model")


def check_dataset(checkpoint: dict, protocol: Protocol, path) -> dict:
    """The checkpoint's datamodule settings, after refusing a checkpoint of another dataset or image size."""
    saved = dict(checkpoint.get("datamodule_hyper_parameters") or {})
    flag, size = saved.get("flag"), saved.get("size")
    if (flag is not None and flag != protocol.flag) or (size is not None and size != protocol.size):
        raise ConfigError(f"{path} was trained on {flag} at {size} px; protocol {protocol.name} is for {protocol.flag} "
                          f"at {protocol.size} px: choose the protocol of its dataset and size")
    return saved


def _datamodule(protocol: Protocol, saved: dict, root: Optional[str]):
    from datamodules.medmnist import MedMNISTDataModule

    inputs = {key: saved[key] for key in INPUT_SETTINGS if saved.get(key) is not None}
    return MedMNISTDataModule(protocol.flag, protocol.size, root=root, verify_md5=False, augment=False,
                              subsample_test=protocol.settings["examples"], subsample_seed=protocol.settings["seed"],
                              **inputs)


def robustness_settings(protocol: Protocol, norm: str, corruption: bool, cache: str,
                        baseline: Optional[str], workers: Optional[int]) -> RobustnessSettings:
    """The callback's settings for one threat model of the protocol (MedMNIST-C only with the first)."""
    s = protocol.settings
    return RobustnessSettings(
        adversarial=AdversarialSettings(epsilons=tuple(s["threat_models"][norm]), norm=norm,
                                        test_steps=s["pgd"]["steps"], test_restarts=s["pgd"]["restarts"]),
        autoattack=AutoAttackSettings(enabled=True, version=s["autoattack"]["version"], samples=None,
                                      attacks=s["autoattack"]["attacks"],
                                      square_queries=s["autoattack"]["square_queries"]),
        corruption=CorruptionSettings(epoch=False, report=corruption, corruptions=s["corruption"]["corruptions"],
                                      cache=cache, workers=workers,
                                      baseline=baseline if corruption and baseline != SELF else None),
        confidence=ConfidenceSettings(enabled=True, bins=s["confidence"]["bins"]),
        batch_size=s["batch_size"], seed=s["seed"],
    )


def _evaluators(settings: RobustnessSettings):
    from callbacks.robustness import RobustnessCallback

    callback = RobustnessCallback()
    callback.configure(settings)
    return callback


def default_name(model, sha256: str) -> str:
    """`ERM-small_cnn-1a2b3c4d`: class, architecture and the start of the checkpoint's hash."""
    arch = str(setting(model.hparams, "arch", "model")).replace("/", "_")
    return f"{type(model).__name__}-{arch}-{sha256[:8]}"


def evaluate_checkpoint(checkpoint, protocol: Protocol, root: Optional[str] = None, cache: str = DEFAULT_CACHE,
                        baseline: Optional[str] = None, name: Optional[str] = None,
                        workers: Optional[int] = None, additional_data: bool = False) -> tuple[Entry, dict]:
    """(entry, timing) of `checkpoint` under `protocol`; one-line ConfigError/DataError for input it cannot score."""
    from core.files import file_digest
    from datamodules.info import expected_md5
    from datamodules.npz import file_md5

    path = Path(checkpoint).expanduser()
    raw = read_checkpoint(path)
    saved = check_dataset(raw, protocol, path)
    model = load_module(path)
    check_input_contract(model, path)
    dm = _datamodule(protocol, saved, root)
    check_checkpoint(raw, {"num_classes": dm.num_classes, "in_channels": dm.in_channels, "task": dm.task}, path)
    norms = protocol.norms
    if not norms:
        raise ConfigError(f"protocol {protocol.name} has no threat model with epsilons")
    callbacks = {norm: _evaluators(robustness_settings(protocol, norm, i == 0, cache, baseline, workers))
                 for i, norm in enumerate(norms)}
    for callback in callbacks.values():
        callback.check_settings(model, dm)  # unknown corruptions, an unusable baseline: before any scoring
    identity = baseline_identity(baseline, protocol.label)
    data_md5 = file_md5(dm.npz_path())
    official = data_md5 == expected_md5(protocol.flag, protocol.size)
    sha256 = file_digest(path)
    name = name or default_name(model, sha256)
    if "/" in name or name.startswith("."):
        raise ConfigError(f"entry name {name!r} must be a plain file name")

    counter = _ForwardCounter()
    hook = model.register_forward_hook(counter)
    seconds, passes, reports = {}, {}, {}
    started = time.time()
    try:
        with torch.inference_mode(False):
            for norm, callback in callbacks.items():
                reports[norm], seconds[norm], passes[norm] = _timed(counter, lambda c=callback: _report(c, model, dm))
            large, seconds["screen"], passes["screen"] = _timed(counter, lambda: _large_epsilon(protocol, model, dm))
    finally:
        hook.remove()
    primary, *others = norms
    if baseline == SELF:
        identity = own_baseline(reports[primary], name, sha256, path.name)
    elif identity is not None:
        name_in_table(reports[primary], identity)
    screen = masking_screen({norm: reports[norm] for norm in norms}, large, chance_bacc(dm.task, dm.num_classes),
                            protocol.settings["screen"])
    reasons = ([] if protocol.standard else [f"protocol overrides: {', '.join(protocol.overrides)}"]) + \
        ([] if official else [f"test data MD5 {data_md5} is not the official {protocol.flag} file's"])
    block = {
        "entry_version": ENTRY_VERSION, "name": name, "protocol": {**protocol.to_dict(), "standard": not reasons},
        "nonstandard": reasons, "additional_data": additional_data, "mce_baseline": identity,
        "model": {"class": type(model).__name__, "architecture": str(setting(model.hparams, "arch", "unknown"))},
        "threat_models": {norm: {k: reports[norm][k] for k in ("threat_model", "pgd", "autoattack")}
                          for norm in others},
        "screen": screen,
        "forward_passes": {"per_prediction": 1, "evaluation": counter.images, "by_part": passes},
    }
    record = ResultRecord.from_dict({**reports[primary], BLOCK: block}, f"entry {name}")
    record.provenance.checkpoint = str(path)
    record = with_provenance(record)
    record.provenance.checkpoint = path.name  # the bytes of an entry do not depend on where the file was
    record.provenance.data_md5 = data_md5
    timing = {"created": timestamp(), "seconds": round(time.time() - started, 1),
              "seconds_by_part": {k: round(v, 1) for k, v in seconds.items()}, "forward_passes": counter.images,
              "threads": torch.get_num_threads(), "device": "cpu"}
    return Entry(record), timing


def _timed(counter: _ForwardCounter, work) -> tuple[Any, float, int]:
    start, images = time.time(), counter.images
    result = work()
    return result, time.time() - start, counter.images - images


def _report(callback, model, dm) -> dict:
    """The callback's test report for one threat model, without a Trainer (callbacks.robustness owns its header and
    scoring); the data folder and the seconds are left out, so the entry's bytes do not depend on where or when."""
    run = _Run(model, dm, callback.scorer)
    report = callback.report_header(run, None)
    del report["datamodule"]["root"]
    report = callback.score_report(run, report)
    del report["seconds"]
    return report


def _large_epsilon(protocol: Protocol, model, dm) -> dict:
    """PGD at the screen's large L-inf budget on the test split (no confidence measures)."""
    screen = protocol.settings["screen"]
    eps = parse_epsilon(screen["large_epsilon"], "linf")
    evaluator = AdversarialEvaluator(AdversarialSettings(epsilons=(eps,), norm="linf",
                                                         test_steps=screen["large_steps"], test_restarts=1),
                                     protocol.settings["seed"])
    report: dict = {}
    evaluator.report_section(_Run(model, dm, Scorer(protocol.settings["batch_size"])), report)
    scores = report["pgd"][epsilon_label(eps)]
    return {"label": epsilon_label(eps), "epsilon": eps, "steps": screen["large_steps"], "bacc": scores["bacc"],
            "acc": scores["acc"], "clean_bacc": report["clean"]["bacc"]}
