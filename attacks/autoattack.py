"""AutoAttack (Croce & Hein, 2020) via pyautoattack, adapted to this project's heads.

* Class counts. pyautoattack's standard list (apgd-ce, apgd-t, fab-t, square) assumes 10 classes.
  Here the targeted attacks try every other class (n_target_classes = C - 1) and the list is adapted
  to what its losses can compute (see ``attack_plan``): the DLR loss reads the 3rd-largest logit
  (needs C >= 3), the targeted DLR loss the 4th (needs C >= 4), and with C == 2 the only target is
  the other class, so fab-t is untargeted fab. Binary 2-logit heads therefore get apgd-ce + fab +
  square; 3-class heads get apgd-ce + apgd-dlr + fab-t + square. With 2 logits cross-entropy is a
  monotone function of the margin, so apgd-ce already follows the margin's direction; FAB (logit
  differences) and Square (gradient-free) guard against saturated cross-entropy gradients.
* Budgets. Both versions use the standard per-attack settings (100 iterations, 1 restart for
  APGD/FAB, 5000 Square queries unless ``n_queries_square``); "custom" runs a subset of attacks.
* Multi-label heads (ChestMNIST). AutoAttack's losses and its success test (argmax != y) are
  single-label, so it is not run: any requested list (custom or standard) is adapted to this
  project's PGD on the BCE loss averaged over labels, with several restarts, keeping per example
  the highest-loss perturbation. It is a weaker, gradient-only evaluation than AutoAttack and
  ``info`` says so (``planned``, ``adaptations``), as for the binary adaptations, so one config
  runs on every dataset.
"""

import contextlib
import logging
import sys
from typing import Optional, Sequence

import pyautoattack
import torch
from torch import Tensor, nn

from core.errors import ConfigError
from attacks.gradient import PGD, attack_mode, autograd_ready, check_pixels
from attacks.threat_model import parse_epsilon, parse_norm

AUTOATTACK_ATTACKS = ("apgd-ce", "apgd-dlr", "fab", "square", "apgd-t", "fab-t")
STANDARD_ATTACKS = ("apgd-ce", "apgd-t", "fab-t", "square")
VERSIONS = ("standard", "custom")
SQUARE_QUERIES = 5000
_AUTOATTACK_NORM = {"linf": "Linf", "l2": "L2"}
# pyautoattack's check_n_classes says this for apgd-dlr too, which works with 3 classes.
_SPURIOUS = "with only 3 classes it is not possible to use the targeted DLR loss"


def attack_plan(attacks: Sequence[str], num_classes: int):
    """Adapt an AutoAttack list to ``num_classes`` logits; returns (attacks, notes on each change)."""
    plan, notes = [], []
    for name in attacks:
        chosen = name
        if name == "apgd-t" and num_classes < 4:
            chosen = "apgd-dlr" if num_classes == 3 else None
            notes.append(
                f"apgd-t {'replaced by apgd-dlr' if chosen else 'dropped'}: the targeted DLR loss "
                f"needs >= 4 classes (C={num_classes})"
            )
        elif name == "apgd-dlr" and num_classes < 3:
            chosen = None
            notes.append(f"apgd-dlr dropped: the DLR loss needs >= 3 classes (C={num_classes})")
        elif name == "fab-t" and num_classes == 2:
            chosen = "fab"
            notes.append("fab-t replaced by fab: with 2 classes the only target is the other class")
        if chosen is not None and chosen not in plan:
            plan.append(chosen)
    return plan, notes


def run_autoattack(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    epsilon,
    norm: str = "Linf",
    version: str = "standard",
    attacks: Optional[Sequence[str]] = None,
    num_classes: Optional[int] = None,
    multilabel: bool = False,
    seed: int = 0,
    batch_size: int = 250,
    n_queries_square: Optional[int] = None,
    multilabel_steps: int = 100,
    multilabel_restarts: int = 5,
    verbose: bool = False,
):
    """Attack (x, y) with AutoAttack (or the multi-label PGD fallback); returns (x_adv, info).

    ``info`` records the attacks that actually ran with their parameters and how many examples
    each attacked (AutoAttack skips the rest once no example is left robust), the version, norm,
    epsilon, seed, number of examples, clean/robust accuracy, pyautoattack's robustness-check
    warnings and its version. The caller's RNG state is left untouched.
    """
    norm = parse_norm(norm)
    epsilon = parse_epsilon(epsilon, norm)
    if version not in VERSIONS:
        raise ConfigError(f"AutoAttack version must be one of {', '.join(VERSIONS)}, got {version!r}")
    if version == "standard" and attacks is not None:
        raise ConfigError("attacks= needs version='custom' (the standard version fixes its attacks)")
    if version == "custom":
        unknown = sorted(set(attacks or ()) - set(AUTOATTACK_ATTACKS))
        if not attacks or unknown:
            raise ConfigError(
                f"version='custom' needs attacks= from: {', '.join(AUTOATTACK_ATTACKS)}"
                + (f" (unknown: {', '.join(unknown)})" if unknown else "")
            )
    for name, value in (("batch_size", batch_size), ("multilabel_steps", multilabel_steps),
                        ("multilabel_restarts", multilabel_restarts), ("n_queries_square", n_queries_square)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError(f"AutoAttack needs an integer seed (it seeds from the clock otherwise), got {seed!r}")

    info = {
        "pyautoattack_version": pyautoattack.__version__,
        "version": version,
        "norm": _AUTOATTACK_NORM[norm],
        "epsilon": epsilon,
        "seed": seed,
        "n_examples": int(x.shape[0]),
    }
    devices = [x.device] if x.device.type == "cuda" else []
    with attack_mode(model), torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        check_pixels(x)
        x, y = autograd_ready(x), autograd_ready(y)
        with torch.no_grad():
            n_logits = model(x[:1]).shape[1]
        if num_classes is not None and num_classes != n_logits:
            raise ConfigError(f"num_classes={num_classes} but the model outputs {n_logits} logits")
        info["num_classes"] = n_logits
        if multilabel:
            x_adv = _multilabel_fallback(model, x, y, epsilon, norm, seed, batch_size, multilabel_steps,
                                         multilabel_restarts, list(attacks or STANDARD_ATTACKS), info)
        else:
            x_adv = _autoattack(model, x, y, epsilon, norm, list(attacks or STANDARD_ATTACKS),
                                n_logits, seed, batch_size, n_queries_square, verbose, info)
    return x_adv, info


def _autoattack(model, x, y, epsilon, norm, attacks, num_classes, seed, batch_size,
                n_queries_square, verbose, info):
    if num_classes < 2:
        raise ConfigError(
            f"AutoAttack needs >= 2 logits, the model outputs {num_classes}; "
            "a single sigmoid logit with float targets can use multilabel=True"
        )
    if y.shape != x.shape[:1] or y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise ConfigError(
            f"AutoAttack needs integer class labels of shape ({x.shape[0]},), got {tuple(y.shape)} "
            f"{y.dtype}; multi-hot float targets need multilabel=True"
        )
    plan, notes = attack_plan(attacks, num_classes)
    if not plan:
        raise ConfigError(f"no attack of {attacks} can run with {num_classes} classes: {'; '.join(notes)}")

    aa = pyautoattack.AutoAttack(model, attacks=plan, device=x.device, eps=epsilon,
                                 norm=_AUTOATTACK_NORM[norm], seed=seed, version="custom")
    aa.verbose = verbose
    # The standard version's settings (AutoAttack._set_version), with every other class as target.
    aa.apgd.n_restarts = 1
    aa.apgd_targeted.n_restarts = 1
    aa.apgd_targeted.n_target_classes = num_classes - 1
    aa.fab.n_restarts = 1
    aa.fab.n_target_classes = num_classes - 1
    aa.square.n_queries = SQUARE_QUERIES if n_queries_square is None else n_queries_square

    ran = {}
    _record(ran, aa.apgd, lambda: f"apgd-{aa.apgd.loss}",
            lambda: {"n_iter": aa.apgd.n_iter, "n_restarts": aa.apgd.n_restarts})
    _record(ran, aa.apgd_targeted, lambda: "apgd-t",
            lambda: {"n_iter": aa.apgd_targeted.n_iter, "n_restarts": aa.apgd_targeted.n_restarts,
                     "n_target_classes": aa.apgd_targeted.n_target_classes})
    _record(ran, aa.fab, lambda: "fab-t" if aa.fab.targeted else "fab",
            lambda: {"n_iter": aa.fab.n_iter, "n_restarts": aa.fab.n_restarts,
                     **({"n_target_classes": aa.fab.n_target_classes} if aa.fab.targeted else {})})
    _record(ran, aa.square, lambda: "square",
            lambda: {"n_queries": aa.square.n_queries, "n_restarts": aa.square.n_restarts,
                     "p_init": aa.square.p_init})

    trace = sys.gettrace()
    try:
        with _frozen_parameters(model), _autoattack_log(verbose) as warnings:
            x_adv, y_adv = aa.run_standard_evaluation(x, y.long(), batch_size=batch_size)
    finally:
        sys.settrace(trace)  # pyautoattack's check_dynamic ends with sys.settrace(None)

    with torch.no_grad():
        clean = torch.cat([model(batch).argmax(1) for batch in x.split(batch_size)])
    info.update(
        planned=plan,
        adaptations=notes,
        attacks=[{"name": name, **entry} for name, entry in ran.items()],
        skipped=[name for name in plan if name not in ran],
        clean_accuracy=(clean == y).float().mean().item(),
        robust_accuracy=(y_adv == y).float().mean().item(),
        warnings=[m for m in dict.fromkeys(warnings) if "apgd-t" in plan or not m.startswith(_SPURIOUS)],
    )
    return x_adv


def _multilabel_fallback(model, x, y, epsilon, norm, seed, batch_size, steps, restarts, requested, info):
    expected = (x.shape[0], info["num_classes"])
    if not y.is_floating_point() or tuple(y.shape) != expected:
        raise ConfigError(
            f"multilabel=True needs float multi-hot labels of shape {expected}, got {tuple(y.shape)} {y.dtype}"
        )
    pgd = PGD(model, epsilon, norm=norm, steps=steps, restarts=restarts, seed=seed)
    x_adv = torch.cat([pgd(xb, yb) for xb, yb in zip(x.split(batch_size), y.split(batch_size))])
    with torch.no_grad():
        clean = torch.cat([model(batch) for batch in x.split(batch_size)]) > 0
        robust = torch.cat([model(batch) for batch in x_adv.split(batch_size)]) > 0
    info.update(
        planned=["pgd-bce"],
        adaptations=[
            f"{', '.join(requested)} replaced by pgd-bce: multi-label heads: AutoAttack's losses and success "
            "test are single-label, so AutoAttack did not run; PGD on the BCE loss averaged over labels ran "
            "instead, keeping per example the highest-loss perturbation over steps and restarts (weaker than "
            "AutoAttack)"
        ],
        attacks=[{"name": "pgd-bce", "n_iter": steps, "n_restarts": restarts, "alpha": pgd.alpha,
                  "random_start": True, "n_attacked": int(x.shape[0])}],
        skipped=[],
        clean_label_accuracy=(clean == (y > 0.5)).float().mean().item(),
        robust_label_accuracy=(robust == (y > 0.5)).float().mean().item(),
        warnings=[],
    )
    return x_adv


def _record(ran: dict, attack, name, params) -> None:
    """Wrap attack.perturb to log, per AutoAttack attack name, its parameters and examples attacked."""
    perturb = attack.perturb

    def recorded(x, y=None, *args, **kwargs):
        entry = ran.setdefault(name(), {**params(), "n_attacked": 0})
        entry["n_attacked"] += int(x.shape[0])
        return perturb(x, y, *args, **kwargs)

    attack.perturb = recorded


@contextlib.contextmanager
def _frozen_parameters(model: nn.Module):
    """FAB calls .backward(): frozen parameters keep their .grad untouched (and skip that work)."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, requires_grad in flags:
            p.requires_grad_(requires_grad)


class _Messages(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@contextlib.contextmanager
def _autoattack_log(verbose: bool):
    """Collect pyautoattack's check warnings (they go into info); echo its log to stderr only if verbose."""
    logger = logging.getLogger("auto-attack")
    collector = _Messages()
    handlers = [collector] + ([logging.StreamHandler(sys.stderr)] if verbose else [])
    saved = logger.level, logger.propagate
    logger.setLevel(logging.DEBUG if verbose else logging.WARNING)
    logger.propagate = False
    for handler in handlers:
        logger.addHandler(handler)
    try:
        yield collector.messages
    finally:
        for handler in handlers:
            logger.removeHandler(handler)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]
