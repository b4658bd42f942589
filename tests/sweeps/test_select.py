"""sweeps.select: the point is chosen on validation metrics (`--min` and `--max` constraints, then `--maximize` or
`--minimize`), and the deployed checkpoint's bootstrap intervals are computed on the TEST split, each point estimate
equal to the run's logged test metric and to its robustness report.

The intervals are checked on a real (tiny) training run whose validation split is learnt perfectly while a quarter
of its test labels are flipped, so any interval computed on validation examples shows."""
from __future__ import annotations

import json

import numpy as np
import optuna
import pytest

from evaluation import runs
from lightning_modules.metrics import MetricKey
from sweeps import select as selection
from sweeps.spec import load_spec

EVAL_EPSILON = "40/255"  # strong enough on the synthetic bands that the adversarial metrics differ from clean ones
N_VAL, N_TEST = 32, 48

# point (training epsilon) -> per seed (val/clean_bacc, val/adv_bacc@4_255, val/clean_loss)
POINTS = {0.0: [(0.90, 0.20, 0.30), (0.90, 0.22, 0.30)],
          2 / 255: [(0.88, 0.45, 0.35), (0.88, 0.47, 0.35)],
          4 / 255: [(0.85, 0.60, 0.44), (0.85, 0.62, 0.46)],
          8 / 255: [(0.78, 0.70, 0.60), (0.78, 0.72, 0.60)]}


def make_rows() -> list[dict]:
    rows = []
    for eps, seeds in POINTS.items():
        for seed, (clean, adv, loss) in enumerate(seeds):
            number = len(rows)
            rows.append({"number": number, "state": "COMPLETE", "params": {"method": "pgd_at", "epsilon": eps},
                         "epsilon": eps, "seed": seed, "values": [clean, adv], "run_dir": f"runs/t/trial_{number}",
                         "checkpoint": f"c{number}.ckpt", "report": None, "best_epoch": 0, "retry_of": None,
                         "failure": None, "point": f"grid:{number}",
                         "val": {"val/clean_bacc": clean, "val/adv_bacc@4_255": adv, "val/clean_loss": loss},
                         "test": {"test/clean_bacc": clean - 0.02}})
    return rows


@pytest.fixture
def spec(tiny_sweep):
    return load_spec(tiny_sweep(epsilon=[0, "2/255", "4/255", "8/255"], seeds=[0, 1]))


def chosen(rows, spec, constraints, objective):
    choice = selection.choose(rows, spec, constraints, objective)
    return None if choice is None else (choice.point["epsilon_label"], choice.trial["number"])


# ---- constraints and the objective's direction -------------------------------------------------------------------
def test_max_constraint_excludes_points_above_it(spec):
    rows = make_rows()
    robust = ("val/adv_bacc@4_255", "maximize")
    assert chosen(rows, spec, [], robust) == ("8/255", 7)  # without the bound: the most robust point
    assert chosen(rows, spec, [selection.parse_constraint("clean_loss=0.4", "max")], robust) == ("2/255", 3)
    assert chosen(rows, spec, [selection.parse_constraint("clean_loss=0.5", "max")], robust) == ("4/255", 5)
    # a bound on a headline metric too, and --min and --max together
    assert chosen(rows, spec, [("val/adv_bacc@4_255", "max", 0.5)], ("val/clean_bacc", "minimize")) == ("2/255", 2)
    both = [("val/adv_bacc@4_255", "min", 0.3), ("val/clean_loss", "max", 0.5)]
    assert chosen(rows, spec, both, robust) == ("4/255", 5)
    assert chosen(rows, spec, [("val/clean_loss", "max", 0.2)], robust) is None  # nothing that low


def test_minimize_picks_the_lowest_point_and_its_lowest_seed(spec):
    rows = make_rows()
    assert chosen(rows, spec, [], ("val/clean_loss", "minimize"))[0] == "0"
    assert chosen(rows, spec, [], ("val/clean_loss", "maximize"))[0] == "8/255"
    # among the points robust enough, the lowest loss; within the point, the seed with the lower loss (0.44)
    assert chosen(rows, spec, [("val/adv_bacc@4_255", "min", 0.5)], ("val/clean_loss", "minimize")) == ("4/255", 4)
    assert chosen(rows, spec, [("val/adv_bacc@4_255", "min", 0.5)], ("val/clean_loss", "maximize")) == ("8/255", 6)
    assert chosen(rows, spec, [], ("val/adv_bacc@4_255", "minimize")) == ("0", 0)


def test_a_zero_objective_value_is_a_value(spec):
    rows = make_rows()
    rows[0]["val"]["val/clean_loss"], rows[1]["val"]["val/clean_loss"] = 0.0, 0.1
    assert chosen(rows, spec, [], ("val/clean_loss", "minimize")) == ("0", 0)


# ---- the deployed checkpoint: a real tiny run --------------------------------------------------------------------
@pytest.fixture(scope="module")
def deployed(tmp_path_factory):
    """A 3-epoch ERM run through train.run (robustness report at 40/255, PGD-2) on synthetic BreastMNIST whose
    validation split is learnt perfectly; every 4th test label is flipped, so test metrics are about 0.75."""
    import train
    from core.config import cli_value
    from datamodules.synthetic import write_synthetic_npz

    folder = tmp_path_factory.mktemp("select_run")
    path = write_synthetic_npz(folder / "data", "breastmnist", 28, n_train=128, n_val=N_VAL, n_test=N_TEST)
    arrays = dict(np.load(path))
    arrays["test_labels"][::4] = 1 - arrays["test_labels"][::4]
    np.savez_compressed(path, **arrays)
    settings = {"data.root": str(folder / "data"), "data.flag": "breastmnist", "data.verify_md5": False,
                "data.batch_size": 16, "data.augment": False, "model.init_args.lr": 3e-3, "trainer.max_epochs": 3,
                "trainer.enable_progress_bar": False, "trainer.log_every_n_steps": 1,
                "trainer.enable_model_summary": False,
                "trainer.default_root_dir": str(folder / "run"),
                "trainer.callbacks.init_args.epsilons": [EVAL_EPSILON],
                "trainer.callbacks.init_args.val_samples": 16, "trainer.callbacks.init_args.val_steps": 1,
                "trainer.callbacks.init_args.test_steps": 2, "trainer.callbacks.init_args.test_restarts": 1,
                "trainer.callbacks.init_args.autoattack": False,
                "trainer.callbacks.init_args.corruption_epoch": False,
                "trainer.callbacks.init_args.corruption_report": False}
    args = ["fit", "--config", "configs/erm.yaml", "--seed_everything", "0"]
    for key, value in settings.items():
        args += [f"--{key}", cli_value(value)]
    result = train.run(args)
    assert result.best_checkpoint and result.report
    return result


def report_metric(report: dict, text: str) -> float:
    key = MetricKey.parse(text)
    section = report["clean"] if key.kind == "clean" else report["pgd"][key.condition]  # "40_255": the report's label
    return section[key.metric]


def test_intervals_are_on_the_test_split_and_their_points_are_the_logged_test_metrics(deployed):
    metrics, report = deployed.metrics, json.loads(deployed.report.read_text())
    adv = str(MetricKey("test", "adv", "bacc", EVAL_EPSILON))
    # the premise: validation and test disagree, and the attack moves the test metric
    assert metrics["val/clean_bacc"] == 1.0 and abs(metrics["test/clean_bacc"] - 0.75) < 0.1
    assert metrics[adv] < metrics["test/clean_bacc"] - 0.03
    assert metrics[str(MetricKey.parse(adv).with_stage("val"))] > metrics[adv] + 0.1

    trial = {"number": 0, "run_dir": str(deployed.run_dir), "checkpoint": str(deployed.best_checkpoint)}
    intervals = selection.test_intervals(trial, n=200)
    assert set(intervals) == {"test/clean_bacc", "test/clean_acc", adv,
                              str(MetricKey("test", "adv", "acc", EVAL_EPSILON))}
    for key, ci in intervals.items():
        assert ci["value"] == pytest.approx(metrics[key], abs=1e-6), key  # the logged test metric
        assert ci["value"] == pytest.approx(report_metric(report, key), abs=1e-6), key  # the robustness report
        assert ci["low"] <= ci["value"] <= ci["high"] and ci["high"] - ci["low"] > 0.05, key  # 48 examples: wide
    predictions = runs.test_predictions(deployed.run_dir, deployed.best_checkpoint)
    assert len(predictions["targets"]) == N_TEST == report["dataset"]["n_examples"]


def _study(spec, rows, deployed) -> int:
    """The sweep's journal study holding `rows` as finished trials, each deployed as the real tiny run; returns the
    study's number of the first row (the grid's queued trials come first)."""
    from sweeps import study as studies

    study = studies.create_or_load(spec)
    first = len(study.get_trials(deepcopy=False))
    grid = sorted(POINTS)
    tested = {k: v for k, v in deployed.metrics.items() if k.startswith("test/")}
    for row in rows:
        study.add_trial(optuna.trial.create_trial(
            params={"epsilon": row["epsilon"]},
            distributions={"epsilon": optuna.distributions.CategoricalDistribution(grid)},
            values=row["values"], user_attrs={"val": row["val"], "test": tested, "seed": row["seed"],
                                              "run_dir": str(deployed.run_dir), "best_epoch": 0,
                                              "checkpoint": str(deployed.best_checkpoint)}))
    return first


def test_select_command_honours_max_and_minimize_and_reports_test_intervals(spec, deployed, tmp_path, capsys):
    from sweeps.cli import main

    first = _study(spec, make_rows(), deployed)
    sweep = str(spec.path)

    def select(*args) -> dict:
        out = tmp_path / f"choice{len(list(tmp_path.glob('choice*')))}.json"
        code = main(["select", sweep, *args, "--bootstrap", "100", "--json", str(out)])
        printed = capsys.readouterr()
        assert code == 0, printed.err
        return json.loads(out.read_text())

    assert select("--maximize", "adv_bacc@4/255")["epsilon_label"] == "8/255"
    choice = select("--max", "clean_loss=0.4", "--maximize", "adv_bacc@4/255")
    assert (choice["epsilon_label"], choice["trial"]) == ("2/255", first + 3)
    choice = select("--min", "adv_bacc@4/255=0.5", "--minimize", "clean_loss")
    assert (choice["epsilon_label"], choice["trial"]) == ("4/255", first + 4)
    assert select("--minimize", "adv_bacc@4/255")["epsilon_label"] == "0"
    # the intervals: test split, point estimates the logged test metrics of the deployed run
    assert set(choice["test_intervals"]) <= set(choice["test"])
    for key, ci in choice["test_intervals"].items():
        assert MetricKey.parse(key).stage == "test"
        assert ci["value"] == pytest.approx(choice["test"][key], abs=1e-6), key
    code = main(["select", sweep, "--max", "clean_loss=0.2"])
    assert code == 1 and "no training epsilon meets" in capsys.readouterr().out

