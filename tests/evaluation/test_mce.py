"""Mean corruption error against a baseline report: known numbers on two hand-made reports, the CLI, bad input."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from core.errors import ConfigError
from evaluation.mce import main, mean_corruption_error

REPO = Path(__file__).resolve().parents[2]


def table(bacc: dict, **overrides) -> dict:
    """A MedMNIST-C table as the robustness report holds it (CorruptionScores.to_dict()), severities 1..3."""
    return {"flag": "breastmnist", "protocol": "upsample224-corrupt-box", "size": 28, "severities": [1, 2, 3],
            "clean_bacc": 0.9, "bacc": bacc, "be": {c: 0.5 for c in bacc}, "rbe": {c: 0.25 for c in bacc},
            "mean_be": 0.5, "mean_rbe": 0.25, **overrides}


# model errors (1 - bacc): blur 0.1 + 0.2 + 0.3 = 0.6, noise 0.2 + 0.2 + 0.4 = 0.8
MODEL = {"blur": [0.9, 0.8, 0.7], "noise": [0.8, 0.8, 0.6]}
# baseline errors: blur 0.2 + 0.4 + 0.6 = 1.2, noise 0.1 + 0.2 + 0.1 = 0.4; an extra corruption the model lacks
BASELINE = {"blur": [0.8, 0.6, 0.4], "noise": [0.9, 0.8, 0.9], "pixelate": [0.5, 0.5, 0.5]}
# CE: blur 0.6 / 1.2 = 0.5, noise 0.8 / 0.4 = 2.0; mCE = 1.25


def write(path: Path, bacc: dict, **overrides) -> Path:
    path.write_text(json.dumps({"checkpoint": str(path), "model": {"class": "ERM"},
                                "corruptions": table(bacc, **overrides)}))
    return path


def test_known_numbers():
    result = mean_corruption_error(table(MODEL), table(BASELINE))
    assert result["ce"] == pytest.approx({"blur": 0.5, "noise": 2.0})
    assert result["mce"] == pytest.approx(1.25)
    assert result["errors"] == pytest.approx({"blur": 0.6, "noise": 0.8})
    assert result["baseline_errors"] == pytest.approx({"blur": 1.2, "noise": 0.4})
    assert result["corruptions"] == ["blur", "noise"]  # the model's corruptions, not the baseline's extra one
    assert mean_corruption_error(table(BASELINE), table(BASELINE))["mce"] == pytest.approx(1.0)


def test_cli_prints_the_table_and_writes_it_into_the_report(tmp_path, capsys):
    model, baseline = write(tmp_path / "model.json", MODEL), write(tmp_path / "erm.json", BASELINE)
    assert main([str(model), "--baseline", str(baseline)]) == 0
    out = capsys.readouterr().out
    assert "blur" in out and "1.250" in out and "2.000" in out and "0.500" in out  # CE, mCE, BE beside them
    assert "mce" not in json.loads(model.read_text())["corruptions"]  # nothing written without --write
    assert main([str(model), "--baseline", str(baseline), "--write", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    stored = json.loads(model.read_text())["corruptions"]["mce"]
    assert stored["mce"] == printed["mce"] == pytest.approx(1.25) and stored["baseline"] == str(baseline)


def test_the_module_runs_as_a_command(tmp_path):
    model, baseline = write(tmp_path / "model.json", MODEL), write(tmp_path / "erm.json", BASELINE)
    done = subprocess.run([sys.executable, "-m", "evaluation.mce", str(model), "--baseline", str(baseline), "--json"],
                          cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["mce"] == pytest.approx(1.25)
    bad = subprocess.run([sys.executable, "-m", "evaluation.mce", str(model), "--baseline", str(tmp_path / "no.json")],
                         cwd=REPO, capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.startswith("error: ") and len(bad.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("baseline, message", [
    (None, "not found"),
    ({"flag": "pneumoniamnist"}, "another dataset"),
    ({"size": 64}, "another image size"),
    ({"protocol": "native224"}, "another MedMNIST-C protocol"),
    ({"severities": [1, 2, 3, 4, 5]}, "severities"),
    ({"bacc": {"blur": [0.8, 0.6, 0.4], "pixelate": [0.5] * 3}}, "no scores for noise"),
    ({"bacc": {"blur": [1.0, 1.0, 1.0], "noise": [0.9, 0.8, 0.9]}}, "no error on blur"),
    ("not json", "not a JSON"),
    ({"drop_table": True}, "no MedMNIST-C table"),
])
def test_bad_baseline_is_one_error_line_and_nothing_written(tmp_path, capsys, baseline, message):
    model = write(tmp_path / "model.json", MODEL)
    before = model.read_text()
    path = tmp_path / "base.json"
    if baseline == "not json":
        path.write_text("{not json")
    elif isinstance(baseline, dict) and baseline.get("drop_table"):
        path.write_text(json.dumps({"checkpoint": "x", "clean": {}}))
    elif baseline is not None:
        overrides = dict(baseline)
        write(path, overrides.pop("bacc", BASELINE), **overrides)
    assert main([str(model), "--baseline", str(path), "--write"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.startswith("error: ") and message in captured.err
    assert len(captured.err.strip().splitlines()) == 1
    assert model.read_text() == before


def test_a_run_folder_without_a_report_is_an_error(tmp_path):
    (tmp_path / "run").mkdir()
    with pytest.raises(ConfigError, match="no robustness report"):
        from evaluation.mce import load_report

        load_report(tmp_path / "run", "baseline")
