"""bench/lora_step.py: the LoRA rows of `python -m bench all` (smoke settings, timm's tiny test ResNet)."""
import pytest

pytest.importorskip("peft")


@pytest.mark.slow  # three processes import timm and PEFT: a minute or more on 2 busy cores
def test_lora_rows_are_ratios_of_measured_variants():
    from bench.lora_step import run_figures

    time_row, memory_row = run_figures(quick=False, smoke=True, log=lambda line: None)
    assert time_row["name"].startswith("LoRA PGD-AT step time") and time_row["ratio"] > 0
    assert memory_row["name"].startswith("LoRA PGD-AT peak memory") and memory_row["ratio"] is not None
    assert "LoRA r=8" in time_row["details"]["settings"] and time_row["met"] is None
    assert set(memory_row["details"]["peak_mib"]) == {"full", "lora"}
