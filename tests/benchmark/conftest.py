"""A quick entry of the session's tiny ERM (synthetic BreastMNIST), made once by `python -m benchmark evaluate`."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

#: quick settings cut further for the tests: 8 examples, AutoAttack's apgd-ce only (100 iterations), one corruption
FAST = ["--quick", "--set", "examples=8", "--set", "autoattack.attacks=[apgd-ce]", "--set",
        "corruption.corruptions=[pixelate]"]


def evaluate(checkpoint, out, root, cache, *extra, protocol="breastmnist_28") -> int:
    from benchmark.cli import main

    return main(["evaluate", str(checkpoint), "--protocol", protocol, "--out", str(out), "--root", str(root),
                 "--cache", str(cache), *extra])


@dataclass(frozen=True)
class QuickEntry:
    path: Path  # the entry file
    checkpoint: Path
    root: Path
    cache: Path


@pytest.fixture(scope="session")
def quick_entry(tiny_erm, tmp_path_factory) -> QuickEntry:
    folder = tmp_path_factory.mktemp("bench_entry")
    checkpoint = tiny_erm.checkpoint_copy(folder / "run")
    cache = folder / "medmnist-c"
    assert evaluate(checkpoint, folder / "out", tiny_erm.root, cache, *FAST, "--name", "tiny-erm") == 0
    return QuickEntry(folder / "out" / "tiny-erm.entry.json", checkpoint, tiny_erm.root, cache)
