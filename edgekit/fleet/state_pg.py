"""The fleet's state on PostgreSQL: several fleet service processes on one database (``postgresql://`` URL).

:class:`PostgresDatabase` is the :class:`~edgekit.fleet.state.StateDatabase` that runs
:class:`~edgekit.fleet.state.FleetState`'s queries (written once, in SQLite's dialect) on a PostgreSQL server
through psycopg 3 (``pip install 'edgekit[fleet-pg]'``): ``?`` marks become ``%s``, ``INSERT OR IGNORE`` an
``ON CONFLICT DO NOTHING``, SQLite's ``total()`` a float ``sum``, ``REAL`` a ``DOUBLE PRECISION`` and ``INTEGER`` a
``BIGINT``; the ``window`` column is quoted (a reserved word there). A transaction that reads before it writes
(``exclusive``, the default) takes one advisory lock every process on the database shares — one such writer at a
time, as SQLite's ``BEGIN IMMEDIATE`` — while telemetry ingest's upserts run side by side. A connection that is
lost (a restarted server, a terminated backend, a cut network) is opened again with backoff: meanwhile every operation
raises :class:`~edgekit.fleet.errors.StateUnavailableError` at once (the callers keep what they could not store and
try again), and the outage is logged once when it starts and once when it ends. See docs/local-fleet.md (the fleet on
PostgreSQL).
"""

from __future__ import annotations

import contextlib
import functools
import glob
import logging
import os
import pwd
import re
import shutil
import subprocess
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Self
from urllib.parse import urlsplit, urlunsplit

from edgekit.fleet.errors import StateError, StateUnavailableError
from edgekit.fleet.state import Connection, Cursor

try:
    import psycopg
    from psycopg.pq import PipelineStatus, TransactionStatus
except ImportError:  # pragma: no cover - the extra is missing
    psycopg = None  # type: ignore[assignment]

CONNECT_TIMEOUT_S: Final = 5
"""How long one try to open a connection may wait (a server that does not answer): the thread that tries waits."""
RETRY_FIRST_S: Final = 0.5
RETRY_MAX_S: Final = 10.0
"""After a lost connection the next try to open one is RETRY_FIRST_S later, then twice as long each time up to
RETRY_MAX_S: an outage costs one connection attempt per delay, however often the callers ask meanwhile."""

__all__ = ["LocalPostgres", "PostgresDatabase", "redact", "server_binaries", "translate"]

log = logging.getLogger(__name__)

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


def _why(exc: Exception) -> str:
    """psycopg's message in one line (its last: the server's own words)."""
    text = str(exc).strip()
    return text.splitlines()[-1] if text else type(exc).__name__


_SERVER_ENDED: Final = ("57P01", "57P02", "57P03")  # admin_shutdown, crash_shutdown, cannot_connect_now


def _server_ended(exc: BaseException) -> Exception | None:
    """The error in ``exc``'s chain that says the server ended the connection (SQLSTATE class 08, or the server
    shutting down), if any: in pipeline mode psycopg can raise "cannot exit pipeline mode while busy" with the
    server's ``AdminShutdown`` only as its context, while the connection is not yet marked broken."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        state = getattr(current, "sqlstate", None) or ""
        if isinstance(current, Exception) and (state.startswith("08") or state in _SERVER_ENDED):
            return current
        current = current.__cause__ or current.__context__
    return None


def _rows(cursor: Any) -> Any:
    names = {d.name: i for i, d in enumerate(cursor.description or ())}
    return lambda values: _Row(values, names)


class _Connection:
    """psycopg's connection, speaking :class:`~edgekit.fleet.state.Connection` (SQLite's dialect in, rows by name out)."""

    def __init__(self, database: PostgresDatabase) -> None:
        self._database = database

    def execute(self, sql: str, parameters: Sequence[Any] = (), /) -> Cursor:
        with self._database.watch():
            cur = self._database.live().cursor(row_factory=_rows)
            cur.execute(translate(sql), tuple(parameters))
        return cur  # type: ignore[no-any-return]

    def executemany(self, sql: str, parameters: Iterable[Sequence[Any]], /) -> Cursor:
        with self._database.watch():
            cur = self._database.live().cursor(row_factory=_rows)
            cur.executemany(translate(sql), [tuple(p) for p in parameters])
        return cur  # type: ignore[no-any-return]


class PostgresDatabase:
    """A PostgreSQL database as the fleet's :class:`~edgekit.fleet.state.StateDatabase` (one connection, autocommit
    outside the transactions :class:`~edgekit.fleet.state.FleetState` opens). A lost connection is opened again on a
    later operation, no sooner than its backoff allows (:data:`RETRY_FIRST_S` doubling up to :data:`RETRY_MAX_S`);
    until then each operation raises :class:`~edgekit.fleet.errors.StateUnavailableError`."""

    def __init__(self, url: str) -> None:
        self.kind, self.noun = "PostgreSQL", "database"
        self.errors: tuple[type[Exception], ...] = ()
        self.where = redact(url)
        if psycopg is None:
            raise StateError(
                f"the fleet state {self.where} is on PostgreSQL, and psycopg is not installed: pip install 'edgekit[fleet-pg]'"
            )
        self.errors = (psycopg.DatabaseError,)
        self._url = url
        self._lost_at: float | None = None  # when the connection was lost (monotonic), while it is
        self._lost_why = ""
        self._retry_at = 0.0
        self._retry_s = RETRY_FIRST_S
        self.outages = 0
        try:
            self._conn = self._connect()
        except psycopg.Error as exc:
            raise StateError(
                f"cannot connect to the fleet database {self.where} ({_why(exc)}); start PostgreSQL there, or fix the "
                "URL's host, port, user, password or database"
            ) from None
        self._connection = _Connection(self)

    def _connect(self) -> Any:
        assert psycopg is not None
        return psycopg.connect(self._url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S, application_name="edgekit-fleet")

    # ------------------------------------------------------------------ a lost connection, opened again

    @property
    def available(self) -> bool:
        """False while the connection is lost (until an operation opens it again)."""
        return self._lost_at is None

    def live(self) -> Any:
        """psycopg's connection, opened again first where it was lost and the backoff allows a try now;
        :class:`~edgekit.fleet.errors.StateUnavailableError` while it can't be had."""
        if self._lost_at is None and not self._conn.closed:
            return self._conn
        if self._lost_at is None:  # closed under us before any error said so
            self._lost("the connection was closed")
        assert self._lost_at is not None and psycopg is not None
        if time.monotonic() < self._retry_at:
            raise self._unavailable()
        try:
            conn = self._connect()
        except psycopg.Error as exc:
            self._lost_why = _why(exc)
            self._retry_s = min(RETRY_MAX_S, self._retry_s * 2)
            self._retry_at = time.monotonic() + self._retry_s
            raise self._unavailable() from None
        with contextlib.suppress(Exception):
            self._conn.close()
        self._conn = conn
        log.warning("fleet database %s: connected again after %.1f s", self.where, time.monotonic() - self._lost_at)
        self._lost_at, self._lost_why, self._retry_s, self._retry_at = None, "", RETRY_FIRST_S, 0.0
        return conn

    def _lost(self, why: str) -> None:
        if self._lost_at is None:  # once per outage: one line, not one per message or per try
            self.outages += 1
            log.warning(
                "fleet database %s: connection lost (%s); trying again with backoff (%g s, doubling up to %g s) — "
                "what can't be stored meanwhile is kept, not acknowledged",
                self.where, why, RETRY_FIRST_S, RETRY_MAX_S,
            )  # fmt: skip
            self._lost_at, self._retry_s = time.monotonic(), RETRY_FIRST_S
            self._retry_at = self._lost_at + RETRY_FIRST_S
        self._lost_why = why

    def _unavailable(self) -> StateUnavailableError:
        since = time.monotonic() - self._lost_at if self._lost_at is not None else 0.0
        return StateUnavailableError(
            f"the fleet database {self.where} is unreachable for now ({self._lost_why}; {since:.0f} s); it is tried "
            "again with backoff: check that PostgreSQL runs and is reachable"
        )

    @contextlib.contextmanager
    def watch(self) -> Iterator[None]:
        """psycopg's error for a connection that broke becomes :class:`~edgekit.fleet.errors.StateUnavailableError`
        (and an outage noted); any other error goes through as it is (a statement's own: the connection is fine)."""
        assert psycopg is not None
        try:
            yield
        except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
            ended = _server_ended(exc)
            # outside a pipeline the connection is never in pipeline mode: still there, it is stuck mid-batch
            stuck = not self._conn.closed and self._conn.pgconn.pipeline_status != PipelineStatus.OFF
            if not (self._conn.broken or self._conn.closed or ended is not None or stuck):
                raise
            with contextlib.suppress(Exception):
                self._conn.close()  # the server ended it, or left it mid-pipeline: never used again
            self._lost(_why(ended if ended is not None else exc))
            raise self._unavailable() from None

    # ------------------------------------------------------------------ StateDatabase

    @property
    def connection(self) -> Connection:
        return self._connection

    def begin(self, *, exclusive: bool) -> None:
        with self.watch():
            conn = self.live()
            conn.execute("BEGIN")
            if exclusive:
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (WRITER_LOCK,))

    def begin_read(self) -> None:
        with self.watch():
            self.live().execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")  # one snapshot for all its reads

    def commit(self) -> None:
        with self.watch():
            self.live().execute("COMMIT")

    def rollback(self) -> None:
        if self._conn.broken or self._conn.closed:
            return  # the transaction went with the connection
        if self._conn.info.transaction_status != TransactionStatus.IDLE:
            with self.watch():
                self._conn.execute("ROLLBACK")

    def tables(self) -> set[str]:
        with self.watch():
            cur = self.live().execute("SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()")
            return {r[0] for r in cur.fetchall()}

    def create(self, statement: str) -> None:
        with self.watch():
            self.live().execute(_schema(statement))

    def integrity_check(self) -> str:
        """``"ok"`` when every table reads back (PostgreSQL checks its own pages: there is no PRAGMA to ask)."""
        for table in sorted(self.tables()):
            with self.watch():
                self.live().execute(f'SELECT count(*) FROM "{table}"').fetchone()
        return "ok"

    def each_returning(self, sql: str, rows: Sequence[Sequence[Any]]) -> list[Any]:
        """One pipelined ``executemany`` (one round trip for the batch, not one per row)."""
        if not rows:
            return []
        out: list[Any] = []
        with self.watch():
            cur = self.live().cursor()
            cur.executemany(translate(sql), [tuple(r) for r in rows], returning=True)
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

    @property
    def running(self) -> bool:
        """True from a :meth:`start` until the :meth:`stop` after it (the server this object started is up)."""
        return self._started

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
