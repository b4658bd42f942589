"""Classification vs explanation robustness (Chen et al., arXiv 2403.06013) in one command:
`python -m studies reproduce configs/study/explanations_quick.yaml --out runs/study/explanations_quick`.

For each dataset and seed: train models over a range of classification robustness (ERM, PGD-AT, TRADES at several
betas) and the explanation-regularised model (lightning_modules.explanation_regularized); test each with the
RobustnessCallback, whose report holds classification robustness (PGD and AutoAttack, the config's `autoattack`
block: on a binary task APGD-CE + Square) and explanation robustness at the same radius (the saliency map under the
top-k explanation attack on the softplus network, and under random noise of the same radius; max-sensitivity).
Then write `results.csv`, `results.md` (PGD beside AutoAttack per model, flagging a model whose PGD number exceeds
AutoAttack's by more than `autoattack.masking_margin`: possible gradient masking; the correlation between the two
robustness measures across models with a Fisher z interval; whether the regularised model moved one without the
other, judged on AutoAttack with PGD beside, with paired bootstrap intervals over test examples) and figures
(`expl_scatter.png`: explanation against classification robustness; `expl_maps.png`: clean and attacked maps of a
few test images). Every training step is kept under --out and reused on a rerun.
"""
from .config import AUTOATTACK_DEFAULTS, CALLBACK, EXPLANATION_AXIS, EXPLANATION_KEYS, NOISE_AXIS, Study, load
from .figures import maps_figure, scatter_figure
from .pipeline import reproduce, write_results
from .results import (analyse, correlation, masking_check, model_means, move_verdict, paired_difference, result_row,
                      seed_summary, verdict_text)
from .tables import results_markdown

DESCRIPTION = Study.DESCRIPTION

__all__ = ["AUTOATTACK_DEFAULTS", "CALLBACK", "DESCRIPTION", "EXPLANATION_AXIS", "EXPLANATION_KEYS", "NOISE_AXIS",
           "Study", "analyse", "correlation", "load", "maps_figure", "masking_check", "model_means", "move_verdict",
           "paired_difference", "reproduce", "result_row", "results_markdown", "scatter_figure", "seed_summary",
           "verdict_text", "write_results"]
