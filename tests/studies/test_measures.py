"""studies.measures: recalibration on validation, AdaBN, bootstrap draws through the project's metrics, intervals
over seeds and the verdict against chance."""
import numpy as np
import pytest
import torch
from torch import nn

from evaluation.runs import score
from lightning_modules.metrics import task_balanced_accuracy
from studies import measures


def _shifted_binary(n=400, shift=4.0, seed=0):
    """Scores that rank the classes well but sit far on the class-1 side: default-threshold bacc near chance."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    logit = (y.float() * 2 - 1) + torch.randn(n, generator=g) * 0.8 + shift
    return torch.stack([torch.sigmoid(-logit), torch.sigmoid(logit)], 1), y


def test_bias_fitted_on_validation_recovers_a_shifted_threshold():
    p_val, y_val = _shifted_binary(seed=0)
    p_test, y_test = _shifted_binary(seed=1)
    assert task_balanced_accuracy("binary", y_test[:, None].numpy(), p_test.numpy()) < 0.6  # everything is class 1
    bias = measures.fit_bias(p_val, y_val, "binary")
    assert bias[0] == 0 and bias[1] == pytest.approx(-4.0, abs=0.6)
    recal = measures.apply_bias(p_test, bias)
    assert task_balanced_accuracy("binary", y_test[:, None].numpy(), recal.numpy()) > 0.8
    # the ranking (so AUROC) does not move
    before = score(p_test, y_test, "binary", 2, ("auroc",))
    assert score(recal, y_test, "binary", 2, ("auroc",)) == pytest.approx(before, abs=1e-6)


def test_binary_threshold_is_the_exact_optimum_on_validation():
    """More distinct scores than the multi-class search's 256 candidates and a weak signal (a jagged validation bacc):
    a binary head still gets the best threshold over every point where a prediction changes (brute force)."""
    g = torch.Generator().manual_seed(4)
    y = torch.arange(1200) % 2
    logit = (y.float() * 2 - 1) * 0.3 + torch.randn(1200, generator=g)
    p_val = torch.stack([torch.sigmoid(-logit), torch.sigmoid(logit)], 1)
    bias = measures.fit_bias(p_val, y, "binary")
    got = task_balanced_accuracy("binary", y[:, None].numpy(), measures.apply_bias(p_val, bias).numpy())
    margin, labels = (torch.log(p_val[:, 1]) - torch.log(p_val[:, 0])).double().numpy(), y.numpy()
    cuts = np.unique(margin)
    best = max(np.mean([((margin > t) == labels)[labels == c].mean() for c in (0, 1)])
               for t in np.concatenate([[cuts[0] - 1], (cuts[1:] + cuts[:-1]) / 2]))
    assert got == pytest.approx(best, abs=1e-6)


def test_multiclass_gets_one_bias_per_class():
    g = torch.Generator().manual_seed(0)
    y = torch.arange(600) % 3
    logits = torch.nn.functional.one_hot(y, 3).float() * 2 + torch.randn(600, 3, generator=g)
    logits[:, 2] += 3.0  # class 2 swallows the others at the default rule
    probs = torch.softmax(logits, 1)
    before = task_balanced_accuracy("multiclass", y[:, None].numpy(), probs.numpy())
    bias = measures.fit_bias(probs, y, "multiclass")
    after = task_balanced_accuracy("multiclass", y[:, None].numpy(), measures.apply_bias(probs, bias).numpy())
    assert before < 0.6 and after > 0.75 and bias[2] - bias[:2].mean() < -1.5


class _BN(nn.Module):
    def __init__(self, bn=True):
        super().__init__()
        self.norm = nn.BatchNorm2d(1) if bn else nn.Identity()
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(self.norm(x).flatten(1))


def test_adabn_re_estimates_batchnorm_statistics_from_unlabeled_images_only():
    torch.manual_seed(0)
    model = _BN().eval()
    images = torch.rand(64, 1, 2, 2) * 0.2 + 0.7
    adapted = measures.adabn(model, images, batch_size=16)
    assert adapted is not model and model.norm.running_mean.item() == 0.0  # the original is untouched
    assert adapted.norm.running_mean.item() == pytest.approx(images.mean().item(), abs=1e-5)
    assert not adapted.training and torch.equal(adapted.fc.weight, model.fc.weight)
    assert measures.adabn(_BN(bn=False), images) is None


def test_adabn_weights_a_short_last_batch_by_its_size():
    """524 validation images in batches of 512 leave a last batch of 12: it must count for 12 images, not for half."""
    torch.manual_seed(0)
    images = torch.cat([torch.rand(60, 1, 2, 2) * 0.2, torch.rand(4, 1, 2, 2) * 0.2 + 0.8])
    adapted = measures.adabn(_BN().eval(), images, batch_size=60)
    whole = measures.adabn(_BN().eval(), images, batch_size=64)
    assert adapted.norm.running_mean.item() == pytest.approx(images.mean().item(), abs=1e-5)
    assert adapted.norm.running_mean.item() == pytest.approx(whole.norm.running_mean.item(), abs=1e-5)


def test_draws_match_one_metric_call_per_resample():
    probs, y = _shifted_binary(n=120, shift=0.5)
    predictions = {"task": "binary", "num_classes": 2, "targets": y, "variants": {"default": probs}}
    got = measures.draws(predictions, n=100, seed=3)
    assert set(got) == {"bacc", "auroc"}
    samples = measures.example_draws(len(y), 100, 3)
    for metric in ("bacc", "auroc"):
        assert got[metric]["value"] == pytest.approx(score(probs, y, "binary", 2, (metric,))[metric])
        want = [score(probs[i], y[i], "binary", 2, (metric,))[metric] for i in samples[:10]]
        assert np.allclose(got[metric]["draws"][:10], want)


def test_cell_mean_spread_and_interval_over_seeds():
    per_seed = [{"value": v, "draws": np.full(200, v) + np.linspace(-0.02, 0.02, 200)} for v in (0.6, 0.7, 0.8)]
    over = measures.cell(per_seed, over_seeds=True)
    only = measures.cell(per_seed, over_seeds=False)
    assert over["mean"] == pytest.approx(0.7) and over["sd"] == pytest.approx(0.1) and over["seeds"] == 3
    assert only["high"] - only["low"] < 0.05 < over["high"] - over["low"]  # seed spread widens the interval
    # over seeds: the t interval over the per-seed values (2 dof: 0.7 ± 4.303 * 0.1 / sqrt(3))
    assert (over["low"], over["high"]) == pytest.approx((0.7 - 0.24842, 0.7 + 0.24842), abs=1e-4)


def test_summary_rows_hold_the_mean_and_the_t_interval_over_seeds():
    rows = [{"dataset": "d", "size": 28, "model": "erm", "kind": "real", "construction": "real", "seed": s,
             "clean_bacc": v, "auroc": v, "auroc_low": v - 0.01, "auroc_high": v + 0.01, "bacc_adabn": "n/a"}
            for s, v in enumerate((0.6, 0.7, 0.8))]
    rows.append({**rows[0], "model": "d_rand", "seed": 0})
    erm, one = measures.summary_rows(rows)
    assert erm["seed"] == measures.SUMMARY_SEED == "all" and erm["n_seeds"] == 3 and erm["bacc_adabn"] == "n/a"
    assert erm["clean_bacc"] == pytest.approx(0.7) and "clean_bacc_low" not in erm
    assert (erm["auroc"], erm["auroc_low"], erm["auroc_high"]) == pytest.approx((0.7, 0.7 - 0.24842, 0.7 + 0.24842),
                                                                                abs=1e-4)
    assert one["model"] == "d_rand" and one["auroc"] == 0.6 and np.isnan(one["auroc_low"])  # one seed: no interval


@pytest.mark.parametrize("low, high, verdict", [
    (0.52, 0.70, measures.HOLDS), (0.40, 0.50, measures.NOT_HOLDS), (0.45, 0.60, measures.UNDECIDED),
    (float("nan"), 0.6, measures.UNDECIDED)])
def test_verdict_is_read_from_the_interval(low, high, verdict):
    assert measures.verdict(low, high, 0.5) == verdict


def test_chance_levels():
    assert measures.chance_of("auroc", 9) == 0.5 and measures.chance_of("bacc_recal", 4) == 0.25
