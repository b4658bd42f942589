"""Threat models and white-box attacks on [0, 1] images: FGSM(-RS), PGD (L-inf/L2), the AutoAttack wrapper, attacks
on explanations (TopKAttack, TargetedManipulation).

An attack is a small callable independent of any training loop: ``PGD(model, "8/255", steps=20)(x, y)``.
"""
from attacks.explanation import TargetedManipulation, TopKAttack
from attacks.gradient import FGSM, PGD, Attack
from attacks.threat_model import NORMS, epsilon_label, format_epsilon, parse_epsilon, parse_norm

__all__ = [
    "Attack", "FGSM", "PGD", "TargetedManipulation", "TopKAttack", "NORMS", "epsilon_label", "format_epsilon",
    "parse_epsilon", "parse_norm",
]
