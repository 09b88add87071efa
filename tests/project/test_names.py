"""One name per thing inside the package: no two modules share a basename, no two public classes share a name.

A reader (and a grep) can then tell any two apart; docs/architecture.md lists what is where.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "edgekit"
SHARED_BASENAMES = {"__init__.py", "__main__.py", "errors.py"}  # a package's own entry points and exception tree


def _modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def test_no_two_modules_share_a_basename() -> None:
    seen: dict[str, list[str]] = defaultdict(list)
    for path in _modules():
        if path.name not in SHARED_BASENAMES:
            seen[path.name].append(str(path.relative_to(PACKAGE.parent)))
    clashes = {name: paths for name, paths in seen.items() if len(paths) > 1}
    assert not clashes, f"modules sharing a basename (rename one): {clashes}"


def test_no_two_public_classes_share_a_name() -> None:
    seen: dict[str, list[str]] = defaultdict(list)
    for path in _modules():
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
                seen[node.name].append(str(path.relative_to(PACKAGE.parent)))
    clashes = {name: paths for name, paths in seen.items() if len(paths) > 1}
    assert not clashes, f"public classes sharing a name (rename one): {clashes}"


def test_the_checks_see_the_package() -> None:
    """The two checks above would pass on an empty folder: make sure they walked the real package."""
    modules = _modules()
    assert len(modules) > 100
    assert any(p.name == "api.py" for p in modules)
