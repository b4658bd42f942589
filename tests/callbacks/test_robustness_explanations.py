"""RobustnessCallback's explanation robustness: off by default, the keys it says it logs are the keys it logs
(val per epoch, test in the report), and settings that cannot apply fail before training in one line."""
import json

import lightning as L
import pytest
from torch import nn

from callbacks.robustness import RobustnessCallback
from core.errors import ConfigError
from datamodules.medmnist import MedMNISTDataModule
from lightning_modules.erm import ERM
from counting import CountingERM

QUIET = dict(logger=False, enable_progress_bar=False, enable_model_summary=False)
EXPL = dict(epsilons=[], corruption_epoch=False, corruption_report=False, autoattack=False)


def _expl_keys(keys):
    return {k for k in keys if "/expl_" in k}


def test_off_by_default_and_per_epoch_keys_are_the_listed_ones(tiny_erm):
    model, dm = tiny_erm.model, tiny_erm.datamodule
    off = RobustnessCallback(**EXPL)
    assert _expl_keys(off.logged_keys(dm)["val"] | off.logged_keys(dm)["test"]) == set()
    callback = RobustnessCallback(**EXPL, explanation_epoch=True, explanation_samples=8, explanation_steps=2,
                                  explanation_epsilons=["8/255"])
    trainer = L.Trainer(callbacks=[callback], **QUIET)
    trainer.validate(model, datamodule=dm, verbose=False)
    logged = {k: float(v) for k, v in trainer.callback_metrics.items()}
    listed = callback.logged_keys(dm)
    assert _expl_keys(logged) == _expl_keys(listed["val"]) and "val/expl_topk@8_255" in logged
    assert {"val/expl_spearman@8_255", "val/expl_sensmax@8_255", "val/expl_topk_random@8_255"} <= set(logged)
    assert 0 <= logged["val/expl_topk@8_255"] <= 1 and logged["val/expl_sensmax@8_255"] >= 0
    assert not _expl_keys(listed["test"])  # explanation_report is off


def test_test_report_has_the_explanation_section_and_logs_its_keys(tiny_erm, tmp_path):
    model, dm = tiny_erm.model, tiny_erm.datamodule
    callback = RobustnessCallback(**EXPL, explanation_report=True, explanation_test_samples=12,
                                  explanation_test_steps=5, explanation_epsilons=["8/255"], explanation_k=40)
    trainer = L.Trainer(callbacks=[callback], default_root_dir=str(tmp_path), **QUIET)
    result = trainer.test(model, datamodule=dm, verbose=False)[0]
    section = json.loads((tmp_path / "robustness.json").read_text())["explanations"]["8_255"]
    assert section["n_examples"] == 12 and len(section["per_example"]["topk"]) == 12 and section["k"] == 40
    assert "softplus" in section["attack"].lower()
    assert _expl_keys(result) == _expl_keys(callback.logged_keys(dm)["test"])
    assert result["test/expl_topk@8_255"] == pytest.approx(section["topk"])
    assert result["test/expl_spearman@8_255"] == pytest.approx(section["spearman"])
    assert section["topk"] == pytest.approx(sum(section["per_example"]["topk"]) / 12, abs=1e-4)


class _Dense(ERM):
    """An ERM module whose model has no convolutional layer."""

    def __init__(self):
        super().__init__()
        self.model = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 2))


@pytest.mark.parametrize("settings, message", [
    ({"explanation_method": "lime"}, "unknown explanation method 'lime'"),
    ({"explanation_epsilons": ["-4/255"]}, "explanation_epsilons: epsilon must be"),
    ({"explanation_k": 0}, "explanation_k"),
    ({"explanation_k": 1.5}, "explanation_k"),
    ({"explanation_epsilons": []}, "explanation_epsilons is empty"),
])
def test_bad_settings_fail_when_built(settings, message):
    with pytest.raises(ConfigError, match=message):
        RobustnessCallback(**EXPL, explanation_epoch=True, **settings)


@pytest.mark.parametrize("module, settings, message", [
    (CountingERM, {"explanation_k": 785}, "explanation_k 785 is larger than the image (28 x 28 = 784 pixels)"),
    (_Dense, {"explanation_method": "gradcam"}, "Conv2d"),
])
def test_settings_that_cannot_apply_fail_before_training(synthetic_root, tmp_path, module, settings, message):
    root = synthetic_root("pneumoniamnist", n_train=16, n_val=8, n_test=8)
    dm = MedMNISTDataModule("pneumoniamnist", root=str(root), verify_md5=False, batch_size=8)
    callback = RobustnessCallback(**EXPL, explanation_report=True, **settings)
    CountingERM.steps = 0
    with pytest.raises(ConfigError) as info:
        trainer = L.Trainer(callbacks=[callback], max_epochs=1, default_root_dir=str(tmp_path), **QUIET)
        trainer.fit(module(), datamodule=dm)
    assert message in str(info.value) and CountingERM.steps == 0
