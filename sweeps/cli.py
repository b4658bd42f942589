"""python -m sweeps run|status|report|select|worker SWEEP.yaml ...: see `python -m sweeps COMMAND --help`."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional, Sequence

from core.cli import Parser
from core.errors import ConfigError, MedRobustError

EXAMPLES = """examples:
  python -m sweeps run configs/sweeps/quick.yaml --workers 2
  python -m sweeps status configs/sweeps/quick.yaml
  python -m sweeps report configs/sweeps/quick.yaml --out runs/quick/report
  python -m sweeps select configs/sweeps/quick.yaml --min clean_bacc=0.85 --maximize adv_bacc@4/255
"""


def _sweep_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("sweep", help="sweep YAML (configs/sweeps/*.yaml)")
    parser.add_argument("--set", dest="assignments", action="append", default=[], metavar="KEY=VALUE",
                        help="override a sweep key (n_trials=4, sampler.seed=1, seeds=[0,1]) or a training key "
                             "(trainer.max_epochs=3, model.init_args.steps=5); repeatable")
    parser.add_argument("--storage", help="study storage URL (overrides the YAML's storage)")
    parser.add_argument("--study", help="study name (overrides the YAML's study)")
    parser.add_argument("--root", help="folder of the trial runs (ROOT/STUDY/trial_N)")


def build_parser() -> Parser:
    parser = Parser(prog="python -m sweeps", description="Optuna sweeps over the training epsilon of medrobust runs.",
                    epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    run = commands.add_parser("run", help="create or continue the study and run its trials")
    _sweep_args(run)
    run.add_argument("--workers", type=int, help="worker processes sharing the study (default 1, or one per GPU)")
    run.add_argument("--gpus", help="GPU ids, one worker per GPU (or per --gpus-per-trial GPUs): 0,1,2,3")
    run.add_argument("--gpus-per-trial", type=int, help="GPUs per trial; > 1 runs each trial with DDP")
    run.add_argument("--n-trials", type=int, help="trial budget (overrides n_trials)")

    worker = commands.add_parser("worker", help="one worker in this terminal (what `run` starts N of)")
    _sweep_args(worker)
    worker.add_argument("--index", type=int, default=0, help="worker number (varies the sampler seed)")
    worker.add_argument("--n-trials", type=int, help=argparse.SUPPRESS)
    for name in ("--workers", "--gpus", "--gpus-per-trial"):
        worker.add_argument(name, help=argparse.SUPPRESS)

    status = commands.add_parser("status", help="trials done / running / failed")
    _sweep_args(status)
    status.add_argument("--json", action="store_true", help="each trial's number, state, params, values and run folder")

    report = commands.add_parser("report", help="curve.csv, curve.png, pareto.png and the printed table")
    _sweep_args(report)
    report.add_argument("--out", required=True, help="output folder")

    select = commands.add_parser("select", help="choose the epsilon on validation metrics; test metrics with 95%% CIs",
                                 epilog="example: --min clean_bacc=0.85 --maximize adv_bacc@4/255 (validation keys; "
                                        "the val/ prefix is implied)")
    _sweep_args(select)
    select.add_argument("--min", dest="mins", action="append", default=[], metavar="METRIC=VALUE",
                        help="lower bound on a validation metric (mean over seeds); repeatable")
    select.add_argument("--max", dest="maxs", action="append", default=[], metavar="METRIC=VALUE",
                        help="upper bound on a validation metric; repeatable")
    goal = select.add_mutually_exclusive_group()
    goal.add_argument("--maximize", metavar="METRIC",
                      help="then the highest of this validation metric (default: the first objective)")
    goal.add_argument("--minimize", metavar="METRIC", help="then the lowest of this validation metric")
    select.add_argument("--bootstrap", type=int, default=1000,
                        help="bootstrap resamples of the test examples (default 1000)")
    select.add_argument("--json", metavar="OUT", help="also write the choice as JSON")
    return parser


def load(args):
    from .spec import load_spec

    flags = {k: getattr(args, k, None) for k in ("storage", "study", "root")}
    flags["workers"] = getattr(args, "workers", None)
    flags["gpus"] = getattr(args, "gpus", None)
    flags["gpus_per_trial"] = getattr(args, "gpus_per_trial", None)
    flags["n_trials"] = getattr(args, "n_trials", None)
    if args.command == "worker":  # one process: the SQLite and GPU checks are about this worker alone
        flags["workers"], flags["gpus"] = 1, None
    return load_spec(args.sweep, args.assignments,
                     **{k: (int(v) if k in ("workers", "gpus_per_trial") and isinstance(v, str) else v)
                        for k, v in flags.items()})


def forwarded(args) -> list[str]:
    """The options a worker needs to load the same sweep as `run`."""
    out = []
    for text in args.assignments:
        out += ["--set", text]
    for name in ("storage", "study", "root", "gpus", "gpus_per_trial", "workers", "n_trials"):
        value = getattr(args, name, None)
        if value is not None:
            out += [f"--{name.replace('_', '-')}", str(value)]
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    from core.quiet import quiet_third_party

    quiet_third_party()  # workers inherit nothing: each `python -m sweeps worker` calls this too
    try:
        return COMMANDS[args.command](args)
    except MedRobustError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def cmd_run(args) -> int:
    from .launch import run

    return run(load(args), forwarded(args))


def cmd_worker(args) -> int:
    from .launch import check
    from .worker import work

    from .worker import Interrupted

    spec = load(args)
    check(spec)
    try:
        ran = work(spec, args.index, log=lambda text: print(f"[worker {args.index}] {text}", flush=True))
    except (Interrupted, KeyboardInterrupt):
        print(f"[worker {args.index}] interrupted: rerun the same command to continue", flush=True)
        return 130
    print(f"[worker {args.index}] done: ran {ran} trial(s)", flush=True)
    return 0


def cmd_status(args) -> int:
    from . import study as studies
    from .results import trial_rows
    from .worker import describe

    spec = load(args)
    study = studies.load(spec)
    rows = trial_rows(study, spec)
    c = studies.counts(study, spec)
    if args.json:
        print(json.dumps({"study": spec.study, "storage": spec.storage, "counts": c,
                          "trials": [{k: row[k] for k in ("number", "state", "params", "seed", "values", "run_dir",
                                                           "retry_of", "failure")} for row in rows]},
                         indent=2, default=str))
        return 0
    print(f"study {spec.study} ({spec.storage}): {c['done']}/{c['points']} points done, {c['running']} running, "
          f"{c['waiting']} waiting, {c['failed_points']} failed; trials: {c['trials_complete']} complete, "
          f"{c['trials_pruned']} pruned, {c['trials_fail']} failed"
          + (f", {c['skipped']} skipped duplicates" if c["skipped"] else ""))
    for row in rows:
        values = " ".join(f"{v:.4f}" for v in row["values"] or [])
        extra = f" retry of {row['retry_of']}" if row["retry_of"] is not None else ""
        extra += f" ({row['failure']})" if row["failure"] and row["state"] == "FAIL" else ""
        print(f"  trial {row['number']:>3} {row['state']:<8} {describe({**row['params'], 'seed': row['seed']}):<40} "
              f"{values:<16} {row['run_dir'] or ''}{extra}")
    return 0


def cmd_report(args) -> int:
    from . import study as studies
    from .report import write_report

    from .results import trial_rows

    spec = load(args)
    study = studies.load(spec)
    if not any(row["state"] == "COMPLETE" for row in trial_rows(study, spec)):
        raise ConfigError(f"study {spec.study!r} has no finished trial yet (python -m sweeps status {spec.path})")
    write_report(study, spec, Path(args.out))
    return 0


def cmd_select(args) -> int:
    from . import select as selection
    from . import study as studies
    from .results import trial_rows

    spec = load(args)
    constraints = [selection.parse_constraint(t, "min") for t in args.mins]
    constraints += [selection.parse_constraint(t, "max") for t in args.maxs]
    objective = None
    if args.maximize or args.minimize:
        objective = (selection._val_key(args.maximize or args.minimize), "maximize" if args.maximize else "minimize")
    if args.bootstrap < 100:
        raise ConfigError(f"--bootstrap needs at least 100 resamples, got {args.bootstrap}")
    study = studies.load(spec)
    choice = selection.choose(trial_rows(study, spec), spec, constraints, objective)
    if choice is None:
        shown = ", ".join(f"{k} {'>=' if kind == 'min' else '<='} {b}" for k, kind, b in constraints)
        print(f"no training epsilon meets the constraints on validation metrics ({shown})")
        return 1
    intervals = selection.test_intervals(choice.trial, n=args.bootstrap)
    print(selection.format_choice(choice, intervals, spec))
    if args.json:
        from core.files import write_json_atomic

        write_json_atomic(args.json, {"epsilon": choice.point["epsilon"],
                                      "epsilon_label": choice.point["epsilon_label"],
                                      "point": choice.point, "trial": choice.trial["number"],
                                      "checkpoint": choice.trial["checkpoint"], "val": choice.trial["val"],
                                      "test": choice.trial["test"], "test_intervals": intervals})
    return 0


COMMANDS = {"run": cmd_run, "worker": cmd_worker, "status": cmd_status, "report": cmd_report, "select": cmd_select}
