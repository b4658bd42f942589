"""Reproduce "Useful nonrobust features are ubiquitous in biomedical images" (arXiv 2604.22579) in one command:
`python -m studies reproduce configs/study/quick.yaml --out runs/study/quick`.

For each dataset and seed: train ERM, PGD-AT and an L2-robust source model on the real training split; build the
Ilyas et al. training sets (D_rand, D_det, D_NR, D_R) from them; train a fresh model on each; test every model on
the real test split (clean, PGD at several epsilons, MedMNIST-C where asked) with the RobustnessCallback; write
`results.csv`, `results.md` and figures. Every finished step is kept under --out and reused on a rerun.

config (the Study dataclass and its checks), pipeline (the steps), results (rows and cells), tables (results.md),
findings (the verdicts), figures.
"""
from .config import ROLES, STATISTICS, Study, construction_kind, constructed_training, load
from .figures import figures
from .findings import findings
from .pipeline import construct_step, drop_step, measure_step, reproduce, write_results
from .results import (
    DIFFERENCE, cell_statistics, column_keys, corruption_cells, difference_of, drop_columns, result_row,
)
from .tables import drop_table, results_markdown, robust_table

DESCRIPTION = Study.DESCRIPTION

__all__ = [
    "DESCRIPTION", "DIFFERENCE", "ROLES", "STATISTICS", "Study", "cell_statistics", "column_keys",
    "construct_step", "constructed_training", "construction_kind", "corruption_cells", "difference_of",
    "drop_columns", "drop_step", "drop_table", "figures", "findings", "load", "measure_step", "reproduce",
    "result_row", "results_markdown", "robust_table", "write_results",
]
