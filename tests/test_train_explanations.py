"""train.py with explanations: configs/expl_reg.yaml fits and logs the expl_* keys; bad explanation settings end in
one line `error: ...`, exit code 2, and nothing written."""
import sys
from pathlib import Path

import pytest

import train

REPO = Path(__file__).resolve().parents[1]
CALLBACK = "--trainer.callbacks.init_args."


@pytest.fixture(autouse=True)
def at_repo(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["train.py"])
    monkeypatch.chdir(REPO)


def args(root, out, *extra):
    return ["fit", "--config", "configs/expl_reg.yaml", "--data.root", str(root), "--data.verify_md5", "false",
            "--data.batch_size", "16", "--trainer.max_epochs", "1", "--trainer.default_root_dir", str(out),
            "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
            f"{CALLBACK}epsilons", "[4/255]", f"{CALLBACK}val_samples", "8", f"{CALLBACK}val_steps", "1",
            f"{CALLBACK}test_steps", "1", f"{CALLBACK}test_restarts", "1", f"{CALLBACK}autoattack", "false",
            f"{CALLBACK}corruption_epoch", "false", f"{CALLBACK}corruption_report", "false",
            f"{CALLBACK}explanation_samples", "4", f"{CALLBACK}explanation_steps", "1",
            f"{CALLBACK}explanation_test_samples", "4", f"{CALLBACK}explanation_test_steps", "1", *extra]


def test_expl_reg_config_fits_and_logs_explanation_keys(synthetic_root, tmp_path):
    root = synthetic_root("pneumoniamnist", n_train=32, n_val=16, n_test=16)
    result = train.run(args(root, tmp_path / "run", "--model.init_args.expl_steps", "0"))
    assert {"val/expl_topk@4_255", "val/expl_spearman@4_255", "val/expl_sensmax@4_255"} <= set(result.metrics)
    assert {"test/expl_topk@4_255", "test/expl_sensmax@4_255"} <= set(result.metrics)
    assert result.report is not None and "explanations" in result.report.read_text()


@pytest.mark.parametrize("extra, message", [
    ([f"{CALLBACK}explanation_method", "lime"], "unknown explanation method 'lime'"),
    ([f"{CALLBACK}explanation_k", "785"], "explanation_k 785 is larger than the image"),
    ([f"{CALLBACK}explanation_epsilons", "[-4/255]"], "explanation_epsilons: epsilon must be"),
    (["--model.init_args.expl_epsilon=-2/255"], "epsilon must be"),
    (["--model.init_args.base", "madry"], "unknown base 'madry'"),
])
def test_bad_explanation_settings_are_one_line_exit_2_nothing_written(synthetic_root, tmp_path, capsys, extra,
                                                                      message):
    root = synthetic_root("pneumoniamnist", n_train=16, n_val=8, n_test=8)
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_:
        train.main(args(root, out, *extra))
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert not out.exists()
