"""The project's habits: the license it declares is the one it ships, and its typed API reaches its users."""

from __future__ import annotations

import tomllib
from pathlib import Path

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
