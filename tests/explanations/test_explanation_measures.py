"""Map similarities (against scipy and hand examples), random perturbations, max-sensitivity (against Quantus)."""
import numpy as np
import pytest
import scipy.stats
import torch
from torch import nn

from conftest import SIZE
from core.errors import ConfigError
from explanations import (
    Explainer, cosine, map_similarity, max_sensitivity, noise_similarity, random_perturbation, spearman,
    topk_intersection,
)


def maps(seed, n=6, levels=None):
    g = torch.Generator().manual_seed(seed)
    if levels:  # few distinct values: many ties
        return torch.randint(0, levels, (n, 5, 5), generator=g).float()
    return torch.rand((n, 5, 5), generator=g)


def test_topk_intersection_on_hand_examples():
    a = torch.arange(16.0).view(1, 4, 4)
    assert topk_intersection(a, a, 4).item() == 1.0
    assert topk_intersection(a, -a, 4).item() == 0.0  # b's top-4 are a's bottom-4
    b = a.clone().flatten()
    b[15], b[0] = b[0], b[15]  # a's top pixel becomes b's lowest
    assert topk_intersection(a, b.view(1, 4, 4), 4).item() == 0.75
    assert topk_intersection(a, b.view(1, 4, 4), 0.25).item() == 0.75  # a share: 4 of 16 pixels


def test_spearman_agrees_with_scipy_with_and_without_ties():
    for a, b in ((maps(0), maps(1)), (maps(2, levels=3), maps(3, levels=4))):
        expected = [scipy.stats.spearmanr(p.flatten(), q.flatten()).statistic for p, q in zip(a, b)]
        assert np.allclose(spearman(a, b).numpy(), expected, atol=1e-6)
    assert torch.allclose(spearman(maps(0), 3 * maps(0) ** 2), torch.ones(6))  # a monotone change keeps ranks
    assert spearman(torch.zeros(1, 3, 3), maps(0)[:1, :3, :3]).item() == 0.0  # a constant map: no ranking


def test_cosine_and_map_similarity():
    a, b = maps(0), maps(1)
    assert torch.allclose(cosine(a, b), nn.functional.cosine_similarity(a.flatten(1), b.flatten(1)))
    assert torch.allclose(cosine(a, 5 * a), torch.ones(6))
    both = map_similarity(a, b, k=3)
    assert set(both) == {"topk", "spearman", "cosine"} and all(v.shape == (6,) for v in both.values())


@pytest.mark.parametrize("norm, eps", [("linf", 4 / 255), ("l2", 0.5)])
def test_random_perturbation_has_the_stated_radius(norm, eps):
    x = torch.full((4, 1, SIZE, SIZE), 0.5)
    delta = (random_perturbation(x, eps, norm, seed=0) - x).flatten(1)
    if norm == "linf":
        assert torch.allclose(delta.abs(), torch.full_like(delta, eps))  # a random sign per pixel
        assert 0.3 < (delta > 0).float().mean() < 0.7
    else:
        assert torch.allclose(delta.norm(dim=1), torch.full((4,), eps), atol=1e-5)
    assert torch.equal(random_perturbation(x, eps, norm, seed=0), random_perturbation(x, eps, norm, seed=0))
    saturated = random_perturbation(torch.ones(2, 1, 4, 4), eps, norm)
    assert saturated.max() <= 1 and saturated.min() >= 0


def test_noise_similarity_is_one_at_radius_zero_and_falls_with_it(small_cnn):
    model, x, y = small_cnn
    explainer = Explainer(model)
    zero = noise_similarity(explainer, x, y, 0)
    assert all(torch.allclose(zero[key], torch.ones(len(x))) for key in ("topk", "spearman", "cosine"))
    assert zero["kept"].all()
    small, large = noise_similarity(explainer, x, y, "2/255"), noise_similarity(explainer, x, y, "32/255")
    assert large["topk"].mean() < small["topk"].mean() < 1
    assert large["spearman"].mean() < small["spearman"].mean()


def test_max_sensitivity_is_zero_for_a_linear_model_and_grows_with_the_radius(small_cnn):
    linear = nn.Sequential(nn.Flatten(), nn.Linear(SIZE * SIZE, 2))
    x = torch.rand(4, 1, SIZE, SIZE)
    assert max_sensitivity(Explainer(linear), x, None, "8/255").abs().max() < 1e-6  # a constant gradient map
    model, x, y = small_cnn
    explainer = Explainer(model)
    radii = [max_sensitivity(explainer, x, y, eps, samples=4).mean().item() for eps in ("1/255", "4/255", "16/255")]
    assert 0 < radii[0] < radii[1] < radii[2]
    assert torch.equal(max_sensitivity(explainer, x, y, "4/255", samples=4, seed=3),
                       max_sensitivity(explainer, x, y, "4/255", samples=4, seed=3))


def test_max_sensitivity_agrees_with_quantus(smooth_mlp):
    """Quantus' MaxSensitivity (uniform noise in the L-inf ball, Frobenius norms, max over samples) as the independent
    re-implementation; both maxima are Monte-Carlo estimates, so they agree on average and roughly per example."""
    quantus = pytest.importorskip("quantus")
    model, x = smooth_mlp
    x = 0.25 + 0.5 * x  # interior images: our [0, 1] clamp never binds, Quantus does not clamp
    classes = model(x).argmax(1).detach()
    explainer = Explainer(model)

    def explain(model, inputs, targets, **kwargs):
        return explainer(torch.as_tensor(inputs).float(), torch.as_tensor(targets).long()).unsqueeze(1).numpy()

    eps = 0.05
    np.random.seed(0)
    metric = quantus.MaxSensitivity(nr_samples=200, lower_bound=eps, disable_warnings=True, display_progressbar=False)
    theirs = np.asarray(metric(model=model, x_batch=x.numpy(), y_batch=classes.numpy(), a_batch=None,
                               explain_func=explain, device="cpu"))
    ours = max_sensitivity(explainer, x, classes, eps, samples=200).numpy()
    assert abs(ours.mean() / theirs.mean() - 1) < 0.1, (ours.mean(), theirs.mean())
    assert (0.6 < ours / theirs).all() and (ours / theirs < 1.7).all()


def test_bad_input_is_one_config_error(small_cnn):
    model, x, y = small_cnn
    explainer = Explainer(model)
    with pytest.raises(ConfigError, match="larger than the image"):
        topk_intersection(maps(0), maps(1), 26)
    with pytest.raises(ConfigError, match="share of the image"):
        topk_intersection(maps(0), maps(1), 1.5)
    with pytest.raises(ConfigError, match="positive number of pixels"):
        topk_intersection(maps(0), maps(1), 0)
    with pytest.raises(ConfigError, match="shape"):
        cosine(maps(0), maps(1)[:3])
    with pytest.raises(ConfigError, match="epsilon"):
        max_sensitivity(explainer, x, y, -0.1)
    with pytest.raises(ConfigError, match="epsilon"):
        noise_similarity(explainer, x, y, "-4/255")
    with pytest.raises(ConfigError, match="norm"):
        random_perturbation(x, 0.1, "l1")
    with pytest.raises(ConfigError, match="samples"):
        max_sensitivity(explainer, x, y, 0.1, samples=0)
