"""The docs say what the code does: every error class has its row and its place in the tree of docs/errors.md,
and the index names the range of exit codes there is."""

from __future__ import annotations

import importlib
import pkgutil
import re
from pathlib import Path

import edgekit
from edgekit.errors import EdgekitError, exit_code_for

DOCS = Path(__file__).resolve().parents[1] / "docs"


def _error_classes() -> list[type[EdgekitError]]:
    for info in pkgutil.walk_packages(edgekit.__path__, "edgekit."):
        if not info.name.endswith(("aarch64_run", "__main__")):  # runs inside the emulated Python; runs the CLI
            importlib.import_module(info.name)
    found: set[type[EdgekitError]] = set()
    todo: list[type[EdgekitError]] = [EdgekitError]
    while todo:
        cls = todo.pop()
        for sub in cls.__subclasses__():
            if sub.__module__.startswith("edgekit") and not sub.__name__.startswith("_") and sub not in found:
                found.add(sub)
                todo.append(sub)
    return sorted(found, key=lambda c: c.__name__)


def _code(cls: type[EdgekitError]) -> int:
    return exit_code_for(cls.__new__(cls))


def test_every_error_class_has_its_exit_code_row_and_a_place_in_the_tree() -> None:
    text = (DOCS / "errors.md").read_text(encoding="utf-8")
    table, tree = text.split("## The tree", 1)
    rows = {int(m.group(1)): m.group(2) for m in re.finditer(r"^\| (\d+) \|([^|]*)\|", table, re.M)}
    classes = _error_classes()
    assert len(classes) > 30  # the walk saw the package
    missing_row = [f"{c.__name__} ({_code(c)})" for c in classes if f"`{c.__name__}`" not in rows.get(_code(c), "")]
    missing_tree = [
        c.__name__ for c in classes if not re.search(rf"[\s.]{c.__name__}\b[^\n]*\s{_code(c)}\s*$", tree, re.M)
    ]
    assert not missing_row, f"docs/errors.md: no row with these classes under their exit code: {missing_row}"
    assert not missing_tree, f"docs/errors.md: these classes are not in the tree with their code: {missing_tree}"


def test_the_index_names_the_range_of_exit_codes() -> None:
    codes = {_code(c) for c in _error_classes()} - {1}
    index = (DOCS / "index.md").read_text(encoding="utf-8")
    assert f"exit codes {min(codes)}–{max(codes)}" in index
