"""The fleet's databases: every test that takes ``fleet_db`` runs on an SQLite file and on a PostgreSQL database
(a server of the test session's own, Debian's ``postgresql``; skipped where it can't start, failed under CI=true)."""

from __future__ import annotations

import itertools
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import IN_CI

from edgekit.fleet.errors import StateError
from edgekit.fleet.state_pg import LocalPostgres

_databases = itertools.count(1)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[LocalPostgres]:
    """One PostgreSQL server for the session (fsync off: its tests kill clients, never the server)."""
    # not under pytest's tmp folder: that is root's alone, and run as root the server runs as 'postgres'
    folder = Path(tempfile.mkdtemp(prefix="edgekit-test-pg-"))
    server = LocalPostgres(folder, fsync=False)
    try:
        import psycopg  # noqa: F401

        server.start()
    except (StateError, ImportError) as exc:
        shutil.rmtree(folder, ignore_errors=True)
        why = f"no PostgreSQL for the fleet-state tests: {exc}"
        if IN_CI:
            pytest.fail(f"{why}; CI=true: a server that can't start fails the run instead of skipping", pytrace=False)
        pytest.skip(why)
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(params=["sqlite", "postgresql"])
def fleet_db(request: pytest.FixtureRequest, tmp_path: Path) -> str | Path:
    """Where a test's fleet state lives: an SQLite file, or a fresh PostgreSQL database's URL."""
    if request.param == "sqlite":
        return tmp_path / "fleet.db"
    server: LocalPostgres = request.getfixturevalue("postgres_server")
    return server.create_database(f"fleet_{next(_databases)}")
