"""The fleet's state on PostgreSQL: several fleet service processes on one database (``postgresql://`` URL).

:class:`PostgresDatabase` is the :class:`~edgekit.fleet.state.StateDatabase` that runs
:class:`~edgekit.fleet.state.FleetState`'s queries (written once, in SQLite's dialect) on a PostgreSQL server
through psycopg 3 (``pip install 'edgekit[fleet-pg]'``): ``?`` marks become ``%s``, ``INSERT OR IGNORE`` an
``ON CONFLICT DO NOTHING``, SQLite's ``total()`` a float ``sum``, ``REAL`` a ``DOUBLE PRECISION`` and ``INTEGER`` a
``BIGINT``; the ``window`` column is quoted (a reserved word there). A transaction that reads before it writes
(``exclusive``, the default) takes one advisory lock every process on the database shares — one such writer at a
time, as SQLite's ``BEGIN IMMEDIATE`` — while telemetry ingest's upserts run side by side. See docs/local-fleet.md
(the fleet on PostgreSQL).
"""

from __future__ import annotations

import functools
import glob
import os
import pwd
import re
import shutil
import subprocess
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Self
from urllib.parse import urlsplit, urlunsplit

from edgekit.fleet.errors import StateError
from edgekit.fleet.state import Connection, Cursor

try:
    import psycopg
    from psycopg.pq import TransactionStatus
except ImportError:  # pragma: no cover - the extra is missing
    psycopg = None  # type: ignore[assignment]

__all__ = ["LocalPostgres", "PostgresDatabase", "redact", "server_binaries", "translate"]

WRITER_LOCK: Final = 0x6564_6765_6B69_74  # "edgekit": the advisory lock exclusive transactions take


def redact(url: str) -> str:
    """``url`` without its password (what messages and the fleet folder may show)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    user = netloc[0].split(":", 1)[0]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc[1]}"))


_WINDOW = re.compile(r"\bwindow\b")
_TOTAL = re.compile(r"\btotal\(([^()]*)\)")


@functools.lru_cache(maxsize=256)
def translate(sql: str) -> str:
    """One of :class:`~edgekit.fleet.state.FleetState`'s statements (SQLite's dialect) in PostgreSQL's."""
    out = _WINDOW.sub('"window"', sql.replace("%", "%%"))
    out = _TOTAL.sub(r"coalesce(sum(\1), 0)::float8", out)
    if out.lstrip().startswith("INSERT OR IGNORE"):
        out = out.replace("INSERT OR IGNORE", "INSERT", 1) + " ON CONFLICT DO NOTHING"
    return out.replace("?", "%s")


def _schema(statement: str) -> str:
    """A table or index of the schema in PostgreSQL's types; ``deployments`` gets the ``rowid`` SQLite has of itself."""
    out = re.sub(r"\bREAL\b", "DOUBLE PRECISION", statement)
    out = re.sub(r"\bINTEGER\b", "BIGINT", out)
    out = re.sub(r"(CREATE TABLE deployments \()", r"\1\n    rowid BIGSERIAL,", out)
    return translate(out)


class _Row:
    """A row by index, slice or column name (what ``sqlite3.Row`` gives)."""

    __slots__ = ("_names", "_values")

    def __init__(self, values: Sequence[Any], names: dict[str, int]) -> None:
        self._values = tuple(values)
        self._names = names

    def __getitem__(self, key: int | slice | str) -> Any:
        if isinstance(key, str):
            return self._values[self._names[key]]
        return self._values[key]

    def __iter__(self) -> Iterator[Any]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)


def _rows(cursor: Any) -> Any:
    names = {d.name: i for i, d in enumerate(cursor.description or ())}
    return lambda values: _Row(values, names)


class _Connection:
    """psycopg's connection, speaking :class:`~edgekit.fleet.state.Connection` (SQLite's dialect in, rows by name out)."""

    def __init__(self, conn: Any) -> None:
        self._conn = conn

    def execute(self, sql: str, parameters: Sequence[Any] = (), /) -> Cursor:
        cur = self._conn.cursor(row_factory=_rows)
        cur.execute(translate(sql), tuple(parameters))
        return cur  # type: ignore[no-any-return]

    def executemany(self, sql: str, parameters: Iterable[Sequence[Any]], /) -> Cursor:
        cur = self._conn.cursor(row_factory=_rows)
        cur.executemany(translate(sql), [tuple(p) for p in parameters])
        return cur  # type: ignore[no-any-return]


class PostgresDatabase:
    """A PostgreSQL database as the fleet's :class:`~edgekit.fleet.state.StateDatabase` (one connection, autocommit
    outside the transactions :class:`~edgekit.fleet.state.FleetState` opens)."""

    def __init__(self, url: str) -> None:
        self.kind, self.noun = "PostgreSQL", "database"
        self.errors: tuple[type[Exception], ...] = ()
        self.where = redact(url)
        if psycopg is None:
            raise StateError(
                f"the fleet state {self.where} is on PostgreSQL, and psycopg is not installed: pip install 'edgekit[fleet-pg]'"
            )
        self.errors = (psycopg.DatabaseError,)
        try:
            self._conn = psycopg.connect(url, autocommit=True, connect_timeout=10, application_name="edgekit-fleet")
        except psycopg.Error as exc:
            why = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
            raise StateError(
                f"cannot connect to the fleet database {self.where} ({why}); start PostgreSQL there, or fix the URL's "
                "host, port, user, password or database"
            ) from None
        self._connection = _Connection(self._conn)

    @property
    def connection(self) -> Connection:
        return self._connection

    def begin(self, *, exclusive: bool) -> None:
        self._conn.execute("BEGIN")
        if exclusive:
            self._conn.execute("SELECT pg_advisory_xact_lock(%s)", (WRITER_LOCK,))

    def commit(self) -> None:
        self._conn.execute("COMMIT")

    def rollback(self) -> None:
        if self._conn.info.transaction_status != TransactionStatus.IDLE:
            self._conn.execute("ROLLBACK")

    def tables(self) -> set[str]:
        rows = self._conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()"
        ).fetchall()
        return {r[0] for r in rows}

    def create(self, statement: str) -> None:
        self._conn.execute(_schema(statement))

    def integrity_check(self) -> str:
        """``"ok"`` when every table reads back (PostgreSQL checks its own pages: there is no PRAGMA to ask)."""
        for table in sorted(self.tables()):
            self._conn.execute(f'SELECT count(*) FROM "{table}"').fetchone()
        return "ok"

    def each_returning(self, sql: str, rows: Sequence[Sequence[Any]]) -> list[Any]:
        """One pipelined ``executemany`` (one round trip for the batch, not one per row)."""
        if not rows:
            return []
        cur = self._conn.cursor()
        cur.executemany(translate(sql), [tuple(r) for r in rows], returning=True)
        out: list[Any] = []
        while True:
            row = cur.fetchone()
            assert row is not None, "an INSERT ... RETURNING gave no row"
            out.append(row[0])
            if not cur.nextset():
                return out

    def refusal(self, exc: Exception) -> str:
        why = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return (
            f"{self.where} is not a fleet state database (PostgreSQL said: {why}); give an empty database or the "
            "URL of the fleet's"
        )

    def close(self) -> None:
        self._conn.close()


# --------------------------------------------------------------------------- a throwaway server (tests, benchmarks)


def server_binaries() -> Path | None:
    """The folder of PostgreSQL's ``initdb`` and ``pg_ctl`` (Debian's ``postgresql`` package: the newest major under
    ``/usr/lib/postgresql``, else ``PATH``); ``None`` where it is not installed."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0
    )
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


class LocalPostgres:
    """A PostgreSQL server of its own in ``folder`` (``initdb``, then ``pg_ctl start`` on a free loopback port, trust
    authentication for the loopback only), for tests and benchmarks; :meth:`stop` ends it. Run as root it runs as the
    ``postgres`` user (the server refuses root). ``fsync=False`` trades durability for speed (tests). Raises
    :class:`~edgekit.fleet.errors.StateError` (one line: why, and how to install it) when it can't start."""

    def __init__(self, folder: str | Path, *, port: int = 0, fsync: bool = True) -> None:
        self.folder = Path(folder).absolute()
        self.port = port
        self.fsync = fsync
        self._started = False

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def _run(self, *args: str, timeout: float = 120.0) -> None:
        as_user: list[str] = []
        if os.geteuid() == 0:
            try:
                pwd.getpwnam("postgres")
            except KeyError:
                raise StateError("PostgreSQL refuses to run as root and there is no 'postgres' user to run it as") from None
            as_user = ["runuser", "-u", "postgres", "--"]
        done = subprocess.run([*as_user, *args], capture_output=True, text=True, timeout=timeout, check=False)
        if done.returncode != 0:
            last = (done.stderr.strip() or done.stdout.strip() or f"exit status {done.returncode}").splitlines()[-1]
            raise StateError(f"{Path(args[0]).name} failed in {self.folder}: {last}")

    def start(self) -> Self:
        from edgekit.mqtt.broker import free_port

        binaries = server_binaries()
        if binaries is None:
            raise StateError("PostgreSQL is not installed (apt-get install -y postgresql; make system-deps installs it)")
        self.folder.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(self.folder, "postgres")
        data = self.folder / "data"
        if not (data / "PG_VERSION").is_file():
            self._run(str(binaries / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync")
        self.port = self.port or free_port()
        options = f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.folder}" + ("" if self.fsync else " -c fsync=off")
        self._run(str(binaries / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(self.folder / "server.log"), "-w", "start")
        self._started = True
        return self

    def create_database(self, name: str) -> str:
        """A new empty database (``name`` is a plain identifier); returns its URL."""
        if not re.fullmatch(r"[a-z_][a-z0-9_]*", name):
            raise StateError(f"database name {name!r}: use lowercase letters, digits and _")
        assert psycopg is not None, "pip install 'edgekit[fleet-pg]'"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    def stop(self) -> None:
        if self._started:
            binaries = server_binaries()
            assert binaries is not None
            self._run(str(binaries / "pg_ctl"), "-D", str(self.folder / "data"), "-m", "fast", "-w", "stop")
            self._started = False

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()
