"""The RobustnessCallback's evaluators: adversarial (PGD, AutoAttack), corruption (MedMNIST-C, mCE against a
baseline), explanation, calibration and certified (randomized smoothing), each with a settings dataclass and the
keys it logs, sharing one Scorer."""
from evaluation.evaluators.adversarial import AdversarialEvaluator, AutoAttackEvaluator
from evaluation.evaluators.base import EvaluationRun, Evaluator, Scorer
from evaluation.evaluators.calibration import CalibrationEvaluator
from evaluation.evaluators.certified import CertifiedEvaluator
from evaluation.evaluators.corruption import BaselineComparison, CorruptionEvaluator
from evaluation.evaluators.explanation import ExplanationEvaluator
from evaluation.evaluators.settings import (
    AdversarialSettings, AutoAttackSettings, CertifiedSettings, ConfidenceSettings, CorruptionSettings,
    ExplanationSettings, LEGACY_KEYS, RobustnessSettings, grouped, upgrade_cli_args, upgrade_config, upgrade_init_args,
)

__all__ = [
    "AdversarialEvaluator", "AutoAttackEvaluator", "BaselineComparison", "CalibrationEvaluator", "CertifiedEvaluator",
    "CorruptionEvaluator", "EvaluationRun", "Evaluator", "ExplanationEvaluator", "Scorer", "AdversarialSettings",
    "AutoAttackSettings", "CertifiedSettings",
    "ConfidenceSettings", "CorruptionSettings", "ExplanationSettings", "LEGACY_KEYS", "RobustnessSettings", "grouped",
    "upgrade_cli_args", "upgrade_config", "upgrade_init_args",
]
