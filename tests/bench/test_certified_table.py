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
