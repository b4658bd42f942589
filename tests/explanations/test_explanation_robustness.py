"""explanation_robustness: the dict behind the expl_* metric keys, on a small_cnn fitted in-test."""
import pytest
import torch

from conftest import MLP
from core.errors import ConfigError
from explanations import EXPLANATION_METRICS, explanation_robustness

FAST = {"steps": 5, "samples": 2}


def test_the_attack_moves_maps_more_than_random_noise_and_keeps_labels(small_cnn):
    model, x, y = small_cnn
    result = explanation_robustness(model, x[:16], None, "8/255", **FAST)
    assert tuple(result) == EXPLANATION_METRICS and all(isinstance(v, float) for v in result.values())
    assert result["topk"] < result["topk_random"] - 0.2, result
    assert result["spearman"] < result["spearman_random"] and result["cosine"] < result["cosine_random"]
    assert result["kept"] >= 0.8 and result["kept_random"] >= 0.8 and result["sensmax"] > 0


def test_per_example_values_and_failed_manipulations_count_as_intact(small_cnn):
    model, x, y = small_cnn
    values = explanation_robustness(model, x[:16], y[:16], 0.5, steps=1, samples=2, reduce=False)
    assert all(v.shape == (16,) for v in values.values())
    failed = values["kept"] == 0
    assert failed.any() and not failed.all()  # a budget this large flips some labels at the first step
    for key in ("topk", "spearman", "cosine"):
        assert (values[key][failed] == 1).all(), key
        assert (values[key][~failed] < 1).all(), key


@pytest.mark.parametrize("method", ["gradcam", "smoothgrad"])
def test_the_targeted_attack_and_other_methods(small_cnn, method):
    model, x, y = small_cnn
    result = explanation_robustness(model, x[:8], y[:8], "8/255", method=method, attack="targeted", samples=2,
                                    steps=3, explainer_options={"samples": 2} if method == "smoothgrad" else None)
    assert tuple(result) == EXPLANATION_METRICS
    assert all(0 <= result[key] <= 1 for key in ("topk", "topk_random", "kept", "kept_random"))


def test_multi_label_targets_explain_the_top_scoring_label(small_cnn):
    model, x, y = small_cnn
    multi_hot = torch.nn.functional.one_hot(y[:8], 2).float()
    by_labels = explanation_robustness(model, x[:8], multi_hot, "4/255", reduce=False, **FAST)
    by_prediction = explanation_robustness(model, x[:8], None, "4/255", multilabel=True, reduce=False, **FAST)
    assert all(torch.equal(by_labels[key], by_prediction[key]) for key in EXPLANATION_METRICS)


def test_bad_input_is_one_config_error(small_cnn):
    model, x, y = small_cnn
    with pytest.raises(ConfigError, match="unknown explanation attack"):
        explanation_robustness(model, x[:4], y[:4], "4/255", attack="fgsm")
    with pytest.raises(ConfigError, match="unknown explanation method"):
        explanation_robustness(model, x[:4], y[:4], "4/255", method="lime")
    with pytest.raises(ConfigError, match="epsilon"):
        explanation_robustness(model, x[:4], y[:4], -0.01)
    with pytest.raises(ConfigError, match="larger than the image"):
        explanation_robustness(model, x[:4], y[:4], "4/255", k=10_000)
    with pytest.raises(ConfigError, match="no nn.Conv2d"):
        explanation_robustness(MLP(), x[:4], y[:4], "4/255", method="gradcam")
    with pytest.raises(ConfigError, match="at least 2"):
        explanation_robustness(model, x[:1], y[:1], "4/255", attack="targeted")
