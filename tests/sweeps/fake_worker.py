"""A sweep worker whose trials do not train: `python tests/sweeps/fake_worker.py SWEEP.yaml INDEX [SLOW_POINT]`.

Each trial sleeps briefly and returns metrics derived from its parameters; the trial of grid point
SLOW_POINT (in its first attempt only) sleeps a minute, so a test can SIGKILL its worker mid-trial; every
trial of the grid point named by the environment variable FAKE_FAIL_POINT raises. The queue, crash and retry
logic under test is the real one (sweeps.study, sweeps.worker.work)."""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from sweeps import training, worker  # noqa: E402
from sweeps.spec import load_spec  # noqa: E402
from evaluation.runs import RunResult  # noqa: E402


def main() -> None:
    spec = load_spec(sys.argv[1])
    slow_point = sys.argv[3] if len(sys.argv) > 3 else None
    fail_point = os.environ.get("FAKE_FAIL_POINT")

    def fake_run(args, callbacks=()):
        run_dir = Path(args[args.index("--trainer.default_root_dir") + 1])
        eps = float(args[args.index("--model.init_args.epsilon") + 1])
        seed = int(args[args.index("--seed_everything") + 1])
        run_dir.mkdir(parents=True, exist_ok=True)
        attempts = len(list(run_dir.glob("attempt_*")))
        (run_dir / f"attempt_{attempts}").write_text(" ".join(args))
        if slow_point is not None and f"eps={eps:.6f}" == slow_point and attempts == 0:
            (run_dir / "slow_started").write_text("")
            time.sleep(120)
        if f"eps={eps:.6f}" == fail_point:
            raise RuntimeError(f"attempt {attempts} of a point that always fails")
        time.sleep(0.3)
        metrics = {"val/clean_bacc": 0.9 - eps - 0.001 * seed, "val/adv_bacc@4_255": 0.5 + eps,
                   "test/clean_bacc": 0.88 - eps, "test/adv_bacc@4_255": 0.48 + eps}
        return RunResult(metrics, run_dir, None, None, 0, [])

    training.run_in_process = fake_run
    ran = worker.work(spec, int(sys.argv[2]), poll=0.3, log=lambda text: print(text, flush=True))
    print(f"ran {ran}", flush=True)


if __name__ == "__main__":
    main()
