"""bench/explanation_attack.py: a smoke run on synthetic PneumoniaMNIST gives a ratio per explanation attack, and
bad input ends in one `error:` line with exit code 2."""
import json

import pytest

from bench import explanation_attack
from bench.common import run_main


@pytest.fixture(scope="module")
def pneumonia_root(tmp_path_factory):
    from datamodules.synthetic import write_synthetic_npz

    root = tmp_path_factory.mktemp("pneumonia")
    write_synthetic_npz(root, "pneumoniamnist", n_train=4708, n_val=524, n_test=624)  # the official split sizes
    return root


def test_smoke_run_gives_one_ratio_per_explanation_attack(pneumonia_root, tmp_path, capsys):
    rows = explanation_attack.run_figures(str(pneumonia_root), False, quick=False, smoke=True, log=lambda line: None)
    assert [row["name"].split(":")[1].split("/")[0].strip() for row in rows] == [
        "TopKAttack (Ghorbani)", "TargetedManipulation (Dombrowski)"]
    assert all(row["ratio"] > 0 and row["higher_is_better"] is False for row in rows)
    out = tmp_path / "expl.json"
    with pytest.raises(SystemExit) as exit_code:
        run_main(lambda: explanation_attack.main(["--root", str(pneumonia_root), "--no-verify-md5", "--batch-size",
                                                  "4", "--steps", "1", "--repeats", "1", "--warmup", "0",
                                                  "--json", str(out)]))
    assert exit_code.value.code == 0
    data = json.loads(out.read_text())
    assert set(data["cpu_seconds_per_image"]) == {"pgd", "topk", "targeted"} and data["topk_over_pgd"]["median"] > 0
    assert "/ PGD at 1 steps" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [(["--eps", "-1"], "epsilon"), (["--root", "."], "not found")])
def test_bad_input_is_one_error_line(pneumonia_root, argv, message, capsys):
    with pytest.raises(SystemExit) as exit_code:
        run_main(lambda: explanation_attack.main(["--root", str(pneumonia_root), "--no-verify-md5", *argv]))
    err = capsys.readouterr().err
    assert exit_code.value.code == 2 and err.startswith("error:") and message in err and err.count("\n") == 1
