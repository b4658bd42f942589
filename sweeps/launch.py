"""`python -m sweeps run`: check the sweep, create or continue its study, build the MedMNIST-C cache once,
start the workers (`python -m sweeps worker`, one per GPU or sharing the CPU cores) and print a line per
finished trial; when the sweep is complete, write its report into ROOT/STUDY/report."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from typing import Sequence

from . import study as studies
from . import training
from .results import trial_rows
from .spec import SweepSpec
from .worker import describe


def check(spec: SweepSpec) -> training.TrainingFacts:
    """Everything that can go wrong before training, in order; nothing is written."""
    studies.storage_kind(spec.storage)
    facts = training.check_training(spec)
    training.check_metrics(spec, facts)
    studies.check_storage(spec)
    studies.existing_study_settings(spec)
    return facts


def cpu_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def worker_env(spec: SweepSpec, index: int) -> dict[str, str]:
    """CUDA_VISIBLE_DEVICES for a GPU worker; on the CPU each worker gets cores // workers threads."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if spec.gpus:
        share = spec.gpus[index * spec.gpus_per_trial:(index + 1) * spec.gpus_per_trial]
        env["CUDA_VISIBLE_DEVICES"] = ",".join(share)
    threads = env.get("MEDROBUST_THREADS") or str(max(1, cpu_cores() // spec.workers))
    env["MEDROBUST_THREADS"] = env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = threads
    return env


def run(spec: SweepSpec, forwarded: Sequence[str], log=print) -> int:
    """The `run` command; returns the exit code (0: every point done)."""
    started = time.time()
    facts = check(spec)
    study = studies.create_or_load(spec)
    c = studies.counts(study, spec)
    log(f"study {spec.study} in {spec.storage}: {c['done']}/{c['points']} points done; "
        f"{spec.workers} worker(s){' on GPUs ' + ','.join(spec.gpus) if spec.gpus else ''}; runs in {spec.study_dir}")
    if facts.corruption_caches and not studies.finished(study, spec):
        log("MedMNIST-C test sets: building the cache once for all trials (reused when present)")
        training.build_corruption_caches(facts)
    logs = spec.study_dir / "workers"
    logs.mkdir(parents=True, exist_ok=True)
    procs = []
    for index in range(spec.workers):
        handle = open(logs / f"worker_{index}.log", "a")
        command = [sys.executable, "-m", "sweeps", "worker", str(spec.path), *forwarded, "--index", str(index)]
        # own session: Ctrl-C reaches this process only, which stops the workers with SIGTERM
        procs.append((subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, env=worker_env(spec, index),
                                       cwd=os.getcwd(), start_new_session=True), handle))
    log(f"worker logs: {logs}/worker_N.log")
    seen = {r["number"] for r in trial_rows(study, spec) if r["state"] != "RUNNING" and r["state"] != "WAITING"}
    try:
        while True:
            alive = [p for p, _ in procs if p.poll() is None]
            seen = _print_finished(study, spec, seen, started, log)
            if not alive:
                break
            time.sleep(2)
    except KeyboardInterrupt:
        log("interrupted: stopping the workers (their running trials are failed and retried by the next run)")
        for p, _ in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p, _ in procs:
            p.wait()
        return 130
    finally:
        for _, handle in procs:
            handle.close()
    for index, (p, _) in enumerate(procs):
        if p.returncode:
            log(f"worker {index} exited with code {p.returncode}; see {logs}/worker_{index}.log")
    _print_finished(study, spec, seen, started, log)
    c = studies.counts(study, spec)
    log(f"{c['done']}/{c['points']} points done, {c['failed_points']} failed, in {time.time() - started:.0f} s")
    if studies.finished(study, spec) and c["done"]:
        from .report import write_report

        write_report(study, spec, spec.study_dir / "report", log)
    if c["done"] < c["points"]:
        log(incomplete(study, spec))
        return 1
    return 0


def incomplete(study, spec: SweepSpec) -> str:
    """What to do about a sweep with points not done: rerun, or allow more retries of its failed points."""
    c = studies.counts(study, spec)
    if c["failed_points"] and studies.finished(study, spec):
        return (f"{c['failed_points']} point(s) failed {spec.max_retries + 1} times (python -m sweeps status "
                f"{spec.path} says why); to try them again, rerun with --set max_retries={spec.max_retries + 1}")
    return "the sweep is incomplete: rerun the same command to continue"


def _print_finished(study, spec: SweepSpec, seen: set, started: float, log) -> set:
    rows = trial_rows(study, spec)
    c = studies.counts(study, spec)
    for row in rows:
        if row["number"] in seen or row["state"] in ("RUNNING", "WAITING"):
            continue
        seen.add(row["number"])
        values = " ".join(f"{o.metric}={v:.4f}" for o, v in zip(spec.objectives, row["values"] or []))
        why = f" ({row['failure']})" if row["failure"] else ""
        params = describe({**row["params"], "seed": row["seed"]})
        log(f"[{time.time() - started:6.0f} s] trial {row['number']} {row['state']}: {params} {values}{why} "
            f"[{c['done']}/{c['points']} points done]")
    return seen
