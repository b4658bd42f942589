"""Explanation robustness as a sweep objective: `val/expl_topk@4_255` validates when the trials' callback logs it
(explanation_epoch on), and is refused in one line when it does not."""
import pytest

from core.errors import ConfigError
from sweeps.spec import load_spec
from sweeps.training import check_metrics, check_training

EXPL = {"trainer.callbacks.init_args.explanation_epoch": True,
        "trainer.callbacks.init_args.explanation_epsilons": ["4/255"]}


def test_explanation_objective_validates_when_the_callback_logs_it(tiny_sweep):
    spec = load_spec(tiny_sweep(overrides=EXPL, objectives={"val/expl_topk@4/255": "maximize"}))
    facts = check_training(spec)
    assert {"val/expl_topk@4_255", "val/expl_spearman@4_255", "val/expl_sensmax@4_255"} <= facts.val_metrics
    check_metrics(spec, facts)
    assert [o.metric for o in spec.objectives] == ["val/expl_topk@4_255"]


def test_explanation_objective_is_refused_when_the_check_is_off(tiny_sweep):
    spec = load_spec(tiny_sweep(objectives={"val/expl_topk@4/255": "maximize"}))
    with pytest.raises(ConfigError, match="val/expl_topk@4_255 is not logged by the trials"):
        check_metrics(spec, check_training(spec))
