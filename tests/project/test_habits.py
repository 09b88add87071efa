"""The project's habits: the license it declares is the one it ships, its typed API reaches its users, a test
that needs a missing system tool is skipped on a laptop but fails in CI, and no test skips itself any other way."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import helpers
import pytest
from helpers import requires

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_the_declared_license_is_the_shipped_one() -> None:
    project = PYPROJECT["project"]
    assert project["license"] == "Apache-2.0"
    assert project["license-files"] == ["LICENSE"]
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text  # the full text, not a stub


def test_the_package_is_marked_typed() -> None:
    """PEP 561: without edgekit/py.typed a user's mypy treats every edgekit import as Any. The wheel ships the whole
    package folder (tool.hatch.build.targets.wheel.packages), the marker with it."""
    assert (ROOT / "edgekit" / "py.typed").is_file()
    assert PYPROJECT["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"] == ["edgekit"]


def test_a_missing_tool_skips_here_and_fails_under_ci(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    """`requires("tool")`: where the tool is missing the test is skipped on a developer's machine, and fails under
    CI=true, where scripts/system-deps installed every tool (a run that tested nothing of the broker must not pass)."""
    monkeypatch.setitem(helpers.TOOLS, "no-such-tool", (lambda: False, "apt-get install -y no-such-tool"))
    monkeypatch.setitem(helpers.TOOLS, "sh", (lambda: True, "apt-get install -y dash"))
    pytester.makeconftest(
        """
        from helpers import check_requirements

        def pytest_configure(config):
            config.addinivalue_line("markers", "requires(*tools): system tools")

        def pytest_runtest_setup(item):
            check_requirements(item)
        """
    )
    pytester.makepyfile(
        """
        from helpers import requires

        @requires("no-such-tool")
        def test_needs_it():
            pass

        @requires("sh")
        def test_has_it():
            pass
        """
    )
    helpers.tool_missing.cache_clear()
    monkeypatch.setattr(helpers, "IN_CI", False)
    here = pytester.runpytest_inprocess("-rs")
    here.assert_outcomes(passed=1, skipped=1)
    here.stdout.fnmatch_lines(["*no-such-tool not installed (apt-get install -y no-such-tool*"])
    monkeypatch.setattr(helpers, "IN_CI", True)
    ci = pytester.runpytest_inprocess()
    ci.assert_outcomes(passed=1, errors=1)
    ci.stdout.fnmatch_lines(["*no-such-tool not installed*CI=true: a missing tool fails the run instead of skipping*"])
    helpers.tool_missing.cache_clear()
    with pytest.raises(KeyError, match="unknown tool"):
        requires("mosquito")


def test_every_lower_bound_becomes_a_tested_floor() -> None:
    """scripts/floors turns each `>=X` of pyproject.toml into `==X` for `make test-floor` (a CI step): what the project
    claims to support is what it tests. pydantic's floor is the first release with the ConfigDict settings used."""
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "floors")], capture_output=True, text=True, check=True)
    floors = dict(line.split(" ", 1)[0].split("==") for line in out.stdout.splitlines())
    project = PYPROJECT["project"]
    declared = [*project["dependencies"], *(r for extra in project["optional-dependencies"].values() for r in extra)]
    bounded = {re.split(r"[\[ ><=;]", r, maxsplit=1)[0] for r in declared if ">=" in r and not r.startswith("edgekit")}
    assert set(floors) == bounded
    assert floors["pydantic"] == "2.11"
    settings = {
        m for p in (ROOT / "edgekit").rglob("*.py") for m in re.findall(r"\b(validate_by_\w+|serialize_by_alias)=", p.read_text())
    }
    assert settings <= {"validate_by_name", "validate_by_alias", "serialize_by_alias"}  # 2.11's; a newer one raises the floor


# Every skip in tests/ besides `requires` (helpers.py) and the PostgreSQL fixture (fleet_databases.py), both failed under
# CI=true: what the real part can't be here, whatever is installed. A new one is added here with its reason; a missing
# package of the dev extra is imported plainly instead (an ImportError fails the run), never importorskipped.
ALLOWED_SKIPS = {
    ("helpers.py", "pytest.skip"): "requires(tool): a missing system tool, failed under CI=true",
    ("fleet_databases.py", "pytest.skip"): "a PostgreSQL server that can't start, failed under CI=true",
    ("runtime/test_cpu_baseline.py", "pytest.mark.skipif"): "qemu -cpu Nehalem runs x86_64 code: an x86_64 host only",
    ("fleet/test_stand_ins.py", "pytest.mark.skipif"): "stand-ins are x86_64 processes for aarch64 devices: amd64 only",
    ("fleet/test_fleet_serve.py", "pytest.mark.skipif"): "a network namespace needs root (CAP_NET_ADMIN) and iproute2",
    ("fleet/test_fleet_serve.py", "pytest.skip"): "a container that refuses `ip netns add` even to root",
    ("compile/test_frontend_sklearn.py", "pytest.skip"): "a protobuf older than 7.34 (the floors' run) takes the bool",
}
_SKIPS = {"pytest.skip", "pytest.importorskip", "pytest.xfail", "pytest.mark.skip", "pytest.mark.skipif", "pytest.mark.xfail"}


def test_no_test_skips_itself_but_where_the_real_part_cant_run() -> None:
    """`pytest.skip`, `importorskip`, `skipif` and `xfail` in tests/ only where ALLOWED_SKIPS says why: a test that skips
    where the real part could run passes CI having tested nothing."""
    tests = ROOT / "tests"
    found: set[tuple[str, str]] = set()
    for path in tests.rglob("*.py"):
        if path == Path(__file__):
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Attribute) and ast.unparse(node) in _SKIPS:
                found.add((path.relative_to(tests).as_posix(), ast.unparse(node)))
    assert found - set(ALLOWED_SKIPS) == set(), "a new skip: run the real part, or fail under CI=true (helpers.requires)"
    assert set(ALLOWED_SKIPS) - found == set(), "a skip that is gone: take it out of ALLOWED_SKIPS"
