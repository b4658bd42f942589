"""configs/sweeps/smoothing_sigma.yaml: it loads, sigma is its searched dimension, its objectives are keys the
trials' callback logs, and the trials log the certified keys its report table reads."""
from __future__ import annotations

from sweeps.spec import load_spec
from sweeps.training import check_metrics, check_training

CERT = {f"test/cert_bacc@{label}" for label in ("r0", "r0_25", "r0_5", "r1")} | {"test/cert_abstain"}


def test_the_sigma_sweep_loads_and_its_keys_are_logged(synthetic_root):
    root = synthetic_root("pneumoniamnist", n_train=16, n_val=8, n_test=8)
    spec = load_spec("configs/sweeps/smoothing_sigma.yaml",
                     [f"overrides.data.root={root}", "overrides.data.verify_md5=false"])
    (sigma,) = [d for d in spec.dimensions if d.name == "model.init_args.noise_sigma"]
    assert sigma.values == [0.12, 0.25, 0.5] and spec.sampler == "grid"
    facts = check_training(spec)
    check_metrics(spec, facts)
    assert {o.metric for o in spec.objectives} <= facts.val_metrics
    assert CERT <= facts.test_metrics and "test/clean_bacc" in facts.test_metrics
