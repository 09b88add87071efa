"""The docs say what the code does: every error class has its row and its place in the tree of docs/errors.md,
and the index names the range of exit codes there is."""

from __future__ import annotations

import ast
import importlib
import pkgutil
import re
from collections.abc import Iterator
from pathlib import Path

import edgekit
from edgekit.errors import EdgekitError, exit_code_for

DOCS = Path(__file__).resolve().parents[2] / "docs"


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
    missing_tree = [c.__name__ for c in classes if not re.search(rf"[\s.]{c.__name__}\b[^\n]*\s{_code(c)}\s*$", tree, re.M)]
    assert not missing_row, f"docs/errors.md: no row with these classes under their exit code: {missing_row}"
    assert not missing_tree, f"docs/errors.md: these classes are not in the tree with their code: {missing_tree}"


def test_the_index_names_the_range_of_exit_codes() -> None:
    codes = {_code(c) for c in _error_classes()} - {1}
    index = (DOCS / "index.md").read_text(encoding="utf-8")
    assert f"exit codes {min(codes)}–{max(codes)}" in index


ROOT = DOCS.parent
PACKAGE = ROOT / "edgekit"
ENTRY_MODULES = {"api", "__main__"}  # the public API and the CLI's entry: they may import every role


def _roles() -> list[str]:
    return sorted(p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file())


def _runtime_nodes(tree: ast.AST) -> Iterator[ast.AST]:
    """Every node of ``tree`` but those under ``if TYPE_CHECKING:`` (imports for type annotations only)."""
    todo: list[ast.AST] = [tree]
    while todo:
        node = todo.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and ast.unparse(child.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING"):
                todo.extend(child.orelse)
                continue
            todo.append(child)


def _edgekit_imports(path: Path) -> set[str]:
    """Every ``edgekit.<x>`` a module imports at run time, lazily or not (``from edgekit import x`` counts as ``x``)."""
    found: set[str] = set()
    for node in _runtime_nodes(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("edgekit."))
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "edgekit":
                found.update(a.name for a in node.names)
            elif node.module.startswith("edgekit."):
                found.add(node.module.split(".")[1])
    return found


def _import_table() -> dict[str, set[str]]:
    text = (DOCS / "architecture.md").read_text(encoding="utf-8")
    section = text.split("## What each role may import", 1)[1].split("\n## ", 1)[0]
    table: dict[str, set[str]] = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 2 and re.fullmatch(r"`\w+`", cells[0]):
            table[cells[0].strip("`")] = set(re.findall(r"`(\w+)`", cells[1]))
    return table


def test_the_architecture_page_lists_every_role_in_its_layout_and_import_table() -> None:
    text = (DOCS / "architecture.md").read_text(encoding="utf-8")
    layout = text.split("## The layout", 1)[1].split("\n## ", 1)[0]
    table = _import_table()
    roles = _roles()
    assert len(roles) >= 10
    assert [r for r in roles if not re.search(rf"── {r}/", layout)] == [], "roles missing from the layout picture"
    assert sorted(set(roles) - set(table)) == [], "roles missing from the import table"
    assert sorted(set(table) - set(roles)) == [], "the import table names roles that don't exist"


def test_every_role_imports_only_what_the_architecture_page_allows() -> None:
    table = _import_table()
    roles = set(_roles())
    offenders: dict[str, list[str]] = {}
    for role in roles:
        allowed = table.get(role, set()) | {role}
        for path in (PACKAGE / role).rglob("*.py"):
            bad = sorted((_edgekit_imports(path) & roles) - allowed)
            if bad:
                offenders[str(path.relative_to(ROOT))] = bad
    for path in PACKAGE.glob("*.py"):  # the shared modules at the top import no role (the API and __main__ aside)
        if path.stem not in ENTRY_MODULES:
            bad = sorted(_edgekit_imports(path) & roles)
            if bad:
                offenders[str(path.relative_to(ROOT))] = bad
    assert offenders == {}, "imports the architecture page's table does not allow (change the code or the table)"
