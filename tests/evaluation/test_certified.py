"""The certified evaluator's settings, keys and checks, the `cert` metric keys, and the record's certified section."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from callbacks.robustness import RobustnessCallback
from core.errors import ConfigError
from evaluation.evaluators import CertifiedEvaluator, CertifiedSettings
from evaluation.record import ResultRecord
from lightning_modules.metrics import MetricKey, metric_key, radius_label

CERT_KEYS = {f"test/cert_{m}@{label}" for m in ("bacc", "acc") for label in ("r0", "r0_25", "r0_5", "r1")}


def test_cert_keys_name_radii_with_one_canonical_label():
    assert [radius_label(r) for r in (0, 0.25, 0.5, 1.0, 2)] == ["r0", "r0_25", "r0_5", "r1", "r2"]
    for text in ("test/cert_bacc@r0_5", "test/cert_bacc@0.5", "test/cert_bacc@r0.5", "test/cert_bacc@0_5"):
        key = MetricKey.parse(text)
        assert str(key) == "test/cert_bacc@r0_5" and key.radius == 0.5 and key.epsilon is None
    assert metric_key("test", "cert", "acc", 0.25) == "test/cert_acc@r0_25"
    assert str(MetricKey.parse("test/cert_abstain")) == "test/cert_abstain"
    keys = sorted((MetricKey.parse(k) for k in ("test/cert_bacc@r1", "test/cert_bacc@r0_25", "test/cert_bacc@r0")),
                  key=MetricKey.sort_key)
    assert [k.radius for k in keys] == [0.0, 0.25, 1.0]
    with pytest.raises(ConfigError, match="certified radius"):
        MetricKey.parse("test/cert_bacc@r-1")


def test_the_evaluator_is_off_by_default_and_lists_its_keys_when_on():
    dm = SimpleNamespace(task="binary", flag="pneumoniamnist", num_classes=2)
    assert CertifiedEvaluator(CertifiedSettings()).keys(dm) == {"val": set(), "test": set()}
    keys = CertifiedEvaluator(CertifiedSettings(enabled=True, sigma=0.25)).keys(dm)
    assert keys == {"val": set(), "test": CERT_KEYS | {"test/cert_abstain"}}


def test_the_callback_composes_it_and_logs_its_keys():
    dm = SimpleNamespace(task="binary", flag="pneumoniamnist", num_classes=2, size=28)
    off = RobustnessCallback(corruption={"epoch": False, "report": False}, autoattack={"enabled": False})
    on = RobustnessCallback(corruption={"epoch": False, "report": False}, autoattack={"enabled": False},
                            certified={"enabled": True, "sigma": 0.5, "radii": [0.0, 0.25, 0.5, 1.0]})
    assert not CERT_KEYS & off.logged_keys(dm)["test"]
    assert CERT_KEYS | {"test/cert_abstain"} <= on.logged_keys(dm)["test"]
    on.reconfigure(certified={"enabled": False})
    assert not CERT_KEYS & on.logged_keys(dm)["test"]


@pytest.mark.parametrize("settings, message", [
    ({"sigma": 0}, "sigma must be a number > 0"),
    ({"sigma": -0.25}, "sigma must be a number > 0"),
    ({"n0": 100, "n": 100}, "n0 (selection samples) must be smaller than n"),
    ({"alpha": 0}, "alpha must be a number in (0, 1)"),
    ({"alpha": 1.0}, "alpha must be a number in (0, 1)"),
    ({"radii": []}, "certified radii must be a non-empty list"),
    ({"samples": 0}, "certified samples"),
    ({"bogus": 1}, "has no setting bogus"),
])
def test_bad_settings_fail_in_one_line_when_the_callback_is_built(settings, message):
    with pytest.raises(ConfigError) as err:
        RobustnessCallback(certified={"enabled": True, **settings})
    assert message in str(err.value) and "\n" not in str(err.value)


def test_multilabel_heads_and_a_missing_sigma_are_refused_at_setup():
    evaluator = CertifiedEvaluator(CertifiedSettings(enabled=True))
    noisy, plain = SimpleNamespace(noise_sigma=0.25), SimpleNamespace(noise_sigma=0.0)
    evaluator.check(noisy, SimpleNamespace(task="binary", flag="pneumoniamnist"))
    assert evaluator.sigma(noisy) == 0.25
    with pytest.raises(ConfigError, match="multi-label"):
        evaluator.check(noisy, SimpleNamespace(task="multilabel", flag="chestmnist"))
    with pytest.raises(ConfigError, match="trained without noise"):
        evaluator.check(plain, SimpleNamespace(task="binary", flag="pneumoniamnist"))
    CertifiedEvaluator(CertifiedSettings(enabled=False)).check(plain, SimpleNamespace(task="multilabel", flag="c"))


SECTION = {"sigma": 0.25, "n0": 100, "n": 1000, "alpha": 0.001, "seed": 0, "n_examples": 4, "abstention_rate": 0.25,
           "radii": {"r0": {"radius": 0.0, "bacc": 0.8, "acc": 0.75}, "r0_5": {"radius": 0.5, "bacc": 0.5,
                                                                              "acc": 0.25}},
           "per_example": {"index": [0, 1, 2, 3], "label": [0, 1, 0, 1], "prediction": [0, 1, -1, 1],
                           "radius": [0.6, 0.2, 0.0, 0.1]}}


def test_the_record_reads_writes_and_keys_its_certified_section():
    record = ResultRecord.from_dict({"record_version": 1, "clean": {"bacc": 0.9}, "certified": SECTION})
    metrics = {str(k): v for k, v in record.metrics().items()}
    assert metrics["test/cert_bacc@r0"] == 0.8 and metrics["test/cert_acc@r0_5"] == 0.25
    assert metrics["test/cert_abstain"] == 0.25 and metrics["test/clean_bacc"] == 0.9
    measured = record.measurements()[MetricKey.parse("test/cert_bacc@r0_5")]
    assert measured.n_examples == 4 and measured.settings["n"] == 1000 and measured.settings["radius"] == 0.5
    assert ResultRecord.from_dict(record.to_dict()).certified == SECTION
    assert "certified" not in record.extra


def test_a_version_one_record_without_the_section_still_reads():
    record = ResultRecord.from_dict({"record_version": 1, "clean": {"bacc": 0.9}})
    assert record.certified is None and "certified" not in record.to_dict()
    assert not [k for k in record.metrics() if k.kind == "cert"]
    with pytest.raises(ConfigError, match="certified section"):
        ResultRecord.from_dict({"record_version": 1, "certified": [1, 2]})
