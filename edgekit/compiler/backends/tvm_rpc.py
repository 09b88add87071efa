"""``edgekit compile --rpc-tracker HOST:PORT --rpc-key KEY``: candidates timed on a device through TVM RPC (tvmc's flags).

The device runs a TVM RPC server registered with a tracker under a key (``python -m tvm.exec.rpc_server --tracker
HOST:PORT --key rasp4b``, or ``edgekit rpc-server``, the same server that also times whole edgekit artifacts). For each
candidate the compile asks the tracker for a session of that key (a fresh one per candidate: a candidate that crashes
the server's session fails alone) and then:

- on ``edgekit rpc-server``: uploads the candidate's archive and calls ``edgekit.time_artifact`` — the device unpacks
  it, loads it with its self-test (digests, CPU features, golden vectors) and times ``predict`` on the golden inputs,
  exactly as ``--measure-on`` does (:mod:`edgekit.edge.benchmark`); ONNX Runtime candidates included;
- on a stock TVM server: TVM candidates only — the library is uploaded, loaded into the Relax VM and ``main`` timed
  with TVM's own ``time_evaluator`` on the golden inputs (no Python on the device's side of the clock); an ONNX Runtime
  candidate fails with a reason that says how to time it too.

See docs/compile.md (measured on the target).
"""

from __future__ import annotations

import gc
import json
import socket
import tarfile
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.deps import require
from edgekit.errors import ConfigError
from edgekit.manifest import Latency, Manifest
from edgekit.parsing import ParseError, parse_host_port
from edgekit.progress import Progress
from edgekit.runtime.selftest import read_selftest

__all__ = ["RpcDeviceTimer", "parse_tracker"]

TIME_ARTIFACT = "edgekit.time_artifact"  # what edgekit rpc-server registers (edgekit.edge.rpc_server)
_CONNECT_S = 5.0


def parse_tracker(value: str, flag: str = "--rpc-tracker") -> tuple[str, int]:
    """``HOST:PORT`` (tvmc's ``--rpc-tracker``), or one line naming the flag and the form."""
    try:
        return parse_host_port(value)
    except ParseError as exc:
        raise ConfigError(f"{flag} {exc}") from None


def _latency(times_ms: list[float]) -> Latency:
    return Latency(  # numpy's median and p90, as the host measures (compiler/measurement.py) and the device
        median_ms=round(float(np.median(times_ms)), 4), p90_ms=round(float(np.percentile(times_ms, 90)), 4), runs=len(times_ms)
    )


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:300]


class RpcDeviceTimer:
    """A device timer (:class:`edgekit.compiler.phases.DeviceTimer`) over a TVM RPC tracker: the server of ``key``
    times each candidate. Fails fast, in one line, when the tracker can't be reached or has no server of that key."""

    def __init__(self, tracker: str, key: str, *, session_timeout_s: float = 600.0, wait_s: float = 120.0) -> None:
        if not key or not key.strip():
            raise ConfigError("--rpc-tracker needs --rpc-key KEY: the key the device's RPC server registered with")
        self.host, self.port = parse_tracker(tracker)
        self.key = key.strip()
        self.session_timeout_s = session_timeout_s
        self.wait_s = wait_s
        self._rpc = require("tvm", "timing candidates through TVM RPC (--rpc-tracker)").rpc
        try:  # connect_tracker retries for a minute: say it at once when nothing listens there
            socket.create_connection((self.host, self.port), timeout=_CONNECT_S).close()
        except OSError as exc:
            raise ConfigError(
                f"--rpc-tracker {self.host}:{self.port}: cannot connect ({exc.strerror or exc}); start a tracker there "
                f"with 'python -m tvm.exec.rpc_tracker --port {self.port}'"
            ) from None
        keys = self._keys()
        if self.key not in keys:
            known = ", ".join(sorted(keys)) or "none"
            raise ConfigError(
                f"--rpc-key {self.key}: no RPC server of that key is registered with the tracker at "
                f"{self.host}:{self.port} (keys there: {known}); on the device run 'edgekit rpc-server --tracker "
                f"{self.host}:{self.port} --key {self.key}'"
            )

    @property
    def thing(self) -> str:
        return f"rpc:{self.key}"

    def _keys(self) -> set[str]:
        try:
            summary = self._rpc.connect_tracker(self.host, self.port).summary()
        except Exception as exc:  # a port that answers but is no tracker
            raise ConfigError(f"--rpc-tracker {self.host}:{self.port}: not a TVM RPC tracker ({_one_line(exc)})") from None
        servers = summary.get("server_info", [])  # [{"key": "server:<key>", "addr": ...}]: the ones registered now
        return {str(s.get("key", "")).removeprefix("server:") for s in servers}

    def time(self, archives: list[Path], warmup: int, repeat: int, say: Progress) -> list[Latency | str]:
        results: list[Latency | str] = []
        for i, archive in enumerate(archives):
            say(f"timing candidate {i + 1}/{len(archives)} on {self.thing} through the tracker at {self.host}:{self.port}")
            results.append(self._in_a_session(archive, warmup, repeat))
            gc.collect()  # a session ends when its last handle goes: the server is free again for the next request
        return results

    def _in_a_session(self, archive: Path, warmup: int, repeat: int) -> Latency | str:
        tracker = self._rpc.connect_tracker(self.host, self.port)
        tracker._sock.settimeout(self.wait_s)  # the tracker queues a request until a server of the key is free
        try:
            session = tracker.request(self.key, priority=1, session_timeout=self.session_timeout_s)
        except TimeoutError:
            return f"no RPC server of key {self.key} was free within {self.wait_s:.0f} s (busy, or gone)"
        except Exception as exc:
            return f"no RPC session of key {self.key}: {_one_line(exc)}"
        finally:
            tracker.close()
        try:
            return self._time_one(session, archive, warmup, repeat)
        except Exception as exc:  # the device's session died (a crash there) or refused: this candidate fails alone
            return f"the RPC session failed: {_one_line(exc)}"
        finally:
            del session

    def _time_one(self, session: Any, archive: Path, warmup: int, repeat: int) -> Latency | str:
        try:
            timer = session.get_function(TIME_ARTIFACT)
        except Exception:  # AttributeError from a stock server: no such function
            timer = None
        if timer is not None:
            name = f"candidate-{archive.name}"
            session.upload(bytearray(archive.read_bytes()), name)  # (its own open() of a path leaks the file)
            reply = json.loads(str(timer(name, int(warmup), int(repeat))))
            if reply.get("error"):
                return str(reply["error"])
            return Latency(median_ms=reply["medianMs"], p90_ms=reply["p90Ms"], runs=reply["runs"])
        with tempfile.TemporaryDirectory(prefix="edgekit-rpc-") as tmp:
            folder = Path(tmp)
            with tarfile.open(archive, "r:gz") as tar:
                tar.extractall(folder, filter="data")
            manifest = Manifest.model_validate_json((folder / "manifest.json").read_text())
            if manifest.backend.name != "tvm":
                return (
                    f"a stock TVM RPC server runs TVM libraries only, not {manifest.backend.name}; start the device's "
                    f"server with 'edgekit rpc-server' to time every backend"
                )
            if manifest.selftest is None:
                return "the artifact has no golden inputs (selftest) to time"
            return self._time_library(session, folder, manifest, warmup, repeat)

    def _time_library(self, session: Any, folder: Path, manifest: Manifest, warmup: int, repeat: int) -> Latency:
        tvm = require("tvm", "timing candidates through TVM RPC (--rpc-tracker)")
        entry = manifest.backend.entry
        session.upload(bytearray((folder / entry).read_bytes()), entry)
        vm = session.load_module(entry)["vm_load_executable"]()
        vm["vm_initialization"](1, 0, 2, 1, 0, 2)  # CPU 0, pooled allocator; the host likewise (as TvmRunner)
        dev = session.cpu()
        assert manifest.selftest is not None
        feeds = read_selftest(folder / manifest.selftest.file)[0][0]
        args = [tvm.runtime.tensor(feeds[spec.name], dev) for spec in manifest.inputs]
        for _ in range(max(0, warmup)):
            vm["main"](*args)
        timed = vm.time_evaluator("main", dev, number=1, repeat=max(1, repeat))(*args)
        return _latency([t * 1e3 for t in timed.results])
