"""Bad sweeps end in one line `error: ...`, a non-zero exit, and nothing written to the study storage."""
from __future__ import annotations

import json

import pytest

from sweeps.cli import main
from sweeps.spec import load_spec


def run_cli(capsys, *args):
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(code, err, needle):
    assert code == 2
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert needle in lines[0], lines[0]


def storage_files(tmp_path):
    return sorted(p.name for p in (tmp_path / "runs").glob("*")) if (tmp_path / "runs").exists() else []


@pytest.mark.parametrize("keys, needle", [
    ({"epsilons": [0]}, "unknown sweep key 'epsilons'"),
    ({"epsilon": []}, "epsilon is an empty list"),
    ({"epsilon": [0, "-1/255"]}, "epsilon"),
    ({"epsilon": [0, 2]}, "epsilon"),
    ({"epsilon": [0, "4/255", "4/255"]}, "lists a value twice"),
    ({"epsilon": {"low": 0, "high": "8/255"}, "sampler": "grid"}, "a grid cannot enumerate"),
    ({"epsilon": {"low": 0, "high": "8/255"}}, "n_trials (the trial budget) is required"),
    ({"objectives": {"val/clean_bacc": "up"}}, "direction must be maximize or minimize"),
    ({"objectives": {"test/clean_bacc": "maximize"}}, "objectives use validation metrics"),
    ({"method": "madry"}, "unknown method 'madry'"),
    ({"beta": 6.0}, "beta is TRADES' weight"),
    ({"storage": "notaurl"}, "is not a URL"),
    ({"storage": "sqlite:///:memory:"}, "in-memory"),
    ({"seeds": []}, "seeds must be a non-empty list"),
])
def test_bad_sweep_keys_are_one_line_errors(tiny_sweep, tmp_path, capsys, keys, needle):
    path = tiny_sweep(**keys)
    code, _, err = run_cli(capsys, "run", path)
    assert_one_line_error(code, err, needle)
    assert storage_files(tmp_path) == []


def test_command_line_overrides_reach_every_key(tiny_sweep):
    path = tiny_sweep()
    spec = load_spec(path, ["epsilon=[0, 1/255, 2/255]", "trainer.max_epochs=3", "sampler.seed=5",
                            "overrides.model.init_args.steps=2", "seeds=2"], workers=2)
    assert [round(v * 255) for v in spec.dimensions[0].values] == [0, 1, 2]
    assert spec.overrides["trainer.max_epochs"] == 3 and spec.overrides["model.init_args.steps"] == 2
    assert spec.sampler_seed == 5 and spec.seeds == [0, 1] and spec.workers == 2
    assert [o.metric for o in spec.objectives] == ["val/clean_bacc", "val/adv_bacc@4_255"]


def test_unknown_set_key_and_objective_spelling(tiny_sweep, tmp_path, capsys):
    path = tiny_sweep()
    code, _, err = run_cli(capsys, "run", path, "--set", "n_trails=3")
    assert_one_line_error(code, err, "unknown sweep key 'n_trails'")
    code, _, err = run_cli(capsys, "run", path, "--set", "objectives={adv_bacc@8/255: maximize}")
    assert_one_line_error(code, err, "val/adv_bacc@8_255 is not logged by the trials")
    assert storage_files(tmp_path) == []


def test_unknown_training_key_and_impossible_training_value(tiny_sweep, tmp_path, capsys):
    code, _, err = run_cli(capsys, "run", tiny_sweep(overrides={"model.init_args.stepz": 3}))
    assert_one_line_error(code, err, "stepz")
    code, _, err = run_cli(capsys, "run", tiny_sweep(overrides={"model.init_args.steps": 0}))
    assert_one_line_error(code, err, "steps must be a positive integer")
    assert storage_files(tmp_path) == []


def test_unreachable_storage_and_sqlite_with_workers(tiny_sweep, tmp_path, capsys):
    code, _, err = run_cli(capsys, "run", tiny_sweep(storage="postgresql://nobody@127.0.0.1:9/none"))
    assert_one_line_error(code, err, "unreachable")
    code, _, err = run_cli(capsys, "run", tiny_sweep(storage=f"sqlite:///{tmp_path / 'runs' / 's.db'}"),
                           "--workers", "2")
    assert_one_line_error(code, err, "SQLite storage is for one worker")
    code, _, err = run_cli(capsys, "run", tiny_sweep(storage="journal:/proc/nowhere/s.journal"))
    assert_one_line_error(code, err, "cannot write")
    assert storage_files(tmp_path) == []


def test_existing_study_with_other_settings_is_refused_untouched(tiny_sweep, tmp_path, capsys):
    import optuna

    from sweeps import study as studies

    spec = load_spec(tiny_sweep())
    study = studies.create_or_load(spec)  # the study as `run` makes it (grid queued, nothing trained)
    before = (tmp_path / "runs" / "tiny.journal").read_bytes()
    code, _, err = run_cli(capsys, "run", tiny_sweep(epsilon=[0, "2/255"]))
    assert_one_line_error(code, err, "exists in")
    assert "epsilon" not in err or "dimensions" in err
    assert (tmp_path / "runs" / "tiny.journal").read_bytes() == before
    assert len(study.trials) == 2 and {t.state for t in study.trials} == {optuna.trial.TrialState.WAITING}


def test_select_refuses_unknown_and_test_metrics(tiny_sweep, capsys):
    path = tiny_sweep()
    code, _, err = run_cli(capsys, "select", path, "--min", "test/clean_bacc=0.5")
    assert_one_line_error(code, err, "select chooses on validation metrics")
    code, _, err = run_cli(capsys, "status", path)
    assert_one_line_error(code, err, "no study 'tiny'")


def test_status_json_of_a_queued_grid(tiny_sweep, capsys):
    from sweeps import study as studies

    path = tiny_sweep(seeds=[0, 1])
    studies.create_or_load(load_spec(path))
    code, out, _ = run_cli(capsys, "status", path, "--json")
    assert code == 0
    data = json.loads(out)
    assert data["counts"]["points"] == 4 and data["counts"]["waiting"] == 4 and data["counts"]["done"] == 0
    assert [t["state"] for t in data["trials"]] == ["WAITING"] * 4
