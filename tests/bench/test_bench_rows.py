"""Every row of `python -m bench all` decides `met` in one place (bench.common.figure): the sweep-scaling row follows
its measured time ratio (goal <= 0.6x), a condition such as equal attack strength can only take `met` away, and rows
without a goal of their own are reported, never met."""
from __future__ import annotations

import pytest

from bench import sweep_scaling
from bench.__main__ import markdown, run_all, table
from bench.callback_cost import figure_rows
from bench.common import figure, met_text


def sweep_rows_timed(monkeypatch, tmp_path, sleep: dict[int, float]) -> list[dict]:
    """`run_all(["sweep"])` with each timed sweep replaced by a `sleep` of the given seconds per worker count; the
    checks before timing and the thread-scaling context (a training loop) are skipped."""
    monkeypatch.setattr(sweep_scaling, "prepare", lambda args: None)
    monkeypatch.setattr(sweep_scaling, "sweep_command",
                        lambda args, workers, folder, name: ["sleep", str(sleep[workers])])
    monkeypatch.setattr(sweep_scaling, "thread_scaling", lambda repeats=3, log=print: [1.9, 2.0, 2.1])
    rows = run_all(["sweep"], root=str(tmp_path), verify_md5=False, quick=True, smoke=False, workdir=tmp_path,
                   log=lambda line: None)
    assert not [r for r in rows if r.get("status")], rows  # measured, not a failed benchmark
    return rows


@pytest.mark.parametrize("one, two, met", [(1.5, 0.2, True), (0.4, 0.8, False)])
def test_sweep_row_is_met_only_when_two_workers_take_at_most_0_6_of_the_time(monkeypatch, tmp_path, one, two, met):
    scaling, context = sweep_rows_timed(monkeypatch, tmp_path, {1: one, 2: two})
    assert scaling["name"] == "sweep scaling: 2 workers / 1 (time)" and scaling["goal"] == "<= 0.6x"
    seconds = scaling["details"]["seconds_median"]  # the measured wall time of the sleeps
    assert scaling["ratio"] == pytest.approx(seconds["2"] / seconds["1"]) and seconds["1"] >= one
    assert scaling["met"] is met and (scaling["ratio"] <= 0.6) is met
    assert scaling["range"][0] <= scaling["ratio"] <= scaling["range"][1]
    machine = {"cpu": "cpu", "cores": 2, "gpu": None, "python": "3.11", "torch": "2", "load_average_1min": 0.0}
    status = "yes" if met else "NO"
    assert f"| {scaling['goal']} | {status} |" in markdown([scaling, context], machine, "python -m bench all", 1.0)
    shown = next(line for line in table([scaling, context]).splitlines() if line.startswith("sweep scaling"))
    assert shown.rstrip().endswith(status)
    assert context["met"] is None and context["goal"] == "reported" and context["ratio"] == 2.0


def test_a_required_condition_only_takes_met_away_and_rows_without_a_goal_are_reported():
    assert figure("attack", [0.8], 1.0, higher_is_better=False, requires={"equal_strength": True})["met"] is True
    weaker = figure("attack", [0.8], 1.0, higher_is_better=False, requires={"equal_strength": False})
    assert weaker["met"] is False and weaker["details"]["equal_strength"] is False
    assert figure("attack", [1.2], 1.0, higher_is_better=False, requires={"equal_strength": True})["met"] is False
    reported = figure("context", [5.0, 6.0], None)
    assert reported["met"] is None and reported["goal"] == "reported" and reported["goal_value"] is None
    assert [met_text(r) for r in (figure("a", [2], 1), figure("b", [0.5], 1), reported)] == ["yes", "NO", "reported"]


def test_callback_rows_only_the_pgd_at_row_at_the_configs_values_has_the_goal():
    def result(share):
        epoch = {"check_s": {"cpu": share}, "epoch_s_full_split": {"cpu": 1.0}}
        return {"callback": {"every_n_epochs": 1, "epsilons": [4 / 255], "corruption_val_samples": 64,
                             "corruption_epoch": False, "val_samples": 192, "val_steps": 5},
                "share": {"repeats": [share, share]}, "config": "configs/x.yaml", "epochs": [epoch, epoch],
                "first_check_s": {"cpu": share}, "wall_share": {"median": share}, "train_images": 100}

    rows = figure_rows({("pgd_at", "configs' values"): result(0.2), ("erm", "configs' values"): result(0.01)}, {})
    assert [(r["goal"], r["met"]) for r in rows] == [("<= 0.1x", False), ("reported", None)]
    rows = figure_rows({("pgd_at", "configs' values"): result(0.05)}, {})
    assert rows[0]["met"] is True
