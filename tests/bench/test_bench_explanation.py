"""`python -m bench all` wiring of the explanation figures: the attack's cost rows are reported (no goal), and the
per-epoch explanation check gets its own row against a PGD-AT epoch with the 10% goal."""
from pathlib import Path

import bench.__main__ as bench_main
from bench import callback_cost, explanation_attack
from bench.common import figure


def test_explanation_is_a_bench_figure_with_the_attack_rows_and_the_check_share(monkeypatch, tmp_path):
    assert "explanation" in bench_main.FIGURES
    monkeypatch.setattr(explanation_attack, "run_figures", lambda *a, **k: [
        figure("explanation attack: top-k / PGD", [3.0, 3.2, 2.9], 10.0, higher_is_better=False)])
    seen = {}

    def fake_measure(kind, root, verify_md5, epochs, batches, workdir, overrides=None, threads=1):
        seen.update(kind=kind, overrides=overrides)
        epoch = {"epoch_s_full_split": {"cpu": 100.0, "wall": 110.0}, "explanation_s": {"cpu": 2.0, "wall": 2.5},
                 "explanation_share": {"cpu": 0.02, "wall": 0.023}}
        return {"config": "configs/pgd_at.yaml", "train_images": 4708, "epochs": [epoch, epoch],
                "explanation_share": {"median": 0.02, "repeats": [0.02, 0.03]},
                "callback": {"explanation": {"method": "saliency", "samples": 32, "steps": 5, "k": 0.1,
                                             "epsilons": [4 / 255]}}}

    monkeypatch.setattr(callback_cost, "measure", fake_measure)
    rows = bench_main.run_all(["explanation"], "root", False, True, False, Path(tmp_path), log=lambda *_: None)
    attack, check = rows
    assert attack["goal"] == "reported" and attack["met"] is None and attack["benchmark"] == "explanation"
    assert check["name"] == "callback cost: explanation check / PGD-AT epoch (defaults)"
    assert check["goal_value"] == 0.10 and check["met"] is True and check["range"] == [0.02, 0.03]
    assert seen["kind"] == "pgd_at" and seen["overrides"]["explanation_epoch"] is True
