"""Finding 2's measure: per-family drops under MedMNIST-C against the round-trip reference, with paired intervals."""
import numpy as np
import pytest
import torch

from core.errors import ConfigError
from lightning_modules.metrics import task_balanced_accuracy
from studies import corruption_drop
from studies.nonrobust import DIFFERENCE, corruption_cells, findings, result_row, results_markdown


def test_families_come_from_medmnistc_modules():
    got = corruption_drop.families("pneumoniamnist")
    assert got["gaussian_noise"] == "noise" and got["pixelate"] == "digital" and got["gaussian_blur"] == "blur"
    assert got["brightness_up"] == "colour"
    assert set(got.values()) <= set(corruption_drop.FAMILY_OF_MODULE.values())


def _predictions(seed: int, corrupted_accuracy: dict[str, float], n: int = 200, severities: int = 5) -> dict:
    """Fake probabilities whose argmax is right on a given share of the test images, per condition."""
    rng = np.random.default_rng(seed)
    targets = torch.from_numpy(rng.integers(0, 2, n)).long()

    def probs(share):
        right = torch.from_numpy(rng.random(n) < share)
        predicted = torch.where(right, targets, 1 - targets)
        p = torch.full((n, 2), 0.2)
        p[torch.arange(n), predicted] = 0.8
        return p

    return {"flag": "pneumoniamnist", "task": "binary", "num_classes": 2, "severities": list(range(1, severities + 1)),
            "targets": targets, "clean": probs(0.9), "roundtrip": probs(0.85),
            "corrupted": {c: torch.cat([probs(a) for _ in range(severities)]) for c, a in corrupted_accuracy.items()}}


def test_point_estimates_are_the_project_balanced_accuracy_and_intervals_cover_them():
    predictions = _predictions(0, {"gaussian_noise": 0.8, "pixelate": 0.6, "brightness_up": 0.7})
    drops = corruption_drop.drop_draws(predictions, n=300, seed=0)
    y = predictions["targets"].numpy()

    def bacc(p):
        return task_balanced_accuracy("binary", y, p.numpy())

    per = {c: np.mean([bacc(s) for s in stacked.split(200)]) for c, stacked in predictions["corrupted"].items()}
    reference = bacc(predictions["roundtrip"])
    assert drops["reference_bacc"]["value"] == pytest.approx(reference)
    assert drops["corr_bacc@noise"]["value"] == pytest.approx(per["gaussian_noise"])
    assert drops["corr_drop@digital"]["value"] == pytest.approx(per["pixelate"] - reference)
    assert drops["corr_drop@all"]["value"] == pytest.approx(np.mean(list(per.values())) - reference)
    for entry in drops.values():
        low, high = np.percentile(entry["draws"], [2.5, 97.5])
        assert entry["draws"].shape == (300,) and low <= entry["value"] <= high


def test_differences_are_paired_draw_by_draw():
    """Two models on the same test images: their draws resample the same examples, so where their predictions agree
    (here: everything but the noise family) every paired difference is exactly 0, and elsewhere it is not."""
    first = _predictions(0, {"gaussian_noise": 0.8, "pixelate": 0.6})
    flipped = first["corrupted"]["gaussian_noise"].flip(1)
    second = dict(first, corrupted={**first["corrupted"], "gaussian_noise": flipped})
    a, b = (corruption_drop.drop_draws(p, n=200, seed=0) for p in (first, second))
    paired = corruption_drop.difference(b, a)
    assert all(np.all(paired[m]["draws"] == 0) for m in ("corr_drop@digital", "clean_bacc", "reference_bacc"))
    assert np.all(paired["corr_drop@noise"]["draws"] != 0)


def test_multilabel_is_refused_in_one_line():
    with pytest.raises(ConfigError, match="one-label tasks"):
        corruption_drop.drop_draws({"task": "multilabel", "targets": torch.zeros(3)})


def test_finding_2_is_read_from_the_paired_interval():
    """PGD-AT loses far less under every corruption and a little clean accuracy: both verdicts hold (five seeds:
    the interval over seeds is a t interval, which two seeds (1 degree of freedom) leave too wide to decide)."""
    dataset = {"flag": "pneumoniamnist", "size": 28}
    corruptions = {"gaussian_noise": 0.0, "pixelate": 0.0}
    draws = {}
    seeds = range(5)
    for seed in seeds:
        erm = _predictions(seed, {c: 0.6 for c in corruptions}, n=400)
        at = dict(erm, clean=erm["clean"].clone(), roundtrip=erm["roundtrip"],
                  corrupted={c: erm["roundtrip"].repeat(5, 1) for c in corruptions})
        at["clean"][:40] = at["clean"][:40].flip(1)  # 40 of 400 clean predictions change
        draws.setdefault(("pneumoniamnist", "erm"), []).append(corruption_drop.drop_draws(erm, 300, 0))
        draws.setdefault(("pneumoniamnist", "pgd_at"), []).append(corruption_drop.drop_draws(at, 300, 0))
    cells = corruption_cells(draws)
    paired = cells[("pneumoniamnist", DIFFERENCE)]
    assert paired["corr_drop@all"]["low"] > 0.1 and paired["corr_drop@all"]["seeds"] == len(seeds)
    rows = [result_row(dataset, m, "real", s, {"metrics": {"test/clean_bacc": 0.8}}) for m in ("erm", "pgd_at")
            for s in seeds]
    text = findings(rows, {}, cells)
    # the primary endpoint is absolute corrupted balanced accuracy, PGD-AT - ERM; the drop is beside it, descriptive
    assert ("PGD-AT - ERM (5 seeds): absolute corrupted balanced accuracy (all corruptions)" in text
            and "**finding 2 (adversarial training raises balanced accuracy under corruption) holds**" in text)
    assert "the drop beside the primary estimand" in text and "Families whose drop interval lies above 0" in text
    # neither model is at chance clean, so neither is flagged for a floor effect
    assert "ERM: clean bacc" in text and "floor effect" not in text
    markdown = results_markdown(rows, {}, None, cells)
    assert "## Finding 2: corrupted minus round-tripped clean" in markdown and "| noise |" in markdown
