"""bench/serve_hostile: ``/ping`` latency of ``edgekit serve`` under a hostile load, loopback only, bounded in time.

    python -m bench.serve_hostile [--idle 2000] [--flood-seconds 5] [--nofile 1024] [--json out.json]

One ``edgekit serve`` subprocess on 127.0.0.1 (a small MLP compiled here with ONNX Runtime; the process's
descriptor limit set to ``--nofile``, what the probe of issue 19 ran under) and three phases, /ping sent
one at a time on a fresh connection each (as a load balancer's health check does), p50/p99/max reported:

1. **quiet** — nothing else;
2. **idle** — ``--idle`` connections held open, half of them with half a request head, never finished;
   after the phase it counts how many the server has closed (``--header-timeout``, 2 s here);
3. **flood** — 32 clients sending malformed requests back to back for ``--flood-seconds``: an .npy declaring
   400 GB, a 1 MB .npz that inflates to 1 GiB, 100,000-deep JSON on ``POST /models``, a v2 datatype given as
   a list, garbage bytes; the answers are counted by status.

Everything stops by itself (the server is terminated at the end, or on any failure).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import edgekit
from edgekit.compiler.pipeline import CandidateSpec, MeasureSpec, Pipeline

HOST = "127.0.0.1"


def build(work: Path) -> Path:
    rng = np.random.default_rng(0)
    w1, w2 = rng.normal(size=(8, 16)).astype(np.float32), rng.normal(size=(16, 4)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w1"], ["h"]),
            helper.make_node("Relu", ["h"], ["r"]),
            helper.make_node("MatMul", ["r", "w2"], ["y"]),
        ],
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(work / "mlp.onnx"))
    pipeline = Pipeline(
        name="hostile",
        candidates=[CandidateSpec(name="ort", backend="onnxruntime", options={})],
        measure=MeasureSpec(samples=3, warmup=0, repeat=3),
    )
    return edgekit.compile(
        work / "mlp.onnx", "x86_64", work / "build", pipeline=pipeline, name="mlp", use_cache=False
    ).artifact_dir


@contextlib.contextmanager
def server(artifact: Path, nofile: int) -> Iterator[tuple[str, int]]:
    code = (
        "import resource, sys\n"
        "from edgekit.cloud.model_server import ModelServer, ServeOptions\n"
        f"resource.setrlimit(resource.RLIMIT_NOFILE, ({nofile}, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))\n"
        "opts = ServeOptions(port=0, max_body_mb=2)\n"
        "if hasattr(opts, 'header_timeout_s'):\n    opts.header_timeout_s = 2.0\n"
        f"ModelServer([{str(artifact)!r}], options=opts, on_ready=lambda u: print(u, flush=True)).run()\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        if not url.startswith("http://"):
            raise SystemExit(f"the server did not start (exit {proc.poll()})")
        host, port = url.removeprefix("http://").rsplit(":", 1)
        yield host, int(port)
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


async def request(host: str, port: int, raw: bytes, timeout: float = 10.0) -> int:
    """The status of one request on its own connection (0: no answer: refused, reset or timed out)."""
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(host, port)
            try:
                writer.write(raw)
                await writer.drain()
                line = await reader.readline()
            finally:
                writer.close()
                with contextlib.suppress(Exception):
                    await writer.wait_closed()
        return int(line.split()[1]) if line.startswith(b"HTTP/") else 0
    except (OSError, TimeoutError, ValueError, IndexError):
        return 0


def post(path: str, body: bytes, media: str) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: {media}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
        + body
    )


PING = b"GET /ping HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"


async def pings(host: str, port: int, count: int, gap_s: float = 0.01) -> dict[str, Any]:
    times, failed = [], 0
    for _ in range(count):
        t0 = time.perf_counter()
        status = await request(host, port, PING, timeout=5.0)
        times.append((time.perf_counter() - t0) * 1000)
        failed += status != 200
        await asyncio.sleep(gap_s)
    times.sort()
    return {
        "count": count,
        "failed": failed,
        "p50_ms": round(statistics.median(times), 2),
        "p99_ms": round(times[min(len(times) - 1, int(len(times) * 0.99))], 2),
        "max_ms": round(times[-1], 2),
    }


def malformed() -> list[bytes]:
    head = b"{'descr': '<f4', 'fortran_order': False, 'shape': (100000, 1000000), }"
    pad = 64 - (10 + len(head) + 1) % 64
    npy = b"\x93NUMPY\x01\x00" + (len(head) + pad + 1).to_bytes(2, "little") + head + b" " * pad + b"\n"
    arr, npz = io.BytesIO(), io.BytesIO()
    np.save(arr, np.zeros((1, 2**28), np.float32))
    with zipfile.ZipFile(npz, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("x.npy", arr.getvalue())
    v2 = json.dumps({"inputs": [{"name": "x", "shape": [1, 8], "datatype": ["FP32"], "data": [0.0] * 8}]}).encode()
    return [
        post("/invocations", npy, "application/x-npy"),
        post("/invocations", npz.getvalue(), "application/x-npz"),
        post("/models", b"[" * 100_000 + b"]" * 100_000, "application/json"),
        post("/v2/models/mlp/infer", v2, "application/json"),
        post("/invocations", os.urandom(2048), "application/json"),
        b"GARBAGE / HTTP/9.9\r\n\r\n",
    ]


async def phases(host: str, port: int, idle_count: int, flood_s: float) -> dict[str, Any]:
    out: dict[str, Any] = {"quiet": await pings(host, port, 200)}
    held: list[asyncio.StreamWriter] = []
    readers: list[asyncio.StreamReader] = []
    try:
        for i in range(idle_count):
            try:
                reader, writer = await asyncio.open_connection(host, port)
            except OSError:
                continue
            if i % 2:
                writer.write(b"GET /ping HTTP/1.1\r\nHost: x\r\n")  # half a head, never finished
            held.append(writer)
            readers.append(reader)
        out["idle"] = {"opened": len(held), **await pings(host, port, 200)}
        await asyncio.sleep(3.0)  # past the header timeout
        closed = sum(r.at_eof() or bool(r.exception()) for r in readers)
        out["idle"]["closed_by_server_after_3s"] = closed
    finally:
        for writer in held:
            writer.close()
    bodies = malformed()
    statuses: Counter[int] = Counter()
    stop = time.monotonic() + flood_s

    async def attacker(k: int) -> None:
        n = k
        while time.monotonic() < stop:
            statuses[await request(host, port, bodies[n % len(bodies)])] += 1
            n += 1

    attackers = [asyncio.create_task(attacker(k)) for k in range(32)]
    ping_result = await pings(host, port, int(flood_s / 0.02), gap_s=0.01)
    await asyncio.gather(*attackers)
    out["flood"] = {**ping_result, "malformed_answers": {str(k): v for k, v in sorted(statuses.items())}}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.serve_hostile", description=__doc__.splitlines()[0])
    parser.add_argument("--idle", type=int, default=2000)
    parser.add_argument("--flood-seconds", type=float, default=5.0)
    parser.add_argument("--nofile", type=int, default=1024)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < args.idle + 256:  # the client's own sockets
        resource.setrlimit(
            resource.RLIMIT_NOFILE, (min(hard, args.idle + 256) if hard != resource.RLIM_INFINITY else args.idle + 256, hard)
        )
    with tempfile.TemporaryDirectory(prefix="bench-hostile-") as tmp:
        artifact = build(Path(tmp))
        with server(artifact, args.nofile) as (host, port):
            result = asyncio.run(phases(host, port, args.idle, args.flood_seconds))
    result["settings"] = {"idle": args.idle, "flood_seconds": args.flood_seconds, "server_nofile": args.nofile}
    for phase in ("quiet", "idle", "flood"):
        r = result[phase]
        extra = {k: v for k, v in r.items() if k not in ("count", "failed", "p50_ms", "p99_ms", "max_ms")}
        print(
            f"{phase:6} /ping p50 {r['p50_ms']:8.2f} ms  p99 {r['p99_ms']:8.2f} ms  max {r['max_ms']:8.2f} ms  failed {r['failed']}/{r['count']}  {extra or ''}"
        )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
