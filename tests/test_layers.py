"""The architecture's floors: every package imports only from packages on its own floor or below."""
import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FLOORS = {
    "core": 1,
    "datamodules": 2,
    "attacks": 2,
    "lightning_modules": 3,
    "evaluation": 4,
    "constructions": 5,
    "callbacks": 5,
    "train": 5,
    "sweeps": 6,
    "bench": 7,
    "benchmark": 7,
    "explanations": 3,
    "studies": 7,
}
SAME_FLOOR_FORBIDDEN = {("datamodules", "attacks"), ("attacks", "datamodules")}


def project_imports(path: Path) -> set[str]:
    """Top-level project packages imported anywhere in a file (also inside functions)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names & set(FLOORS)


def sources():
    for package, floor in FLOORS.items():
        files = [REPO / "train.py"] if package == "train" else sorted((REPO / package).rglob("*.py"))
        for path in files:
            yield pytest.param(package, path, id=str(path.relative_to(REPO)))


@pytest.mark.parametrize("package, path", list(sources()))
def test_no_import_points_up(package, path):
    upward = sorted(name for name in project_imports(path)
                    if FLOORS[name] > FLOORS[package] or (package, name) in SAME_FLOOR_FORBIDDEN)
    assert not upward, f"{path.relative_to(REPO)} (floor {FLOORS[package]}) imports {upward} from a higher floor"


def test_the_checker_sees_an_upward_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from sweeps.study import run\n")
    assert project_imports(bad) == {"sweeps"}
