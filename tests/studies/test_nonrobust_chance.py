"""A multi-class balanced accuracy is read against 1 / C, not 0.5: on a 4-class dataset an interval of
[0.30, 0.40] is above chance (0.25), though it lies below 0.5 (descriptive readings here; the verdict of a primary
endpoint on it: tests/studies/test_nonrobust_endpoints.py)."""
from studies import measures
from studies.nonrobust import findings, result_row, results_markdown


def _cell(mean, low, high):
    return {"mean": mean, "sd": 0.02, "low": low, "high": high, "seeds": 3}


def test_multiclass_balanced_accuracy_verdicts_use_one_over_the_classes():
    dataset = {"flag": "octmnist", "size": 28}  # 4 classes
    rows = [result_row(dataset, "d_rand", "constructed", seed, {"metrics": {"test/clean_bacc": 0.35}})
            for seed in (0, 1, 2)]
    assert rows[0]["chance_bacc"] == 0.25
    assert measures.chance_of("bacc_recal", 4) == measures.chance_of("bacc_adabn", 4) == 0.25
    cells = {("octmnist", "d_rand"): {"auroc": _cell(0.60, 0.55, 0.65), "bacc_recal": _cell(0.35, 0.30, 0.40),
                                      "bacc_adabn": _cell(0.36, 0.31, 0.41), "bacc": _cell(0.20, 0.15, 0.24)}}
    text = findings(rows, cells)
    assert ("bacc with a threshold fitted on real val 0.350 ± 0.020 [0.300, 0.400] vs chance 0.250 (above chance)"
            in text), text
    assert "bacc after AdaBN 0.360 ± 0.020 [0.310, 0.410] vs chance 0.250 (above chance)" in text, text
    assert ("bacc at the default threshold 0.200 ± 0.020 [0.150, 0.240] vs chance 0.250 (not above chance)"
            in text), text
    # without per-example measures the sentence names the same chance
    assert "test balanced accuracy 0.350 vs chance 0.250 (+0.100)" in findings(rows)
    assert "## octmnist (chance balanced accuracy 0.250, AUROC 0.500)" in results_markdown(rows, cells)
