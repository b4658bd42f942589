"""The study queue with real worker processes and storages but trials that do not train (fake_worker.py):
every grid point exactly once with two workers, and a SIGKILLed worker's trial failed and retried once."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import optuna
import pytest

from sweeps import optuna_adapter as adapter
from sweeps import study as studies
from sweeps.spec import load_spec

FAKE = Path(__file__).with_name("fake_worker.py")


def start(path, index, slow=None, env=None) -> subprocess.Popen:
    args = [sys.executable, str(FAKE), str(path), str(index)] + ([slow] if slow else [])
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)


def finish(proc: subprocess.Popen, timeout=240) -> str:
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out = proc.communicate()[0]
        pytest.fail(f"the worker did not exit within {timeout} s: {out[-2000:]}")
    assert proc.returncode == 0, out[-3000:]
    return out


def complete_points(spec) -> Counter:
    study = studies.load(spec)
    return Counter(studies.point_of(t) for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE)


def slow_key(eps: float) -> str:
    return f"eps={eps:.6f}"


def test_two_workers_run_every_grid_point_exactly_once(tiny_sweep):
    path = tiny_sweep(epsilon=[0, "1/255", "2/255", "3/255"], seeds=[0, 1, 2])
    spec = load_spec(path)
    procs = [start(path, i) for i in range(2)]
    outputs = [finish(p) for p in procs]
    done = complete_points(spec)
    assert len(done) == 12 and set(done.values()) == {1}, done
    study = studies.load(spec)
    assert len(study.trials) == 12 and all(t.state.name == "COMPLETE" for t in study.trials)
    combos = {(round(t.params["epsilon"] * 255), t.params["seed"]) for t in study.trials}
    assert combos == {(e, s) for e in range(4) for s in range(3)}
    assert all("ran" in out for out in outputs) and sum(int(o.rsplit("ran ", 1)[1]) for o in outputs) == 12


def kill_mid_trial_then_rerun(path, spec, slow_eps=4 / 255):
    """Worker 0 runs the slow point; SIGKILL it mid-trial once another trial has finished; rerun one worker."""
    victim = start(path, 0, slow=slow_key(slow_eps))
    deadline = time.time() + 120
    while time.time() < deadline:
        if list(spec.study_dir.glob("trial_*/slow_started")):
            break
        time.sleep(0.2)
    else:
        victim.kill()
        pytest.fail(f"the slow trial never started: {victim.communicate()[0][-2000:]}")
    helper = start(path, 1)  # runs the other points, waits on the slow one
    deadline = time.time() + 120
    while time.time() < deadline and not complete_points(spec):
        time.sleep(0.2)
    finished_before = {t.number: t.values for t in studies.load(spec).trials if t.state.name == "COMPLETE"}
    assert finished_before, "no trial finished before the kill"
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    out = finish(helper)  # the surviving worker sees the dead owner, fails the trial and retries it
    rerun = start(path, 2)
    out += finish(rerun)  # rerunning finds nothing left to do and loses nothing
    return finished_before, out


def check_after_crash(spec, finished_before):
    study = studies.load(spec)
    trials = study.trials
    done = complete_points(spec)
    assert set(done.values()) == {1} and len(done) == studies.grid_size(spec), done
    for number, values in finished_before.items():
        assert trials[number].state.name == "COMPLETE" and trials[number].values == values
    failed = [t for t in trials if t.state.name == "FAIL"]
    assert len(failed) == 1 and failed[0].user_attrs["failure"] == "its worker died"
    retries = [t for t in trials if t.system_attrs.get("failed_trial") == failed[0].number]
    assert len(retries) == 1 and retries[0].state.name == "COMPLETE"
    assert retries[0].params == failed[0].params
    assert retries[0].user_attrs["run_dir"] == failed[0].user_attrs["run_dir"]  # the retry reuses its folder
    attempts = sorted(p.name for p in Path(failed[0].user_attrs["run_dir"]).glob("attempt_*"))
    assert attempts == ["attempt_0", "attempt_1"]
    assert not [t for t in trials if t.state.name in ("RUNNING", "WAITING")]


def test_sigkilled_worker_trial_is_retried_once_on_journal(tiny_sweep):
    path = tiny_sweep(epsilon=[0, "2/255", "4/255"], seeds=[0])
    spec = load_spec(path)
    finished_before, _ = kill_mid_trial_then_rerun(path, spec)
    check_after_crash(spec, finished_before)


def test_sigkilled_worker_trial_is_retried_once_on_postgresql(tiny_sweep, fresh_database):
    path = tiny_sweep(epsilon=[0, "2/255", "4/255"], seeds=[0], storage=fresh_database)
    spec = load_spec(path)
    finished_before, _ = kill_mid_trial_then_rerun(path, spec)
    check_after_crash(spec, finished_before)


def test_two_workers_on_postgresql_run_every_point_once(tiny_sweep, fresh_database):
    path = tiny_sweep(epsilon=[0, "1/255", "2/255"], seeds=[0, 1], storage=fresh_database)
    spec = load_spec(path)
    for proc in [start(path, i) for i in range(2)]:
        finish(proc)
    done = complete_points(spec)
    assert len(done) == 6 and set(done.values()) == {1}
    trials = studies.load(spec).trials  # every trial counted: six, each COMPLETE, none a skipped duplicate
    assert len(trials) == 6 and [t.state.name for t in trials] == ["COMPLETE"] * 6
    assert not [t for t in trials if studies.is_skipped(t)]
    assert sorted((round(t.params["epsilon"] * 255), t.params["seed"]) for t in trials) == [
        (e, s) for e in range(3) for s in range(2)]


def test_a_point_that_always_fails_is_tried_max_retries_plus_one_times_then_reported_failed(tiny_sweep, capsys):
    path = tiny_sweep(epsilon=[0, "4/255"], seeds=[0], max_retries=2)
    spec = load_spec(path)
    procs = [start(path, i, env={"FAKE_FAIL_POINT": slow_key(4 / 255)}) for i in range(2)]
    for proc in procs:
        finish(proc, timeout=120)  # both workers exit once the point's retries are spent
    trials = studies.load(spec).trials
    failed = [t for t in trials if t.state.name == "FAIL"]
    assert len(failed) == spec.max_retries + 1 == 3
    assert {studies.point_of(t) for t in failed} == {studies.point_of(failed[0])}
    assert all("a point that always fails" in t.user_attrs["failure"] for t in failed)
    assert [t.system_attrs.get(adapter.FAILED_TRIAL) for t in failed] == [None, failed[0].number, failed[0].number]
    assert [t.state.name for t in trials if t not in failed] == ["COMPLETE"]
    attempts = sorted(p.name for p in Path(failed[0].user_attrs["run_dir"]).glob("attempt_*"))
    assert attempts == ["attempt_0", "attempt_1", "attempt_2"]  # every retry in the point's one folder

    from sweeps.cli import main

    assert main(["status", str(path), "--json"]) == 0
    counts = json.loads(capsys.readouterr().out)["counts"]
    assert (counts["done"], counts["failed_points"], counts["trials_fail"], counts["waiting"]) == (1, 1, 3, 0)
    from sweeps.launch import incomplete

    assert "1 point(s) failed 3 times" in incomplete(studies.load(spec), spec)
    assert "--set max_retries=3" in incomplete(studies.load(spec), spec)
    path = tiny_sweep(epsilon=[0, "4/255"], seeds=[0], max_retries=3)  # as the hint says: one more try, same study
    finish(start(path, 0, env={"FAKE_FAIL_POINT": slow_key(4 / 255)}), timeout=120)
    assert [t.state.name for t in studies.load(spec).trials].count("FAIL") == 4


def test_a_silent_remote_worker_is_failed_after_the_grace_period(tiny_sweep):
    """A trial owned by another host stops beating: after heartbeat.grace it is failed and queued again."""
    path = tiny_sweep(epsilon=[0], seeds=[0])
    spec = load_spec(path)
    study = studies.create_or_load(spec)
    trial = studies.pop(study, spec)
    adapter.set_system_attr(study, trial, studies.OWNER, {"host": "elsewhere", "pid": 1, "start": None})
    adapter.set_system_attr(study, trial, studies.BEAT, time.time())
    assert studies.reap(study, spec) == []  # still beating
    adapter.set_system_attr(study, trial, studies.BEAT, time.time() - spec.heartbeat_grace - 1)
    assert studies.reap(study, spec) == [trial.number]
    assert studies.reap(study, spec) == []  # failed once only
    waiting = [t for t in study.trials if t.state.name == "WAITING"]
    assert len(waiting) == 1 and waiting[0].system_attrs["failed_trial"] == trial.number
    assert waiting[0].system_attrs["grid_id"] == study.trials[trial.number].system_attrs["grid_id"]


def test_duplicate_trials_of_one_point_run_once(tiny_sweep):
    """Two processes that both queued the grid (say, two machines creating the study at once): each point
    still trains once; the higher-numbered duplicate is skipped."""
    path = tiny_sweep(epsilon=[0, "4/255"], seeds=[0])
    spec = load_spec(path)
    study = studies.create_or_load(spec)
    for grid_id in range(2):  # the second creator's queue
        studies._enqueue(study, {adapter.GRID_ID: grid_id, adapter.SEARCH_SPACE: spec.grid_space(),
                                 studies.POINT: f"grid:{grid_id}"}, None)
    finish(start(path, 0))
    done = complete_points(spec)
    assert len(done) == 2 and set(done.values()) == {1}
    assert sum(1 for t in studies.load(spec).trials if studies.is_skipped(t)) == 2


def test_sampler_sweep_runs_its_budget_with_every_seed_of_each_point(tiny_sweep):
    path = tiny_sweep(epsilon={"low": 0, "high": "8/255"}, seeds=[0, 1], sampler={"type": "tpe", "seed": 3},
                      n_trials=4, objectives={"val/clean_bacc": "maximize"})
    spec = load_spec(path)
    procs = [start(path, i) for i in range(2)]
    for proc in procs:
        finish(proc)
    trials = studies.load(spec).trials
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    assert len(complete) >= 4 and not [t for t in trials if t.state.name in ("RUNNING", "WAITING", "FAIL")]
    by_point: dict = {}
    for t in complete:
        origin = studies.point_of(t).split(":seed:")[0]
        by_point.setdefault(origin, []).append(t)
    for members in by_point.values():  # each proposed epsilon ran once per seed
        assert sorted(t.user_attrs["seed"] for t in members) == [0, 1]
        assert len({t.params["epsilon"] for t in members}) == 1
