"""The fleet's state, on SQLite and on PostgreSQL (``fleet_db``): nothing is lost by closing and reopening it, or by
kill -9 in the middle of a write; what is not a fleet state is refused in one line."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from edgekit.fleet import FakeClock, FleetService, FleetState, JobRejected, Registry, StateError, publish_local
from edgekit.fleet.state import SCHEMA_VERSION
from edgekit.fleet.state_pg import LocalPostgres

AARCH64 = {"os": "linux", "architecture": "aarch64"}


def write_build(root: Path) -> None:
    recipe = {
        "RecipeFormatVersion": "2020-01-25",
        "ComponentName": "com.example.Detector",
        "ComponentVersion": "1.0.0",
        "Manifests": [
            {
                "Platform": {"os": "linux"},
                "Lifecycle": {"Run": "true"},
                "Artifacts": [{"URI": "s3://BUCKET_NAME/COMPONENT_NAME/COMPONENT_VERSION/model.zip"}],
            }
        ],
    }
    (root / "recipes").mkdir(parents=True)
    (root / "recipes" / "com.example.Detector-1.0.0.json").write_text(json.dumps(recipe))
    (root / "artifacts" / "com.example.Detector" / "1.0.0").mkdir(parents=True)
    (root / "artifacts" / "com.example.Detector" / "1.0.0" / "model.zip").write_bytes(b"weights")


def test_close_and_reopen_gives_everything_back(tmp_path: Path, fleet_db: str | Path) -> None:
    path, store, clock = fleet_db, tmp_path / "store", FakeClock(1000.0)
    write_build(tmp_path / "build")
    abort = {
        "criteriaList": [{"failureType": "FAILED", "action": "CANCEL", "thresholdPercentage": 50, "minNumberOfExecutedThings": 2}]
    }
    with FleetState(path) as state:
        svc = FleetService(state, clock)
        publish_local(tmp_path / "build", state, store, clock=clock)
        for i in range(4):
            svc.register_thing(f"dev-{i}", "rasp4b", AARCH64, ["line-1", "all"] if i < 3 else ["all"])
        base = {"components": {"com.example.Detector": {"componentVersion": "1.0.0"}}}
        replaced = svc.create_deployment({"targetArn": "thinggroup/all", **base})
        live = svc.create_deployment({"targetArn": "thinggroup/all", **base, "iotJobConfiguration": {"abortConfig": abort}})
        aborted = svc.create_deployment({"targetArn": "thinggroup/line-1", **base, "iotJobConfiguration": {"abortConfig": abort}})
        svc.notify_due()
        svc.update_execution("dev-0", live, "IN_PROGRESS", {"step": "download"}, expected_version=1)
        svc.update_execution("dev-1", aborted, "FAILED")
        svc.update_execution("dev-2", aborted, "FAILED")
        saved = (
            state.things(),
            {g: state.members(g) for g in state.groups()},
            state.components(),
            state.artifacts("com.example.Detector", "1.0.0"),
            state.deployments(),
            state.executions(),
            svc.summary(),
        )

    with FleetState(path) as state:
        svc = FleetService(state, clock)
        assert (
            state.things(),
            {g: state.members(g) for g in state.groups()},
            state.components(),
            state.artifacts("com.example.Detector", "1.0.0"),
            state.deployments(),
            state.executions(),
            svc.summary(),
        ) == saved
        assert svc.deployment(replaced).status == "INACTIVE" and svc.deployment(replaced).replaced_by == live
        assert svc.deployment(aborted).status == "CANCELED" and svc.deployment(aborted).status_reason["failures"] == 2  # type: ignore[index]
        assert Registry(state, store).recipe("com.example.Detector", "1.0.0")["Manifests"][0]["Artifacts"][0]["Digest"]
        # the device picks up where it was: same version numbers, same details, same checks
        with pytest.raises(JobRejected, match="VersionMismatch"):
            svc.update_execution("dev-0", live, "SUCCEEDED", expected_version=1)
        assert svc.describe("dev-0", live).status_details == {"step": "download"}  # type: ignore[union-attr]
        assert svc.update_execution("dev-0", live, "SUCCEEDED", expected_version=2).state.version_number == 3


def _sql(where: str | Path, *statements: str) -> list[tuple[object, ...]]:
    """Run statements on the database itself (not through FleetState); the last one's rows."""
    rows: list[tuple[object, ...]] = []
    if isinstance(where, Path):
        db = sqlite3.connect(where)
        try:
            for statement in statements:
                rows = db.execute(statement).fetchall()
            db.commit()
        finally:
            db.close()
        return rows
    import psycopg

    with psycopg.connect(where, autocommit=True) as conn:
        for statement in statements:
            cur = conn.execute(statement)
            rows = cur.fetchall() if cur.description else []
    return rows


def test_schema_version_is_checked(fleet_db: str | Path) -> None:
    FleetState(fleet_db).close()
    assert _sql(fleet_db, "SELECT version FROM schema_version") == [(SCHEMA_VERSION,)]
    _sql(fleet_db, f"UPDATE schema_version SET version = {SCHEMA_VERSION + 1}")
    with pytest.raises(StateError, match="upgrade edgekit"):
        FleetState(fleet_db)


def test_files_that_are_not_fleet_state_are_refused(tmp_path: Path) -> None:
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StateError, match="not a fleet state file"):
        FleetState(junk)
    other = tmp_path / "other.db"
    _sql(other, "CREATE TABLE notes (text TEXT)")
    with pytest.raises(StateError, match="no schema_version"):
        FleetState(other)


def test_databases_that_are_not_fleet_state_are_refused(postgres_server: LocalPostgres) -> None:
    other = postgres_server.create_database("not_a_fleet")
    _sql(other, "CREATE TABLE notes (text TEXT)")
    with pytest.raises(StateError, match=r"PostgreSQL database but not a fleet state file \(no schema_version"):
        FleetState(other)
    with pytest.raises(StateError, match=r"cannot connect to the fleet database .*:\*\*\*@.*/nowhere") as caught:
        FleetState(postgres_server.url("nowhere").replace("postgres@", "postgres:secret@"))
    assert "secret" not in str(caught.value) and "\n" not in str(caught.value)


def test_a_failed_transaction_leaves_nothing(fleet_db: str | Path) -> None:
    with FleetState(fleet_db) as state:
        with pytest.raises(RuntimeError), state.transaction():
            state.upsert_thing("dev-1", "rasp4b", AARCH64, 0.0)
            state.ensure_group("g", 0.0)
            raise RuntimeError("crash in the middle")
        assert state.things() == [] and state.groups() == []


_WRITER = textwrap.dedent(
    """
    import sys
    from edgekit.fleet.state import FleetState

    state = FleetState(sys.argv[1])
    i = 0
    while True:
        with state.transaction():
            state.upsert_thing(f"dev-{i}", "rasp4b", {"os": "linux", "architecture": "aarch64"}, float(i))
            state.ensure_group(f"group-{i % 7}", float(i))
            state.add_member(f"group-{i % 7}", f"dev-{i}", float(i))
        print(i, flush=True)
        i += 1
    """
)


def test_kill_9_in_the_middle_of_writes_loses_no_committed_change(fleet_db: str | Path) -> None:
    path = fleet_db
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(path)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    last = -1
    try:
        for line in proc.stdout:
            last = int(line)
            if last >= 300:
                proc.send_signal(signal.SIGKILL)  # while it is writing the next transaction
                break
    finally:
        proc.kill()
        proc.wait(timeout=10)
        proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL

    with FleetState(path) as state:
        assert state.integrity_check() == "ok"
        things = {t.name for t in state.things()}
        assert {f"dev-{i}" for i in range(last + 1)} <= things  # every committed transaction is there
        # the writer may have committed more before the signal landed (its reports sit in the pipe), but in order:
        # what is there is a prefix, with no gap a half-applied or reordered transaction would leave
        assert things == {f"dev-{i}" for i in range(len(things))}
        for name in things:  # and each transaction is there whole: the thing together with its membership
            assert len(state.groups_of(name)) == 1


def test_reading_the_telemetry_never_fails_on_what_is_stored(tmp_path: Path) -> None:
    """Rows an older edgekit (or a hand edit) stored, that today's ingest would refuse: the fleet view still reads."""
    from edgekit.fleet.view import fleet_view

    with FleetState(tmp_path / "fleet.db") as state:
        state.upsert_thing("pi-01", "rasp4b", {"os": "linux", "architecture": "aarch64"}, 0.0)
        rows = [  # readings near int64's top (sum() would overflow), fallback errors that are not kind → count
            ("1/1", 2**62, '{"http": 2, "timeout": "x", "neg": -5}', "closed"),
            ("1/2", 2**62, "not json", "[bold]weird"),
            ("1/3", "many", "[1, 2]", "open"),
        ]
        with state.transaction() as db:
            for window, readings, errors, breaker in rows:
                db.execute(
                    "INSERT INTO telemetry_windows(thing, component, window, run, seq, window_start, window_end, readings,"
                    " local, cloud, none, fallback_errors, breaker, pending, received_at)"
                    " VALUES ('pi-01', 'c', ?, '1', 1, 0, ?, ?, 0, 0, 0, ?, ?, 'x', 0)",
                    (window, float(window[-1]), readings, errors, breaker),
                )
        view = fleet_view(state)
        (device,) = [d for d in view.devices if d.thing == "pi-01"]
        t = device.telemetry
        assert t.windows == 3 and t.readings >= 2**62
        assert t.fallback_errors == {"http": 2, "neg": 0, "timeout": 0}
        assert t.breaker == "open" and t.component_pending == 0
        json.dumps(view.to_json())


def test_a_fleet_folder_remembers_its_postgresql_database(tmp_path: Path, postgres_server: LocalPostgres) -> None:
    from edgekit.errors import ConfigError
    from edgekit.fleet.folder import FleetFolder

    folder = FleetFolder.at(tmp_path / "fleet")
    assert not folder.exists() and folder.state_location == folder.database
    with pytest.raises(ConfigError, match=r"--database 'mysql://x': give a postgresql://"):
        folder.use_database("mysql://x")
    url = postgres_server.create_database("remembered")
    folder.use_database(url)
    assert folder.exists() and str(folder.state_location) == url
    assert folder.database_url_file.stat().st_mode & 0o077 == 0  # it may hold a password
    with folder.open_state() as state:  # every command on the folder opens the same database
        state.ensure_group("line-1", 0.0)
    with FleetState(url) as state:
        assert state.groups() == ["line-1"]
    assert not folder.database.exists()  # no SQLite file beside it


def test_on_postgresql_one_exclusive_writer_at_a_time_upserts_side_by_side(postgres_server: LocalPostgres) -> None:
    """Two service processes' connections: a transaction that reads before it writes waits for the other's (the
    advisory lock, as SQLite's BEGIN IMMEDIATE); telemetry's upserts (exclusive=False) don't wait."""
    import threading
    import time

    url = postgres_server.create_database("writers")
    with FleetState(url) as one, FleetState(url) as two:
        entered = threading.Event()

        def second(exclusive: bool) -> None:
            with two.transaction(exclusive=exclusive):
                entered.set()

        for exclusive, waits in ((True, True), (False, False)):
            entered.clear()
            with one.transaction():
                one.ensure_group(f"held-{exclusive}", 0.0)
                thread = threading.Thread(target=second, args=(exclusive,))
                thread.start()
                if waits:
                    time.sleep(0.5)
                    assert not entered.is_set()
                else:  # in while the first still holds its transaction (a loaded machine may take a while to start it)
                    assert entered.wait(30)
            thread.join(timeout=10)
            assert entered.is_set()  # the first committed: the second went on
        assert two.groups() == ["held-False", "held-True"]


def test_the_telemetry_is_read_as_one_snapshot_while_another_process_stores_windows(fleet_db: str | Path) -> None:
    """Two services on one database: windows of a new thing stored by the second between the first's statements
    (forced here, right after its first read) are wholly in its next reading, not half in this one — read one
    statement at a time, the breaker of a thing its window totals had not seen raised KeyError (seen in
    test_two_services_on_one_postgresql_store_each_summary_once)."""
    with FleetState(fleet_db) as one, FleetState(fleet_db) as two:
        one.record_telemetry([("early", "c", "1/1", "r1", 1, 0.0, 1.0, 2, 2, 0, 0, "{}", "closed", 0.0, 0, 1, 0.0)], {}, 0.0)
        late = ("late", "c", "1/1", "r1", 1, 0.0, 1.0, 3, 1, 1, 1, '{"http": 1}', "open", 0.0, 2, 1, 0.0)
        database = one.database

        class Interleaved(type(database)):  # type: ignore[misc]
            """The first service's connection; the second stores its window once the first has read once."""

            @property
            def connection(self) -> Any:
                inner = super().connection

                class Connection:
                    def __getattr__(self, name: str) -> Any:
                        return getattr(inner, name)

                    def execute(self, sql: str, parameters: Any = ()) -> Any:
                        cursor = inner.execute(sql, parameters)
                        if "telemetry_windows" in sql and not stored:
                            stored.append(two.record_telemetry([late], {"late": {"messages": 1}}, 1.0))
                        return cursor

                return Connection()

        stored: list[tuple[int, int]] = []
        database.__class__ = Interleaved
        first = one.telemetry()
        assert stored == [(1, 0)]  # the second service did store its window, mid-reading
        assert set(first) == {"early"} and first["early"].windows == 1 and first["early"].breaker == "closed"
        database.__class__ = Interleaved.__mro__[1]
        second = one.telemetry()
        assert set(second) == {"early", "late"}
        assert second["late"].windows == 1 and second["late"].breaker == "open" and second["late"].component_pending == 2
        assert second["late"].fallback_errors == {"http": 1} and second["late"].messages == 1
