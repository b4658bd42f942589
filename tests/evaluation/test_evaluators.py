"""The RobustnessCallback's evaluators: the keys each says it logs, one metric of each scoring evaluator against a
direct computation, and the flat settings of the earlier callback mapped into the groups with the same meaning."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from attacks.gradient import PGD
from core.errors import ConfigError
from datamodules.tensors import fixed_subset, to_unit_range
from evaluation.evaluators import (
    AdversarialEvaluator, AdversarialSettings, AutoAttackEvaluator, AutoAttackSettings, BaselineComparison,
    CalibrationEvaluator, ConfidenceSettings, CorruptionEvaluator, CorruptionSettings, EvaluationRun,
    ExplanationEvaluator, ExplanationSettings, RobustnessSettings, Scorer, grouped, upgrade_cli_args, upgrade_config,
)
from evaluation.scoring import predict
from explanations import EXPLANATION_METRICS
from lightning_modules.calibration import CONFIDENCE_METRICS, confidence_measures
from lightning_modules.metrics import task_balanced_accuracy

REPO = Path(__file__).resolve().parents[2]
#: configs/erm.yaml's callback as written for the flat callback (before the groups)
FLAT_ERM = """
epsilons: ["1/255", "4/255"]
norm: linf
val_samples: 192
val_steps: 5
corruption_val_samples: 64
test_steps: 20
test_restarts: 2
autoattack: true
autoattack_version: custom
autoattack_attacks: [apgd-ce, apgd-t]
autoattack_samples: 500
"""


def _adversarial(**kwargs):
    return AdversarialEvaluator(AdversarialSettings(**{"epsilons": ["8/255"], "val_samples": 32, "val_steps": 3,
                                                       **kwargs}), seed=0)


def _bacc(dm, probabilities, targets) -> float:
    """Balanced accuracy by the numpy implementation (not the torchmetrics one the scoring loop uses)."""
    return float(task_balanced_accuracy(dm.task, targets.numpy(), probabilities.numpy()))


def test_each_evaluator_lists_its_keys(tiny_erm):
    dm = tiny_erm.datamodule
    adversarial = _adversarial()
    assert adversarial.keys(dm) == {"val": {"val/clean_bacc@subset", "val/adv_bacc@8_255", "val/adv_acc@8_255"},
                                    "test": {"test/adv_bacc@8_255", "test/adv_acc@8_255"}}
    autoattack = AutoAttackEvaluator(AutoAttackSettings(), adversarial)
    assert autoattack.keys(dm) == {"val": set(), "test": {"test/aa_bacc@8_255", "test/aa_acc@8_255"}}
    assert AutoAttackEvaluator(AutoAttackSettings(enabled=False), adversarial).keys(dm)["test"] == set()
    corruption = CorruptionEvaluator(CorruptionSettings(corruptions=["brightness_down"]))
    assert corruption.keys(dm) == {"val": {"val/corr_bacc", "val/corr_bacc@brightness_down"},
                                   "test": {"test/corr_bacc", "test/corr_be", "test/corr_rbe",
                                            "test/clean_bacc@roundtrip"}}
    assert BaselineComparison("base.json", corruption).keys(dm) == {"val": set(), "test": {"test/corr_mce"}}
    explanation = ExplanationEvaluator(ExplanationSettings(epoch=True, epsilons=["2/255"]), "linf")
    assert explanation.keys(dm) == {"val": {f"val/expl_{m}@2_255" for m in EXPLANATION_METRICS}, "test": set()}
    calibration = CalibrationEvaluator(ConfidenceSettings(), [adversarial, autoattack, corruption])
    sets = {"val": ["clean_{}@subset", "adv_{}@8_255", "corr_{}"], "test": ["clean_{}", "adv_{}@8_255",
                                                                          "aa_{}@8_255", "corr_{}"]}
    assert calibration.keys(dm) == {stage: {f"{stage}/{form.format(m)}" for form in forms for m in CONFIDENCE_METRICS}
                                    for stage, forms in sets.items()}
    assert CalibrationEvaluator(ConfidenceSettings(enabled=False), [adversarial]).keys(dm) == {"val": set(),
                                                                                              "test": set()}


def test_adversarial_and_calibration_metrics_equal_a_direct_computation(tiny_erm):
    model, dm = tiny_erm.model, tiny_erm.datamodule
    adversarial = _adversarial(epsilons=["64/255"])
    calibration = CalibrationEvaluator(ConfidenceSettings(bins=10), [adversarial])
    run = EvaluationRun(model, dm, Scorer(256, calibration.bins))
    logged = {**adversarial.epoch_metrics(run), **calibration.epoch_metrics(run)}

    split = dm.split("val")
    index = fixed_subset(len(split), 32, 0)
    images, targets = split.images[index], split.targets[index]
    clean = predict(model, images, dm.task, dm.num_classes)
    x_adv = PGD(model, 64 / 255, steps=3, norm="linf", seed=0, early_stop=True)(to_unit_range(images), targets)
    adv = predict(model, x_adv.detach(), dm.task, dm.num_classes)
    assert logged["val/clean_bacc@subset"] == pytest.approx(_bacc(dm, clean, targets))
    assert logged["val/adv_bacc@64_255"] == pytest.approx(_bacc(dm, adv, targets))
    assert logged["val/adv_bacc@64_255"] < logged["val/clean_bacc@subset"]  # the attack did something
    assert logged["val/clean_ece@subset"] == pytest.approx(confidence_measures(clean, targets, dm.task, 10)["ece"])
    assert logged["val/adv_nll@64_255"] == pytest.approx(confidence_measures(adv, targets, dm.task, 10)["nll"])
    assert set(logged) == adversarial.keys(dm)["val"] | calibration.keys(dm)["val"]


def test_the_flat_erm_config_gives_the_grouped_settings():
    flat = grouped(yaml.safe_load(FLAT_ERM), warn=False)
    shipped = yaml.safe_load((REPO / "configs" / "erm.yaml").read_text())
    (entry,) = shipped["trainer"]["callbacks"]
    assert grouped(entry["init_args"]) == flat
    assert flat.adversarial.epsilons == ["1/255", "4/255"] and flat.adversarial.test_steps == 20
    assert flat.autoattack.samples == 500 and flat.corruption.val_samples == 64
    assert flat.flat()["autoattack_samples"] == 500 and flat.flat()["corruption_cache"] == "~/.medmnist-c"
    # a flat config file upgraded for the CLI: the same groups
    config, changed = upgrade_config({"trainer": {"callbacks": [{"class_path": entry["class_path"],
                                                                 "init_args": yaml.safe_load(FLAT_ERM)}]}})
    assert changed and grouped(config["trainer"]["callbacks"][0]["init_args"]) == flat


def test_flat_arguments_map_into_their_groups():
    prefix = "--trainer.callbacks.init_args."
    args = ["fit", f"{prefix}epsilons", "[4/255]", f"{prefix}autoattack=false", f"{prefix}corruption_report", "false",
            f"{prefix}adversarial.val_steps", "2", f"{prefix}seed", "3"]
    assert upgrade_cli_args(args) == ["fit", f"{prefix}adversarial.epsilons", "[4/255]", f"{prefix}autoattack.enabled",
                                      "false", f"{prefix}corruption.report", "false", f"{prefix}adversarial.val_steps",
                                      "2", f"{prefix}seed", "3"]
    settings = grouped({"epsilons": ["4/255"], "autoattack": False, "confidence": False, "corruption_baseline": "b",
                        "explanation_k": 5}, warn=False)
    assert settings == RobustnessSettings(adversarial=AdversarialSettings(epsilons=["4/255"]),
                                          autoattack=AutoAttackSettings(enabled=False),
                                          corruption=CorruptionSettings(baseline="b"),
                                          explanation=ExplanationSettings(k=5),
                                          confidence=ConfidenceSettings(enabled=False))


@pytest.mark.parametrize("init_args, message", [
    ({"val_sample": 10}, "RobustnessCallback has no setting val_sample: write it in its group"),
    ({"adversarial": {"epsilon": ["4/255"]}}, "RobustnessCallback adversarial has no setting epsilon: choose from"),
])
def test_a_setting_that_cannot_be_mapped_fails_in_one_line(init_args, message):
    with pytest.raises(ConfigError) as info:
        grouped(init_args)
    assert str(info.value).startswith(message) and "\n" not in str(info.value)
