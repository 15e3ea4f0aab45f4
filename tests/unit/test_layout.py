"""Where code lives: the harness (what make up, the tests and the benchmarks share) imports no
pytest, no module edits sys.path to find another, and no test imports another test module."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from harness.paths import ROOT

PYTHON = [
    path
    for folder in ("harness", "tests", "bench", "ci", "hub_config", "operators", "client")
    for path in sorted((ROOT / folder).rglob("*.py"))
    if "node_modules" not in path.parts
]


def imported(path: Path) -> set[str]:
    """The modules a file imports, at any depth (imports inside functions count)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def relative(path: Path) -> str:
    return str(path.relative_to(ROOT))


def test_the_harness_imports_no_pytest() -> None:
    harness = [p for p in PYTHON if p.is_relative_to(ROOT / "harness")]
    assert [relative(p) for p in harness if "pytest" in imported(p)] == []


def edits_sys_path(path: Path) -> bool:
    """The file calls a method of sys.path (insert, append...) or assigns to it."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        target = (
            node.func.value
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            else None
        )
        targets = node.targets if isinstance(node, ast.Assign) else []
        for candidate in [target, *targets]:
            if (
                isinstance(candidate, ast.Attribute)
                and candidate.attr == "path"
                and isinstance(candidate.value, ast.Name)
                and candidate.value.id == "sys"
            ):
                return True
    return False


def test_no_module_edits_sys_path() -> None:
    assert [relative(p) for p in PYTHON if edits_sys_path(p)] == []


@pytest.mark.parametrize("layer", ["hub_config", "operators", "client", "harness", "bench"])
def test_nothing_outside_tests_imports_the_tests(layer: str) -> None:
    offenders = [
        relative(p)
        for p in PYTHON
        if p.is_relative_to(ROOT / layer)
        and any(name == "tests" or name.startswith("tests.") for name in imported(p))
    ]
    assert offenders == []


def test_a_test_imports_no_other_test_module() -> None:
    offenders = [
        f"{relative(p)} imports {name}"
        for p in PYTHON
        if p.is_relative_to(ROOT / "tests")
        for name in imported(p)
        if name == "tests" or name.startswith("tests.")
    ]
    assert offenders == []


def test_each_process_imports_only_its_own_distribution_and_the_client() -> None:
    """The hub's code never imports the operator's and the other way round: each image installs
    only its own distribution (images/*/repo-files)."""
    rules = {"hub_config": {"facility_operator", "facility_client"}, "operators": {"hub_config"}}
    offenders = [
        f"{relative(p)} imports {name}"
        for folder, forbidden in rules.items()
        for p in PYTHON
        if p.is_relative_to(ROOT / folder)
        for name in imported(p)
        if name.split(".")[0] in forbidden
    ]
    assert offenders == []
