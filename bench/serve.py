"""bench/serve: requests/s and p50/p99 of ``edgekit serve`` against MLServer, a minimal app and a bare loop, in one run.

    bench/serve [--models mlp,cnn,wine] [--concurrency 1,8,32] [--seconds 3] [--rounds 2] [--json out.json]

Models are built in code (no downloads): bench/compile's MLP and CNN (torch), and the wine-dataset
scikit-learn pipeline (StandardScaler + LogisticRegression, 13 features); each is compiled with
``compiler/ort.yaml``. Servers run one at a time as subprocesses on 127.0.0.1, each model's points in
turn, and the rounds alternate the servers so drift on the machine hits them alike; the figure
reported is the median over rounds. The client (bench/http_load.py: raw HTTP/1.1 keep-alive on
uvloop) runs in this process, on the same cores.

- **edgekit serve** — ``/invocations`` (SageMaker JSON) with every model loaded, and ``/v2/models/wine/infer``;
- **minimal** — bench/serve_minimal.py: Starlette + uvicorn + ONNX Runtime, the same .onnx, nothing else;
- **MLServer** 1.7.1 + mlserver-sklearn (the scikit-learn pipeline itself, V2 JSON), ``parallel_workers: 0``.
  It runs from its own virtualenv (``--mlserver-venv``, created on first use with pip): MLServer pins
  starlette < 0.47 through fastapi, which edgekit's ``serve`` extra must not be held to;
- **bare** — ``edgekit.load(...).predict`` called back to back in this process (no HTTP; concurrency 1).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

import edgekit
from bench.compile import _torch_case
from bench.http_load import Load, bare_loop, request_bytes, run_load

ROOT = Path(__file__).resolve().parent.parent
MLSERVER = ("mlserver==1.7.1", "mlserver-sklearn==1.7.1")
SEED = 0


@dataclass
class Model:
    name: str
    artifact: Path
    onnx: Path
    input_name: str
    x: np.ndarray
    sklearn: Path | None = None  # the joblib file MLServer serves


@dataclass
class Point:
    server: str
    model: str
    concurrency: int
    rounds: list[dict[str, float]] = field(default_factory=list)
    error: str = ""

    def median(self, key: str) -> float:
        values = [r[key] for r in self.rounds]
        return statistics.median(values) if values else float("nan")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(url: str, proc: subprocess.Popen[bytes], timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            out = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
            raise RuntimeError(f"server exited with {proc.returncode}: {out[-2000:]}")
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=1) as r:
            if r.status == 200:
                return
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer in {timeout:.0f} s")


@contextlib.contextmanager
def _process(cmd: list[str], ready_url: str, cwd: Path | None = None) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait(ready_url, proc)
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


# --------------------------------------------------------------------------- models


def _wine(work: Path) -> tuple[Path, np.ndarray]:
    import joblib
    from sklearn.datasets import load_wine
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, y = load_wine(return_X_y=True)
    x = x.astype(np.float32)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000, random_state=SEED)).fit(x, y)
    path = work / "wine.joblib"
    joblib.dump(model, path)
    return path, x[:1]


def build(names: list[str], work: Path) -> list[Model]:
    models = []
    for name in names:
        if name == "wine":
            source, x = _wine(work)
            shapes = {"input": [1, 13]}
            sk: Path | None = source
        else:
            case = _torch_case(name, work)
            source, x, shapes, sk = case.path, case.feed["input"], case.shapes, None
        result = edgekit.compile(
            source, "x86_64", work / "build", pipeline="ort", input_shapes=shapes, name=name, use_cache=False
        )
        manifest = result.manifest
        models.append(
            Model(name, result.artifact_dir, result.artifact_dir / manifest.backend.entry, manifest.inputs[0].name, x, sk)
        )
    return models


# --------------------------------------------------------------------------- servers


def _json_body(model: Model) -> bytes:
    return json.dumps({"inputs": {model.input_name: model.x.tolist()}}).encode()


def _v2_body(model: Model, name: str, datatype: str = "FP32") -> bytes:
    x = model.x
    return json.dumps(
        {"inputs": [{"name": name, "shape": list(x.shape), "datatype": datatype, "data": x.ravel().tolist()}]}
    ).encode()


def mlserver_python(venv: Path, say: Any) -> Path:
    python = venv / "bin" / "python"
    if (venv / ".installed").exists():
        return python
    import sklearn

    say(f"creating {venv} with {' '.join(MLSERVER)} (first run only)")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pins = [*MLSERVER, f"scikit-learn=={sklearn.__version__}", f"numpy=={np.__version__}"]
    subprocess.run([str(python), "-m", "pip", "install", "-q", *pins], check=True)
    (venv / ".installed").touch()
    return python


def _measure(
    points: dict[tuple[str, str, int], Point], server: str, model: str, port: int, raw: bytes, conc: list[int], seconds: float
) -> None:
    for c in conc:
        load: Load = run_load("127.0.0.1", port, raw, c, seconds)
        point = points.setdefault((server, model, c), Point(server, model, c))
        if load.errors:
            point.error = load.first_error
        point.rounds.append({"rps": load.rps, "p50_ms": load.p50_ms, "p99_ms": load.p99_ms, "errors": load.errors})


def run_edgekit(models: list[Model], points: dict[tuple[str, str, int], Point], conc: list[int], seconds: float) -> None:
    port = _free_port()
    cmd = [sys.executable, "-c", "import sys; from edgekit.cli import main; sys.exit(main(sys.argv[1:]))", "serve"]
    cmd += [str(m.artifact) for m in models] + ["--port", str(port)]
    with _process(cmd, f"http://127.0.0.1:{port}/ping"):
        for m in models:
            headers = {"X-Amzn-SageMaker-Target-Model": m.name}
            _measure(
                points,
                "edgekit serve",
                m.name,
                port,
                request_bytes("127.0.0.1", port, "/invocations", _json_body(m), headers),
                conc,
                seconds,
            )
            if m.sklearn is not None:
                raw = request_bytes("127.0.0.1", port, f"/v2/models/{m.name}/infer", _v2_body(m, m.input_name))
                _measure(points, "edgekit serve (v2)", m.name, port, raw, conc, seconds)


def run_minimal(models: list[Model], points: dict[tuple[str, str, int], Point], conc: list[int], seconds: float) -> None:
    for m in models:
        port = _free_port()
        cmd = [sys.executable, "-m", "bench.serve_minimal", str(m.onnx), str(port)]
        raw = request_bytes("127.0.0.1", port, "/invocations", _json_body(m))
        with _minimal(cmd, port):
            _measure(points, "minimal", m.name, port, raw, conc, seconds)


@contextlib.contextmanager
def _minimal(cmd: list[str], port: int) -> Iterator[None]:
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"minimal app exited: {proc.stdout.read().decode(errors='replace') if proc.stdout else ''}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                break
            if time.monotonic() > deadline:
                raise RuntimeError("minimal app did not start")
            time.sleep(0.2)
        yield
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)


def run_mlserver(
    python: Path, model: Model, work: Path, points: dict[tuple[str, str, int], Point], conc: list[int], seconds: float
) -> None:
    assert model.sklearn is not None
    folder = work / "mlserver"
    (folder / "wine").mkdir(parents=True, exist_ok=True)
    port, grpc, metrics = _free_port(), _free_port(), _free_port()
    settings = {"host": "127.0.0.1", "http_port": port, "grpc_port": grpc, "metrics_port": metrics, "parallel_workers": 0}
    (folder / "settings.json").write_text(json.dumps(settings))
    model_settings = {
        "name": "wine",
        "implementation": "mlserver_sklearn.SKLearnModel",
        "parameters": {"uri": str(model.sklearn), "version": "v1"},
    }
    (folder / "wine" / "model-settings.json").write_text(json.dumps(model_settings))
    cmd = [str(python.parent / "mlserver"), "start", str(folder)]
    raw = request_bytes("127.0.0.1", port, "/v2/models/wine/infer", _v2_body(model, "input-0"))
    with _process(cmd, f"http://127.0.0.1:{port}/v2/models/wine/ready"):
        _measure(points, "MLServer", model.name, port, raw, conc, seconds)


def run_bare(models: list[Model], points: dict[tuple[str, str, int], Point], seconds: float) -> None:
    for m in models:
        loaded = edgekit.load(m.artifact)
        feed = {m.input_name: m.x}
        load = bare_loop(lambda loaded=loaded, feed=feed: loaded.predict(feed), seconds)
        point = points.setdefault(("bare predict", m.name, 1), Point("bare predict", m.name, 1))
        point.rounds.append({"rps": load.rps, "p50_ms": load.p50_ms, "p99_ms": load.p99_ms, "errors": 0})


# --------------------------------------------------------------------------- report


def render(points: dict[tuple[str, str, int], Point], models: list[str], conc: list[int]) -> list[str]:
    lines = ["| model | server | " + " | ".join(f"c={c} req/s · p50 · p99 ms" for c in conc) + " |"]
    lines.append("|" + " --- |" * (2 + len(conc)))
    servers = ["edgekit serve", "edgekit serve (v2)", "minimal", "MLServer", "bare predict"]
    for model in models:
        for server in servers:
            cells = []
            for c in conc:
                p = points.get((server, model, c))
                if p is None:
                    cells.append("")
                    continue
                cell = f"{p.median('rps'):,.0f} · {p.median('p50_ms'):.2f} · {p.median('p99_ms'):.2f}"
                cells.append(cell + (f" ({sum(int(r['errors']) for r in p.rounds)} errors)" if p.error else ""))
            if any(cells):
                lines.append(f"| {model} | {server} | " + " | ".join(cells) + " |")
    lines.append("")
    for model in models:
        for c in conc:
            ek, mini, mls = (points.get((s, model, c)) for s in ("edgekit serve", "minimal", "MLServer"))
            parts = []
            if ek and mini:
                parts.append(f"edgekit/minimal {ek.median('rps') / mini.median('rps'):.2f}×")
            if ek and mls:
                parts.append(
                    f"edgekit/MLServer {ek.median('rps') / mls.median('rps'):.2f}× "
                    f"(p99 {ek.median('p99_ms'):.2f} vs {mls.median('p99_ms'):.2f} ms)"
                )
            if parts:
                lines.append(f"{model} c={c}: " + ", ".join(parts))
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="bench/serve", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", default="mlp,cnn,wine", help="comma-separated subset of mlp,cnn,wine")
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--seconds", type=float, default=3.0, help="measured seconds per point (after 0.5 s warm-up)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds over all servers; the median is reported")
    parser.add_argument("--servers", default="edgekit,minimal,mlserver,bare")
    parser.add_argument("--mlserver-venv", type=Path, default=Path.home() / ".cache" / "edgekit" / "bench" / "mlserver-venv")
    parser.add_argument("--json", type=Path, help="also write every round's figures here")
    args = parser.parse_args(argv)
    names = args.models.split(",")
    conc = [int(c) for c in args.concurrency.split(",")]
    servers = args.servers.split(",")

    def say(msg: str) -> None:
        print(f"bench/serve: {msg}", file=sys.stderr, flush=True)

    points: dict[tuple[str, str, int], Point] = {}
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        work = Path(tmp)
        say(f"building and compiling {', '.join(names)}")
        models = build(names, work)
        wine = next((m for m in models if m.sklearn is not None), None)
        python = mlserver_python(args.mlserver_venv, say) if "mlserver" in servers and wine else None
        for r in range(args.rounds):
            order = servers if r % 2 == 0 else list(reversed(servers))
            for server in order:
                say(f"round {r + 1}/{args.rounds}: {server}")
                if server == "edgekit":
                    run_edgekit(models, points, conc, args.seconds)
                elif server == "minimal":
                    run_minimal(models, points, conc, args.seconds)
                elif server == "mlserver" and python is not None and wine is not None:
                    run_mlserver(python, wine, work, points, conc, args.seconds)
                elif server == "bare":
                    run_bare(models, points, args.seconds)
    cpu = os.cpu_count()
    print(f"bench/serve: {cpu} CPUs, {args.rounds} round(s) × {args.seconds:g} s per point, median over rounds\n")
    print("\n".join(render(points, names, conc)))
    if args.json:
        args.json.write_text(json.dumps([asdict(p) for p in points.values()], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
