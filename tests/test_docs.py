"""The README and the documentation site name only commands and configs that exist, every page is in mkdocs.yml's
nav, and the README stays a five-minute read."""
from __future__ import annotations

import contextlib
import io
import re
import runpy
import sys
from functools import cache
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
README = ROOT / "README.md"
TEXTS = [README, ROOT / "bench" / "README.md", *sorted(DOCS.glob("*.md"))]
README_MAX_LINES = 200

# `python -m PKG [subcommand]`: a subcommand is a lowercase word followed by a space, a backtick or the line's end
# (paths such as runs/x and placeholders such as REPORT are arguments, not subcommands).
MODULE_COMMAND = re.compile(r"python -m ([A-Za-z_][\w.]*)"
                            r"(?:(?:[ \t]+|[ \t]*\\?\n[ \t]*)([a-z][\w-]*)(?=[\s`\\]|$))?", re.MULTILINE)
TRAIN_COMMAND = re.compile(r"(?:python |`)train\.py\s+([a-z][\w-]*)")
SCRIPT = re.compile(r"python ((?:[\w-]+/)*[\w-]+\.py)")
CONFIG = re.compile(r"\bconfigs/[a-z0-9_/.-]+\.yaml\b")
DOC_LINK = re.compile(r"\]\((docs/[^)#\s]+)")
# argparse usage: a positional's choices, `{a,b} ...` or `{a,b}`, not an option's (`--source {a,b}`)
USAGE_CHOICES = re.compile(r"(?<![\w-] )\{([\w,-]+)\}")


def _text(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def module_commands(text: str) -> list[tuple[str, str | None]]:
    """(module, subcommand or None) for every `python -m` in `text`."""
    return [(m.group(1).rstrip("."), m.group(2)) for m in MODULE_COMMAND.finditer(text)]


def train_subcommands(text: str) -> list[str]:
    return TRAIN_COMMAND.findall(text)


def _is_project_module(name: str) -> bool:
    return (ROOT / name.split(".")[0] / "__init__.py").is_file()


def module_exists(name: str) -> bool:
    """A project module by its file (no import), any other by importlib (pytest, pip, ...)."""
    if _is_project_module(name):
        base = ROOT.joinpath(*name.split("."))
        return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()
    import importlib.util

    return importlib.util.find_spec(name.split(".")[0]) is not None


@cache
def subcommands(module: str) -> frozenset[str] | None:
    """The subcommands `python -m MODULE --help` offers (None: the command takes none), read in this process."""
    out = io.StringIO()
    argv = sys.argv
    sys.argv = [module, "--help"]
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()), pytest.raises(SystemExit):
            runpy.run_module(module, run_name="__main__", alter_sys=False)
    finally:
        sys.argv = argv
    usage = out.getvalue().split("\n\n", 1)[0]
    groups = USAGE_CHOICES.findall(usage)
    return frozenset(groups[0].split(",")) if groups else None


def unknown_commands(text: str) -> list[str]:
    """Every `python -m PKG SUB` / `python train.py SUB` / `python SCRIPT.py` in `text` that does not exist."""
    wrong = []
    for module, sub in module_commands(text):
        if not module_exists(module):
            wrong.append(f"python -m {module}: no such module")
        elif sub and _is_project_module(module):
            offered = subcommands(module)
            if offered is not None and sub not in offered:
                wrong.append(f"python -m {module} {sub}: not one of {sorted(offered)}")
    if any(True for _ in TRAIN_COMMAND.finditer(text)):
        import train

        offered = set(train.MedRobustCLI.subcommands())
        wrong += [f"python train.py {sub}: not one of {sorted(offered)}"
                  for sub in train_subcommands(text) if sub not in offered]
    wrong += [f"python {script}: no such file" for script in SCRIPT.findall(text) if not (ROOT / script).is_file()]
    return wrong


def missing_configs(text: str) -> list[str]:
    return sorted({c for c in CONFIG.findall(text) if not (ROOT / c).is_file()})


def nav_pages() -> set[str]:
    """Every .md file named in mkdocs.yml's nav."""
    found: set[str] = set()

    def walk(node) -> None:
        if isinstance(node, str) and node.endswith(".md"):
            found.add(node)
        elif isinstance(node, dict):
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(yaml.safe_load(_text(ROOT / "mkdocs.yml"))["nav"])
    return found


@pytest.mark.parametrize("path", TEXTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_command_named_exists(path):
    assert unknown_commands(_text(path)) == []


@pytest.mark.parametrize("path", TEXTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_config_named_exists(path):
    assert missing_configs(_text(path)) == []


def test_a_removed_subcommand_is_caught():
    """The check reads the CLIs: a subcommand that was removed (sweeps reproduce moved to studies) is reported."""
    assert unknown_commands("python -m sweeps reproduce configs/study/quick.yaml") == [
        "python -m sweeps reproduce: not one of ['report', 'run', 'select', 'status', 'worker']"]
    assert unknown_commands("`python -m studies\nreproduce configs/study/quick.yaml`") == []
    assert unknown_commands("python train.py fitt --config configs/erm.yaml")
    assert unknown_commands("python -m bench everything --out x")
    assert not unknown_commands("python -m bench all --out x")
    assert unknown_commands("python -m sweeps.nothing") and unknown_commands("python bench/nothing.py")
    assert missing_configs("--config configs/nothing.yaml") == ["configs/nothing.yaml"]


def test_every_page_is_in_the_nav():
    pages = {p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md")}
    nav = nav_pages()
    assert pages - nav == set(), "pages missing from mkdocs.yml nav"
    assert nav - pages == set(), "nav entries without a page"


def test_readme_links_to_existing_pages():
    links = DOC_LINK.findall(_text(README))
    assert links, "the README links to the documentation"
    assert [link for link in links if not (ROOT / link).is_file()] == []


def test_readme_is_a_five_minute_read():
    text = _text(README)
    assert len(text.splitlines()) <= README_MAX_LINES
    assert "bash install.sh" in text and ".venv/bin/python -m pytest" in text, "the two set-up commands CI runs"
