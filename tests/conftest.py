"""Shared fixtures (isolated caches, a tiny model on disk) and the `requires` mark's hook. Helpers that tests import
live in helpers.py: ``from helpers import make_mlp``."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import onnx
import pytest
from helpers import check_requirements, make_mlp

# pytester: test_habits runs pytest on a made-up test file; device_registry: the registry fixture of the device tests;
# fleet_databases: fleet_db (each fleet-state test on SQLite and on PostgreSQL) and the session's PostgreSQL server
pytest_plugins = ["pytester", "device_registry", "fleet_databases"]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "requires(*tools): needs these system tools (helpers.TOOLS); skipped where one is missing, failed under CI=true",
    )


def pytest_runtest_setup(item: pytest.Item) -> None:
    check_requirements(item)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test gets its own artifact cache, so no test sees another's compiles."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("EDGEKIT_CACHE_DIR", str(cache))
    return cache


@pytest.fixture(scope="session", autouse=True)
def _wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Wheels downloaded for packaging (the aarch64 apache-tvm, 94 MB) are shared by the session's isolated caches
    (or reused from $EDGEKIT_TEST_WHEELHOUSE)."""
    env = os.environ.get("EDGEKIT_TEST_WHEELHOUSE")
    house = Path(env) if env else tmp_path_factory.mktemp("wheelhouse")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("EDGEKIT_WHEELHOUSE", str(house))
        yield house


@pytest.fixture(scope="session")
def sysroot_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The aarch64 sysroot is built once per session (or reused from $EDGEKIT_TEST_SYSROOT_CACHE)."""
    env = os.environ.get("EDGEKIT_TEST_SYSROOT_CACHE")
    return Path(env) if env else tmp_path_factory.mktemp("sysroot-cache")


@pytest.fixture
def mlp_onnx(tmp_path: Path) -> Path:
    path = tmp_path / "mlp.onnx"
    onnx.save(make_mlp(), str(path))
    return path


@pytest.fixture
def out_dir(tmp_path: Path) -> Path:
    return tmp_path / "build"


@pytest.fixture
def anyio_backend() -> str:
    """The async tests run on asyncio (what edgekit runs on), not on every backend anyio knows (trio is not installed)."""
    return "asyncio"
