"""bench/certified_table.py: docs/certified.md's table is read from the result records (every number is the
record's), and a record without a certified section ends in one `error:` line."""
from __future__ import annotations

import pytest

from bench import certified_table
from evaluation.record import ResultRecord, write_record


def _record(tmp_path, flag: str, sigma: float, bacc_r0: float, certified: bool = True, epoch: int = 3):
    data = {"checkpoint": f"/runs/{flag}/checkpoints/best-epoch={epoch:03d}.ckpt",
            "dataset": {"flag": flag, "size": 28, "n_examples": 624},
            "config": {"trainer": {"max_epochs": 10}}, "clean": {"bacc": 0.625, "acc": 0.7}}
    if certified:
        data["certified"] = {
            "sigma": sigma, "n0": 100, "n": 1000, "alpha": 0.001, "n_examples": 250, "abstention_rate": 0.008,
            "seconds_per_image": 1.6518, "radii": {"r0": {"radius": 0.0, "bacc": bacc_r0, "acc": 0.9},
                                                   "r0_5": {"radius": 0.5, "bacc": 0.5751, "acc": 0.6}}}
    return write_record(tmp_path / f"{flag}-{sigma}.robustness.json", ResultRecord.from_dict(data))


def test_the_table_holds_each_records_numbers_sorted_by_dataset_and_sigma(tmp_path):
    paths = [_record(tmp_path, "pneumoniamnist", 0.5, 0.7), _record(tmp_path, "breastmnist", 0.25, 0.8125),
             _record(tmp_path, "pneumoniamnist", 0.12, 0.9)]
    head, rule, *rows = certified_table.table(paths).splitlines()
    assert head.split(" | ")[5:7] == ["cert bacc r=0", "cert bacc r=0.5"]
    assert [r.split(" | ")[:2] for r in rows] == [["| breastmnist 28 px", "0.25"], ["| pneumoniamnist 28 px", "0.12"],
                                                 ["| pneumoniamnist 28 px", "0.5"]]
    cells = rows[0].split(" | ")
    assert cells[2:9] == ["10 (best: 4)", "250 of 624", "0.625", "0.812", "0.575", "0.008", "1.65"]
    assert str(paths[1]) in cells[9]


def test_a_record_of_the_last_epoch_says_final(tmp_path):
    """configs/smoothing.yaml certifies the final model (checkpoint.monitor null): epoch 10 of 10 reads "final"."""
    head, rule, row = certified_table.table([_record(tmp_path, "breastmnist", 0.25, 0.8, epoch=9)]).splitlines()
    assert row.split(" | ")[2] == "10 (final)"


def test_a_record_without_certified_section_is_refused_in_one_line(tmp_path, capsys):
    path = _record(tmp_path, "breastmnist", 0.25, 0.8, certified=False)
    with pytest.raises(SystemExit) as exit_info:
        certified_table.run_main(lambda: certified_table.main([str(path)]))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "no certified section" in err[0]


def test_intervals_resample_the_certified_examples_and_hold_the_records_value(tmp_path):
    """--intervals: the point estimate is recomputed from the per-example radii (equal to the record's), the interval
    comes from resampling those examples, and it is degenerate exactly where every draw gives the same value."""
    labels = [0] * 20 + [1] * 20
    predictions = [0] * 15 + [1] * 5 + [1] * 12 + [-1] * 8  # class 0: 15 of 20 right; class 1: 12 of 20, 8 abstained
    radii = [0.6] * 10 + [0.1] * 5 + [0.3] * 5 + [0.6] * 12 + [0.0] * 8
    data = {"checkpoint": "/runs/b/checkpoints/best-epoch=009.ckpt",
            "dataset": {"flag": "breastmnist", "size": 28, "n_examples": 40}, "config": {},
            "certified": {"sigma": 0.25, "n0": 100, "n": 1000, "alpha": 0.001, "n_examples": 40,
                          "abstention_rate": 0.2, "seconds_per_image": 1.0,
                          "radii": {"r0": {"radius": 0.0, "bacc": 0.675, "acc": 0.675},
                                    "r0_5": {"radius": 0.5, "bacc": 0.55, "acc": 0.55},
                                    "r1": {"radius": 1.0, "bacc": 0.0, "acc": 0.0}},
                          "per_example": {"index": list(range(40)), "label": labels, "prediction": predictions,
                                          "radius": radii}}}
    path = write_record(tmp_path / "b.robustness.json", ResultRecord.from_dict(data))
    head, rule, *rows = certified_table.intervals([path], draws=200).splitlines()
    cells = [row.strip("| ").split(" | ") for row in rows]
    assert [c[2:4] for c in cells] == [["0", "0.675"], ["0.5", "0.550"], ["1", "0.000"]]
    low, high = (float(v) for v in cells[0][4].strip("[]").split(", "))
    assert low < 0.675 < high and high - low > 0.1
    assert cells[2][4] == "[0.00, 0.00]"
