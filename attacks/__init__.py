"""Threat models and white-box attacks on [0, 1] images: FGSM(-RS), PGD (L-inf/L2), the AutoAttack wrapper.

An attack is a small callable independent of any training loop: ``PGD(model, "8/255", steps=20)(x, y)``.
"""
from attacks.gradient import FGSM, PGD, Attack
from attacks.threat_model import NORMS, epsilon_label, format_epsilon, parse_epsilon, parse_norm

__all__ = ["Attack", "FGSM", "PGD", "NORMS", "epsilon_label", "format_epsilon", "parse_epsilon", "parse_norm"]
