"""The benchmark's seed entries: every model of configs/benchmark/seed_entries.yaml trained on each dataset for each
seed (`train.py fit`), evaluated under the dataset's protocol (`benchmark evaluate`), and the leaderboard built.

    python -m benchmark.seed_entries plan --out DIR          # every step's id and command, in the order they run
    python -m benchmark.seed_entries step ID --out DIR       # one step (run each as its own job: `cpu ... step ID`)
    python -m benchmark.seed_entries status --out DIR        # done / failed / not run, with each step's seconds

A step that finished is not run again; each writes DIR/steps/ID.json (command, exit code, seconds). Training skips the
run's own test report (`--test_after_fit false`): the entry is the evaluation.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from core.cli import Parser
from core.config import check_keys, load_yaml_mapping
from core.errors import ConfigError, MedRobustError
from core.files import write_json_atomic

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "benchmark" / "seed_entries.yaml"
KEYS = ("datasets", "size", "seeds", "baseline", "models")


@dataclass(frozen=True)
class Step:
    """One job: train a model, evaluate its checkpoint, or build the site."""

    id: str
    command: list[str]


def read_config(path=CONFIG) -> dict:
    config = load_yaml_mapping(Path(path), "seed entries config")
    check_keys(config, KEYS, f"seed entries config {path}")
    missing = [key for key in KEYS if key not in config]
    if missing:
        raise ConfigError(f"seed entries config {path} lacks {', '.join(missing)}")
    if config["baseline"] not in config["models"]:
        raise ConfigError(f"seed entries config {path}: baseline {config['baseline']!r} is not one of its models")
    return config


def entry_name(model: str, flag: str, seed: int) -> str:
    return f"{model}-{flag}-seed{seed}"


def run_dir(out: Path, flag: str, model: str, seed: int) -> Path:
    return out / "runs" / flag / model / f"seed{seed}"


def entries_dir(out: Path, flag: str) -> Path:
    return out / "entries" / flag


def plan(out: Path, root: str, config: dict) -> list[Step]:
    """Train then evaluate each (dataset, seed, model), the baseline's first seed first on each dataset; then build."""
    python, size, steps = sys.executable, config["size"], []
    first = config["seeds"][0]
    for flag in config["datasets"]:
        baseline = entries_dir(out, flag) / f"{entry_name(config['baseline'], flag, first)}.entry.json"
        for seed in config["seeds"]:
            for model, model_config in config["models"].items():
                folder = run_dir(out, flag, model, seed)
                steps.append(Step(f"train-{entry_name(model, flag, seed)}", [
                    python, "train.py", "fit", "--config", str(model_config), "--data.flag", flag,
                    "--data.size", str(size), "--data.root", root, "--seed_everything", str(seed),
                    "--trainer.default_root_dir", str(folder), "--test_after_fit", "false"]))
                is_baseline = model == config["baseline"] and seed == first
                steps.append(Step(f"evaluate-{entry_name(model, flag, seed)}", [
                    python, "-m", "benchmark", "evaluate", str(folder), "--protocol", f"{flag}_{size}",
                    "--out", str(entries_dir(out, flag)), "--name", entry_name(model, flag, seed), "--root", root,
                    "--baseline", "self" if is_baseline else str(baseline)]))
    steps.append(Step("build", [python, "-m", "benchmark", "build", str(out / "entries"), "--out", str(out / "site")]))
    return steps


def best_checkpoint(folder: Path) -> Path:
    """The run folder's best checkpoint (evaluation.runs.checkpoint_choice)."""
    from evaluation.runs import checkpoint_choice

    best, _, _ = checkpoint_choice(folder)
    if best is None or not best.is_file():
        raise ConfigError(f"{folder} has no best checkpoint: run its train step first")
    return best


def run_step(step: Step, out: Path) -> int:
    """The step's command (an evaluate step's run folder replaced by its best checkpoint), timed; DIR/steps/ID.json."""
    marker = out / "steps" / f"{step.id}.json"
    if marker.is_file() and json.loads(marker.read_text()).get("returncode") == 0:
        print(f"{step.id}: done before ({marker})")
        return 0
    command = list(step.command)
    if step.id.startswith("evaluate-"):
        command[4] = str(best_checkpoint(Path(command[4])))
    started = time.time()
    code = subprocess.run(command, cwd=REPO).returncode
    seconds = round(time.time() - started, 1)
    write_json_atomic(marker, {"id": step.id, "command": command, "returncode": code, "seconds": seconds})
    print(f"{step.id}: exit {code}, {seconds} s")
    return code


def status(steps: Sequence[Step], out: Path) -> list[tuple[str, str, Optional[float]]]:
    """(id, done | failed (exit N) | not run, seconds) of every step."""
    rows = []
    for step in steps:
        marker = out / "steps" / f"{step.id}.json"
        if not marker.is_file():
            rows.append((step.id, "not run", None))
            continue
        done = json.loads(marker.read_text())
        state = "done" if done["returncode"] == 0 else f"failed (exit {done['returncode']})"
        rows.append((step.id, state, done["seconds"]))
    return rows


def main(argv=None) -> int:
    parser = Parser(prog="python -m benchmark.seed_entries", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["plan", "step", "status"])
    parser.add_argument("id", nargs="?", help="the step to run (plan lists them)")
    parser.add_argument("--out", required=True, help="folder for the runs, entries, site and step records")
    parser.add_argument("--root", default=str(REPO.parent / "shared" / "data" / "medmnist"),
                        help="folder with the MedMNIST npz files (default: %(default)s)")
    parser.add_argument("--config", default=str(CONFIG), help="the seed entries config (default: %(default)s)")
    args = parser.parse_args(argv)
    try:
        out = Path(args.out).expanduser().resolve()
        steps = plan(out, args.root, read_config(args.config))
        if args.command == "plan":
            for step in steps:
                print(f"{step.id}\t{' '.join(step.command)}")
        elif args.command == "status":
            for id_, state, seconds in status(steps, out):
                print(f"{id_:<40} {state:<16} {'' if seconds is None else f'{seconds} s'}")
        else:
            chosen = [step for step in steps if step.id == args.id]
            if not chosen:
                raise ConfigError(f"no step {args.id!r}: python -m benchmark.seed_entries plan lists them")
            return run_step(chosen[0], out)
    except MedRobustError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
