"""constructions.budget: `epsilon: auto` picks the smallest grid budget at which the source assigns the target share
of sampled training images to their new label, on a linear source whose flipping distances are known exactly."""
import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from constructions import BudgetSearch, Settings, budget_columns, construct_file, search_budget
from constructions.budget import search_sample
from core.errors import ConfigError

SIDE = 8  # 1 x 8 x 8 images: a unit direction moves each pixel by 1/8 of the L2 step, inside the [0, 1] box
MARGINS = [0.3] * 12 + [0.7] * 18 + [1.5] * 30  # L2 distance of each image to the decision boundary


def _linear_source():
    """Binary source whose logit difference is the signed L2 distance to the hyperplane u . (x - 0.5) = 0."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(SIDE * SIDE, 2))
    u = torch.full((SIDE * SIDE,), 1.0 / SIDE)
    with torch.no_grad():
        model[1].weight.copy_(torch.stack([-u / 2, u / 2]))
        model[1].bias.copy_(torch.tensor([u.sum() / 4, -u.sum() / 4]))
    return model.eval()


def _images():
    """Class-1 images on the positive side and class-0 on the negative, each at its MARGINS distance."""
    labels = torch.arange(len(MARGINS)) % 2
    sign = labels.float() * 2 - 1
    x = 0.5 + (sign * torch.tensor(MARGINS))[:, None] / SIDE * torch.ones(len(MARGINS), SIDE * SIDE)
    return x.reshape(-1, 1, SIDE, SIDE), labels


AUTO = dict(epsilon="auto", steps=20, scale=False, batch_size=64)


@pytest.mark.parametrize("kind", ["d_det", "d_rand"])
def test_auto_picks_the_smallest_grid_budget_that_reaches_the_target(kind):
    x, y = _images()
    model = _linear_source()
    with torch.no_grad():
        assert (model(x).argmax(1) == y).all()  # every image starts on its own side
    settings = Settings(**AUTO, search={"grid": [4.0, 0.5, 1.0, 2.0], "target": 0.95, "images": 40})
    got = search_budget(kind, model, x, y, 2, settings, seed=3, device="cpu")
    assert got["epsilon"] == 2.0 and got["step"] == pytest.approx(0.4) and got["images"] == 40
    assert [t["epsilon"] for t in got["tried"]] == [0.5, 1.0, 2.0]  # increasing, stopped at the first that reaches
    # the share at each budget is the share of the sampled relabelled images closer to the boundary than the budget
    pick = search_sample(len(y), 40, seed=3)
    margins = torch.tensor(MARGINS)[pick]
    new = (y[pick] + 1) % 2 if kind == "d_det" else None
    for tried in got["tried"]:
        changed = torch.ones(len(pick), dtype=torch.bool) if new is not None else None
        if changed is None:  # D_rand: the relabelled images are those whose drawn label differs
            built = torch.from_numpy(np.random.default_rng([3, 0]).integers(0, 2, len(pick)))
            changed = built != y[pick]
        expected = float((margins[changed] < tried["epsilon"]).float().mean())
        assert tried["assigned_share"] == pytest.approx(expected)
    assert got["assigned_share"] == got["tried"][-1]["assigned_share"] == 1.0


def test_no_grid_budget_reaching_the_target_is_one_error_naming_the_best():
    x, y = _images()
    settings = Settings(**AUTO, search={"grid": [0.5, 1.0], "target": 0.95})
    with pytest.raises(ConfigError, match=r"no budget on the grid \[0.5, 1.0\] .* \(best: 50.0% at L2 1, on 60 "
                                          r"sampled images\); add larger budgets"):
        search_budget("d_det", _linear_source(), x, y, 2, settings, device="cpu")
    with pytest.raises(ConfigError, match="d_nr has none"):
        search_budget("d_nr", _linear_source(), x, y, 2, settings, device="cpu")


def test_a_fixed_epsilon_keeps_its_settings_and_auto_is_checked():
    fixed = Settings(epsilon=1.0, step=0.2, steps=20, scale=False, batch_size=250)
    assert fixed.resolved("d_rand", (1, 28, 28)) == {"step": 0.2, "steps": 20, "scale_factor": 1.0, "epsilon": 1.0}
    assert Settings().step == 0.1 and Settings().search is None and not fixed.auto
    auto = Settings(epsilon="auto")
    assert auto.search == BudgetSearch() and auto.search.grid == (0.5, 1.0, 2.0, 4.0)
    # grid budgets are in epsilon's units: scaled to the image like it unless scale is false
    assert auto.at(1.0).resolved("d_det", (3, 28, 28))["epsilon"] == pytest.approx(math.sqrt(2352 / 3072))
    assert auto.at(1.0).step == pytest.approx(0.2) and auto.at(1.0).search is None
    with pytest.raises(ConfigError, match="epsilon auto is chosen before the build"):
        auto.resolved("d_rand", (1, 28, 28))
    for bad, message in (({"epsilon": "auto", "step": 0.2}, "give search.step_fraction instead of step"),
                         ({"epsilon": 1.0, "search": {}}, "drop search or set epsilon: auto"),
                         ({"epsilon": "auto", "search": {"grid": []}}, "search.grid must list positive"),
                         ({"epsilon": "auto", "search": {"grid": [0, 1]}}, "search.grid must list positive"),
                         ({"epsilon": "auto", "search": {"target": 1.5}}, r"search.target must lie in \(0, 1\]"),
                         ({"epsilon": "auto", "search": {"images": 0}}, "search.images"),
                         ({"epsilon": "auto", "search": {"size": 3}}, "search takes grid, target")):
        with pytest.raises(ConfigError, match=message):
            Settings(**bad)


def test_construct_file_records_the_chosen_budget_in_its_sidecar(tiny, tmp_path):
    root, ckpt = tiny("breastmnist")
    settings = Settings(epsilon="auto", steps=5, scale=False, search={"grid": [0.001, 8.0], "target": 0.8})
    out = tmp_path / "d_det.npz"
    sidecar = construct_file("d_det", ckpt, "breastmnist", out, root=str(root), settings=settings, limit=16,
                             verify_md5=False, device="cpu", progress=False)
    assert json.loads(out.with_suffix(".json").read_text()) == json.loads(json.dumps(sidecar))
    budget = sidecar["budget"]
    assert budget["epsilon"] == 8.0 and [t["epsilon"] for t in budget["tried"]] == [0.001, 8.0]
    assert budget["tried"][0]["assigned_share"] < 0.8 <= budget["assigned_share"] and budget["images"] == 64
    assert sidecar["settings"]["epsilon"] == 8.0 and sidecar["settings"]["step"] == pytest.approx(1.6)
    assert sidecar["resolved"]["epsilon"] == 8.0 and sidecar["counts"]["train"] == 16
    assert budget_columns(sidecar) == {"budget_l2": 8.0, "budget_search_assigned": budget["assigned_share"]}
    # a fixed budget records its radius and no search
    fixed = construct_file("d_det", ckpt, "breastmnist", tmp_path / "fixed.npz", root=str(root),
                           settings=Settings(epsilon=2.0, step=0.5, steps=2, scale=False), limit=8, verify_md5=False,
                           device="cpu", progress=False)
    assert "budget" not in fixed and budget_columns(fixed) == {"budget_l2": 2.0}
