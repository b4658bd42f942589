"""The Optuna study of a sweep: storage from a URL, creation with a settings fingerprint, the queue of
points (every grid point exactly once, retries of failed or killed trials) and crash detection.

Every point of the sweep has a key (`grid:7` for GridSampler's grid id 7, `trial:12` for a point a
sampler proposed in trial 12, `trial:12:seed:1` for its other seeds). A point is done when one of its
trials is COMPLETE or PRUNED. Workers only run trials taken from the WAITING queue (grid) or created
within the budget (samplers); when two trials of one point are ever live at once, the lower-numbered
one runs and the other is skipped, so each point is trained once however many workers race.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import socket
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.samplers import GridSampler
from optuna.trial import FrozenTrial, TrialState

from core.errors import ConfigError

from . import optuna_adapter as adapter
from .spec import SweepSpec

POINT = "medrobust:point"
OWNER = "medrobust:owner"
BEAT = "medrobust:beat"
SKIPPED = "medrobust:skipped"
INTERRUPTED = "interrupted"
SEED = "seed"
FINGERPRINT = "medrobust:fingerprint"
SETTINGS = "medrobust:settings"

optuna.logging.set_verbosity(optuna.logging.WARNING)
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


# ---- storage ---------------------------------------------------------------------------------------
def storage_kind(url: str) -> str:
    """sqlite, journal or postgresql (or another SQLAlchemy database); a malformed URL is a ConfigError."""
    if url.startswith("journal:"):
        if not journal_path(url).name:
            raise ConfigError(f"storage {url!r}: write journal:PATH/TO/FILE.journal")
        return "journal"
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ConfigError(f"storage {url!r} is not a URL: use sqlite:///FILE.db, journal:FILE.journal or "
                          "postgresql://USER:PASSWORD@HOST:PORT/DB") from None
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        if not parsed.database or parsed.database == ":memory:":
            raise ConfigError(f"storage {url!r}: an in-memory database cannot be shared; "
                              "name a file (sqlite:///runs/s.db)")
        return "sqlite"
    if backend not in ("postgresql", "mysql"):
        raise ConfigError(f"storage {url!r}: unsupported database {backend!r} (sqlite, journal or postgresql)")
    return backend


def journal_path(url: str) -> Path:
    path = url[len("journal:"):]
    return Path(path[2:] if path.startswith("//") else path).expanduser()


def storage_exists(url: str) -> bool:
    kind = storage_kind(url)
    if kind == "journal":
        return journal_path(url).is_file()
    if kind == "sqlite":
        from sqlalchemy.engine import make_url

        return Path(make_url(url).database).expanduser().is_file()
    return True


def check_storage(spec: SweepSpec) -> None:
    """A reachable storage that suits the number of processes; writes nothing."""
    kind = storage_kind(spec.storage)
    if kind == "sqlite" and spec.workers > 1:
        raise ConfigError("SQLite storage is for one worker: use journal:FILE.journal for several workers on one "
                          "machine, or postgresql://... across machines")
    if kind in ("journal", "sqlite"):
        path = journal_path(spec.storage) if kind == "journal" else _sqlite_path(spec.storage)
        folder = next((p for p in [path.parent, *path.parent.parents] if p.exists()), None)
        try:
            if path.is_dir() or folder is None or not folder.is_dir():
                raise OSError("not a folder")
            tempfile.TemporaryDirectory(dir=folder).cleanup()  # writable for real (not only by permission bits)
        except OSError:
            raise ConfigError(f"storage {spec.storage!r}: cannot write {path}") from None
        return
    import sqlalchemy

    try:
        engine = sqlalchemy.create_engine(spec.storage, connect_args={"connect_timeout": 5})
        with engine.connect():
            pass
        engine.dispose()
    except ModuleNotFoundError as err:
        raise ConfigError(f"storage {spec.storage!r}: the database driver is missing ({err.name}); "
                          'pip install "psycopg[binary]"') from None
    except Exception as err:
        raise ConfigError(f"storage {spec.storage!r} is unreachable: {' '.join(str(err).split())[:300]}") from None


def _sqlite_path(url: str) -> Path:
    from sqlalchemy.engine import make_url

    return Path(make_url(url).database).expanduser()


def open_storage(spec: SweepSpec):
    """The Optuna storage behind spec.storage (heartbeat and retry of stale trials on databases)."""
    kind = storage_kind(spec.storage)
    if kind == "journal":
        from optuna.storages.journal import JournalFileBackend, JournalFileSymlinkLock, JournalStorage

        path = journal_path(spec.storage)
        path.parent.mkdir(parents=True, exist_ok=True)
        # a killed process may hold the symlink lock: it is broken after 30 s
        lock = JournalFileSymlinkLock(str(path), grace_period=30)
        return JournalStorage(JournalFileBackend(str(path), lock_obj=lock))
    if kind == "sqlite":
        _sqlite_path(spec.storage).parent.mkdir(parents=True, exist_ok=True)
    engine = {"connect_args": {"connect_timeout": 10}} if kind == "postgresql" else {}
    import sqlalchemy.exc

    for attempt in range(5):
        try:
            return optuna.storages.RDBStorage(
                spec.storage, engine_kwargs=engine, heartbeat_interval=spec.heartbeat_interval,
                grace_period=spec.heartbeat_grace,
                heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(
                    max_retry=spec.max_retries),
            )
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError):
            # machines starting at once race to create the tables of a new database: the loser retries
            if attempt == 4:
                raise
            time.sleep(0.5 + random.random())


# ---- study -----------------------------------------------------------------------------------------
class GridPoints(GridSampler):
    """GridSampler for trials told outside `Study.optimize`: the workers, not the sampler, decide when the
    grid is done (GridSampler.after_trial would call `Study.stop`, which only works inside optimize)."""

    def after_trial(self, study, trial, state, values) -> None:
        pass


def make_sampler(spec: SweepSpec, worker: int = 0):
    if spec.is_grid:
        return GridPoints(spec.grid_space(), seed=spec.sampler_seed)
    seed = spec.sampler_seed + worker  # workers must not propose the same points
    if spec.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=seed, constant_liar=True)
    if spec.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed)
    return optuna.samplers.RandomSampler(seed=seed)


def make_pruner(spec: SweepSpec):
    if spec.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1)
    if spec.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner()
    return optuna.pruners.NopPruner()


def find_study(spec: SweepSpec, storage, wait: float = 30.0) -> Optional[optuna.study.StudySummary]:
    """The study's summary, None when absent. A study seen without its settings fingerprint may have been
    created an instant ago by another process that is about to write it: wait up to `wait` s for it."""
    deadline = time.time() + wait
    while True:
        summary = next((s for s in optuna.get_all_study_summaries(storage, include_best_trial=False)
                        if s.study_name == spec.study), None)
        if summary is None or FINGERPRINT in summary.user_attrs or time.time() > deadline:
            return summary
        time.sleep(0.5)


def check_settings(spec: SweepSpec, user_attrs: dict) -> None:
    """A study of this name made with other settings (or not by medrobust) is refused."""
    if user_attrs.get(FINGERPRINT) == spec.fingerprint():
        return
    if FINGERPRINT not in user_attrs:
        raise ConfigError(f"study {spec.study!r} exists in {spec.storage} but was not made by a medrobust sweep; "
                          "choose another study name")
    old = json.loads(user_attrs.get(SETTINGS, "{}"))
    new = json.loads(json.dumps(spec.settings(), default=str))
    differ = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k)) or ["?"]
    raise ConfigError(f"study {spec.study!r} exists in {spec.storage} with other settings "
                      f"({', '.join(differ)} differ); use another study name, or the settings it was made with")


def existing_study_settings(spec: SweepSpec) -> None:
    """Refuse, before anything is written, a study that exists with other settings."""
    if not storage_exists(spec.storage):
        return
    storage = open_storage(spec)
    summary = find_study(spec, storage)
    if summary is not None:
        check_settings(spec, summary.user_attrs)


def create_or_load(spec: SweepSpec, worker: int = 0) -> optuna.Study:
    """The sweep's study, created on first use (with its settings and fingerprint) and its grid queued."""
    storage = open_storage(spec)
    summary = find_study(spec, storage)
    if summary is not None:
        check_settings(spec, summary.user_attrs)
    directions = [o.direction for o in spec.objectives]
    study = optuna.create_study(storage=storage, study_name=spec.study, directions=directions,
                                sampler=make_sampler(spec, worker), pruner=make_pruner(spec), load_if_exists=True)
    if FINGERPRINT not in study.user_attrs:
        study.set_user_attr(SETTINGS, json.dumps(spec.settings(), default=str))
        study.set_user_attr("medrobust:objectives", [o.metric for o in spec.objectives])
        study.set_user_attr("medrobust:sweep", str(spec.path))
        study.set_user_attr(FINGERPRINT, spec.fingerprint())
    fill(study, spec)
    return study


def load(spec: SweepSpec, worker: int = 0) -> optuna.Study:
    """An existing study (status, report, select); a missing one is a ConfigError."""
    if not storage_exists(spec.storage):
        raise ConfigError(f"no study {spec.study!r}: {spec.storage} does not exist yet "
                          f"(python -m sweeps run {spec.path})")
    storage = open_storage(spec)
    summary = find_study(spec, storage)
    if summary is None:
        raise ConfigError(f"no study {spec.study!r} in {spec.storage} (python -m sweeps run {spec.path})")
    check_settings(spec, summary.user_attrs)
    return optuna.load_study(study_name=spec.study, storage=storage, sampler=make_sampler(spec, worker),
                             pruner=make_pruner(spec))


# ---- points, queue and crashes ----------------------------------------------------------------------
def point_of(trial: FrozenTrial) -> Optional[str]:
    point = trial.system_attrs.get(POINT)
    if point is None and adapter.GRID_ID in trial.system_attrs:
        point = f"grid:{trial.system_attrs[adapter.GRID_ID]}"
    return point


def is_skipped(trial: FrozenTrial) -> bool:
    return SKIPPED in trial.system_attrs  # its value is the number of the trial that runs the point


def grid_size(spec: SweepSpec) -> int:
    n = 1
    for values in spec.grid_space().values():
        n *= len(values)
    return min(n, spec.n_trials) if spec.n_trials else n


@dataclass
class PointState:
    done: bool = False       # a COMPLETE or PRUNED trial
    live: bool = False       # a RUNNING or WAITING trial
    failures: int = 0        # FAIL trials (skipped duplicates excluded)
    last_failed: Optional[FrozenTrial] = None


def point_states(trials: list[FrozenTrial]) -> dict[str, PointState]:
    states: dict[str, PointState] = {}
    for trial in trials:
        point = point_of(trial)
        if point is None or is_skipped(trial):
            continue
        state = states.setdefault(point, PointState())
        if trial.state in (TrialState.COMPLETE, TrialState.PRUNED):
            state.done = True
        elif trial.state in (TrialState.RUNNING, TrialState.WAITING):
            state.live = True
        elif trial.state == TrialState.FAIL:
            state.failures += trial.user_attrs.get("failure") != INTERRUPTED  # a stop is not the trial's fault
            if state.last_failed is None or trial.number > state.last_failed.number:
                state.last_failed = trial
    return states


@contextlib.contextmanager
def queue_lock(study: optuna.Study, spec: SweepSpec):
    """One process at a time decides what to queue (processes starting together would each queue the grid):
    a file lock beside a journal, an advisory lock on PostgreSQL; SQLite has one process."""
    kind = storage_kind(spec.storage)
    if kind == "journal":
        import fcntl

        with open(f"{journal_path(spec.storage)}.queue.lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
    elif kind == "postgresql":
        import sqlalchemy

        key = int(hashlib.sha256(spec.study.encode()).hexdigest()[:15], 16)
        with adapter.sql_engine(study).connect() as connection:
            connection.execute(sqlalchemy.text("SELECT pg_advisory_lock(:key)"), {"key": key})
            try:
                yield
            finally:
                connection.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:key)"), {"key": key})
    else:
        yield


def fill(study: optuna.Study, spec: SweepSpec) -> int:
    """Queue every point that has no live or finished trial: grid points never started, and failed points
    (a retry keeps the failed trial's parameters and run folder) while retries are left."""
    with queue_lock(study, spec):
        return _fill(study, spec)


def _fill(study: optuna.Study, spec: SweepSpec) -> int:
    states = point_states(adapter.all_trials(study))
    queued = 0
    if spec.is_grid:
        space = adapter.grid_space(study.sampler) if isinstance(study.sampler, GridSampler) else spec.grid_space()
        for grid_id in range(grid_size(spec)):
            point = f"grid:{grid_id}"
            state = states.get(point, PointState())
            if state.done or state.live or state.failures > spec.max_retries:
                continue
            attrs = {adapter.GRID_ID: grid_id, adapter.SEARCH_SPACE: space, POINT: point}
            _enqueue(study, attrs, state.last_failed)
            queued += 1
    else:
        for point, state in states.items():
            if state.done or state.live or not state.failures or state.failures > spec.max_retries:
                continue
            _enqueue(study, {POINT: point}, state.last_failed)
            queued += 1
    return queued


def _enqueue(study: optuna.Study, system_attrs: dict, failed: Optional[FrozenTrial]) -> None:
    params, distributions, user_attrs = None, None, {}
    if failed is not None:
        history = list(failed.system_attrs.get(adapter.RETRY_HISTORY, [])) + [failed.number]
        first_failed = failed.system_attrs.get(adapter.FAILED_TRIAL, failed.number)
        system_attrs = {**system_attrs, adapter.FAILED_TRIAL: first_failed, adapter.RETRY_HISTORY: history}
        params, distributions = failed.params, failed.distributions
        user_attrs = {k: v for k, v in failed.user_attrs.items() if k in (SEED, "run_dir")}
    study.add_trial(optuna.trial.create_trial(state=TrialState.WAITING, params=params, distributions=distributions,
                                              user_attrs=user_attrs, system_attrs=system_attrs))


def enqueue_seed(study: optuna.Study, trial: FrozenTrial, seed: int) -> None:
    """A sampler's point at another seed: same parameters, its own point key."""
    study.add_trial(optuna.trial.create_trial(
        state=TrialState.WAITING, params=trial.params, distributions=trial.distributions,
        user_attrs={SEED: seed}, system_attrs={POINT: f"{point_of(trial)}:seed:{seed}"}))


def pop(study: optuna.Study, spec: SweepSpec) -> Optional[optuna.Trial]:
    """The next trial this worker runs (now RUNNING and owned by it), or None when nothing is left to start."""
    for waiting in adapter.all_trials(study, states=(TrialState.WAITING,)):
        trial = adapter.start_waiting(study, waiting)
        if trial is not None:
            claim(study, trial)
            return trial
    if spec.is_grid or spec.n_trials is None:
        return None
    if len(point_states(adapter.all_trials(study))) >= spec.n_trials:
        return None
    trial = adapter.new_trial(study)
    claim(study, trial)
    adapter.set_system_attr(study, trial, POINT, f"trial:{trial.number}")
    return trial


def claim(study: optuna.Study, trial: optuna.Trial) -> None:
    """Record who runs a trial (host, pid, process start) so a dead owner can be recognised."""
    adapter.set_system_attr(study, trial, OWNER, owner())
    adapter.set_system_attr(study, trial, BEAT, time.time())


def owner() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid(), "start": process_start(os.getpid())}


def process_start(pid: int) -> Optional[int]:
    """The process's start time in clock ticks since boot (tells a reused pid apart), None off Linux;
    -1 for a zombie (killed, not yet reaped by its parent)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return -1 if fields[0] in ("Z", "X") else int(fields[19])
    except (OSError, IndexError, ValueError):
        return None


def owner_alive(info: dict) -> Optional[bool]:
    """True/False for an owner on this host; None when it runs elsewhere (only its heartbeat tells)."""
    if not info or info.get("host") != socket.gethostname():
        return None
    pid = int(info.get("pid", 0))
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    start = process_start(pid)
    return start is None or info.get("start") is None or start == info["start"]


def duplicate_of(study: optuna.Study, trial: FrozenTrial) -> Optional[int]:
    """Another trial of the same point that is done, or live with a lower number (it runs, this one not)."""
    point = point_of(trial)
    for other in adapter.all_trials(study):
        if other.number == trial.number or point_of(other) != point or is_skipped(other):
            continue
        if other.state in (TrialState.COMPLETE, TrialState.PRUNED):
            return other.number
        if other.state in (TrialState.RUNNING, TrialState.WAITING) and other.number < trial.number:
            return other.number
    return None


def reap(study: optuna.Study, spec: SweepSpec) -> list[int]:
    """Mark FAIL the RUNNING trials whose worker is dead (same host) or silent for longer than the grace
    period; only one process succeeds in failing a trial, so its point is queued again exactly once."""
    if is_database(spec):
        adapter.fail_stale(study)  # Optuna's heartbeat, RetryHeartbeatStaleTrialCallback
    failed = []
    now = time.time()
    for trial in adapter.all_trials(study, states=(TrialState.RUNNING,)):
        info = trial.system_attrs.get(OWNER)
        if info and info.get("pid") == os.getpid() and info.get("host") == socket.gethostname():
            continue
        alive = owner_alive(info)
        last = trial.system_attrs.get(BEAT) or (trial.datetime_start.timestamp() if trial.datetime_start else now)
        if alive is False or (alive is None and now - last > spec.heartbeat_grace):
            why = "its worker died" if alive is False else f"no heartbeat for {now - last:.0f} s"
            try:
                adapter.set_user_attr(study, trial, "failure", why)
            except UpdateFinishedTrialError:
                continue
            if adapter.fail(study, trial):
                failed.append(trial.number)
    if failed:
        fill(study, spec)
    return failed


def is_database(spec: SweepSpec) -> bool:
    return storage_kind(spec.storage) not in ("journal",)


def counts(study: optuna.Study, spec: SweepSpec) -> dict[str, int]:
    """Points done / running / waiting / failed (retries exhausted) and trials by state."""
    trials = adapter.all_trials(study)
    states = point_states(trials)
    total = grid_size(spec) if spec.is_grid else (spec.n_trials or len(states))
    by_state = {s.name.lower(): sum(1 for t in trials if t.state == s and not is_skipped(t)) for s in TrialState}
    return {
        "points": total,
        "done": sum(1 for s in states.values() if s.done),
        "running": by_state["running"],
        "waiting": by_state["waiting"],
        "failed_points": sum(1 for s in states.values() if not s.done and not s.live and s.failures > spec.max_retries),
        "trials": len(trials),
        "skipped": sum(1 for t in trials if is_skipped(t)),
        **{f"trials_{k}": v for k, v in by_state.items()},
    }


def finished(study: optuna.Study, spec: SweepSpec) -> bool:
    """No point left to start or running (failed points whose retries are spent count as finished)."""
    c = counts(study, spec)
    if c["running"] or c["waiting"]:
        return False
    if spec.is_grid:
        return c["done"] + c["failed_points"] >= c["points"]
    return len(point_states(adapter.all_trials(study))) >= (spec.n_trials or 0)
