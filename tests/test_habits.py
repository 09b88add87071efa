"""The project's habits: the license it declares is the one it ships, its typed API reaches its users, and a test
that needs a missing system tool is skipped on a laptop but fails in CI."""

from __future__ import annotations

import tomllib
from pathlib import Path

import helpers
import pytest
from helpers import requires

ROOT = Path(__file__).resolve().parents[1]
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
