"""A sweep worker: takes trials from the study until no point is left, runs each as one `train.py fit`,
and tells the study the validation objectives. Between trials (and while it waits for other workers'
last trials) it fails trials whose worker died, so their points are retried."""
from __future__ import annotations

import os
import shutil
import signal
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Optional

import optuna
from optuna.trial import TrialState

from attacks.threat_model import format_epsilon
from evaluation.layout import RunLayout

from . import optuna_adapter as adapter
from . import study as studies
from . import training
from .spec import SweepSpec


class Interrupted(Exception):
    """SIGINT or SIGTERM (Ctrl-C, a scheduler's preemption): the running trial is failed, its point retried later."""


_signals: list[int] = []


def _on_signal(number, frame) -> None:
    _signals.append(number)
    raise KeyboardInterrupt  # Lightning stops training at the next step and returns


def suggest(trial: optuna.Trial, spec: SweepSpec) -> dict[str, Any]:
    """The trial's parameters: grid values from GridSampler, a sampler's proposal, or a retry's own."""
    params: dict[str, Any] = {}
    for d in spec.dimensions:
        numeric = d.name != "method" and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                             for v in (d.values or [d.low, d.high]))
        if not numeric:
            params[d.name] = trial.suggest_categorical(d.name, d.values)
        elif d.is_grid:
            params[d.name] = trial.suggest_float(d.name, min(d.values), max(d.values))
        elif d.name not in ("epsilon", "lr", "beta") and all(isinstance(v, int) for v in (d.low, d.high)):
            params[d.name] = trial.suggest_int(d.name, d.low, d.high, step=int(d.step or 1), log=d.log)
        else:
            params[d.name] = trial.suggest_float(d.name, d.low, d.high, step=d.step, log=d.log)
    if spec.is_grid:
        params["seed"] = trial.suggest_categorical("seed", spec.seeds)
    else:
        params["seed"] = adapter.frozen(trial).user_attrs.get(studies.SEED, spec.seeds[0])
    return params


def describe(params: dict[str, Any]) -> str:
    shown = {k: format_epsilon(v) if k == "epsilon" else v for k, v in params.items()}
    return " ".join(f"{k}={v}" for k, v in shown.items())


class Heartbeat:
    """Tells the study every `interval` s that this worker still runs the trial (and Optuna's heartbeat on
    databases), so a silent trial can be failed by other workers after the grace period."""

    def __init__(self, study: optuna.Study, trial: optuna.Trial, interval: int):
        self.study, self.trial, self.interval = study, trial, interval
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self.beat, daemon=True)

    def beat(self) -> None:
        while not self.stopped.wait(self.interval):
            try:
                adapter.set_system_attr(self.study, self.trial, studies.BEAT, time.time())
                adapter.record_heartbeat(self.study, self.trial)
            except Exception:  # a finished trial or a storage hiccup: the next beat tries again
                pass

    def __enter__(self):
        adapter.record_heartbeat(self.study, self.trial)
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stopped.set()
        self.thread.join()


def run_folder(spec: SweepSpec, trial: optuna.Trial) -> tuple[Path, Optional[Path]]:
    """(run folder, checkpoint to resume): a retry reuses the failed trial's folder and resumes from its
    last.ckpt when that file loads; a fresh trial gets an empty folder."""
    origin = adapter.frozen(trial).system_attrs.get(adapter.FAILED_TRIAL)
    run_dir = spec.study_dir / f"trial_{trial.number if origin is None else origin}"
    if origin is None:
        if run_dir.exists():  # left by an earlier study of the same name
            shutil.move(str(run_dir), str(run_dir.with_name(f"{run_dir.name}.old-{int(time.time())}")))
        return run_dir, None
    last = RunLayout(run_dir).last_checkpoint
    if last.exists():
        from evaluation.runs import checkpoint_epoch

        if checkpoint_epoch(last) is not None:
            return run_dir, last
        last.rename(last.with_name(f"last.broken-{int(time.time())}.ckpt"))
    return run_dir, None


def pruning_callback(trial: optuna.Trial, spec: SweepSpec):
    """optuna-integration's Lightning pruning callback on the single objective (None without pruning)."""
    if spec.pruner == "none" or len(spec.objectives) != 1:
        return None
    from optuna_integration.pytorch_lightning import PyTorchLightningPruningCallback

    return PyTorchLightningPruningCallback(trial, monitor=spec.objectives[0].metric)


def run_trial(study: optuna.Study, trial: optuna.Trial, spec: SweepSpec, log=print) -> TrialState:
    """Train one trial and tell the study its objectives; test metrics and paths go to its user attrs."""
    frozen = adapter.frozen(trial)
    twin = studies.duplicate_of(study, frozen)
    if twin is not None:
        adapter.set_system_attr(study, trial, studies.SKIPPED, twin)
        study.tell(trial, state=TrialState.FAIL)
        return TrialState.FAIL
    started = time.time()
    params = suggest(trial, spec)
    if not spec.is_grid and studies.point_of(frozen) == f"trial:{trial.number}":
        frozen = adapter.frozen(trial)
        for seed in spec.seeds[1:]:
            studies.enqueue_seed(study, frozen, seed)
    run_dir, ckpt = run_folder(spec, trial)
    trial.set_user_attr("run_dir", str(run_dir))
    trial.set_user_attr(studies.SEED, params["seed"])
    trial.set_user_attr("params", {**spec.fixed, **params})
    if ckpt is not None:
        trial.set_user_attr("resumed_from", str(ckpt))
    args = training.trial_args(spec, params, run_dir, ckpt=ckpt, run_name=f"{spec.study}-trial_{trial.number}")
    log(f"trial {trial.number} started: {describe(params)} in {run_dir}" + (f" (resuming {ckpt})" if ckpt else ""))
    state, values = TrialState.FAIL, None
    with Heartbeat(study, trial, spec.heartbeat_interval):
        try:
            if spec.gpus_per_trial > 1:
                run_dir.mkdir(parents=True, exist_ok=True)
                result = training.run_in_child(args, run_dir / "train.log")
            else:
                callback = pruning_callback(trial, spec)
                result = training.run_in_process(args, [callback] if callback else [])
            record(trial, result)
            missing = [o.metric for o in spec.objectives if o.metric not in result.metrics]
            if missing:
                raise RuntimeError(f"the run logged no {', '.join(missing)}")
            values = [result.metrics[o.metric] for o in spec.objectives]
            state = TrialState.COMPLETE
        except optuna.TrialPruned:
            state = TrialState.PRUNED
        except KeyboardInterrupt:
            _signals.append(signal.SIGINT)
        except SystemExit as stop:  # Lightning exits after an interrupt; jsonargparse after a bad argument
            if not _signals:
                trial.set_user_attr("failure", f"train.py exited with code {stop.code}")
        except Exception as err:
            import train

            message = str(train.user_error(err) or f"{type(err).__name__}: {err}")
            trial.set_user_attr("failure", " ".join(message.split())[:500])
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / "trial_error.txt").write_text(traceback.format_exc())
    if spec.wandb:
        _finish_wandb()  # else the next trial in this process would log into this trial's W&B run
    if _signals:  # Lightning swallows the interrupt and may even test the unfinished model: none of it counts
        trial.set_user_attr("failure", studies.INTERRUPTED)
        study.tell(trial, state=TrialState.FAIL)
        log(f"trial {trial.number} interrupted: failed, its point is retried (from its last.ckpt) by the next run")
        raise Interrupted()
    study.tell(trial, values if state == TrialState.COMPLETE else None, state=state)
    shown = "" if values is None else " " + " ".join(f"{o.metric}={v:.4f}" for o, v in zip(spec.objectives, values))
    log(f"trial {trial.number} {state.name}: {describe(params)}{shown} ({time.time() - started:.0f} s)")
    return state


def _finish_wandb() -> None:
    import wandb

    if wandb.run is not None:
        wandb.finish()


def record(trial: optuna.Trial, result) -> None:
    """The run's outcome as user attributes: best epoch's val metrics, the best checkpoint's test metrics."""
    trial.set_user_attr("val", {k: v for k, v in result.metrics.items() if k.startswith("val/")})
    trial.set_user_attr("test", {k: v for k, v in result.metrics.items() if k.startswith("test/")})
    trial.set_user_attr("best_epoch", result.best_epoch)
    trial.set_user_attr("checkpoint", str(result.best_checkpoint) if result.best_checkpoint else None)
    trial.set_user_attr("report", str(result.report) if result.report else None)


def work(spec: SweepSpec, worker: int = 0, log=print, poll: float = 2.0) -> int:
    """Run trials until the sweep has nothing left to start or run; returns the number of trials run."""
    threads = os.environ.get("MEDROBUST_THREADS")
    if threads:
        import torch

        torch.set_num_threads(int(threads))
    for number in (signal.SIGINT, signal.SIGTERM):
        signal.signal(number, _on_signal)
    study = studies.create_or_load(spec, worker)
    ran = 0
    while not _signals:
        studies.reap(study, spec)
        studies.fill(study, spec)
        trial = studies.pop(study, spec)
        if trial is not None:
            run_trial(study, trial, spec, log)
            ran += 1
            continue
        if studies.finished(study, spec):
            return ran
        time.sleep(poll)  # other workers' last trials run: wait, and retry them if their workers die
    raise Interrupted()
