"""`benchmark evaluate` reproduces a run's own test report where the settings coincide, and the mCE baseline keeps
entries apart: a board never mixes entries measured against different baselines (or against none)."""
from __future__ import annotations

import copy
import math

import lightning as L
import pytest
from conftest import FAST, evaluate

from benchmark.baseline import baseline_identity, name_in_table, own_baseline
from benchmark.entry import BLOCK, Entry, read_entry
from benchmark.site import boards
from callbacks.robustness import RobustnessCallback
from evaluation.checkpoints import load_module
from evaluation.layout import report_beside
from evaluation.record import ResultRecord, read_record
from lightning_modules.metrics import MetricKey

#: the numbers the issue names; the tiny model scores 1.0 on most of them, so the continuous confidence measures of the
#: same sets (NLL, Brier, confidence) are what would tell two different evaluations apart
SHARED = ("test/clean_bacc", "test/clean_acc", "test/clean_auroc", "test/adv_bacc@8_255", "test/adv_acc@8_255",
          "test/aa_bacc@8_255", "test/corr_bacc", "test/corr_be", "test/corr_rbe", "test/clean_ece", "test/clean_nll",
          "test/adv_nll@8_255", "test/adv_brier@8_255")


def _run_report(quick_entry, folder):
    """The run's own report: the RobustnessCallback under Trainer.test, configured as a run config would be, with
    the quick entry's settings (8 test images, seed 0, L-inf 8/255, PGD-10 x 1, apgd-ce, pixelate)."""
    from datamodules.medmnist import MedMNISTDataModule

    checkpoint = folder / "run" / quick_entry.checkpoint.name
    checkpoint.parent.mkdir(parents=True)
    checkpoint.write_bytes(quick_entry.checkpoint.read_bytes())
    callback = RobustnessCallback(
        adversarial={"epsilons": ["8/255"], "norm": "linf", "test_steps": 10, "test_restarts": 1},
        autoattack={"enabled": True, "version": "custom", "attacks": ["apgd-ce"], "samples": None},
        corruption={"epoch": False, "report": True, "corruptions": ["pixelate"], "cache": str(quick_entry.cache)},
        confidence={"enabled": True, "bins": 15}, batch_size=256, seed=0)
    dm = MedMNISTDataModule("breastmnist", root=str(quick_entry.root), verify_md5=False, augment=False,
                            subsample_test=8, subsample_seed=0)
    trainer = L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False, inference_mode=False,
                        accelerator="cpu", callbacks=[callback], default_root_dir=str(folder))
    trainer.test(load_module(checkpoint), datamodule=dm, ckpt_path=str(checkpoint), verbose=False)
    return read_record(report_beside(checkpoint))


def test_evaluate_reproduces_the_runs_own_report_where_the_settings_coincide(quick_entry, tmp_path):
    report = _run_report(quick_entry, tmp_path).metrics()
    entry = read_entry(quick_entry.path).metrics("linf")
    for name in SHARED:
        key = MetricKey.parse(name)
        assert report[key] == entry[key], name
    shared = set(report) & set(entry)  # every other number both measure, NaN (say, no wrong predictions) included
    assert {k for k in shared if not (report[k] == entry[k] or math.isnan(report[k]) and math.isnan(entry[k]))} == set()


def test_an_entry_records_its_mce_baseline_and_boards_keep_baselines_apart(quick_entry, tmp_path, capsys):
    plain = read_entry(quick_entry.path)
    assert plain.block["mce_baseline"] is None and plain.board_label == plain.protocol_label
    sha256 = plain.record.provenance.checkpoint_sha256
    identity = baseline_identity(str(quick_entry.path), plain.protocol_label)
    assert identity == {"name": "tiny-erm", "checkpoint_sha256": sha256}
    data = copy.deepcopy(plain.record.to_dict())
    data["corruptions"]["mce"] = {"mce": 0.8, "baseline": str(quick_entry.path)}
    name_in_table(data, identity)
    assert data["corruptions"]["mce"]["baseline"] == "tiny-erm"  # its name, not where its file lay
    data[BLOCK] = {**data[BLOCK], "name": "measured", "mce_baseline": identity}
    measured = Entry(ResultRecord.from_dict(data))
    assert measured.board_label == f"{plain.protocol_label}+mce-{sha256[:8]}"
    assert {key[0] for key in boards([plain, measured])} == {plain.board_label, measured.board_label}

    # `--baseline self`: the baseline's own entry joins the board of the entries measured against it
    report = copy.deepcopy(plain.record.to_dict())
    table = report["corruptions"]
    table["bacc"] = {name: [0.9] * len(values) for name, values in table["bacc"].items()}  # errs on every corruption
    assert own_baseline(report, "tiny-erm", sha256, quick_entry.checkpoint.name) == identity
    assert report["corruptions"]["mce"]["mce"] == pytest.approx(1.0)

    capsys.readouterr()  # a baseline evaluated under another protocol version is refused before any scoring
    assert evaluate(quick_entry.checkpoint, tmp_path / "other", quick_entry.root, quick_entry.cache, *FAST,
                    "--set", "pgd.steps=11", "--baseline", str(quick_entry.path)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "evaluate the baseline under the same protocol version" in err[0]
    assert not (tmp_path / "other").exists()
