"""What sweeps.optuna_adapter relies on in Optuna's private API, checked on the storages sweeps use (in
memory, SQLite with heartbeats, journal file): these tests fail when an Optuna release changes it."""
from __future__ import annotations

import inspect
import re
import time
from pathlib import Path

import optuna
import pytest
from optuna.storages import RDBStorage, RetryFailedTrialCallback, RetryHeartbeatStaleTrialCallback
from optuna.storages.journal import JournalFileBackend, JournalStorage
from optuna.trial import TrialState, create_trial
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from sweeps import optuna_adapter as adapter
from sweeps.study import GridPoints

REPO = Path(__file__).resolve().parents[2]


def make_storage(kind: str, folder: Path, grace: int = 60):
    if kind == "memory":
        return optuna.storages.InMemoryStorage()
    if kind == "sqlite":
        return RDBStorage(f"sqlite:///{folder / 's.db'}", heartbeat_interval=1, grace_period=grace,
                          heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=1))
    return JournalStorage(JournalFileBackend(str(folder / "s.journal")))


@pytest.fixture(params=["memory", "sqlite", "journal"])
def study(request, tmp_path):
    return optuna.create_study(storage=make_storage(request.param, tmp_path), study_name="s")


def test_installed_optuna_is_within_the_bound_of_pyproject_and_of_the_adapter():
    text = (REPO / "pyproject.toml").read_text()
    bound = re.search(r'"optuna([<>=!~][^"]*)"', text).group(1)
    assert bound.replace(" ", "") == adapter.SUPPORTED, "pyproject.toml and sweeps.optuna_adapter.SUPPORTED disagree"
    assert Version(optuna.__version__) in SpecifierSet(adapter.SUPPORTED), optuna.__version__
    integration = re.search(r'"optuna-integration([<>=!~][^"]*)"', text).group(1)
    import optuna_integration

    assert Version(optuna_integration.__version__) in SpecifierSet(integration)


def test_private_names_exist_with_the_signatures_the_adapter_calls():
    storage = optuna.storages.InMemoryStorage()
    study = optuna.create_study(storage=storage)
    assert adapter.storage(study) is storage and isinstance(study._study_id, int)
    trial = study.ask()
    assert adapter.trial_id(trial) == adapter.trial_id(study.trials[0]) == trial._trial_id
    params = inspect.signature(optuna.storages.BaseStorage.get_all_trials).parameters
    assert list(params)[:4] == ["self", "study_id", "deepcopy", "states"]
    assert list(inspect.signature(optuna.Trial.__init__).parameters) == ["self", "study", "trial_id"]
    assert callable(optuna.storages._heartbeat.is_heartbeat_enabled)
    assert hasattr(optuna.storages._heartbeat.BaseHeartbeat, "record_heartbeat")
    # GridSampler would stop the study after each trial (Study.stop only works inside optimize): sweeps.study.GridPoints
    # overrides this method by name and signature
    assert list(inspect.signature(optuna.samplers.GridSampler.after_trial).parameters) == [
        "self", "study", "trial", "state", "values"]


def test_reading_and_writing_trials(study):
    study.enqueue_trial({"x": 1.0})
    done = study.ask()
    study.tell(done, 1.0)
    study.add_trial(create_trial(state=TrialState.WAITING, system_attrs={"k": 1}))
    assert [t.state for t in adapter.all_trials(study)] == [TrialState.COMPLETE, TrialState.WAITING]
    (waiting,) = adapter.all_trials(study, states=(TrialState.WAITING,))
    copied = adapter.all_trials(study, copy=True)[1]
    copied.system_attrs["k"] = 2
    assert adapter.all_trials(study)[1].system_attrs["k"] == 1  # a copy is the caller's own

    trial = adapter.start_waiting(study, waiting)
    assert isinstance(trial, optuna.Trial) and trial.number == waiting.number
    assert adapter.start_waiting(study, waiting) is None  # exactly one process wins a WAITING trial
    adapter.set_system_attr(study, trial, "owner", {"pid": 1})
    adapter.set_user_attr(study, trial, "run_dir", "runs/x")
    now = adapter.frozen(trial)
    assert now.state == TrialState.RUNNING and now.system_attrs["owner"] == {"pid": 1}
    assert now.user_attrs["run_dir"] == "runs/x"
    assert adapter.fail(study, now) is True
    assert adapter.fail(study, now) is False  # failed once only
    assert study.trials[trial.number].state == TrialState.FAIL

    fresh = adapter.new_trial(study)
    assert fresh.number == 2 and adapter.frozen(fresh).state == TrialState.RUNNING
    assert fresh.suggest_float("x", 0, 1) == adapter.frozen(fresh).params["x"]


def test_heartbeats_only_on_databases_and_stale_trials_are_failed_and_retried(tmp_path):
    for kind in ("memory", "journal"):
        study = optuna.create_study(storage=make_storage(kind, tmp_path))
        trial = study.ask()
        assert not adapter.heartbeat_enabled(study)
        adapter.record_heartbeat(study, trial)  # nothing, no error
        adapter.fail_stale(study)
        assert adapter.frozen(trial).state == TrialState.RUNNING

    study = optuna.create_study(storage=make_storage("sqlite", tmp_path, grace=1), study_name="hb")
    assert adapter.heartbeat_enabled(study)  # the RDBStorage is wrapped in Optuna's cache: still seen
    trial = study.ask()
    adapter.record_heartbeat(study, trial)
    adapter.fail_stale(study)
    assert adapter.frozen(trial).state == TrialState.RUNNING  # fresh heartbeat
    time.sleep(2.2)
    adapter.fail_stale(study)
    trials = adapter.all_trials(study)
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.WAITING]
    retry = trials[1]
    assert retry.system_attrs[adapter.FAILED_TRIAL] == trial.number
    assert retry.system_attrs[adapter.RETRY_HISTORY] == [trial.number]


def test_the_system_attributes_optuna_reads():
    """GridSampler runs the grid point named by an enqueued trial's GRID_ID/SEARCH_SPACE (the same point for the
    same seed in every process, every point once over the grid ids); RetryFailedTrialCallback reads a retry's
    FAILED_TRIAL/RETRY_HISTORY."""
    space = {"b": [0, 1], "a": [10, 20, 30]}
    assert adapter.grid_space(optuna.samplers.GridSampler(space, seed=0)) == {"a": [10, 20, 30], "b": [0, 1]}

    def points(order):
        sampler = GridPoints(space, seed=3)  # GridSampler that leaves the study running after each trial
        study = optuna.create_study(sampler=sampler)
        for grid_id in order:
            study.add_trial(create_trial(state=TrialState.WAITING, system_attrs={
                adapter.GRID_ID: grid_id, adapter.SEARCH_SPACE: adapter.grid_space(sampler)}))
        found = {}
        for waiting in adapter.all_trials(study, states=(TrialState.WAITING,)):
            trial = adapter.start_waiting(study, waiting)
            found[waiting.system_attrs[adapter.GRID_ID]] = (trial.suggest_int("a", 10, 30),
                                                            trial.suggest_int("b", 0, 1))
            study.tell(trial, 0.0)
        return found

    first, second = points([4, 1, 0, 2, 3, 5]), points([5, 3, 2, 0, 1, 4])
    assert first == second
    assert sorted(first.values()) == [(a, b) for a in (10, 20, 30) for b in (0, 1)]
    retry = create_trial(state=TrialState.WAITING,
                         system_attrs={adapter.FAILED_TRIAL: 3, adapter.RETRY_HISTORY: [3, 5]})
    assert RetryFailedTrialCallback.retried_trial_number(retry) == 3
    assert RetryFailedTrialCallback.retry_history(retry) == [3, 5]


def test_sql_engine_of_a_database_storage(tmp_path):
    import sqlalchemy

    study = optuna.create_study(storage=make_storage("sqlite", tmp_path), study_name="e")
    with adapter.sql_engine(study).connect() as connection:
        assert connection.execute(sqlalchemy.text("SELECT 1")).scalar() == 1
    assert adapter.sql_engine(optuna.create_study()) is None
