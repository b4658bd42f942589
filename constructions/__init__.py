"""Constructed training sets of Ilyas et al. (2019), "Adversarial examples are not bugs, they are features":
D_rand, D_det (targeted L2 PGD, relabelled) and D_NR, D_R (representation matching), as MedMNIST-format npz files.

Floor 5: imports core, datamodules, attacks, lightning_modules and evaluation, never training code."""
from .budget import search_budget
from .builder import KINDS, BudgetSearch, Constructed, Settings, build
from .dataset import budget_columns, construct_file, parts_path, sidecar_path
from .source import Source, load_source

__all__ = ["KINDS", "BudgetSearch", "Constructed", "Settings", "build", "budget_columns", "construct_file",
           "parts_path", "search_budget", "sidecar_path", "Source", "load_source"]
