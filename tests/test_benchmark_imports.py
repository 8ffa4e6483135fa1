"""Benchmarks that borrow reference code from tests/ still find it (a moved helper broke two once)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TESTS = ROOT / "tests"


def _top_level_names(path: Path) -> set[str]:
    names = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names |= {t.id for t in targets if isinstance(t, ast.Name)}
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names}
    return names


def _borrowed(script: Path) -> list[tuple[str, str]]:
    """``(module, name)`` of every ``from <a module in tests/> import name`` in ``script``."""
    return [(node.module, alias.name) for node in ast.walk(ast.parse(script.read_text()))
            if isinstance(node, ast.ImportFrom) and node.module and (TESTS / f"{node.module}.py").is_file()
            for alias in node.names]


SCRIPTS = sorted((ROOT / "benchmarks").glob("*.py"))


@pytest.mark.parametrize("script", SCRIPTS, ids=[s.name for s in SCRIPTS])
def test_benchmark__names_it_imports_from_tests_exist(script):
    missing = [f"{module}.{name}" for module, name in _borrowed(script)
               if name not in _top_level_names(TESTS / f"{module}.py")]
    assert not missing, f"{script.name} imports {missing}, which tests/ no longer defines"


def test_borrowed__finds_the_imports_it_checks():
    assert ("yahtse_data", "read_yahtse") in _borrowed(ROOT / "benchmarks" / "velocity.py")


@pytest.mark.parametrize("script", [*SCRIPTS, *sorted(TESTS.glob("*.py"))], ids=lambda s: f"{s.parent.name}/{s.name}")
def test_shared_helpers__come_from_plain_modules_never_from_a_test_module_or_conftest(script):
    # importing a test module runs its fixtures' module and ties the reader to its test layout;
    # shared reference code lives in plain modules (references.py, docblocks.py, yahtse_data.py ...)
    borrowed = {module for module, _ in _borrowed(script)}
    borrowed |= {alias.name for node in ast.walk(ast.parse(script.read_text())) if isinstance(node, ast.Import)
                 for alias in node.names if (TESTS / f"{alias.name}.py").is_file()}
    wrong = sorted(m for m in borrowed if m.startswith("test_") or m == "conftest")
    assert not wrong, f"{script.name} imports {wrong}: move what it needs to a plain module of tests/"


def test_run_only_some_scripts_keeps_the_whole_results_file():
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location("bench_run", ROOT / "benchmarks" / "run.py")
    run = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = run  # its dataclasses look their module up
    try:
        spec.loader.exec_module(run)
    finally:
        del sys.modules[spec.name]
    assert run.output_path(None).name == "RESULTS.md"
    assert run.output_path(["velocity.py", "load"]).name == "RESULTS-load-velocity.md"
