"""The one --set grammar, its applier, the config-dataclass loader and path resolution shared by sweeps and
studies."""
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from core.config import (
    REPO, apply_assignments, cli_value, load_dataclass, load_yaml_mapping, parse_assignment, resolve_path, set_key,
)
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
    for name, message in (("list.yaml", "must be a mapping"), ("broken.yaml", "not valid YAML"),
                          ("none.yaml", "cannot read")):
        with pytest.raises(ConfigError, match=message) as err:
            load_yaml_mapping(tmp_path / name, "study config")
        assert "\n" not in str(err.value)
    assert cli_value([0, "4/255"]) == '[0, "4/255"]' and cli_value("4/255") == "4/255"


def test_set_key_nests_dotted_keys_and_keeps_train_keys_whole():
    raw = {"models": {"erm": {"config": "configs/erm.yaml"}}, "sampler": "tpe", "train": None}
    apply_assignments(raw, ["models.erm.overrides.model.init_args.lr=0.1", "train.trainer.max_epochs=2", "seeds=[0]"],
                      flat=("train", "overrides"))
    assert raw["models"]["erm"] == {"config": "configs/erm.yaml", "overrides": {"model.init_args.lr": 0.1}}
    assert raw["train"] == {"trainer.max_epochs": 2} and raw["seeds"] == [0]
    with pytest.raises(ConfigError, match="'sampler' is not a mapping; set it whole: --set sampler=VALUE"):
        set_key(raw, "sampler.seed", 1)
    set_key(raw, "sampler.seed", 1, as_mapping=lambda name, value: {"type": value})
    assert raw["sampler"] == {"type": "tpe", "seed": 1}


@dataclass
class _Config:
    name: str = ""
    seeds: list = field(default_factory=lambda: [0])
    source: Path = Path("x.yaml")

    def __post_init__(self):
        if not self.seeds:
            raise ConfigError("seeds must not be empty")
        self.name = self.name or self.source.stem


def test_load_dataclass_builds_from_yaml_and_overrides_and_names_the_known_keys(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("study: mine\nseeds: [1, 2]\n")
    assert load_dataclass(_Config, path, what="study") == _Config("mine", [1, 2], path)
    assert load_dataclass(_Config, path, ["name=other", "seeds=[3]"], what="study").seeds == [3]
    with pytest.raises(ConfigError, match=r"^unknown study key\(s\) bogus: the keys are name, seeds, study$"):
        load_dataclass(_Config, path, ["bogus=1"], what="study")
    with pytest.raises(ConfigError, match="seeds must not be empty"):
        load_dataclass(_Config, path, ["seeds=[]"], what="study")
