"""Explanations of [0, 1]-input classifiers: saliency maps built on Captum, how much they change under random
noise and under attacks on explanations (`attacks.explanation`), and one dict of robustness figures per batch.

``Explainer(model, "saliency")(images, targets) -> (N, H, W)``; ``explanation_robustness(model, images, targets,
"4/255") -> {"topk": ..., "spearman": ..., ...}``.
"""
from explanations.measures import (
    SIMILARITIES, cosine, map_similarity, max_sensitivity, noise_similarity, random_perturbation, spearman,
    topk_intersection,
)
from explanations.methods import METHODS, Explainer, explained_classes, gradcam_layer, last_conv_layer
from explanations.robustness import ATTACKS, EXPLANATION_METRICS, explanation_robustness

__all__ = [
    "ATTACKS", "EXPLANATION_METRICS", "METHODS", "SIMILARITIES", "Explainer", "cosine", "explained_classes",
    "explanation_robustness", "gradcam_layer", "last_conv_layer", "map_similarity", "max_sensitivity",
    "noise_similarity", "random_perturbation", "spearman", "topk_intersection",
]
