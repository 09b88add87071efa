"""Measured on the target through TVM RPC: 'edgekit compile --rpc-tracker HOST:PORT --rpc-key KEY' (tvmc's flags).

A real TVM tracker (``python -m tvm.exec.rpc_tracker``), TVM's own RPC server and ``edgekit rpc-server``, each a process
of its own on this host; the compile asks the tracker for a session per candidate. (On one host the figures mean
little: the tests check the mechanism — who timed what, and what is refused — not the numbers.)
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path

import onnx
import pytest
import tornado  # noqa: F401 - TVM's RPC tracker needs it; the dev extra installs it: missing, the run fails, never skips
from helpers import make_mlp, wait_until

import edgekit
from edgekit.cli import main
from edgekit.compiler.backends.tvm_rpc import RpcDeviceTimer
from edgekit.compiler.pipeline import Pipeline
from edgekit.errors import EXIT_CODES, CompilationError, ConfigError
from edgekit.manifest import read_manifest

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
ORT_AND_TVM = Pipeline.model_validate(
    {
        "name": "ort-and-tvm",
        "candidates": [
            {"name": "ort", "backend": "onnxruntime", "options": {"optimization": "extended"}},
            {"name": "tvm", "backend": "tvm", "options": {"opt_level": 3}},
        ],
        "measure": {"samples": 2, "warmup": 1, "repeat": 7},
    }
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _keys(port: int) -> set[str]:
    from tvm import rpc

    try:
        servers = rpc.connect_tracker("127.0.0.1", port).summary()["server_info"]
    except Exception:
        return set()
    return {str(s["key"]).removeprefix("server:") for s in servers}


@pytest.fixture(scope="module")
def tracker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A tracker with two servers registered: 'stock' (TVM's own) and 'edge' (edgekit rpc-server)."""
    logs = tmp_path_factory.mktemp("rpc")
    port = _free_port()
    py = sys.executable
    commands = [
        [py, "-m", "tvm.exec.rpc_tracker", "--host", "127.0.0.1", "--port", str(port), "--port-end", str(port + 1)],
        [py, "-m", "tvm.exec.rpc_server", "--tracker", f"127.0.0.1:{port}", "--key", "stock", "--host", "127.0.0.1",
         "--port", str(stock := _free_port()), "--port-end", str(stock + 1)],
        [py, "-m", "edgekit", "rpc-server", "--tracker", f"127.0.0.1:{port}", "--key", "edge", "--host", "127.0.0.1",
         "--port", str(_free_port())],
    ]  # fmt: skip
    procs = []
    try:
        for i, command in enumerate(commands):
            with (logs / f"{i}.log").open("ab") as out:
                procs.append(subprocess.Popen(command, stdout=out, stderr=out, env=ENV, start_new_session=True))
            if i == 0:
                wait_until(lambda: _connects(port), 30, "the tracker listening", every=0.2)
        wait_until(lambda: {"stock", "edge"} <= _keys(port), 60, "both RPC servers registered", every=0.5)
        yield f"127.0.0.1:{port}"
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _connects(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


def _mlp(tmp_path: Path) -> Path:
    path = tmp_path / "mlp.onnx"
    onnx.save(make_mlp(), str(path))
    return path


def test_edgekit_rpc_server_times_every_backend_itself(tracker: str, tmp_path: Path) -> None:
    said: list[str] = []
    result = edgekit.compile(
        _mlp(tmp_path), "x86_64", tmp_path / "build", pipeline=ORT_AND_TVM, rpc_tracker=tracker, rpc_key="edge",
        progress=said.append,
    )  # fmt: skip
    manifest = read_manifest(result.artifact_dir)
    assert manifest.measured is not None
    assert (manifest.measured.on, manifest.measured.measured_on) == ("device", "rpc:edge")
    timed = {c.name: c for c in manifest.candidates if c.measured is not None}
    assert set(timed) == {"ort", "tvm"}, [(c.name, c.status, c.reason) for c in manifest.candidates]
    for c in timed.values():
        assert c.measured is not None and c.measured.measured_on == "rpc:edge"
        assert c.measured.latency.runs == 7 and c.measured.latency.median_ms > 0  # the device's count: it timed them
    assert any("timing 2 candidate(s) on rpc:edge" in line for line in said), said
    assert not result.cache_hit

    # an archive the device can't load is the device's reason, one line; the next candidate is timed all the same
    bogus = tmp_path / "bogus.tar.gz"
    with tarfile.open(bogus, "w:gz") as tar:
        tar.add(_mlp(tmp_path), arcname="model.onnx")
    reason, latency = RpcDeviceTimer(tracker, "edge").time([bogus, result.archive], 0, 3, said.append)
    assert isinstance(reason, str) and "manifest" in reason and "\n" not in reason, reason
    assert not isinstance(latency, str) and latency.runs == 3


def test_a_stock_tvm_server_times_the_tvm_candidates_and_says_why_not_the_others(tracker: str, tmp_path: Path) -> None:
    result = edgekit.compile(
        _mlp(tmp_path), "x86_64", tmp_path / "build", pipeline=ORT_AND_TVM, rpc_tracker=tracker, rpc_key="stock"
    )
    manifest = read_manifest(result.artifact_dir)
    assert manifest.backend.name == "tvm"
    assert manifest.measured is not None and manifest.measured.measured_on == "rpc:stock"
    by_name = {c.name: c for c in manifest.candidates}
    assert by_name["ort"].status == "failed"
    assert "stock TVM RPC server" in (by_name["ort"].reason or "") and "edgekit rpc-server" in (by_name["ort"].reason or "")
    tvm = by_name["tvm"].measured
    assert tvm is not None and tvm.measured_on == "rpc:stock" and tvm.latency.runs == 7


@pytest.mark.slow
def test_a_build_for_another_cpu_is_refused_on_the_device_not_run(tracker: str, tmp_path: Path) -> None:
    """rasp4b candidates (aarch64) sent to an x86-64 server: each fails with the device's reason; none is ranked."""
    with pytest.raises(CompilationError) as caught:
        edgekit.compile(_mlp(tmp_path), "rasp4b", tmp_path / "build", pipeline=ORT_AND_TVM, rpc_tracker=tracker, rpc_key="edge")
    message = str(caught.value)
    assert "no candidate could be timed on rpc:edge" in message and "\n" not in message
    assert message.count("built for aarch64 ('rasp4b'), and this device is x86_64") == 2, message
    # TVM's own server loads the aarch64 library and fails to: the device's reason, not a crash of the compile
    with pytest.raises(CompilationError, match="no candidate could be timed on rpc:stock") as caught:
        edgekit.compile(_mlp(tmp_path), "rasp4b", tmp_path / "build", pipeline=ORT_AND_TVM, rpc_tracker=tracker, rpc_key="stock")
    assert "stock TVM RPC server runs TVM libraries only" in str(caught.value), caught.value


def test_bad_rpc_flags_are_one_line_each(tracker: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    compile_ = ["compile", str(_mlp(tmp_path)), "--target", "x86_64", "-o", str(tmp_path / "build")]
    dead = f"127.0.0.1:{_free_port()}"
    cases = [
        (["--rpc-tracker", tracker, "--rpc-key", "ghost"], "no RPC server of that key"),
        (["--rpc-tracker", dead, "--rpc-key", "edge"], "cannot connect"),
        (["--rpc-tracker", "localhost", "--rpc-key", "edge"], "expected HOST:PORT"),
        (["--rpc-tracker", tracker], "needs --rpc-key"),
        (["--rpc-key", "edge"], "needs --rpc-tracker"),
        (["--rpc-tracker", tracker, "--rpc-key", "edge", "--measure-on", "pc-01"], "give one"),
    ]
    for flags, message in cases:
        capsys.readouterr()
        assert main([*compile_, *flags]) == EXIT_CODES[ConfigError], flags
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, (flags, err)
    capsys.readouterr()  # the unknown key's line lists the keys the tracker knows
    main([*compile_, "--rpc-tracker", tracker, "--rpc-key", "ghost"])
    err = capsys.readouterr().err
    assert "keys there: edge, stock" in err, err
    assert not (tmp_path / "build").exists() or not any((tmp_path / "build").iterdir())
