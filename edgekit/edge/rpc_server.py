"""``edgekit rpc-server``: TVM's RPC server, plus one function that times a whole edgekit artifact on this device.

It is ``python -m tvm.exec.rpc_server`` (same flags, same protocol: tvmc and TVM's own tools use it as they would the
stock one) with ``edgekit.time_artifact(name, warmup, repeat)`` registered in each session: ``name`` is an archive
uploaded into the session's folder; the reply is JSON ``{medianMs, p90Ms, runs}`` or ``{error}``, from the same code
that answers ``--measure-on`` (:func:`edgekit.edge.benchmark.time_archive`: unpack, load with the self-test, time
``predict``) — so ONNX Runtime candidates are timed too, and a build this CPU can't run is refused, not run.

Like TVM's server, it runs what it is sent: only on a network you trust (TVM's own warning).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["register_time_artifact", "run_rpc_server"]

TIME_ARTIFACT = "edgekit.time_artifact"


def register_time_artifact() -> None:
    """Register ``edgekit.time_artifact`` in this process (TVM calls this in each session's process)."""
    import tvm_ffi

    from edgekit.edge.benchmark import time_archive

    def time_artifact(name: str, warmup: int, repeat: int) -> str:
        workpath: Callable[[str], str] = tvm_ffi.get_global_func("tvm.rpc.server.workpath")
        path = Path(workpath(Path(str(name)).name))  # only a file in this session's own folder
        result = time_archive(path, int(warmup), int(repeat))
        if result.error:
            return json.dumps({"error": result.error})
        return json.dumps({"medianMs": result.median_ms, "p90Ms": result.p90_ms, "runs": result.runs})

    tvm_ffi.register_global_func(TIME_ARTIFACT, time_artifact, override=True)


def run_rpc_server(
    tracker: tuple[str, int] | None,
    key: str,
    *,
    host: str = "0.0.0.0",
    port: int = 9090,
    say: Callable[[str], None] = print,
) -> None:
    """Serve until interrupted on the first free port from ``port`` (TVM's range: 110 ports), registered with
    ``tracker`` under ``key`` when given (else reached directly)."""
    from tvm import rpc

    server: Any = rpc.Server(
        host, port, min(port + 110, 65536), key=key, tracker_addr=tracker, server_init_callback=register_time_artifact
    )
    where = f"registered with the tracker at {tracker[0]}:{tracker[1]} as {key!r}" if tracker else "no tracker"
    say(f"TVM RPC server on {host}:{server.port}, {where}; {TIME_ARTIFACT} times edgekit artifacts")
    try:
        server.proc.join()
    finally:
        server.terminate()
