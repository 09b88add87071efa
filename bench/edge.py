"""bench/edge: what the edge runtime's guarantees cost (spool put, spool drain, cloud fallback), side by side in one run.

    python -m bench.edge [--messages N] [--calls N] [--timeout S]

See docs/benchmarks.md (edge runtime).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import socket
import statistics
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np

from bench.edge_loop import bench_failover, bench_loop
from bench.ipc import bench_ipc, print_ipc
from edgekit.edge import CircuitBreaker, CloudFallback, FallbackError, FallbackUnavailable, Spool, SpoolPublisher
from edgekit.mqtt.broker import MosquittoBroker
from edgekit.mqtt.client import connect


def _per_call_us(fn: object, n: int) -> float:
    t0 = time.perf_counter()
    for i in range(n):
        fn(i)  # type: ignore[operator]
    return (time.perf_counter() - t0) / n * 1e6


def bench_spool(work: Path, n: int) -> dict[str, float]:
    durable = Spool(work / "full.db")
    normal = Spool(work / "normal.db")
    normal._db.execute("PRAGMA synchronous=NORMAL")  # the benchmark's comparison point, not an option we offer
    memory: list[bytes] = []
    payload = json.dumps({"windowStart": 0, "count": 100, "classes": {"1": 60, "2": 40}}).encode()
    rounds: dict[str, list[float]] = {"full": [], "normal": [], "memory": []}
    for _ in range(5):  # interleaved rounds
        rounds["full"].append(_per_call_us(lambda i: durable.put("t", payload), n))
        rounds["normal"].append(_per_call_us(lambda i: normal.put("t", payload), n))
        rounds["memory"].append(_per_call_us(lambda i: memory.append(payload), n))
    return {k: statistics.median(v) for k, v in rounds.items()}


def bench_drain(work: Path, n: int) -> float:
    spool = Spool(work / "drain.db")
    for i in range(n):
        spool.put("edgekit/dev-1/aggregates", json.dumps({"windowStart": i}).encode())
    with MosquittoBroker(work / "broker") as broker:

        async def run() -> float:
            async with await connect(broker.url, "dev-1", clean_start=True) as client:
                t0 = time.perf_counter()
                sent = await SpoolPublisher(spool, client).drain()
                assert sent == n and len(spool) == 0
                return n / (time.perf_counter() - t0)

        return asyncio.run(run())


class _Server:
    def __init__(self, delay_s: float = 0.0, fail: bool = False) -> None:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers["Content-Length"]))
                time.sleep(outer.delay_s)
                if outer.fail:
                    self.send_response(503)
                    self.end_headers()
                    return
                body = json.dumps(
                    {"outputs": [{"name": "p", "shape": [1, 4], "datatype": "FP32", "data": [0.1, 0.2, 0.3, 0.4]}]}
                ).encode()
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # the client gave up (timeout)
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)

        self.delay_s, self.fail = delay_s, fail
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


def bench_fallback(n: int, timeout_s: float) -> dict[str, float]:
    x = {"x": np.zeros((1, 8), np.float32)}
    ok = _Server()
    fallback = CloudFallback(ok.url, "m")
    answered = _per_call_us(lambda i: fallback.infer(x), n) / 1e3

    slow = _Server(delay_s=timeout_s * 3)
    waits = CloudFallback(slow.url, "m", timeout_s=timeout_s, breaker=CircuitBreaker(10**9))

    def timed_out(i: int) -> None:
        with contextlib.suppress(FallbackError):
            waits.infer(x)

    timeout_ms = _per_call_us(timed_out, 3) / 1e3
    opened = CloudFallback(slow.url, "m", timeout_s=timeout_s, breaker=CircuitBreaker(1, reset_after_s=3600))
    with contextlib.suppress(FallbackError):
        opened.infer(x)

    def fail_fast(i: int) -> None:
        with contextlib.suppress(FallbackUnavailable):
            opened.infer(x)

    open_ms = _per_call_us(fail_fast, n) / 1e3
    for server in (ok, slow):
        server.httpd.shutdown()
        server.httpd.server_close()
    return {"answered": answered, "timeout": timeout_ms, "breaker_open": open_ms}


def _print_loop(work: Path, n: int) -> None:
    loop = bench_loop(work, n)
    print(f"inference loop, MLP 64-128-64-8, one core, {n:,} readings a round (median of 5 interleaved rounds):")
    print(f"  bare edgekit.load(...).predict loop        {loop['bare_per_s']:10,.0f} /s   1.00x")
    print(f"  InferenceLoop: source, model, windows,     {loop['loop_per_s']:10,.0f} /s   {loop['ratio']:.2f}x")
    print(f"    uplink (1 s windows into a spool)        {loop['uplink_per_s']:10.2f} messages/s")
    server = _Server()
    try:
        fo = bench_failover(work, server.url)
    finally:
        server.httpd.shutdown()
        server.httpd.server_close()
    print(
        f"local model failing for 3 s at 200 readings/s, a KServe v2 fallback on localhost ({fo['cloud_answers']:.0f} cloud answers):"
    )
    print(f"  reading to cloud answer   p50 {fo['cloud_p50_ms']:6.2f} ms   p99 {fo['cloud_p99_ms']:6.2f} ms")
    print(
        f"  back to local answers {fo['back_to_local_s']:.2f} s after the model recovered (health interval {fo['health_s']:g} s)"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/edge", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=2000, help="spool puts per round and messages drained")
    parser.add_argument("--calls", type=int, default=200, help="fallback calls timed")
    parser.add_argument("--timeout", type=float, default=0.2, help="fallback timeout for the slow endpoint, seconds")
    parser.add_argument("--ipc-messages", type=int, default=1000, help="IPC publishes (and direct MQTT publishes) timed")
    parser.add_argument(
        "--ipc-in-flight",
        type=int,
        nargs="+",
        default=[1, 16, 64],
        help="publishes in flight at a time, one IPC run (and direct run) each",
    )
    parser.add_argument("--readings", type=int, default=50_000, help="readings per round of the inference-loop benchmark")
    parser.add_argument("--loop-only", action="store_true", help="only the inference loop and the failover")
    parser.add_argument("--ipc-only", action="store_true", help="only Greengrass IPC against direct MQTT")
    parser.add_argument("--ipc-repeats", type=int, default=3, help="interleaved IPC/direct runs per K (medians reported)")
    args = parser.parse_args(argv)
    if args.ipc_only:
        with tempfile.TemporaryDirectory(prefix="edgekit-bench-edge-") as tmp:
            print_ipc(
                bench_ipc(Path(tmp), args.ipc_messages, in_flight=tuple(args.ipc_in_flight), repeats=args.ipc_repeats),
                args.ipc_messages,
            )
        return 0
    if args.loop_only:
        with tempfile.TemporaryDirectory(prefix="edgekit-bench-edge-") as tmp:
            _print_loop(Path(tmp), args.readings)
        return 0
    with tempfile.TemporaryDirectory(prefix="edgekit-bench-edge-") as tmp:
        work = Path(tmp)
        spool = bench_spool(work, args.messages)
        drain = bench_drain(work, args.messages)
        ipc = bench_ipc(work, args.ipc_messages, in_flight=tuple(args.ipc_in_flight), repeats=args.ipc_repeats)
    fb = bench_fallback(args.calls, args.timeout)
    with tempfile.TemporaryDirectory(prefix="edgekit-bench-edge-") as tmp:
        _print_loop(Path(tmp), args.readings)
    print(f"host: {socket.gethostname()} | {args.messages} messages, {args.calls} fallback calls")
    print("spool put, per message (median of 5 interleaved rounds):")
    print(f"  durable (synchronous=FULL) {spool['full']:8.1f} us   1.00x")
    print(f"  synchronous=NORMAL         {spool['normal']:8.1f} us   {spool['normal'] / spool['full']:.2f}x")
    print(f"  in-memory list (no spool)  {spool['memory']:8.3f} us   {spool['memory'] / spool['full']:.4f}x")
    print(f"spool drain over mosquitto, QoS 1: {drain:,.0f} messages/s")
    print("cloud fallback, per call:")
    print(f"  answered by the server     {fb['answered']:8.2f} ms   1.00x")
    print(f"  waiting out a {args.timeout:.1f} s timeout {fb['timeout']:8.2f} ms   {fb['timeout'] / fb['answered']:.1f}x")
    print(f"  breaker open (fail fast)   {fb['breaker_open']:8.4f} ms   {fb['breaker_open'] / fb['answered']:.4f}x")
    print_ipc(ipc, args.ipc_messages)
    return 0


if __name__ == "__main__":
    sys.exit(main())
