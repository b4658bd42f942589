"""The study's recalibration (binary: a threshold; multi-class: a bias per class) is fitted on the real validation
split and only applied to test: model_predictions on a finished run must return the bias fitted on validation
predictions, never the one the test split itself would pick."""
import lightning as L
import numpy as np
import pytest
import torch
import yaml

from datamodules.medmnist import MedMNISTDataModule
from datamodules.synthetic import write_synthetic_npz
from evaluation.scoring import predict
from lightning_modules.erm import ERM
from studies import measures


@pytest.mark.parametrize("flag, classes", [("breastmnist", 2), ("octmnist", 4)])
def test_the_bias_is_fitted_on_validation_and_applied_to_test(tmp_path, flag, classes):
    data = {"flag": flag, "root": str(tmp_path / "data"), "verify_md5": False, "batch_size": 16, "augment": False}
    write_synthetic_npz(tmp_path / "data", flag, 28, n_train=32, n_val=48, n_test=48)
    dm = MedMNISTDataModule(**data)
    L.seed_everything(0, verbose=False)
    task = "binary" if classes == 2 else "multiclass"
    model = ERM(num_classes=classes, task=task, lr=1e-3)
    trainer = L.Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu", default_root_dir=str(tmp_path),
                        limit_val_batches=0)
    trainer.fit(model, datamodule=dm)  # one step: a model whose scores rank poorly, so the splits disagree
    run_dir = tmp_path / "run"
    (run_dir / "csv" / "version_0").mkdir(parents=True)
    (run_dir / "csv" / "version_0" / "config.yaml").write_text(yaml.safe_dump({"data": data}))
    checkpoint = run_dir / "last.ckpt"
    trainer.save_checkpoint(checkpoint)

    got = measures.model_predictions(run_dir, checkpoint)
    model.eval()
    val, test = dm.split("val"), dm.split("test")
    p_val, p_test = (predict(model, s.images, task=task, num_classes=classes) for s in (val, test))
    on_val, on_test = measures.fit_bias(p_val, val.targets, task), measures.fit_bias(p_test, test.targets, task)
    assert not np.allclose(on_val, on_test)  # the check below can tell the two splits apart
    assert np.allclose(got["bias"], on_val, atol=1e-6)
    assert torch.allclose(got["variants"]["recal"], measures.apply_bias(p_test, on_val), atol=1e-6)
    assert torch.allclose(got["variants"]["default"], p_test, atol=1e-6)
