"""Where shared test code lives: helpers and fixtures in tests/support and tests/conftest.py, never
imported from another test module; the operators' tooling (ops/: benchmarks, chaos, the harness)
standing on the project alone, never on the test suite."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def imported_modules(source: str) -> Iterator[str]:
    """Every module ``source`` imports, at any depth, including in the Python programs it carries
    as strings (a script run with ``python -c`` in a subprocess)."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module
            yield from (f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and "import" in node.value:
            yield from imported_modules(node.value)


def is_test_module(module: str) -> bool:
    parts = module.split(".")
    return parts[0] == "tests" and len(parts) > 1 and (parts[1].startswith("test_") or parts[1] == "conftest")


def offenders(folder: str, rule) -> list[str]:  # type: ignore[no-untyped-def]
    """``file: module`` for each module a file under ``folder`` imports that ``rule`` refuses (this
    file's own examples of what is refused left out)."""
    return sorted(f"{path.relative_to(REPO)}: {module}"
                  for path in (REPO / folder).rglob("*.py") if path != Path(__file__).resolve()
                  for module in set(imported_modules(path.read_text())) if rule(module))


def test_the_rules_see_what_they_look_for() -> None:
    # (written in two pieces so that a grep for such imports does not find this file)
    script = 'RUN = """\nfrom tests' + '.test_journal import sent\n"""\n'
    assert list(imported_modules("from tests " + "import test_delivery, support")) == [
        "tests", "tests.test_delivery", "tests.support"]
    assert "tests.test_journal" in set(imported_modules(script))
    assert is_test_module("tests.conftest") and is_test_module("tests.test_daemon.wait_until")
    assert not is_test_module("tests.support.waiting") and not is_test_module("tests")


def test_no_test_module_is_imported_from_another_one() -> None:
    # Shared helpers live in tests/support, shared fixtures in tests/conftest.py (pytest finds them)
    assert offenders("tests", is_test_module) == []
    assert offenders("ops", is_test_module) == []


def test_benchmarks_chaos_and_the_harness_do_not_import_the_test_suite() -> None:
    # ops/ ships to the operator's machine and runs without tests/ (benchmarks use ops/harness)
    assert offenders("ops", lambda module: module == "tests" or module.startswith("tests.")) == []
