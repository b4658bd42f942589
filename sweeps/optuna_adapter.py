"""The one module that touches Optuna's private API (the supported versions are bounded in pyproject.toml;
tests/sweeps/test_optuna_adapter.py fails when an Optuna release changes what this module relies on).

The sweep runs trials outside `Study.optimize` (workers take WAITING trials from a shared queue, fail the
trials of dead workers and retry their points), so it needs a study's storage and its trial ids, which
Optuna keeps private. Everything else in sweeps/ asks through these functions:

- reading: `all_trials(study, states)`, `frozen(trial)`
- writing a trial: `set_system_attr`, `set_user_attr`, `start_waiting` (WAITING -> RUNNING, exactly one
  process wins), `new_trial` (a RUNNING trial for a sampler's next point), `fail` (RUNNING -> FAIL, once)
- heartbeats on databases: `heartbeat_enabled`, `record_heartbeat`, `fail_stale`
- the rest: `sql_engine` (the SQLAlchemy engine behind an RDB storage, for an advisory lock), `grid_space`
  (GridSampler's normalised search space), and the system-attribute names GridSampler and
  RetryFailedTrialCallback read (`GRID_ID`, `SEARCH_SPACE`, `FAILED_TRIAL`, `RETRY_HISTORY`).
"""
from __future__ import annotations

from typing import Any, Iterable, Optional, Union

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.samplers import GridSampler
from optuna.storages import BaseStorage
from optuna.storages import _heartbeat
from optuna.trial import FrozenTrial, TrialState

#: the Optuna versions this module was checked against (keep in step with pyproject.toml)
SUPPORTED = ">=5.0,<5.1"

#: system attributes of an enqueued trial that GridSampler reads: the grid point and the grid it belongs to
GRID_ID = "grid_id"
SEARCH_SPACE = "search_space"
#: system attributes of a retry, as RetryFailedTrialCallback writes and `retried_trial_number` reads them
FAILED_TRIAL = "failed_trial"
RETRY_HISTORY = "retry_history"

AnyTrial = Union[optuna.Trial, FrozenTrial]


def storage(study: optuna.Study) -> BaseStorage:
    """The storage a study reads and writes (Optuna wraps an RDBStorage in a cache)."""
    return study._storage


def trial_id(trial: AnyTrial) -> int:
    """The storage's id of a trial (not its number)."""
    return trial._trial_id


# ---- reading -----------------------------------------------------------------------------------------
def all_trials(study: optuna.Study, states: Optional[Iterable[TrialState]] = None,
               copy: bool = False) -> list[FrozenTrial]:
    """The study's trials read from its storage now (no sampler or study bookkeeping); without `copy` the
    trials may be the storage's own objects: read them, never change them."""
    return storage(study).get_all_trials(study._study_id, deepcopy=copy,
                                         states=None if states is None else tuple(states))


def frozen(trial: optuna.Trial) -> FrozenTrial:
    """A running trial as stored now (its system and user attributes included)."""
    return storage(trial.study).get_trial(trial._trial_id)


# ---- writing -----------------------------------------------------------------------------------------
def set_system_attr(study: optuna.Study, trial: AnyTrial, key: str, value: Any) -> None:
    storage(study).set_trial_system_attr(trial_id(trial), key, value)


def set_user_attr(study: optuna.Study, trial: AnyTrial, key: str, value: Any) -> None:
    storage(study).set_trial_user_attr(trial_id(trial), key, value)


def start_waiting(study: optuna.Study, waiting: FrozenTrial) -> Optional[optuna.Trial]:
    """Move a WAITING trial to RUNNING; the trial for the one process that won it, None for the others."""
    try:
        if storage(study).set_trial_state_values(trial_id(waiting), state=TrialState.RUNNING):
            return optuna.Trial(study, trial_id(waiting))
    except UpdateFinishedTrialError:
        pass
    return None


def new_trial(study: optuna.Study) -> optuna.Trial:
    """A new RUNNING trial (a sampler proposes its parameters when they are suggested)."""
    return optuna.Trial(study, storage(study).create_new_trial(study._study_id))


def fail(study: optuna.Study, trial: AnyTrial) -> bool:
    """Mark a RUNNING trial FAIL; True for the one process that did it, False when it had finished already."""
    try:
        return storage(study).set_trial_state_values(trial_id(trial), TrialState.FAIL)
    except UpdateFinishedTrialError:
        return False


# ---- heartbeats (RDB storages) ---------------------------------------------------------------------
def heartbeat_enabled(study: optuna.Study) -> bool:
    """Whether the storage records Optuna's heartbeats (an RDBStorage made with heartbeat_interval)."""
    return _heartbeat.is_heartbeat_enabled(storage(study))


def record_heartbeat(study: optuna.Study, trial: AnyTrial) -> None:
    """Tell Optuna the trial's process is alive (nothing without heartbeats)."""
    if heartbeat_enabled(study):
        storage(study).record_heartbeat(trial_id(trial))


def fail_stale(study: optuna.Study) -> None:
    """Fail the RUNNING trials whose Optuna heartbeat is older than the grace period, and run the
    storage's stale-trial callback (RetryHeartbeatStaleTrialCallback enqueues their retries)."""
    optuna.storages.fail_stale_trials(study)


# ---- the rest ----------------------------------------------------------------------------------------
def sql_engine(study: optuna.Study):
    """The SQLAlchemy engine of an RDB storage (None for other storages)."""
    backend = getattr(storage(study), "_backend", storage(study))
    return getattr(backend, "engine", None)


def grid_space(sampler: GridSampler) -> dict[str, list]:
    """GridSampler's search space as it compares it with an enqueued trial's SEARCH_SPACE."""
    return sampler._search_space
