"""Real devices join a local fleet: 'edgekit fleet serve', 'fleet add-device' and 'edgekit agent' as separate processes."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import APP, requires, wait_until, write_build

from edgekit.cli import main
from edgekit.errors import EXIT_CODES, ConfigError
from edgekit.fleet.folder import FleetFolder
from edgekit.wire.device_bundle import BUNDLE_CA, BUNDLE_CERT, BUNDLE_CONFIG, BUNDLE_KEY, read_bundle

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}


def _edgekit(*args: str, log: Path, prefix: list[str] | None = None) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen([*(prefix or []), sys.executable, "-m", "edgekit", *args], stdout=out, stderr=out, env=ENV)


def _stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> int:
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        return proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


@contextlib.contextmanager
def _processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    try:
        yield procs
    finally:
        for proc in reversed(procs):
            _stop(proc)


def _status(state: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    capsys.readouterr()
    assert main(["fleet", "status", "--state", str(state), "--json"]) == 0
    data: dict[str, Any] = json.loads(capsys.readouterr().out)
    return data


def _devices(state: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, dict[str, Any]]:
    return {d["thing"]: d for d in _status(state, capsys)["devices"]}


def _serve(state: Path, log: Path, *extra: str) -> subprocess.Popen[bytes]:
    folder = FleetFolder.at(state)
    proc = _edgekit("fleet", "serve", "--state", str(state), "--tick", "0.2", *extra, log=log)
    wait_until(lambda: folder.running() is not None or proc.poll() is not None, 30, "fleet serve up", every=0.1)
    assert proc.poll() is None, log.read_text()
    return proc


def _deploy(state: Path, version: str, capsys: pytest.CaptureFixture[str]) -> str:
    capsys.readouterr()
    argv = ["deploy", "--local", "--state", str(state), "--target", "thinggroup/line-1", "-c", f"{APP}={version}", "--json"]
    assert main(argv) == 0
    deployment: str = json.loads(capsys.readouterr().out)["deploymentId"]
    return deployment


def _counts(state: Path, deployment: str, capsys: pytest.CaptureFixture[str]) -> dict[str, int]:
    for d in _status(state, capsys)["deployments"]:
        if d["id"] == deployment:
            return dict(d["counts"])
    return {}


@requires("mosquitto")
def test_real_devices_join_serve_deploy_survive_a_kill_and_a_server_restart(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state, logs = tmp_path / "fleet", tmp_path / "logs"
    logs.mkdir()
    build = write_build(tmp_path / "gg")
    write_build(build, "2.0.0")
    with _processes() as procs:
        server = _serve(state, logs / "serve.log", "--port", "0", "--http-port", "0")
        procs.append(server)
        running = FleetFolder.at(state).running()
        assert running is not None and running["mode"] == "serve" and running["broker"].startswith("mqtts://127.0.0.1:")

        assert main(["fleet", "add-device", "pi-01", "--group", "line-1", "--create-group", "--platform", "rasp4b",
                     "--state", str(state)]) == 0  # fmt: skip
        assert main(["fleet", "add-device", "pi-02", "-g", "line-1", "--platform", "linux/amd64", "--state", str(state),
                     "--out", str(tmp_path / "pi-02")]) == 0  # fmt: skip
        bundles = {"pi-01": FleetFolder.at(state).bundles / "pi-01", "pi-02": tmp_path / "pi-02"}
        bundle, _ = read_bundle(bundles["pi-01"] / BUNDLE_CONFIG)
        assert bundle.platform == {"os": "linux", "architecture": "aarch64"} and bundle.profile == "rasp4b"
        assert bundle.broker_url == running["broker"] and bundle.registry_url == running["http"]
        assert sorted(p.name for p in bundles["pi-02"].iterdir()) == sorted([BUNDLE_CA, BUNDLE_CERT, BUNDLE_CONFIG, BUNDLE_KEY])
        assert (bundles["pi-02"] / BUNDLE_KEY).stat().st_mode & 0o077 == 0
        assert b"PRIVATE KEY" not in (bundles["pi-02"] / BUNDLE_CA).read_bytes()  # the CA's key stays in the fleet

        agents = {t: _edgekit("agent", "--config", str(b / BUNDLE_CONFIG), log=logs / f"{t}.log") for t, b in bundles.items()}
        procs += agents.values()
        wait_until(lambda: all(d["connected"] for d in _devices(state, capsys).values()), 60, "both connected", every=0.2)

        assert main(["publish", "--local", "--state", str(state), "--build", str(build)]) == 0
        first = _deploy(state, "1.0.0", capsys)
        wait_until(lambda: _counts(state, first, capsys) == {"SUCCEEDED": 2}, 60, "v1 on both", every=0.2)
        devices = _devices(state, capsys)
        assert {t: (d["lastStatus"], d["connected"]) for t, d in devices.items()} == {
            "pi-01": ("SUCCEEDED", True),
            "pi-02": ("SUCCEEDED", True),
        }

        # pi-01 dies without a word: the broker sends its will; a deployment made meanwhile waits for it
        _stop(agents["pi-01"], signal.SIGKILL)
        wait_until(lambda: _devices(state, capsys)["pi-01"]["connected"] is False, 30, "pi-01 offline", every=0.2)
        second = _deploy(state, "2.0.0", capsys)
        wait_until(lambda: _counts(state, second, capsys).get("SUCCEEDED") == 1, 60, "v2 on pi-02", every=0.2)
        agents["pi-01"] = _edgekit("agent", "--config", str(bundles["pi-01"] / BUNDLE_CONFIG), log=logs / "pi-01.log")
        procs.append(agents["pi-01"])
        wait_until(lambda: _counts(state, second, capsys) == {"SUCCEEDED": 2}, 60, "v2 on the restarted pi-01", every=0.2)
        assert (logs / "pi-01.log").read_text().count("agent: connected to") == 2

        # the fleet restarts on the ports it kept: the agents reconnect by themselves
        assert _stop(server) == 0
        assert FleetFolder.at(state).running() is None
        server = _serve(state, logs / "serve.log")
        procs.append(server)
        again = FleetFolder.at(state).running()
        assert again is not None and (again["broker"], again["http"]) == (running["broker"], running["http"])
        # the service's listener too: on another port mosquitto drops what it queued for the service's session while
        # no server ran (an agent that reconnects before the service would stay unknown: its presence lost)
        assert again["serviceBroker"] == running["serviceBroker"]
        wait_until(lambda: all(d["connected"] for d in _devices(state, capsys).values()), 60, "reconnected", every=0.2)
        third = _deploy(state, "1.0.0", capsys)
        wait_until(lambda: _counts(state, third, capsys) == {"SUCCEEDED": 2}, 60, "back to v1", every=0.2)

        for thing, agent in agents.items():
            assert _stop(agent) == 0, (logs / f"{thing}.log").read_text()
        text = (logs / "pi-02.log").read_text()
        assert "connection to mqtts://" in text and "lost; reconnecting" in text and "agent: stopped" in text
        assert f"job {first}: SUCCEEDED" in text


@requires("mosquitto")
def test_add_device_refuses_bad_input_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state = tmp_path / "fleet"
    code = EXIT_CODES[ConfigError]
    add = ["fleet", "add-device", "pi-01", "--group", "line-1", "--platform", "rasp4b", "--state", str(state)]
    assert main(add) == code
    assert "run 'edgekit fleet serve" in capsys.readouterr().err
    with _processes() as procs:
        procs.append(_serve(state, tmp_path / "serve.log", "--port", "0", "--http-port", "0"))
        cases: list[tuple[list[str], str]] = [
            (add, "thing group 'line-1' does not exist"),
            ([*add, "--create-group", "--platform", "nope"], "--platform 'nope'"),
            ([*add[:2], "bad/name", *add[3:], "--create-group"], "bad/name"),
            ([*add[:2], "edgekit-fleet-service", *add[3:], "--create-group"], "fleet service's identity"),
            ([*add, "--create-group", "--out", str(tmp_path / "serve.log" / "sub")], "can't write the bundle"),
        ]
        (tmp_path / "full").mkdir()
        (tmp_path / "full" / "x").write_text("x")
        cases.append(([*add, "--create-group", "--out", str(tmp_path / "full")], "is not empty"))
        for argv, message in cases:
            capsys.readouterr()
            assert main(argv) == code, argv
            err = capsys.readouterr().err.strip()
            assert message in err and len(err.splitlines()) == 1, err
        with FleetFolder.at(state).open_state() as fleet_state:
            assert fleet_state.things() == [] and fleet_state.groups() == []  # nothing half-done

        assert main([*add, "--create-group"]) == 0
        capsys.readouterr()
        assert main(add) == code
        assert "already in the fleet" in capsys.readouterr().err
        assert main([*add, "--force"]) == 0


def test_the_agent_refuses_a_bad_bundle_writes_a_unit_and_imports_nothing_of_the_fleet(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = EXIT_CODES[ConfigError]
    assert main(["agent", "--config", str(tmp_path / "nothing.yaml")]) == code
    assert "can't read the device bundle's config" in capsys.readouterr().err
    bundle = tmp_path / "pi-01"
    bundle.mkdir()
    config = bundle / BUNDLE_CONFIG
    config.write_text("thingName: pi-01\nplatform: {os: linux}\nbrokerUrl: mqtts://h:1\nregistryUrl: http://h:2\n")
    assert main(["agent", "--config", str(config)]) == code
    assert "architecture" in capsys.readouterr().err
    config.write_text(
        "thingName: pi-01\nplatform: {os: linux, architecture: amd64}\nbrokerUrl: mqtts://127.0.0.1:1\n"
        f"registryUrl: http://127.0.0.1:2\nrootCaPath: {BUNDLE_CA}\ncertificateFilePath: {BUNDLE_CERT}\nprivateKeyPath: {BUNDLE_KEY}\n"
    )
    assert main(["agent", "--config", str(config)]) == code
    assert "is missing (copy the whole bundle folder)" in capsys.readouterr().err
    for name in (BUNDLE_CA, BUNDLE_CERT, BUNDLE_KEY):
        (bundle / name).write_text("")

    unit = tmp_path / "units" / "edgekit-agent.service"
    script = (
        "import json, sys\nfrom edgekit.cli import main\n"
        f"rc = main(['agent', '--config', {str(bundle)!r}, '--systemd-unit', {str(unit)!r}, '--user', 'edge'])\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('cryptography', 'amqtt') or\n"
        "             m.startswith(('edgekit.fleet', 'edgekit.sim', 'edgekit.mqtt.tls', 'edgekit.mqtt.broker', 'edgekit.compiler')))\n"
        "print(json.dumps([rc, bad]))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=ENV, check=True)
    assert json.loads(out.stdout.splitlines()[-1]) == [0, []]
    text = unit.read_text()
    assert f"ExecStart={sys.executable} -m edgekit agent --config {config}" in text
    for line in (
        "Type=simple",
        "Restart=on-failure",
        "RestartSec=10",
        "KillMode=mixed",
        "User=edge",
        "WantedBy=multi-user.target",
    ):
        assert line in text.splitlines(), line


def test_one_agent_per_folder(tmp_path: Path) -> None:
    """A second agent on the same root folder is refused while the first runs (it holds the folder's lock)."""
    bundle = tmp_path / "b"
    bundle.mkdir()
    (bundle / BUNDLE_CONFIG).write_text(
        "thingName: pi-01\nplatform: {os: linux, architecture: amd64}\nbrokerUrl: mqtt://127.0.0.1:9\nregistryUrl: http://127.0.0.1:9\n"
    )
    with _processes() as procs:
        first = _edgekit("agent", "--config", str(bundle / BUNDLE_CONFIG), log=tmp_path / "first.log")
        procs.append(first)
        wait_until(lambda: "retrying" in (tmp_path / "first.log").read_text(), 30, "first agent retrying", every=0.1)
        second = subprocess.run([sys.executable, "-m", "edgekit", "agent", "--config", str(bundle)], capture_output=True,
                                text=True, env=ENV, timeout=60)  # fmt: skip
        assert second.returncode == EXIT_CODES[ConfigError]
        assert f"another agent (pid {first.pid}) runs on" in second.stderr
        assert _stop(first) == 0  # a SIGTERM while the broker is unreachable stops it cleanly


def _netns_usable() -> str | None:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        return "needs root and iproute2 (ip netns, veth)"
    return None


@requires("mosquitto")
@pytest.mark.skipif(_netns_usable() is not None, reason=str(_netns_usable()))
def test_an_agent_in_its_own_network_namespace_joins_over_a_veth(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The device side in a network namespace of this test's own, reaching the fleet over a veth pair: the fleet
    listens on the veth's address only (not loopback), the agent's bundle names it."""
    tag = uuid.uuid4().hex[:6]
    ns, host_if, dev_if = f"ek-{tag}", f"ekh{tag}", f"ekd{tag}"
    third = int(tag[:2], 16) % 200 + 20
    host_ip, dev_ip = f"10.213.{third}.1", f"10.213.{third}.2"
    setup = [
        ["ip", "netns", "add", ns],
        ["ip", "link", "add", host_if, "type", "veth", "peer", "name", dev_if],
        ["ip", "link", "set", dev_if, "netns", ns],
        ["ip", "addr", "add", f"{host_ip}/30", "dev", host_if],
        ["ip", "link", "set", host_if, "up"],
        ["ip", "netns", "exec", ns, "ip", "addr", "add", f"{dev_ip}/30", "dev", dev_if],
        ["ip", "netns", "exec", ns, "ip", "link", "set", dev_if, "up"],
        ["ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up"],
    ]
    try:
        for command in setup:
            done = subprocess.run(command, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                pytest.skip(f"can't make a network namespace here: {' '.join(command)}: {done.stderr.strip()}")
        state = tmp_path / "fleet"
        with _processes() as procs:
            procs.append(_serve(state, tmp_path / "serve.log", "--host", host_ip, "--port", "0", "--http-port", "0"))
            assert main(["fleet", "add-device", "pi-ns", "-g", "line-1", "--create-group", "--platform", "linux/amd64",
                         "--state", str(state)]) == 0  # fmt: skip
            config = FleetFolder.at(state).bundles / "pi-ns" / BUNDLE_CONFIG
            assert f"mqtts://{host_ip}:" in config.read_text()
            procs.append(
                _edgekit("agent", "--config", str(config), log=tmp_path / "agent.log", prefix=["ip", "netns", "exec", ns])
            )
            wait_until(lambda: _devices(state, capsys)["pi-ns"]["connected"] is True, 60, "connected over the veth", every=0.2)
            assert main(["publish", "--local", "--state", str(state), "--build", str(write_build(tmp_path / "gg"))]) == 0
            deployment = _deploy(state, "1.0.0", capsys)
            wait_until(lambda: _counts(state, deployment, capsys) == {"SUCCEEDED": 1}, 60, "deployed over the veth", every=0.2)
    finally:
        subprocess.run(["ip", "link", "del", host_if], capture_output=True, check=False)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)
