"""Protocols: the shipped files are the template written out, every setting is part of the version, and a protocol
is found by name, by name and version, or refused in one line."""
from __future__ import annotations

import copy

import pytest

from benchmark import protocol as protocols
from benchmark.cli import main
from core.errors import ConfigError


def test_the_shipped_protocols_are_the_template_and_are_listed(capsys):
    names = {path.stem for path in protocols.protocol_files()}
    assert {"pneumoniamnist_28", "breastmnist_28"} <= names
    for path in protocols.protocol_files():
        p = protocols.read_protocol(path)
        assert path.read_text() == protocols.protocol_text(p.flag, p.size)  # no hand edits: regenerate instead
        assert p.settings["examples"] is None and p.settings["autoattack"]["version"] == "standard"
        assert p.epsilons("linf") == pytest.approx([1 / 255, 2 / 255, 4 / 255, 8 / 255])
        assert p.epsilons("l2") == [0.25, 0.5]
    assert main(["protocols"]) == 0
    listed = capsys.readouterr().out
    for name in names:
        p = protocols.load_protocol(name)
        assert f"{p.name}" in listed and p.version in listed


def _leaves(settings, prefix=""):
    for key, value in settings.items():
        if isinstance(value, dict):
            yield from _leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def _changed(value):
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1 if not isinstance(value, float) or value + 1 <= 1 else value / 2
    if isinstance(value, list):
        return value[:-1]
    if value is None:
        return 7
    return {"pneumoniamnist": "breastmnist", "standard": "custom", "128/255": "64/255"}.get(value, value)


SPECIAL = {"size": 64}


def test_every_setting_is_part_of_the_version():
    base = protocols.load_protocol("pneumoniamnist_28")
    seen = {base.version}
    for key, value in _leaves(base.settings):
        settings = copy.deepcopy(base.settings)
        node, *path = settings, *key.split(".")
        for part in path[:-1]:
            node = node[part]
        node[path[-1]] = SPECIAL.get(key, _changed(value))
        if key == "autoattack.version":
            settings["autoattack"]["attacks"] = ["apgd-ce"]
        if key == "autoattack.attacks":
            settings["autoattack"].update(version="custom", attacks=["apgd-ce", "square"])
        if key == "corruption.corruptions":
            node[path[-1]] = ["pixelate"]
        version = protocols.Protocol(base.name, settings).version
        assert version not in seen, key
        seen.add(version)


def test_overrides_make_a_non_standard_protocol_of_another_version():
    base = protocols.load_protocol("breastmnist_28")
    quick = base.with_overrides(protocols.quick_overrides(base.flag))
    assert base.standard and not quick.standard and quick.version != base.version
    assert quick.settings["examples"] == 32 and base.settings["examples"] is None  # the shipped one is untouched


@pytest.mark.parametrize("spec, says", [
    ("chestmnist_28", "unknown protocol 'chestmnist_28'"),
    ("breastmnist_28@000000000000", "has version"),
])
def test_unknown_protocol_or_version_is_one_line(spec, says):
    with pytest.raises(ConfigError, match=says):
        protocols.load_protocol(spec)
    assert protocols.load_protocol(f"breastmnist_28@{protocols.load_protocol('breastmnist_28').version}")


@pytest.mark.parametrize("assignment, says", [
    ("pgd.steps=0", "pgd.steps must be an integer"), ("threat_models.linf=[2]", "epsilon"),
    ("screen.chance_margin=3", "chance_margin"), ("autoattack.attacks=[apgd-ce]", "null for the standard"),
    ("colour=red", "unknown protocol"),
])
def test_bad_settings_are_refused(assignment, says):
    with pytest.raises(ConfigError, match=says):
        protocols.load_protocol("breastmnist_28").with_overrides([assignment])


def test_new_protocol_from_the_template(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(protocols, "PROTOCOLS", tmp_path)
    assert main(["protocols", "--new", "dermamnist", "64"]) == 0
    made = protocols.load_protocol("dermamnist_64")
    assert (made.flag, made.size) == ("dermamnist", 64) and made.source == tmp_path / "dermamnist_64.yaml"
    assert main(["protocols", "--new", "dermamnist", "64"]) == 2  # never overwritten
    assert capsys.readouterr().err.startswith("error: ")
