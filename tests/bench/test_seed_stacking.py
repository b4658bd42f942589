"""bench/seed_stacking.py: a stacked step of K seeds (torch.func) does the work of K separate steps (per-seed losses,
updated weights, BatchNorm running statistics), the check sees a stacking that mixes up the seeds' batches, and the
`seeds` rows of `python -m bench all` run (smoke settings) and keep their goal for 10 seeds that did the same work."""
from __future__ import annotations

import pytest
import torch

from bench import seed_stacking
from bench.__main__ import FIGURES, run_all
from core.errors import ConfigError

TINY = ["--batch", "6", "--size", "8", "--steps", "2", "--device", "cpu"]


@pytest.fixture(scope="module")
def args():
    return seed_stacking.parse_args(TINY)


@pytest.mark.parametrize("method", seed_stacking.METHODS)
def test_a_stacked_step_does_the_work_of_k_separate_steps(args, method):
    result = seed_stacking.one_step_each(method, args, 3)
    assert seed_stacking.disagreement(result) == []
    stacked, sequential = result["stacked"], result["sequential"]
    assert len(set(stacked["loss"].tolist())) == 3  # three seeds on three batches: three different losses
    torch.testing.assert_close(stacked["loss"], sequential["loss"], rtol=1e-4, atol=1e-5)
    buffers = stacked["state"]["buffers"]
    # BatchNorm under vmap updates each seed's own running statistics, once: the attack ran in eval mode
    assert buffers["1.features.0.1.num_batches_tracked"].tolist() == [1, 1, 1]
    means = buffers["1.features.0.1.running_mean"]
    assert means.abs().min() > 0 and not torch.allclose(means[0], means[1])
    torch.testing.assert_close(means, sequential["state"]["buffers"]["1.features.0.1.running_mean"])
    weights = stacked["state"]["params"]["1.head.4.weight"]
    assert not torch.allclose(weights[0], weights[1])  # seeds 0..K-1 start from different weights


@pytest.mark.parametrize("method", seed_stacking.METHODS)
def test_the_check_sees_every_seed_trained_on_seed_0s_batch(args, method):
    x, y = seed_stacking.seed_batches(args, 3)
    result = seed_stacking.one_step_each(method, args, 3, x, y)
    stacked = seed_stacking.both_variants(method, args, 3)["stacked"]
    torch.manual_seed(0)
    loss = stacked.step(x[:1].expand_as(x).contiguous(), y[:1].expand_as(y).contiguous())
    mixed = {**result, "stacked": {"loss": loss, "state": stacked.seed_state()}}
    differ = seed_stacking.disagreement(mixed)
    assert "loss" in differ and "1.features.0.1.running_mean" in differ and "1.head.4.weight" in differ


def test_seeds_rows_run_in_bench_all(tmp_path):
    assert "seeds" in FIGURES
    rows = run_all(["seeds"], root=str(tmp_path), verify_md5=False, quick=False, smoke=True, workdir=tmp_path,
                   log=lambda line: None)
    assert [r["name"] for r in rows] == [seed_stacking.row_name(m, k) for m in seed_stacking.METHODS for k in (1, 2)]
    for row in rows:
        assert not row.get("status"), row  # measured, not a failed benchmark
        assert row["benchmark"] == "seeds" and row["ratio"] > 0 and row["range"][0] <= row["ratio"] <= row["range"][1]
        assert row["details"]["same_work"] is True and row["goal"] == "reported" and row["met"] is None
        assert set(row["details"]["images_per_s_median"]) == {"stacked", "sequential"}


def test_the_goal_is_2x_at_10_seeds_that_did_the_same_work():
    def result(seeds, ratios, same_work=True):
        run = {"method": "erm", "seeds": seeds, "same_work": same_work, "ratios": ratios,
               "images_per_s": {v: {"median": 1.0} for v in seed_stacking.VARIANTS}}
        return {"runs": [run], "size": 28, "batch": 128, "steps": 5, "epsilon": "4/255", "device": "cpu",
                "clock": "process CPU, 1 thread"}

    (met,) = seed_stacking.rows(result(10, [2.1, 2.5, 1.9]))
    assert met["goal"] == ">= 2x" and met["met"] is True
    assert seed_stacking.rows(result(10, [1.5, 1.9, 2.5]))[0]["met"] is False
    assert seed_stacking.rows(result(10, [3.0], same_work=False))[0]["met"] is False
    assert seed_stacking.rows(result(3, [3.0]))[0]["met"] is None


def test_a_bad_budget_is_refused_before_anything_is_built():
    with pytest.raises(ConfigError):
        seed_stacking.parse_args([*TINY, "--epsilon", "2"])


def test_the_check_runs_in_full_float32_and_restores_tf32_after():
    before = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    with seed_stacking.full_float32():
        assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32
    assert (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32) == before
