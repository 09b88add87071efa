"""The local fleet's state: one SQLite file, written in WAL mode, one transaction per change.

See docs/local-fleet.md (the fleet folder).
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Protocol, cast

from edgekit.fleet.errors import StateError

__all__ = [
    "DEPLOYMENT_STATUSES",
    "EXECUTION_STATUSES",
    "SCHEMA_VERSION",
    "WINDOW_COLUMNS",
    "ArtifactRecord",
    "ComponentVersionRecord",
    "DeploymentRecord",
    "ExecutionRecord",
    "FleetState",
    "SqliteDatabase",
    "StateDatabase",
    "TelemetryRecord",
    "ThingRecord",
    "WindowTotals",
]

log = logging.getLogger(__name__)

SCHEMA_VERSION: Final = 2
DEPLOYMENT_STATUSES: Final = ("ACTIVE", "COMPLETED", "CANCELED", "FAILED", "INACTIVE")
EXECUTION_STATUSES: Final = ("QUEUED", "IN_PROGRESS", "SUCCEEDED", "FAILED", "TIMED_OUT", "REJECTED", "REMOVED", "CANCELED")


def _in(values: Iterable[str]) -> str:
    return ", ".join(f"'{v}'" for v in values)


_SCHEMA = f"""
CREATE TABLE schema_version (version INTEGER NOT NULL);
CREATE TABLE things (
    name TEXT PRIMARY KEY,
    profile TEXT NOT NULL,
    os TEXT NOT NULL,
    arch TEXT NOT NULL,
    registered_at REAL NOT NULL,
    last_seen REAL
);
CREATE TABLE thing_groups (
    name TEXT PRIMARY KEY,
    created_at REAL NOT NULL
);
CREATE TABLE group_members (
    group_name TEXT NOT NULL REFERENCES thing_groups(name) ON DELETE CASCADE,
    thing TEXT NOT NULL REFERENCES things(name) ON DELETE CASCADE,
    added_at REAL NOT NULL,
    PRIMARY KEY (group_name, thing)
);
CREATE INDEX group_members_thing ON group_members(thing);
CREATE TABLE components (
    name TEXT NOT NULL,
    version TEXT NOT NULL,
    recipe TEXT NOT NULL,
    published_at REAL NOT NULL,
    PRIMARY KEY (name, version)
);
CREATE TABLE artifacts (
    name TEXT NOT NULL,
    version TEXT NOT NULL,
    file TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    size INTEGER NOT NULL,
    PRIMARY KEY (name, version, file),
    FOREIGN KEY (name, version) REFERENCES components(name, version) ON DELETE CASCADE
);
CREATE TABLE deployments (
    id TEXT PRIMARY KEY,
    target TEXT NOT NULL,
    spec TEXT NOT NULL,
    created_at REAL NOT NULL,
    status TEXT NOT NULL CHECK (status IN ({_in(DEPLOYMENT_STATUSES)})),
    replaced_by TEXT REFERENCES deployments(id),
    status_reason TEXT,
    updated_at REAL NOT NULL,
    rollout_tokens REAL,
    rollout_at REAL
);
CREATE INDEX deployments_target ON deployments(target, created_at);
CREATE TABLE job_executions (
    deployment_id TEXT NOT NULL REFERENCES deployments(id),
    thing TEXT NOT NULL REFERENCES things(name),
    status TEXT NOT NULL CHECK (status IN ({_in(EXECUTION_STATUSES)})),
    version_number INTEGER NOT NULL,
    execution_number INTEGER NOT NULL DEFAULT 1,
    status_details TEXT NOT NULL DEFAULT '{{}}',
    queued_at REAL NOT NULL,
    started_at REAL,
    updated_at REAL NOT NULL,
    notified_at REAL,
    PRIMARY KEY (deployment_id, thing)
);
CREATE INDEX job_executions_thing ON job_executions(thing, status);
CREATE INDEX job_executions_status ON job_executions(deployment_id, status);
CREATE INDEX job_executions_notified ON job_executions(deployment_id, notified_at);
"""

_TELEMETRY_SCHEMA = """
CREATE TABLE telemetry_windows (
    thing TEXT NOT NULL,
    component TEXT NOT NULL,
    window TEXT NOT NULL,
    run TEXT NOT NULL,
    seq INTEGER NOT NULL,
    window_start REAL,
    window_end REAL,
    readings INTEGER NOT NULL,
    local INTEGER NOT NULL,
    cloud INTEGER NOT NULL,
    none INTEGER NOT NULL,
    fallback_errors TEXT NOT NULL DEFAULT '{}',
    breaker TEXT,
    fallback_ms TEXT NOT NULL DEFAULT '{}',
    pending INTEGER,
    uplink_sent INTEGER,
    received_at REAL NOT NULL,
    deliveries INTEGER NOT NULL DEFAULT 1,
    PRIMARY KEY (thing, component, window)
);
CREATE INDEX telemetry_windows_run ON telemetry_windows(thing, run, seq);
CREATE TABLE telemetry_things (
    thing TEXT PRIMARY KEY,
    messages INTEGER NOT NULL DEFAULT 0,
    unanswered_messages INTEGER NOT NULL DEFAULT 0,
    malformed INTEGER NOT NULL DEFAULT 0,
    last_seen REAL
);
"""
_SCHEMA += _TELEMETRY_SCHEMA
_MIGRATIONS: Final = {1: _TELEMETRY_SCHEMA}
"""From schema N to N + 1: the statements to run (the window summaries of issue 11 came with schema 2)."""


@dataclass(frozen=True)
class ThingRecord:
    name: str
    profile: str
    platform: dict[str, str]
    registered_at: float
    last_seen: float | None


@dataclass(frozen=True)
class ComponentVersionRecord:
    name: str
    version: str
    recipe: dict[str, Any]
    published_at: float


@dataclass(frozen=True)
class ArtifactRecord:
    name: str
    version: str
    file: str
    sha256: str
    size: int


@dataclass(frozen=True)
class DeploymentRecord:
    id: str
    target: str
    spec: dict[str, Any]
    created_at: float
    status: str
    replaced_by: str | None
    status_reason: dict[str, Any] | None
    updated_at: float
    rollout_tokens: float | None
    rollout_at: float | None


@dataclass(frozen=True)
class ExecutionRecord:
    deployment_id: str
    thing: str
    status: str
    version_number: int
    execution_number: int
    status_details: dict[str, str]
    queued_at: float
    started_at: float | None
    updated_at: float
    notified_at: float | None


@dataclass
class TelemetryRecord:
    """What one thing's inference components reported, summed over its stored window summaries (de-duplicated),
    with the latest window's breaker and component outbox (``component_pending``) and the thing's message counts."""

    thing: str
    windows: int = 0
    readings: int = 0
    local: int = 0
    cloud: int = 0
    none: int = 0
    duplicates: int = 0
    fallback_errors: dict[str, int] = field(default_factory=dict)
    breaker: str | None = None
    component_pending: int = 0
    messages: int = 0
    unanswered_messages: int = 0
    malformed: int = 0
    last_telemetry_at: float | None = None


@dataclass(frozen=True)
class WindowTotals:
    """The stored windows of some runs up to a window number: how many, their readings, their deliveries."""

    windows: int
    readings: int
    deliveries: int


WINDOW_COLUMNS: Final = (
    "thing", "component", "window", "run", "seq", "window_start", "window_end", "readings", "local", "cloud", "none",
    "fallback_errors", "breaker", "fallback_ms", "pending", "uplink_sent", "received_at",
)  # fmt: skip
"""The order of a window row given to :meth:`FleetState.record_telemetry`."""

_EXECUTION_COLUMNS = "deployment_id, thing, status, version_number, execution_number, status_details, queued_at, started_at, updated_at, notified_at"
_DEPLOYMENT_COLUMNS = "id, target, spec, created_at, status, replaced_by, status_reason, updated_at, rollout_tokens, rollout_at"


_BREAKERS: Final = ("closed", "open", "half-open")


def _stored_int(value: Any) -> int:
    """A stored count as a non-negative int; what is not one (a row of an older edgekit, a hand edit) counts 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value or value in (float("inf"), -float("inf")):
        return 0
    return max(0, int(value))


def _stored_errors(text: Any) -> dict[str, int]:
    """A stored ``fallback_errors`` as kind → count; anything else in it is left out, never an error when read."""
    try:
        value = json.loads(text) if isinstance(text, (str, bytes)) else None
    except ValueError:
        return {}
    if not isinstance(value, dict):
        return {}
    return {k: _stored_int(v) for k, v in value.items() if isinstance(k, str) and k.isprintable() and len(k) <= 64}


def _execution(row: Any) -> ExecutionRecord:
    return ExecutionRecord(
        deployment_id=row["deployment_id"],
        thing=row["thing"],
        status=row["status"],
        version_number=row["version_number"],
        execution_number=row["execution_number"],
        status_details=json.loads(row["status_details"]),
        queued_at=row["queued_at"],
        started_at=row["started_at"],
        updated_at=row["updated_at"],
        notified_at=row["notified_at"],
    )


def _deployment(row: Any) -> DeploymentRecord:
    return DeploymentRecord(
        id=row["id"],
        target=row["target"],
        spec=json.loads(row["spec"]),
        created_at=row["created_at"],
        status=row["status"],
        replaced_by=row["replaced_by"],
        status_reason=json.loads(row["status_reason"]) if row["status_reason"] else None,
        updated_at=row["updated_at"],
        rollout_tokens=row["rollout_tokens"],
        rollout_at=row["rollout_at"],
    )


def _thing(row: Any) -> ThingRecord:
    return ThingRecord(
        name=row["name"],
        profile=row["profile"],
        platform={"os": row["os"], "architecture": row["arch"]},
        registered_at=row["registered_at"],
        last_seen=row["last_seen"],
    )


class Cursor(Protocol):
    """What a statement gives back (``sqlite3.Cursor``'s part both databases have): rows by index and by name."""

    @property
    def rowcount(self) -> int: ...
    def fetchone(self) -> Any: ...
    def fetchall(self) -> list[Any]: ...
    def __iter__(self) -> Iterator[Any]: ...


class Connection(Protocol):
    """Runs one statement in SQLite's dialect (``?`` marks), or one for each row of parameters."""

    def execute(self, sql: str, parameters: Sequence[Any] = (), /) -> Cursor: ...
    def executemany(self, sql: str, parameters: Iterable[Sequence[Any]], /) -> Cursor: ...


class StateDatabase(Protocol):
    """Where a :class:`FleetState` keeps its tables: :class:`SqliteDatabase` (a file, the default) or
    :class:`edgekit.fleet.state_pg.PostgresDatabase` (a server: several service processes on one fleet).
    :class:`FleetState` holds the lock; a database runs one statement or transaction at a time."""

    kind: str  # "SQLite" / "PostgreSQL", for messages
    noun: str  # "file" / "database"
    where: str  # the file, or the URL without its password
    errors: tuple[type[Exception], ...]  # what its driver raises for a database that is not what it should be

    @property
    def connection(self) -> Connection: ...
    def begin(self, *, exclusive: bool) -> None: ...
    def begin_read(self) -> None:
        """A read-only transaction whose statements all see the database as its first one did."""

    def commit(self) -> None: ...
    def rollback(self) -> None: ...
    def tables(self) -> set[str]: ...
    def create(self, statement: str) -> None:
        """Run one statement of :data:`_SCHEMA` (a table or an index, in SQLite's types)."""

    def integrity_check(self) -> str: ...
    def each_returning(self, sql: str, rows: Sequence[Sequence[Any]]) -> list[Any]:
        """Run ``sql`` (one statement ending in ``RETURNING x``) once per row, in order; each run's ``x``."""

    def refusal(self, exc: Exception) -> str:
        """One line: this is not a fleet state (what the driver said), and what to do."""

    def close(self) -> None: ...


class SqliteDatabase:
    """The fleet's SQLite file, written in WAL mode; the default :class:`StateDatabase`."""

    def __init__(self, path: str | Path) -> None:
        self.kind, self.noun = "SQLite", "file"
        self.errors: tuple[type[Exception], ...] = (sqlite3.DatabaseError,)
        self.path = Path(path)
        self.where = str(self.path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30.0)
        except sqlite3.Error as exc:
            raise StateError(f"cannot open the fleet state file {self.path}: {exc}") from exc
        self._db.row_factory = sqlite3.Row
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            # WAL + NORMAL: a killed service loses no committed transaction; only a power cut may lose the last
            # few (FULL cost an fsync per commit: 0.58 s vs 0.13 s for 1,000 updates here)
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA foreign_keys=ON")
        except sqlite3.DatabaseError as exc:
            self._db.close()
            raise StateError(self.refusal(exc)) from exc

    @property
    def connection(self) -> Connection:
        return cast(Connection, self._db)

    def begin(self, *, exclusive: bool) -> None:
        self._db.execute("BEGIN IMMEDIATE")  # one writer at a time, whatever is asked: that is SQLite

    def begin_read(self) -> None:
        self._db.execute("BEGIN")  # deferred: in WAL mode its first read takes a snapshot it keeps until COMMIT

    def commit(self) -> None:
        self._db.execute("COMMIT")

    def rollback(self) -> None:
        if self._db.in_transaction:
            self._db.execute("ROLLBACK")

    def tables(self) -> set[str]:
        return {r[0] for r in self._db.execute("SELECT name FROM sqlite_master WHERE type='table'")}

    def create(self, statement: str) -> None:
        self._db.execute(statement)

    def integrity_check(self) -> str:
        return str(self._db.execute("PRAGMA integrity_check").fetchone()[0])

    def each_returning(self, sql: str, rows: Sequence[Sequence[Any]]) -> list[Any]:
        return [self._db.execute(sql, row).fetchone()[0] for row in rows]

    def refusal(self, exc: Exception) -> str:
        return f"{self.path} is not a fleet state file (SQLite said: {exc}); move it away or pick another path"

    def close(self) -> None:
        self._db.close()


def is_database_url(where: str | Path) -> bool:
    """Whether ``where`` names a PostgreSQL database (``postgresql://`` or ``postgres://``) rather than a file."""
    return isinstance(where, str) and where.split("://", 1)[0].lower() in ("postgresql", "postgres")


def open_database(where: str | Path) -> StateDatabase:
    """The :class:`StateDatabase` at ``where``: a ``postgresql://`` URL, else an SQLite file's path."""
    if is_database_url(where):
        from edgekit.fleet.state_pg import PostgresDatabase  # psycopg: the fleet-pg extra, only when asked for

        return PostgresDatabase(str(where))
    return SqliteDatabase(where)


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


class FleetState:
    """The fleet's state: an SQLite file (the default) or a PostgreSQL database (``postgresql://`` URL: several fleet
    service processes on one database). Use as a context manager, or call :meth:`close`.

    Every method that writes runs in a transaction of its own, or joins the one opened by
    ``with state.transaction():`` around several calls (then all of them commit, or none). The queries are written
    once, in SQLite's dialect; a :class:`StateDatabase` runs them (:mod:`edgekit.fleet.state_pg` translates them
    for PostgreSQL).
    """

    def __init__(self, where: str | Path) -> None:
        self.database: StateDatabase = open_database(where)
        self.path = self.database.where  # the file, or the URL without its password: what messages name
        self._lock = threading.RLock()
        self._depth = 0
        self._after_commit: list[Callable[[], None]] = []
        try:
            self._migrate()
        except self.database.errors as exc:
            self.database.close()
            raise StateError(self.database.refusal(exc)) from exc
        except StateError:
            self.database.close()
            raise

    # ------------------------------------------------------------------ lifecycle

    def _migrate(self) -> None:
        with self.transaction() as db:
            tables = self.database.tables()
            if not tables:
                for statement in filter(str.strip, _SCHEMA.split(";")):
                    self.database.create(statement)
                db.execute("INSERT INTO schema_version(version) VALUES (?)", (SCHEMA_VERSION,))
                log.info("created fleet state %s (schema %d)", self.path, SCHEMA_VERSION)
                return
            if "schema_version" not in tables:
                raise StateError(
                    f"{self.path} is an {self.database.kind} {self.database.noun} but not a fleet state file (no schema_version table)"
                )
            row = db.execute("SELECT version FROM schema_version").fetchone()
            version = row[0] if row else None
            while isinstance(version, int) and version in _MIGRATIONS:
                for statement in filter(str.strip, _MIGRATIONS[version].split(";")):
                    self.database.create(statement)
                version += 1
                db.execute("UPDATE schema_version SET version = ?", (version,))
                log.info("fleet state %s moved to schema %d", self.path, version)
            if version != SCHEMA_VERSION:
                newer = isinstance(version, int) and version > SCHEMA_VERSION
                raise StateError(
                    f"{self.path} has fleet state schema {version}, this edgekit reads schema {SCHEMA_VERSION}"
                    + ("; upgrade edgekit" if newer else "; the file is damaged or from an unknown edgekit")
                )

    def close(self) -> None:
        with self._lock:
            self.database.close()

    def __enter__(self) -> FleetState:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def transaction(self, *, exclusive: bool = True) -> Iterator[Connection]:
        """One write transaction; nested uses join the outermost one. ``exclusive`` (the default) makes it the only
        writer of the fleet (SQLite's ``BEGIN IMMEDIATE``; on PostgreSQL an advisory lock every service process
        takes): what it reads stays true until it commits. Without it (upserts that need no read), several
        PostgreSQL clients write at once."""
        with self._lock:
            db = self.database.connection
            if self._depth:
                self._depth += 1
                try:
                    yield db
                finally:
                    self._depth -= 1
                return
            self.database.begin(exclusive=exclusive)
            self._depth = 1
            try:
                yield db
                self.database.commit()
            except BaseException:
                self._after_commit.clear()
                self.database.rollback()
                raise
            finally:
                self._depth = 0
            callbacks, self._after_commit = self._after_commit, []
        for callback in callbacks:
            callback()

    def after_commit(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` once the current transaction commits (now, outside one); never if it rolls back."""
        with self._lock:
            if self._depth:
                self._after_commit.append(callback)
                return
        callback()

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        with self._lock:
            yield self.database.connection

    @contextmanager
    def _snapshot(self) -> Iterator[Connection]:
        """A read of several statements that must agree with each other: one read-only transaction (inside a
        write transaction, that one). Read one statement at a time, another process's commit can land between
        two of them — a fleet service on PostgreSQL read a thing's breaker whose windows its first statement had
        not seen."""
        with self._lock:
            if self._depth:
                yield self.database.connection
                return
            self.database.begin_read()
            try:
                yield self.database.connection
            finally:
                self.database.rollback()  # nothing written: ending it either way is the same

    def integrity_check(self) -> str:
        """SQLite's ``PRAGMA integrity_check`` (``"ok"`` when the file is sound; PostgreSQL checks its own pages)."""
        with self._read():
            return self.database.integrity_check()

    # ------------------------------------------------------------------ things and groups

    def upsert_thing(self, name: str, profile: str, platform: dict[str, str], now: float) -> bool:
        """Register ``name`` (True) or update its profile and platform (False)."""
        with self.transaction() as db:
            exists = db.execute("SELECT 1 FROM things WHERE name=?", (name,)).fetchone() is not None
            if exists:
                db.execute(
                    "UPDATE things SET profile=?, os=?, arch=? WHERE name=?",
                    (profile, platform.get("os", ""), platform.get("architecture", ""), name),
                )
            else:
                db.execute(
                    "INSERT INTO things(name, profile, os, arch, registered_at) VALUES (?, ?, ?, ?, ?)",
                    (name, profile, platform.get("os", ""), platform.get("architecture", ""), now),
                )
            return not exists

    def get_thing(self, name: str) -> ThingRecord | None:
        with self._read() as db:
            row = db.execute("SELECT * FROM things WHERE name=?", (name,)).fetchone()
            return _thing(row) if row else None

    def things(self) -> list[ThingRecord]:
        with self._read() as db:
            return [_thing(r) for r in db.execute("SELECT * FROM things ORDER BY name")]

    def touch_thing(self, name: str, now: float) -> None:
        with self.transaction() as db:
            db.execute("UPDATE things SET last_seen=? WHERE name=?", (now, name))

    def ensure_group(self, name: str, now: float) -> bool:
        """Create the thing group ``name`` if it does not exist; True if it was created."""
        with self.transaction() as db:
            cur = db.execute("INSERT OR IGNORE INTO thing_groups(name, created_at) VALUES (?, ?)", (name, now))
            return cur.rowcount == 1

    def group_exists(self, name: str) -> bool:
        with self._read() as db:
            return db.execute("SELECT 1 FROM thing_groups WHERE name=?", (name,)).fetchone() is not None

    def groups(self) -> list[str]:
        with self._read() as db:
            return [r[0] for r in db.execute("SELECT name FROM thing_groups ORDER BY name")]

    def add_member(self, group: str, thing: str, now: float) -> bool:
        """Put ``thing`` in ``group`` (both must exist); True if it was not a member yet."""
        with self.transaction() as db:
            cur = db.execute(
                "INSERT OR IGNORE INTO group_members(group_name, thing, added_at) VALUES (?, ?, ?)", (group, thing, now)
            )
            return cur.rowcount == 1

    def remove_member(self, group: str, thing: str) -> bool:
        with self.transaction() as db:
            return db.execute("DELETE FROM group_members WHERE group_name=? AND thing=?", (group, thing)).rowcount == 1

    def members(self, group: str) -> list[str]:
        with self._read() as db:
            return [r[0] for r in db.execute("SELECT thing FROM group_members WHERE group_name=? ORDER BY thing", (group,))]

    def groups_of(self, thing: str) -> list[str]:
        with self._read() as db:
            return [r[0] for r in db.execute("SELECT group_name FROM group_members WHERE thing=? ORDER BY group_name", (thing,))]

    # ------------------------------------------------------------------ components and artifacts

    def get_component(self, name: str, version: str) -> ComponentVersionRecord | None:
        with self._read() as db:
            row = db.execute("SELECT * FROM components WHERE name=? AND version=?", (name, version)).fetchone()
            if row is None:
                return None
            return ComponentVersionRecord(row["name"], row["version"], json.loads(row["recipe"]), row["published_at"])

    def component_versions(self, name: str) -> list[str]:
        """The published versions of ``name`` (unsorted: order them with semver)."""
        with self._read() as db:
            return [r[0] for r in db.execute("SELECT version FROM components WHERE name=?", (name,))]

    def components(self) -> dict[str, list[str]]:
        """Every published component name and its versions."""
        out: dict[str, list[str]] = {}
        with self._read() as db:
            for row in db.execute("SELECT name, version FROM components ORDER BY name"):
                out.setdefault(row[0], []).append(row[1])
        return out

    def insert_component(
        self, name: str, version: str, recipe: dict[str, Any], artifacts: Iterable[ArtifactRecord], now: float
    ) -> None:
        """Insert one component version and its artifacts (all in one transaction)."""
        with self.transaction() as db:
            db.execute(
                "INSERT INTO components(name, version, recipe, published_at) VALUES (?, ?, ?, ?)",
                (name, version, _dumps(recipe), now),
            )
            db.executemany(
                "INSERT INTO artifacts(name, version, file, sha256, size) VALUES (?, ?, ?, ?, ?)",
                [(a.name, a.version, a.file, a.sha256, a.size) for a in artifacts],
            )

    def get_artifact(self, name: str, version: str, file: str) -> ArtifactRecord | None:
        with self._read() as db:
            row = db.execute("SELECT * FROM artifacts WHERE name=? AND version=? AND file=?", (name, version, file)).fetchone()
            return ArtifactRecord(row["name"], row["version"], row["file"], row["sha256"], row["size"]) if row else None

    def artifacts(self, name: str, version: str) -> list[ArtifactRecord]:
        with self._read() as db:
            rows = db.execute("SELECT * FROM artifacts WHERE name=? AND version=? ORDER BY file", (name, version))
            return [ArtifactRecord(r["name"], r["version"], r["file"], r["sha256"], r["size"]) for r in rows]

    # ------------------------------------------------------------------ deployments

    def insert_deployment(self, deployment_id: str, target: str, spec: dict[str, Any], now: float) -> None:
        """A new ACTIVE deployment; its rollout bucket starts full (no tokens recorded yet)."""
        with self.transaction() as db:
            db.execute(
                "INSERT INTO deployments(id, target, spec, created_at, status, updated_at) VALUES (?, ?, ?, ?, 'ACTIVE', ?)",
                (deployment_id, target, _dumps(spec), now, now),
            )

    def get_deployment(self, deployment_id: str) -> DeploymentRecord | None:
        with self._read() as db:
            row = db.execute(f"SELECT {_DEPLOYMENT_COLUMNS} FROM deployments WHERE id=?", (deployment_id,)).fetchone()
            return _deployment(row) if row else None

    def deployments(self, *, target: str | None = None, statuses: Iterable[str] | None = None) -> list[DeploymentRecord]:
        """Deployments, oldest first (optionally of one target and/or in some statuses)."""
        where, args = [], []
        if target is not None:
            where.append("target=?")
            args.append(target)
        if statuses is not None:
            wanted = list(statuses)
            where.append(f"status IN ({', '.join('?' * len(wanted))})")
            args += wanted
        sql = f"SELECT {_DEPLOYMENT_COLUMNS} FROM deployments"
        if where:
            sql += " WHERE " + " AND ".join(where)
        with self._read() as db:
            return [_deployment(r) for r in db.execute(sql + " ORDER BY created_at, rowid", args)]

    def latest_deployment(self, target: str) -> DeploymentRecord | None:
        """The most recent deployment to ``target`` (whatever its status)."""
        with self._read() as db:
            row = db.execute(
                f"SELECT {_DEPLOYMENT_COLUMNS} FROM deployments WHERE target=? ORDER BY created_at DESC, rowid DESC LIMIT 1",
                (target,),
            ).fetchone()
            return _deployment(row) if row else None

    def set_deployment_status(
        self, deployment_id: str, status: str, now: float, *, replaced_by: str | None = None, reason: dict[str, Any] | None = None
    ) -> None:
        with self.transaction() as db:
            db.execute(
                "UPDATE deployments SET status=?, updated_at=?, replaced_by=COALESCE(?, replaced_by), "
                "status_reason=COALESCE(?, status_reason) WHERE id=?",
                (status, now, replaced_by, _dumps(reason) if reason is not None else None, deployment_id),
            )

    def set_rollout_bucket(self, deployment_id: str, tokens: float, at: float) -> None:
        with self.transaction() as db:
            db.execute("UPDATE deployments SET rollout_tokens=?, rollout_at=? WHERE id=?", (tokens, at, deployment_id))

    # ------------------------------------------------------------------ job executions

    def insert_execution(self, deployment_id: str, thing: str, now: float) -> bool:
        """Queue an execution of ``deployment_id`` for ``thing``; False if the thing already has one."""
        with self.transaction() as db:
            cur = db.execute(
                "INSERT OR IGNORE INTO job_executions(deployment_id, thing, status, version_number, queued_at, updated_at) "
                "VALUES (?, ?, 'QUEUED', 1, ?, ?)",
                (deployment_id, thing, now, now),
            )
            return cur.rowcount == 1

    def get_execution(self, deployment_id: str, thing: str) -> ExecutionRecord | None:
        with self._read() as db:
            row = db.execute(
                f"SELECT {_EXECUTION_COLUMNS} FROM job_executions WHERE deployment_id=? AND thing=?", (deployment_id, thing)
            ).fetchone()
            return _execution(row) if row else None

    def executions(
        self, *, deployment_id: str | None = None, thing: str | None = None, statuses: Iterable[str] | None = None
    ) -> list[ExecutionRecord]:
        """Executions in the order they were queued (then by thing name)."""
        where, args = [], []
        if deployment_id is not None:
            where.append("deployment_id=?")
            args.append(deployment_id)
        if thing is not None:
            where.append("thing=?")
            args.append(thing)
        if statuses is not None:
            wanted = list(statuses)
            where.append(f"status IN ({', '.join('?' * len(wanted))})")
            args += wanted
        sql = f"SELECT {_EXECUTION_COLUMNS} FROM job_executions"
        if where:
            sql += " WHERE " + " AND ".join(where)
        with self._read() as db:
            return [_execution(r) for r in db.execute(sql + " ORDER BY queued_at, thing", args)]

    def unnotified(self, deployment_id: str, limit: int) -> list[ExecutionRecord]:
        """QUEUED executions of ``deployment_id`` not yet notified, oldest first, at most ``limit``."""
        with self._read() as db:
            rows = db.execute(
                f"SELECT {_EXECUTION_COLUMNS} FROM job_executions WHERE deployment_id=? AND status='QUEUED' "
                "AND notified_at IS NULL ORDER BY queued_at, thing LIMIT ?",
                (deployment_id, limit),
            )
            return [_execution(r) for r in rows]

    def write_execution(self, record: ExecutionRecord) -> None:
        """Store every field of ``record`` (the row of its deployment and thing must exist)."""
        with self.transaction() as db:
            cur = db.execute(
                "UPDATE job_executions SET status=?, version_number=?, execution_number=?, status_details=?, "
                "started_at=?, updated_at=?, notified_at=? WHERE deployment_id=? AND thing=?",
                (
                    record.status,
                    record.version_number,
                    record.execution_number,
                    _dumps(record.status_details),
                    record.started_at,
                    record.updated_at,
                    record.notified_at,
                    record.deployment_id,
                    record.thing,
                ),
            )
            if cur.rowcount != 1:
                raise StateError(f"no job execution of deployment {record.deployment_id} for thing {record.thing}")

    def status_counts(self, deployment_id: str) -> dict[str, int]:
        """How many executions of ``deployment_id`` are in each status."""
        with self._read() as db:
            rows = db.execute(
                "SELECT status, COUNT(*) FROM job_executions WHERE deployment_id=? GROUP BY status", (deployment_id,)
            )
            return {r[0]: r[1] for r in rows}

    def notified_count(self, deployment_id: str, since: float | None = None) -> int:
        """Executions of ``deployment_id`` notified (after ``since``, exclusive, when given)."""
        with self._read() as db:
            if since is None:
                row = db.execute(
                    "SELECT COUNT(*) FROM job_executions WHERE deployment_id=? AND notified_at IS NOT NULL", (deployment_id,)
                ).fetchone()
            else:
                row = db.execute(
                    "SELECT COUNT(*) FROM job_executions WHERE deployment_id=? AND notified_at > ?", (deployment_id, since)
                ).fetchone()
            return cast(int, row[0])

    # ------------------------------------------------------------------ telemetry (the devices' window summaries)

    def record_telemetry(
        self, windows: Sequence[Sequence[Any]], things: Mapping[str, Mapping[str, int]], now: float
    ) -> tuple[int, int]:
        """Store window summaries (rows in :data:`WINDOW_COLUMNS` order) and add each thing's message counts
        (``messages``, ``unanswered``, ``malformed``), all in one transaction. A window already stored (same thing,
        component and window) counts one more delivery. Returns (new windows, duplicates)."""
        new = duplicates = 0
        columns = ", ".join(WINDOW_COLUMNS)
        marks = ", ".join("?" * len(WINDOW_COLUMNS))
        with self.transaction(exclusive=False) as db:  # upserts only: two ingest processes write at once
            # in key order: two PostgreSQL writers of overlapping rows then wait for each other, never deadlock
            deliveries = self.database.each_returning(
                f"INSERT INTO telemetry_windows({columns}) VALUES ({marks})"
                " ON CONFLICT(thing, component, window) DO UPDATE SET deliveries = telemetry_windows.deliveries + 1 RETURNING deliveries",
                [tuple(row) for row in sorted(windows, key=lambda r: (r[0], r[1], r[2]))],
            )
            new = sum(1 for d in deliveries if d == 1)
            duplicates = len(deliveries) - new
            for thing, counts in sorted(things.items()):
                db.execute(
                    "INSERT INTO telemetry_things(thing, messages, unanswered_messages, malformed, last_seen) VALUES (?, ?, ?, ?, ?)"
                    " ON CONFLICT(thing) DO UPDATE SET messages = telemetry_things.messages + excluded.messages,"
                    " unanswered_messages = telemetry_things.unanswered_messages + excluded.unanswered_messages,"
                    " malformed = telemetry_things.malformed + excluded.malformed, last_seen = excluded.last_seen",
                    (thing, counts.get("messages", 0), counts.get("unanswered", 0), counts.get("malformed", 0), now),
                )
        return new, duplicates

    def telemetry(self) -> dict[str, TelemetryRecord]:
        """Every thing that sent telemetry, by name: its windows summed, its latest window's breaker (the worst of its
        components': not ``closed`` wins) and component outbox (summed over its components), its message counts."""
        out: dict[str, TelemetryRecord] = {}
        with self._snapshot() as db:  # four statements, one view: windows another service stores meanwhile wait
            # what is stored is read without failing: total() (a float) can't overflow as sum() can on an int64,
            # a count that is not a number counts 0, a fallback_errors that is not a JSON object is left out
            for row in db.execute(
                "SELECT thing, count(*), total(readings), total(local), total(cloud), total(none),"
                " total(deliveries) - count(*) FROM telemetry_windows GROUP BY thing"
            ):
                r = out.setdefault(row[0], TelemetryRecord(row[0]))
                r.windows, r.readings, r.local, r.cloud, r.none, r.duplicates = (_stored_int(v) for v in row[1:])
            errors: dict[str, Counter[str]] = {}
            for thing, text in db.execute("SELECT thing, fallback_errors FROM telemetry_windows WHERE fallback_errors != '{}'"):
                errors.setdefault(thing, Counter()).update(_stored_errors(text))
            for thing, counts in errors.items():
                out[thing].fallback_errors = dict(sorted(counts.items()))
            for thing, breaker, pending in db.execute(
                "SELECT w.thing, w.breaker, w.pending FROM telemetry_windows w JOIN"
                " (SELECT thing, component, max(window_end) AS latest FROM telemetry_windows GROUP BY thing, component) l"
                " ON w.thing = l.thing AND w.component = l.component AND w.window_end = l.latest"
            ):
                r = out[thing]
                if breaker in _BREAKERS:
                    r.breaker = breaker if r.breaker in (None, "closed") else r.breaker
                r.component_pending += _stored_int(pending)
            for thing, messages, unanswered, malformed, last in db.execute(
                "SELECT thing, messages, unanswered_messages, malformed, last_seen FROM telemetry_things"
            ):
                r = out.setdefault(thing, TelemetryRecord(thing))
                r.messages, r.unanswered_messages, r.malformed = (_stored_int(v) for v in (messages, unanswered, malformed))
                r.last_telemetry_at = last
        return out

    def window_totals(self, thing: str, component: str, run: str, up_to: int) -> WindowTotals:
        """The stored windows 1..``up_to`` of one run of ``thing``'s ``component``."""
        with self._read() as db:
            row = db.execute(
                "SELECT count(*), coalesce(sum(readings), 0), coalesce(sum(deliveries), 0) FROM telemetry_windows"
                " WHERE thing = ? AND component = ? AND run = ? AND seq <= ?",
                (thing, component, run, up_to),
            ).fetchone()
            return WindowTotals(int(row[0]), int(row[1]), int(row[2]))

    def memberships(self) -> dict[str, list[str]]:
        """Every thing in a group, and its groups (sorted)."""
        out: dict[str, list[str]] = {}
        with self._read() as db:
            for group, thing in db.execute("SELECT group_name, thing FROM group_members ORDER BY group_name"):
                out.setdefault(thing, []).append(group)
        return out
