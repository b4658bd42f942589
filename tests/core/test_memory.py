"""core.memory: with glibc, freed large blocks are reused instead of faulting in fresh pages."""
import subprocess
import sys

import pytest

from core import memory

PROBE = """
import resource, sys
import numpy as np
from core import memory
applied = memory.keep_freed_memory() if sys.argv[1] in ("keep", "keep_then_block") else False
if sys.argv[1] == "keep_then_block":  # a block (a MedMNIST-C build) inside a process that keeps freed memory
    with memory.freed_memory_kept():
        pass
def batch():  # 40 arrays of 1 MB alive at once, then freed, as a training step's activations are
    return sum(np.ones(131_072).sum() for _ in [np.ones(131_072) for _ in range(40)])
batch()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    batch()
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def faults(mode: str, env=None) -> tuple[str, int]:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True, env=env)
    applied, count = out.stdout.split()
    return applied, int(count)


@pytest.mark.skipif(memory._libc() is None, reason="malloc is not glibc's")
def test_kept_memory_is_reused_without_page_faults():
    applied, kept = faults("keep")
    _, default = faults("default")
    assert applied == "True"
    assert default > 20 * 5000  # by default each batch faults in most of its 40 MB (10,240 pages of 4 KiB) afresh
    assert kept < default / 10


@pytest.mark.skipif(memory._libc() is None, reason="malloc is not glibc's")
def test_a_block_leaves_a_process_wide_setting_in_place():
    applied, kept = faults("keep_then_block")
    _, default = faults("default")
    assert applied == "True" and kept < default / 10


def test_the_switch_turns_it_off(monkeypatch):
    monkeypatch.setenv(memory.SWITCH, "0")
    assert memory.keep_freed_memory() is False
    with memory.freed_memory_kept() as applied:
        assert applied is False
