"""The result record: one writer and one reader, today's robustness report read through the migration, a future
version refused in one line, and every number keyed by MetricKey (the same values the callback logs)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import lightning as L
import pytest

from core.errors import ConfigError
from evaluation.record import (RECORD_VERSION, ResultRecord, ScoredSet, merge_record, read_record,
                               with_provenance, write_record)
from lightning_modules.metrics import MetricKey

#: a report written by the RobustnessCallback before the record existed (ERM, PGD and AutoAttack at 1/255 and
#: 4/255, MedMNIST-C table with confidence): version 0, no `record_version`
REPORT_V0 = Path(__file__).parent / "fixtures" / "robustness_report_v0.json"


def test_a_report_of_today_reads_through_the_migration_with_every_number_unchanged(tmp_path):
    raw = json.loads(REPORT_V0.read_text())
    assert "record_version" not in raw
    record = read_record(REPORT_V0)
    assert record.version == RECORD_VERSION and record.provenance.checkpoint == raw["checkpoint"]
    metrics = record.metrics()
    assert all(isinstance(key, MetricKey) and MetricKey.parse(str(key)) == key for key in metrics)
    for label in ("1_255", "4_255"):
        assert metrics[MetricKey.parse(f"test/adv_bacc@{label}")] == raw["pgd"][label]["bacc"]
        assert metrics[MetricKey.parse(f"test/aa_ece@{label}")] == raw["autoattack"][label]["ece"]
    table = raw["corruptions"]
    assert metrics[MetricKey.parse("test/clean_auroc")] == raw["clean"]["auroc"]
    assert metrics[MetricKey.parse("test/corr_rbe")] == table["mean_rbe"]
    assert metrics[MetricKey.parse("test/clean_bacc@roundtrip")] == table["roundtrip_bacc"]
    assert {k.condition for k in metrics if k.kind == "corr" and k.metric == "bacc" and k.condition} == \
        set(table["corruption_bacc"])
    assert metrics[MetricKey.parse("test/corr_ece")] == table["confidence"]["all"]["ece"]
    assert not any(key.metric in ("n", "n_correct", "n_wrong") for key in metrics)  # counts are not metrics
    measured = record.measurements()[MetricKey.parse("test/adv_bacc@4_255")]
    assert measured.n_examples == raw["clean"]["n"] and measured.settings["attack"] == raw["pgd"]["4_255"]["attack"]
    # written again, it is today's JSON plus the version and the provenance fields: nothing lost, nothing changed
    written = json.loads(write_record(tmp_path / "r.json", record).read_text())
    assert {k: v for k, v in written.items() if k in raw} == raw
    assert set(written) - set(raw) == {"record_version", "checkpoint_sha256", "data_md5", "config"}


def test_round_trip_write_then_read(tmp_path):
    record = ResultRecord.from_dict(json.loads(REPORT_V0.read_text()))
    record.provenance.checkpoint_sha256, record.provenance.config = "ab" * 32, {"seed_everything": 0}
    record.mce = {"mce": 0.9, "baseline": "erm.robustness.json"}
    record.explanations = {"4_255": ScoredSet({"topk": 0.5}, {"epsilon": 4 / 255, "n_examples": 3,
                                                              "per_example": {"topk": [0.4, 0.5, 0.6]}})}
    again = read_record(write_record(tmp_path / "r.json", record))
    assert again == record
    assert again.metrics()[MetricKey.parse("test/corr_mce")] == 0.9
    assert again.measurements()[MetricKey.parse("test/expl_topk@4/255")].n_examples == 3
    assert again.explanations["4_255"].per_example("topk") == [0.4, 0.5, 0.6]


@pytest.mark.parametrize("version", [RECORD_VERSION + 1, "1", -1])
def test_an_unknown_version_is_refused_in_one_line(tmp_path, version):
    path = tmp_path / "future.robustness.json"
    path.write_text(json.dumps({**json.loads(REPORT_V0.read_text()), "record_version": version}))
    with pytest.raises(ConfigError, match="record_version") as err:
        read_record(path)
    assert len(str(err.value).splitlines()) == 1 and "update medrobust" in str(err.value)


def test_bad_files_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="no result record"):
        read_record(tmp_path / "missing.json")
    (tmp_path / "half.json").write_text("{half")
    with pytest.raises(ConfigError, match="not a JSON result record"):
        read_record(tmp_path / "half.json")
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(ConfigError, match="not a result record"):
        read_record(tmp_path / "list.json")


def test_the_mce_command_refuses_a_future_record_in_one_error_line(tmp_path, capsys):
    from evaluation.mce import main

    future = tmp_path / "future.json"
    future.write_text(json.dumps({**json.loads(REPORT_V0.read_text()), "record_version": RECORD_VERSION + 1}))
    assert main([str(future), "--baseline", str(REPORT_V0)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "record_version" in err and len(err.strip().splitlines()) == 1


def test_the_callback_writes_a_record_whose_metrics_are_the_logged_ones(tiny_erm, tmp_path):
    """The RobustnessCallback's test report through `write_record`: every test/ metric it logs is in
    `record.metrics()` with the same value, and the provenance names the checkpoint by its bytes."""
    from callbacks.robustness import RobustnessCallback

    checkpoint = tmp_path / "checkpoints" / "best.ckpt"
    checkpoint.parent.mkdir()
    shutil.copy(tiny_erm.checkpoint, checkpoint)
    callback = RobustnessCallback(epsilons=["4/255"], test_steps=2, test_restarts=1, autoattack_attacks=["apgd-ce"],
                                  autoattack_samples=16, corruption_epoch=False, corruption_report=False)
    trainer = L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False, callbacks=[callback],
                        default_root_dir=str(tmp_path))
    logged = trainer.test(tiny_erm.model, datamodule=tiny_erm.datamodule, ckpt_path=str(checkpoint), verbose=False)[0]
    record = read_record(callback.report_path)
    assert callback.report_path == checkpoint.with_name("best.robustness.json")
    metrics = {str(key): value for key, value in record.metrics().items()}
    from_callback = {k: v for k, v in logged.items() if MetricKey.try_parse(k) and MetricKey.parse(k).kind != "clean"}
    assert from_callback and {k: metrics.get(k) for k in from_callback} == pytest.approx(from_callback, nan_ok=True)
    assert metrics["test/clean_bacc"] == pytest.approx(logged["test/clean_bacc"])
    from core.files import file_digest

    assert record.provenance.checkpoint_sha256 == file_digest(checkpoint)
    assert record.provenance.data_md5 is None  # the synthetic data is not checked against medmnist's MD5
    assert record.measurements()[MetricKey.parse("test/aa_bacc@4_255")].n_examples == 16


def test_a_later_record_of_the_same_checkpoint_merges_and_another_checkpoint_replaces(tmp_path):
    path = tmp_path / "best.robustness.json"
    first = ResultRecord.from_dict(json.loads(REPORT_V0.read_text()))
    write_record(path, first)
    later = ResultRecord.from_dict({"checkpoint": first.provenance.checkpoint, "clean": {"bacc": 0.5},
                                    "pgd": {"8_255": {"epsilon": 8 / 255, "bacc": 0.1}},
                                    "threat_model": {"norm": "linf"}})
    merged = merge_record(path, later)
    assert list(merged.threat_model["epsilon_labels"]) == ["1_255", "4_255", "8_255"]
    assert merged.corruptions == first.corruptions and merged.clean.scores == {"bacc": 0.5}
    later.provenance.checkpoint_sha256, first.provenance.checkpoint_sha256 = "a" * 64, "b" * 64
    write_record(path, first)
    assert merge_record(path, later).pgd.keys() == {"8_255"}  # same path, other bytes: a new checkpoint


def test_provenance_is_filled_from_the_checkpoint_and_the_run_folder(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "csv" / "version_0").mkdir(parents=True)
    (run / "csv" / "version_0" / "config.yaml").write_text("seed_everything: 3\n")
    (run / "checkpoints" / "best.ckpt").write_bytes(b"weights")
    record = ResultRecord.from_dict({"checkpoint": str(run / "checkpoints" / "best.ckpt"),
                                     "dataset": {"flag": "pneumoniamnist", "size": 28}, "datamodule": {}})
    with_provenance(record, data_verified=True)
    from datamodules.info import expected_md5

    assert record.provenance.config == {"seed_everything": 3}
    assert record.provenance.data_md5 == expected_md5("pneumoniamnist", 28)
    assert len(record.provenance.checkpoint_sha256) == 64
