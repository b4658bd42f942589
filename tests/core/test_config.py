"""The one --set grammar and path resolution shared by sweeps and studies."""
from pathlib import Path

import pytest

from core.config import REPO, cli_value, load_yaml_mapping, parse_assignment, resolve_path
from core.errors import ConfigError


def test_assignments_read_yaml_values():
    assert parse_assignment("seeds=[0, 1]") == ("seeds", [0, 1])
    assert parse_assignment("train.trainer.max_epochs=3") == ("train.trainer.max_epochs", 3)
    assert parse_assignment("epsilon=4/255") == ("epsilon", "4/255")
    assert parse_assignment("flag=") == ("flag", None)
    for bad in ("seeds", "=3", "x=[unclosed"):
        with pytest.raises(ConfigError):
            parse_assignment(bad)


def test_relative_paths_resolve_from_the_working_folder_then_the_repository(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_path("configs/erm.yaml") == REPO / "configs" / "erm.yaml"
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "erm.yaml").write_text("{}")
    assert resolve_path("configs/erm.yaml").resolve() == tmp_path / "configs" / "erm.yaml"
    assert resolve_path("nowhere.yaml") == Path("nowhere.yaml")  # found nowhere: left as written


def test_yaml_mapping_errors_are_one_line(tmp_path):
    (tmp_path / "list.yaml").write_text("- a\n")
    (tmp_path / "broken.yaml").write_text("a: [\n")
    for name, message in (("list.yaml", "must be a mapping"), ("broken.yaml", "not valid YAML"), ("none.yaml", "cannot read")):
        with pytest.raises(ConfigError, match=message) as err:
            load_yaml_mapping(tmp_path / name, "study config")
        assert "\n" not in str(err.value)
    assert cli_value([0, "4/255"]) == '[0, "4/255"]' and cli_value("4/255") == "4/255"
