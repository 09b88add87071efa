"""The CLI stays thin: its modules reach edgekit only through edgekit.api, commands are module-level functions of
at most 80 lines, edgekit's exports are the API's, and --json keys are camelCase."""

from __future__ import annotations

import ast
import json
import re
import sys
from pathlib import Path
from typing import Any

import pytest

import edgekit
import edgekit.api
from edgekit.cli import main

CLI = Path(__file__).resolve().parents[2] / "edgekit" / "cli"
ALLOWED = ("edgekit.api", "edgekit.cli", "edgekit.errors", "typer", "rich", "click")
# Beyond ALLOWED, by module, and why.
EXCEPTIONS = {
    "__init__.py": {"edgekit._version", "edgekit.project"},  # the app: --version, and the project file's defaults
    "output.py": {"numpy"},  # array_text: outputs printed as tvmc prints them (imported when an array is printed)
}
MAX_LINES = 80


def _type_checking_lines(tree: ast.Module) -> set[int]:
    """Lines inside ``if TYPE_CHECKING:`` blocks: imports for annotations only, never run."""
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            for child in node.body:
                lines.update(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    return lines


def _runtime_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    typing_only = _type_checking_lines(tree)
    names: set[str] = set()
    for node in ast.walk(tree):
        if not isinstance(node, (ast.Import, ast.ImportFrom)) or node.lineno in typing_only:
            continue
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # 'from edgekit import api' imports edgekit.api
            names.update(f"{node.module}.{a.name}" if node.module == "edgekit" else node.module for a in node.names)
    return names


def _allowed(name: str, extra: set[str]) -> bool:
    top = name.split(".")[0]
    if top != "edgekit" and top in sys.stdlib_module_names:
        return True
    return any(name == a or name.startswith(a + ".") for a in (*ALLOWED, *extra))


def test_cli_modules_reach_edgekit_only_through_the_api() -> None:
    modules = sorted(CLI.glob("*.py"))
    assert len(modules) > 10
    offenders = {
        p.name: sorted(n for n in _runtime_imports(p) if not _allowed(n, EXCEPTIONS.get(p.name, set()))) for p in modules
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_the_import_rule_sees_what_it_forbids(tmp_path: Path) -> None:
    bad = tmp_path / "bad_cmd.py"
    bad.write_text(
        "from typing import TYPE_CHECKING\nimport typer\nfrom edgekit import api\nfrom edgekit.fleet.folder import FleetFolder\n"
        "if TYPE_CHECKING:\n    from edgekit.manifest import Manifest\ndef f():\n    import numpy\n"
    )
    assert sorted(n for n in _runtime_imports(bad) if not _allowed(n, set())) == ["edgekit.fleet.folder", "numpy"]


def test_commands_are_module_level_functions_of_at_most_80_lines() -> None:
    long: dict[str, int] = {}
    nested: list[str] = []
    for path in sorted(CLI.glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if length > MAX_LINES:
                    long[f"{path.name}:{node.name}"] = length
                if node.name == "register":
                    nested += [f"{path.name}:register:{n.name}" for n in ast.walk(node) if isinstance(n, ast.FunctionDef)][1:]
    assert long == {}
    assert nested == []  # register only adds module-level commands to the app


def test_the_package_exports_the_api() -> None:
    extras = {"__version__", "EdgekitError"}  # re-exported on purpose beside the API's functions
    assert set(edgekit.__all__) == set(edgekit.api.__all__) | extras
    assert len(edgekit.__all__) == len(set(edgekit.__all__))
    package = CLI.parent
    for name in edgekit.api.__all__:
        # a subpackage of the same name would replace the function on edgekit once imported (edgekit.demo.flow)
        assert not (package / name).exists() and not (package / f"{name}.py").exists(), name
        assert callable(getattr(edgekit.api, name)), name
        assert getattr(edgekit, name) is getattr(edgekit.api, name), name


CAMEL = re.compile(r"^[a-z][a-zA-Z0-9]*$")


def camel_case_problems(doc: Any, data_keys: tuple[str, ...] = (), where: str = "") -> list[str]:
    """Keys of ``doc`` that are not camelCase; the values under ``data_keys`` are data (names as keys) and skipped."""
    problems: list[str] = []
    if isinstance(doc, dict):
        for key, value in doc.items():
            if not CAMEL.match(key):
                problems.append(f"{where}/{key}")
            if key not in data_keys:
                problems += camel_case_problems(value, data_keys, f"{where}/{key}")
    elif isinstance(doc, list):
        for i, value in enumerate(doc):
            problems += camel_case_problems(value, data_keys, f"{where}/{i}")
    return problems


def test_json_keys_are_camel_case(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["targets", "--json"]) == 0
    assert camel_case_problems(json.loads(capsys.readouterr().out)) == []
    assert main(["advise", "--latency-ms", "50", "--payload-mb", "0.01", "--json"]) == 0
    advice = json.loads(capsys.readouterr().out)
    assert camel_case_problems(advice) == [] and "inferenceOption" in advice
    assert {r["decision"] for r in advice["reasons"]} <= set(advice)  # a reason names its decision by its key
    recipe = tmp_path / "r.yaml"
    recipe.write_text("RecipeFormatVersion: '2020-01-25'\nComponentName: com.x.Y\nComponentVersion: 1.0.0\n")
    main(["recipe", "lint", str(recipe), "--json"])
    assert camel_case_problems(json.loads(capsys.readouterr().out)) == []


def test_names_from_outside_print_as_they_are(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    odd = Path("[red]odd")  # markup in a folder name: shown as it is, never taken for a style
    odd.mkdir()
    (odd / "r.yaml").write_text("RecipeFormatVersion: '2020-01-25'\nComponentName: com.x.Y\nComponentVersoin: 1.0.0\n")
    assert main(["recipe", "lint", str(odd / "r.yaml")]) != 0
    captured = capsys.readouterr()
    assert "[red]odd" in captured.out and "Traceback" not in captured.err
