"""A lean HTTP/1.1 load client for bench/serve: keep-alive connections on one asyncio (uvloop) loop.

Each of ``concurrency`` connections sends the same prepared request bytes, reads the answer
(status line, Content-Length, body) and sends the next, for ``seconds``; latencies are per request.
A raw client costs a few µs a request, so on a 2-core host it takes less of the CPU than an HTTP library.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

__all__ = ["Load", "bare_loop", "request_bytes", "run_load"]


@dataclass
class Load:
    concurrency: int
    requests: int
    errors: int
    seconds: float
    p50_ms: float
    p99_ms: float
    first_error: str = ""

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


def request_bytes(host: str, port: int, path: str, body: bytes, headers: dict[str, str] | None = None) -> bytes:
    fields = {"Content-Type": "application/json", **(headers or {}), "Content-Length": str(len(body))}
    lines = [f"POST {path} HTTP/1.1", f"Host: {host}:{port}", *(f"{k}: {v}" for k, v in fields.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def _worker(host: str, port: int, raw: bytes, stop_at: float, warm_until: float, lat: list[float], errs: list[str]) -> int:
    reader, writer = await asyncio.open_connection(host, port)
    done = 0
    try:
        while True:
            t0 = time.perf_counter()
            if t0 >= stop_at:
                return done
            writer.write(raw)
            head = await reader.readuntil(b"\r\n\r\n")
            status = head[9:12]
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            body = await reader.readexactly(length) if length else b""
            t1 = time.perf_counter()
            if status != b"200":
                errs.append(f"{status.decode()} {body[:200]!r}")
            elif t0 >= warm_until:
                lat.append(t1 - t0)
                done += 1
    finally:
        writer.close()


async def _run(host: str, port: int, raw: bytes, concurrency: int, seconds: float, warmup: float) -> Load:
    start = time.perf_counter()
    warm_until = start + warmup
    stop_at = warm_until + seconds
    lat: list[float] = []
    errs: list[str] = []
    workers = (_worker(host, port, raw, stop_at, warm_until, lat, errs) for _ in range(concurrency))
    await asyncio.wait_for(asyncio.gather(*workers), timeout=warmup + seconds + 30)  # a stuck server fails the point
    measured = time.perf_counter() - warm_until
    lat.sort()
    p = (lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] * 1e3) if lat else (lambda q: float("nan"))
    return Load(concurrency, len(lat), len(errs), measured, p(0.50), p(0.99), errs[0] if errs else "")


def run_load(host: str, port: int, raw: bytes, concurrency: int, seconds: float, warmup: float = 0.5) -> Load:
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:  # pragma: no cover
        runner = asyncio.run
    return runner(_run(host, port, raw, concurrency, seconds, warmup))


def bare_loop(predict: object, seconds: float, warmup: float = 0.3) -> Load:
    """The in-process limit: ``predict()`` called back to back, no HTTP."""
    fn = predict
    end_warm = time.perf_counter() + warmup
    while time.perf_counter() < end_warm:
        fn()  # type: ignore[operator]
    lat: list[float] = []
    start = time.perf_counter()
    stop = start + seconds
    while True:
        t0 = time.perf_counter()
        if t0 >= stop:
            break
        fn()  # type: ignore[operator]
        lat.append(time.perf_counter() - t0)
    lat.sort()
    return Load(1, len(lat), 0, time.perf_counter() - start, lat[len(lat) // 2] * 1e3, lat[int(0.99 * len(lat))] * 1e3)
