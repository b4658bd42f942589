"""core.files: a write that fails part-way leaves the old file as it was and no temporary file behind."""
import json
import os

import pytest

from core.files import atomic_write, write_json_atomic, write_text_atomic

OLD = {"pgd": {"4_255": {"bacc": 0.42}}}


class Unprintable:
    """json.dump(default=str) calls str() on it half-way through writing the report: the write fails there."""

    def __str__(self):
        raise RuntimeError("cannot encode this")


@pytest.fixture
def old_report(tmp_path):
    path = write_json_atomic(tmp_path / "best.robustness.json", OLD)
    return path, path.read_bytes()


def _left(path):
    return sorted(p.name for p in path.parent.iterdir())


def test_a_failure_while_writing_keeps_the_old_file_and_leaves_no_temporary_file(old_report):
    path, before = old_report
    new = {"clean": {"bacc": 0.9}, "pgd": {"4_255": {"bacc": 0.1}}, "broken": Unprintable()}
    with pytest.raises(RuntimeError, match="cannot encode"):
        write_json_atomic(path, new)
    assert path.read_bytes() == before and json.loads(path.read_text()) == OLD
    assert _left(path) == [path.name]


def test_a_failed_rename_keeps_the_old_file_and_leaves_no_temporary_file(old_report, monkeypatch):
    path, before = old_report
    renames = []

    def refuse(src, dst):
        renames.append((src, dst))
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(OSError, match="disk full"):
        write_text_atomic(path, "new text\n")
    assert renames and os.fspath(renames[0][1]) == os.fspath(path)  # the rename was the step that failed
    assert path.read_bytes() == before
    assert _left(path) == [path.name]


def test_an_interrupted_with_block_keeps_the_old_file(old_report):
    path, before = old_report
    with pytest.raises(KeyboardInterrupt):
        with atomic_write(path) as handle:
            handle.write('{"half": ')
            raise KeyboardInterrupt
    assert path.read_bytes() == before and _left(path) == [path.name]


def test_a_successful_write_replaces_the_file_whole(old_report):
    path, _ = old_report
    assert json.loads(write_json_atomic(path, {"x": [1, 2]}).read_text()) == {"x": [1, 2]}
    assert _left(path) == [path.name]
