"""`python -m benchmark evaluate`: the entry is a result record with the protocol, provenance and screen; the same
checkpoint and seed give the same bytes; bad input is one `error:` line and writes nothing."""
from __future__ import annotations

import hashlib
from importlib import metadata
import shutil
from pathlib import Path

import pytest
import torch
from conftest import FAST, evaluate

from benchmark.entry import read_entry, read_timing
from benchmark.protocol import load_protocol, quick_overrides
from core.files import file_digest
from evaluation.record import read_record
from lightning_modules.metrics import MetricKey


def key(text: str) -> MetricKey:
    return MetricKey.parse(text)


def test_the_entry_is_a_result_record_with_protocol_provenance_and_screen(quick_entry):
    entry = read_entry(quick_entry.path)
    record = read_record(quick_entry.path)  # the one reader of result records reads an entry
    protocol = load_protocol("breastmnist_28").with_overrides([*quick_overrides("breastmnist"), *FAST[2::2]])
    assert entry.protocol["version"] == protocol.version and entry.protocol["name"] == "breastmnist_28"
    assert not entry.standard and entry.block["nonstandard"]
    metrics = record.metrics()
    for name in ("test/clean_bacc", "test/clean_acc", "test/clean_auroc", "test/clean_ece", "test/clean_nll",
                 "test/clean_brier", "test/adv_bacc@8_255", "test/aa_bacc@8_255", "test/aa_acc@8_255",
                 "test/aa_ece@8_255", "test/aa_nll@8_255", "test/aa_brier@8_255", "test/corr_bacc", "test/corr_be",
                 "test/corr_rbe", "test/corr_ece"):
        assert key(name) in metrics, name
    l2 = entry.metrics("l2")
    assert key("test/aa_bacc@0.5") in l2 and key("test/adv_bacc@0.5") in l2 and key("test/aa_bacc@8_255") not in l2
    assert l2[key("test/clean_bacc")] == metrics[key("test/clean_bacc")]
    p = record.provenance
    assert p.checkpoint == quick_entry.checkpoint.name and p.checkpoint_sha256 == file_digest(quick_entry.checkpoint)
    assert p.data_md5 == hashlib.md5((quick_entry.root / "breastmnist.npz").read_bytes()).hexdigest()
    assert p.seed == 0 and p.versions["torch"] == metadata.version("torch")
    assert p.created is None and record.seconds is None
    assert record.autoattack["8_255"].n_examples == 8 and p.dataset["n_examples"] == 8
    screen = entry.block["screen"]
    assert {c["norm"] for c in screen["checks"]} == {"linf", "l2"} and screen["chance"] == 0.5
    assert screen["large_epsilon"]["label"] == "128_255"
    passes = entry.block["forward_passes"]
    assert passes["per_prediction"] == 1 and passes["evaluation"] == sum(passes["by_part"].values()) > 8 * 100
    timing = read_timing(quick_entry.path)
    assert timing["seconds"] > 0 and timing["forward_passes"] == passes["evaluation"]


def test_same_checkpoint_and_seed_give_the_same_bytes(quick_entry, tmp_path):
    light = [*FAST, "--set", "threat_models.l2=[]", "--set", "autoattack.attacks=[square]", "--name", "again",
             "--baseline", "self"]
    for out in ("first", "second"):
        assert evaluate(quick_entry.checkpoint, tmp_path / out, quick_entry.root, quick_entry.cache, *light) == 0
    first, second = (tmp_path / out / "again.entry.json" for out in ("first", "second"))
    assert first.read_bytes() == second.read_bytes()
    entry = read_entry(first)  # its own mCE baseline (the tiny model errs on no corruption: the table says why)
    assert entry.block["mce_baseline"] == {"name": "again", "checkpoint_sha256": file_digest(quick_entry.checkpoint)}
    assert entry.record.mce["baseline"] == "again" and "no error" in entry.record.mce["error"]
    assert (tmp_path / "first" / "again.timing.json").is_file()  # wall time and date live beside, not inside


def _truncated(source: Path, folder: Path) -> Path:
    data = source.read_bytes()
    (folder / "cut.ckpt").write_bytes(data[: len(data) // 2])
    return folder / "cut.ckpt"


def _unnormalised(source: Path, folder: Path) -> Path:
    """The tiny model's checkpoint as the class benchmark_models.Unnormalised: no normalisation layer inside."""
    checkpoint = torch.load(source, map_location="cpu", weights_only=False)
    checkpoint["medrobust_class"] = "benchmark_models.Unnormalised"
    checkpoint["state_dict"] = {k.replace("model.1.", "model."): v for k, v in checkpoint["state_dict"].items()
                                if not k.startswith("model.0.")}
    torch.save(checkpoint, folder / "unnormalised.ckpt")
    return folder / "unnormalised.ckpt"


@pytest.mark.parametrize("case, protocol, says", [
    ("truncated", "breastmnist_28", "is not a readable checkpoint"),
    ("other dataset", "pneumoniamnist_28", "trained on breastmnist at 28 px; protocol pneumoniamnist_28"),
    ("other size", "size=64", "trained on breastmnist at 28 px"),
    ("unknown protocol", "organamnist_28", "unknown protocol"),
    ("unknown version", "breastmnist_28@0123456789ab", "not 0123456789ab"),
    ("normalises outside", "breastmnist_28", "no normalisation layer"),
    ("missing", "breastmnist_28", "not found"),
])
def test_bad_input_is_one_line_and_writes_nothing(quick_entry, tmp_path, capsys, case, protocol, says):
    checkpoint = {"truncated": lambda: _truncated(quick_entry.checkpoint, tmp_path),
                  "normalises outside": lambda: _unnormalised(quick_entry.checkpoint, tmp_path),
                  "missing": lambda: tmp_path / "none.ckpt"}.get(case, lambda: quick_entry.checkpoint)()
    extra = ["--set", protocol] if "=" in protocol else []
    protocol = "breastmnist_28" if extra else protocol
    capsys.readouterr()
    code = evaluate(checkpoint, tmp_path / "out", quick_entry.root, tmp_path / "cache", *FAST, *extra,
                    protocol=protocol)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: ") and says in err[0], err
    assert not (tmp_path / "out").exists()


def test_a_quick_entry_is_never_standard_even_on_official_data(quick_entry, tmp_path):
    """Quick settings mark the entry whatever the data: the block says which overrides."""
    entry = read_entry(quick_entry.path)
    assert any("examples=8" in reason for reason in entry.block["nonstandard"])
    shutil.copy(quick_entry.path, tmp_path / "copy.entry.json")
    assert read_entry(tmp_path / "copy.entry.json").protocol_label == entry.protocol_label
