"""bench/serve: requests/s and p50/p99 of ``edgekit serve`` against MLServer, a minimal app and a bare loop, in one run.

    bench/serve [--models mlp,cnn,wine] [--concurrency 1,8,32] [--seconds 3] [--rounds 2] [--json out.json]
    bench/serve --csv 10000,1000 [--rounds 6]     records: CSV rows in many-row requests against a bare predict
    bench/serve --batching [--concurrency 1,8,32]  adaptive batching on against off (and MLServer's)

Models are built in code (no downloads): bench/compile's MLP and CNN (torch), and the wine-dataset
scikit-learn pipeline (StandardScaler + LogisticRegression, 13 features); each is compiled with
``compiler/ort.yaml``. Every server runs at once as a subprocess on 127.0.0.1 (an idle one costs
nothing); each point (model, concurrency) is measured in short slices, the servers taking turns
(A B C, C B A, ...), so load from elsewhere on the machine hits them alike; the figure reported is
the median over the slices. The client (bench/http_load.py: raw HTTP/1.1 keep-alive on uvloop) runs
in this process, on the same cores.

- **edgekit serve** — ``/invocations`` (SageMaker JSON) with every model loaded, ``/v2/models/wine/infer``, the CNN
  as ``.npy``, and a second server with ``EDGEKIT_SERVE_JSON=stdlib`` (the standard library's json, as the
  minimal app uses) for the scikit-learn model;
- **minimal** — bench/serve_minimal.py: Starlette + uvicorn + ONNX Runtime, the same .onnx, nothing else;
- **MLServer** 1.7.1 + mlserver-sklearn (the scikit-learn pipeline itself, V2 JSON), ``parallel_workers: 0``.
  It runs from its own virtualenv (``--mlserver-venv``, created on first use with pip): MLServer pins
  starlette < 0.47 through fastapi, which edgekit's ``serve`` extra must not be held to;
- **bare** — ``edgekit.load(...).predict`` called back to back in this process (no HTTP; concurrency 1).

``--batching`` measures adaptive batching instead: bench/compile's MobileNet-style CNN (3×64×64, exported to ONNX
with a dynamic batch axis and compiled with ``-s input:-1,3,64,64``) sent one record a request as ``.npy``, and the
wine pipeline compiled with ``-s input:-1,13`` (SageMaker JSON and V2 JSON), each to two ``edgekit serve``
processes, one batching (``--batch-args``, default ``--max-batch-size 32 --max-batch-delay-ms 2``) and one with
``--no-batching``; the wine pipeline also to MLServer with its adaptive batching on (``max_batch_size`` 32,
``max_batch_time`` 2 ms). Slices taken in turns, as above; req/s and p99 against the unbatched server's.

``--csv ROWS,PER_REQUEST`` measures records instead: ROWS rows of the wine data (resampled, each feature scaled
by a random 0.95-1.05) sent as ``text/csv`` in PER_REQUEST-row requests, one after another on one keep-alive
connection, answered as ``text/csv`` (the bodies a batch transform job sends with SplitType Line and
BatchStrategy MultiRecord), against a bare ``predict`` on the same rows in this process: ``edgekit.load(...)``
one row per call (the artifact takes a batch of 1, as the server does after splitting), and scikit-learn's own
``predict`` on all the rows at once. Rows/s, the median over ``--rounds`` runs taken in turns.
"""

from __future__ import annotations

import argparse
import contextlib
import io
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
from bench.http_load import bare_loop, request_bytes, run_load

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


def _wait(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}: {log.read_text(errors='replace')[-2000:]}")
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=1) as r:
            if r.status == 200:
                return
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer in {timeout:.0f} s")


@contextlib.contextmanager
def _process(cmd: list[str], ready_url: str, log: Path, env: dict[str, str] | None = None) -> Iterator[subprocess.Popen[bytes]]:
    # output to a file, never a pipe nobody reads: MLServer logs every request, and a full pipe would block it
    with log.open("ab") as out:
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, env={**os.environ, **(env or {})}
        )
    try:
        _wait(ready_url, proc, log)
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
            source,
            "x86_64",
            work / "build",
            pipeline="ort",
            input_shapes=shapes,
            name=name,
            use_cache=False,
            trust_unknown_types=True,  # the bench's own pickle, written a moment ago
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


Target = tuple[int, bytes, int]  # (port, the prepared request, the server's pid)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc), to get CPU per request despite other load."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_edgekit(stack: contextlib.ExitStack, models: list[Model], work: Path, extra: list[str]) -> dict[str, dict[str, Target]]:
    port = _free_port()
    cmd = [sys.executable, "-c", "import sys; from edgekit.cli import main; sys.exit(main(sys.argv[1:]))", "serve"]
    cmd += [str(m.artifact) for m in models] + ["--port", str(port), *extra]
    pid = stack.enter_context(_process(cmd, f"http://127.0.0.1:{port}/ping", work / "edgekit-serve.log")).pid
    sagemaker: dict[str, Target] = {}
    v2: dict[str, Target] = {}
    npy: dict[str, Target] = {}
    for m in models:
        headers = {"X-Amzn-SageMaker-Target-Model": m.name}
        sagemaker[m.name] = (port, request_bytes("127.0.0.1", port, "/invocations", _json_body(m), headers), pid)
        if m.x.size > 1000:  # where JSON is most of the cost: the same request as .npy
            buf = io.BytesIO()
            np.save(buf, m.x)
            binary = {**headers, "Content-Type": "application/x-npy"}
            npy[m.name] = (port, request_bytes("127.0.0.1", port, "/invocations", buf.getvalue(), binary), pid)
        if m.sklearn is not None:
            v2[m.name] = (port, request_bytes("127.0.0.1", port, f"/v2/models/{m.name}/infer", _v2_body(m, m.input_name)), pid)
    # the same server with the standard library's json instead of orjson: edgekit's own cost against the minimal app's
    small = [m for m in models if m.sklearn is not None]
    stdlib: dict[str, Target] = {}
    if small:
        port2 = _free_port()
        cmd2 = [*cmd[: cmd.index("serve") + 1], *(str(m.artifact) for m in small), "--port", str(port2), *extra]
        log = work / "edgekit-serve-stdlib.log"
        pid2 = stack.enter_context(_process(cmd2, f"http://127.0.0.1:{port2}/ping", log, {"EDGEKIT_SERVE_JSON": "stdlib"})).pid
        for m in small:
            headers = {"X-Amzn-SageMaker-Target-Model": m.name}
            stdlib[m.name] = (port2, request_bytes("127.0.0.1", port2, "/invocations", _json_body(m), headers), pid2)
    return {
        "edgekit serve": sagemaker,
        "edgekit serve (v2)": v2,
        "edgekit serve (npy)": npy,
        "edgekit serve (stdlib json)": stdlib,
    }


def start_minimal(stack: contextlib.ExitStack, models: list[Model], work: Path) -> dict[str, dict[str, Target]]:
    targets: dict[str, Target] = {}
    for m in models:
        port = _free_port()
        cmd = [sys.executable, str(ROOT / "bench" / "serve_minimal.py"), str(m.onnx), str(port)]
        raw = request_bytes("127.0.0.1", port, "/invocations", _json_body(m))
        proc = stack.enter_context(_process(cmd, f"http://127.0.0.1:{port}/ping", work / f"minimal-{m.name}.log"))
        targets[m.name] = (port, raw, proc.pid)
    return {"minimal": targets}


def start_mlserver(
    stack: contextlib.ExitStack, python: Path, model: Model, work: Path, batching: dict[str, Any] | None = None
) -> dict[str, dict[str, Target]]:
    assert model.sklearn is not None
    folder = work / ("mlserver-batching" if batching else "mlserver")
    (folder / model.name).mkdir(parents=True, exist_ok=True)
    port, grpc, metrics = _free_port(), _free_port(), _free_port()
    settings = {"host": "127.0.0.1", "http_port": port, "grpc_port": grpc, "metrics_port": metrics, "parallel_workers": 0}
    (folder / "settings.json").write_text(json.dumps(settings))
    model_settings = {
        "name": model.name,
        "implementation": "mlserver_sklearn.SKLearnModel",
        "parameters": {"uri": str(model.sklearn), "version": "v1"},
        **(batching or {}),  # max_batch_size, max_batch_time: MLServer's adaptive batching
    }
    (folder / model.name / "model-settings.json").write_text(json.dumps(model_settings))
    cmd = [str(python.parent / "mlserver"), "start", str(folder)]
    proc = stack.enter_context(_process(cmd, f"http://127.0.0.1:{port}/v2/models/{model.name}/ready", work / "mlserver.log"))
    raw = request_bytes("127.0.0.1", port, f"/v2/models/{model.name}/infer", _v2_body(model, "input-0"))
    return {"MLServer": {model.name: (port, raw, proc.pid)}}


def run_bare(models: list[Model], points: dict[tuple[str, str, int], Point], seconds: float) -> None:
    for m in models:
        loaded = edgekit.load(m.artifact)
        feed = {m.input_name: m.x}
        load = bare_loop(lambda loaded=loaded, feed=feed: loaded.predict(feed), seconds)
        point = points.setdefault(("bare predict", m.name, 1), Point("bare predict", m.name, 1))
        point.rounds.append(
            {"rps": load.rps, "p50_ms": load.p50_ms, "p99_ms": load.p99_ms, "cpu_us": 1e6 / load.rps, "errors": 0}
        )


def run_csv(total: int, per_request: int, rounds: int, work: Path, extra: list[str], say: Any) -> list[str]:
    """Rows/s of CSV batches through ``edgekit serve`` against a bare predict on the same rows (see the docstring)."""
    import http.client

    import joblib
    from sklearn.datasets import load_wine

    (model,) = build(["wine"], work)
    assert model.sklearn is not None
    sk = joblib.load(model.sklearn)
    x = load_wine(return_X_y=True)[0].astype(np.float32)
    rng = np.random.default_rng(SEED)
    rows = (x[rng.integers(0, len(x), total)] * rng.uniform(0.95, 1.05, (total, x.shape[1]))).astype(np.float32)
    lines = [",".join(f"{v:.9g}" for v in r) for r in rows]
    bodies = [("\n".join(lines[i : i + per_request]) + "\n").encode() for i in range(0, total, per_request)]
    # the same pipeline compiled for a batch of PER_REQUEST rows: the server passes each request through in one run
    batched = edgekit.compile(
        model.sklearn,
        "x86_64",
        work / "build",
        pipeline="ort",
        input_shapes={model.input_name: [per_request, x.shape[1]]},
        name="wine-batch",
        use_cache=False,
        trust_unknown_types=True,  # the bench's own pickle, written a moment ago
    ).artifact_dir
    port = _free_port()
    cmd = [sys.executable, "-c", "import sys; from edgekit.cli import main; sys.exit(main(sys.argv[1:]))", "serve"]
    cmd += [str(model.artifact), str(batched), "--port", str(port), "--max-body-mb", "100", *extra]
    loaded, loaded_batch = edgekit.load(model.artifact), edgekit.load(batched)
    want = sk.predict(rows)
    times: dict[str, list[float]] = {k: [] for k in ("serve", "bare", "serve-batch", "bare-batch", "sklearn")}
    mismatched = {"serve": 0, "serve-batch": 0}
    log = work / "edgekit-serve-csv.log"

    def serve(target: str) -> tuple[float, list[int]]:
        headers = {"Content-Type": "text/csv", "Accept": "text/csv", "X-Amzn-SageMaker-Target-Model": target}
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)  # a new one each run: the server closes idle ones
        conn.connect()
        t0 = time.perf_counter()
        labels: list[int] = []
        for n, body in enumerate(bodies):
            try:
                conn.request("POST", "/invocations", body, headers)
                reply = conn.getresponse()
                data = reply.read()
            except OSError as exc:
                tail = log.read_text(errors="replace")[-3000:]
                raise RuntimeError(
                    f"edgekit serve dropped the connection at request {n + 1} of {target}, "
                    f"{time.perf_counter() - t0:.2f} s in ({exc}); its log ends:\n{tail}"
                ) from exc
            if reply.status != 200:
                raise RuntimeError(f"edgekit serve answered {reply.status}: {data[:300]!r}")
            labels.extend(int(line.split(",", 1)[0]) for line in data.decode().splitlines())
        elapsed = time.perf_counter() - t0
        conn.close()
        return elapsed, labels

    with _process(cmd, f"http://127.0.0.1:{port}/ping", log):
        for r in range(rounds + 1):  # the first: warm-up, not counted
            run: dict[str, float] = {}
            for key, target in (("serve", "wine"), ("serve-batch", "wine-batch")):
                run[key], labels = serve(target)
                mismatched[key] = int(np.sum(np.asarray(labels) != want))
            t0 = time.perf_counter()
            for i in range(total):
                loaded.predict({model.input_name: rows[i : i + 1]})
            run["bare"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            for i in range(0, total - total % per_request, per_request):
                loaded_batch.predict({model.input_name: rows[i : i + per_request]})
            run["bare-batch"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            sk.predict(rows)
            run["sklearn"] = time.perf_counter() - t0
            if r:
                for key, seconds in run.items():
                    times[key].append(seconds)
    say("csv: done")
    rate = {k: total / statistics.median(v) for k, v in times.items()}
    rate["bare-batch"] *= (total - total % per_request) / total
    return [
        f"wine, {total:,} CSV rows in {per_request:,}-row requests (text/csv in and out), median of {rounds} runs:",
        f"- compiled for a batch of 1 (the server runs a row at a time): edgekit serve {rate['serve']:,.0f} rows/s "
        f"({mismatched['serve']} labels differ from scikit-learn's predict); bare predict (edgekit.load, a row per "
        f"call) {rate['bare']:,.0f} rows/s -> edgekit serve at {rate['serve'] / rate['bare']:.0%} of it",
        f"- compiled for a batch of {per_request:,} (a request in one run): edgekit serve {rate['serve-batch']:,.0f} rows/s "
        f"({mismatched['serve-batch']} labels differ); bare predict ({per_request:,} rows per call) "
        f"{rate['bare-batch']:,.0f} rows/s -> edgekit serve at {rate['serve-batch'] / rate['bare-batch']:.0%} of it",
        f"- scikit-learn predict, all rows in one call: {rate['sklearn']:,.0f} rows/s "
        f"-> edgekit serve at {rate['serve'] / rate['sklearn']:.1%} (batch of 1), "
        f"{rate['serve-batch'] / rate['sklearn']:.0%} (batch of {per_request:,}) of it",
    ]


# --------------------------------------------------------------------------- adaptive batching


def _onnx_dynamic(module: Any, shape: list[int], path: Path) -> None:
    """``module`` exported to ONNX with its first axis dynamic (what ``-s input:-1,...`` keeps)."""
    import warnings

    import torch

    module.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            (torch.randn(2, *shape[1:]),),
            str(path),
            input_names=["input"],
            output_names=["output"],
            dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
            dynamo=False,
            opset_version=17,
        )


def build_dynamic(work: Path) -> list[Model]:
    """The MobileNet-style CNN and the wine pipeline, each compiled with a dynamic batch dimension."""
    from bench.compile import _torch_models

    _, module, shape = _torch_models()["mobilenet"]
    _onnx_dynamic(module, shape, work / "mobilenet.onnx")
    wine_source, wine_x = _wine(work)
    x = np.random.default_rng(SEED).standard_normal(shape).astype(np.float32)
    models = []
    for name, source, shapes, feed, sk in (
        ("mobilenet", work / "mobilenet.onnx", {"input": [-1, *shape[1:]]}, x, None),
        ("wine", wine_source, {"input": [-1, 13]}, wine_x, wine_source),
    ):
        result = edgekit.compile(
            source, "x86_64", work / "build", pipeline="ort", input_shapes=shapes, name=name, use_cache=False,
            trust_unknown_types=True,  # the bench's own pickle, written a moment ago
        )  # fmt: skip
        manifest = result.manifest
        assert manifest.inputs[0].dynamic_dims, f"{name}: compiled without a dynamic batch"
        entry = result.artifact_dir / manifest.backend.entry
        models.append(Model(name, result.artifact_dir, entry, manifest.inputs[0].name, feed, sk))
    return models


def start_batching(
    stack: contextlib.ExitStack, models: list[Model], work: Path, batch_args: list[str], extra: list[str]
) -> dict[str, dict[str, Target]]:
    """Two edgekit servers of the same models, batching and not: the npy CNN, the wine pipeline in JSON and V2."""
    out: dict[str, dict[str, Target]] = {}
    for label, args in (("edgekit serve, batching", batch_args), ("edgekit serve, no batching", ["--no-batching"])):
        port = _free_port()
        cmd = [sys.executable, "-c", "import sys; from edgekit.cli import main; sys.exit(main(sys.argv[1:]))", "serve"]
        cmd += [str(m.artifact) for m in models] + ["--port", str(port), *args, *extra]
        log = work / f"edgekit-serve-{len(out)}.log"
        pid = stack.enter_context(_process(cmd, f"http://127.0.0.1:{port}/ping", log)).pid
        sagemaker: dict[str, Target] = {}
        v2: dict[str, Target] = {}
        for m in models:
            headers = {"X-Amzn-SageMaker-Target-Model": m.name}
            if m.sklearn is None:  # the CNN: 12,288 floats, as .npy
                buf = io.BytesIO()
                np.save(buf, m.x)
                binary = {**headers, "Content-Type": "application/x-npy"}
                sagemaker[m.name] = (port, request_bytes("127.0.0.1", port, "/invocations", buf.getvalue(), binary), pid)
            else:
                sagemaker[m.name] = (port, request_bytes("127.0.0.1", port, "/invocations", _json_body(m), headers), pid)
                body = _v2_body(m, m.input_name)
                v2[m.name] = (port, request_bytes("127.0.0.1", port, f"/v2/models/{m.name}/infer", body), pid)
        out[label] = sagemaker
        out[f"{label} (v2)"] = v2
    return out


def batching_report(points: dict[tuple[str, str, int], Point], conc: list[int]) -> list[str]:
    lines = ["| model | server | " + " | ".join(f"c={c}: req/s · p50 · p99 ms · server CPU µs/req" for c in conc) + " |"]
    lines.append("|" + " --- |" * (2 + len(conc)))
    servers = sorted({s for s, _, _ in points}, key=lambda s: (s.startswith("MLServer"), "(v2)" in s, s))
    for model in ("mobilenet", "wine"):
        for server in servers:
            cells = []
            for c in conc:
                p = points.get((server, model, c))
                cell = "" if p is None else (
                    f"{p.median('rps'):,.0f} · {p.median('p50_ms'):.2f} · {p.median('p99_ms'):.2f} · {p.median('cpu_us'):,.0f}"
                    + (f" ({sum(int(r['errors']) for r in p.rounds)} errors: {p.error[:80]})" if p.error else "")
                )  # fmt: skip
                cells.append(cell)
            if any(cells):
                lines.append(f"| {model} | {server} | " + " | ".join(cells) + " |")
    lines.append("")
    for model in ("mobilenet", "wine"):
        for c in conc:
            on, off = points.get(("edgekit serve, batching", model, c)), points.get(("edgekit serve, no batching", model, c))
            mls = points.get(("MLServer, batching", model, c))
            v2 = points.get(("edgekit serve, batching (v2)", model, c))
            parts = []
            if on and off:
                parts.append(
                    f"batching/none {on.median('rps') / off.median('rps'):.2f}× req/s (goal ≥ 2 at c=32), "
                    f"p99 {on.median('p99_ms') / off.median('p99_ms'):.2f}× (goal ≤ 2)"
                )
            if v2 and mls:
                parts.append(
                    f"edgekit v2 batching/MLServer batching {v2.median('rps') / mls.median('rps'):.2f}× req/s "
                    f"(p99 {v2.median('p99_ms'):.2f} vs {mls.median('p99_ms'):.2f} ms)"
                )
            if parts:
                lines.append(f"{model} c={c}: " + "; ".join(parts))
    return lines


def batch_ceiling(models: list[Model], rounds: int) -> list[str]:
    """What merging can save in the model itself: a bare predict's time per record at a batch of 1 and of 32
    (one ONNX Runtime thread, as the server runs it), median of ``rounds``, in this process."""
    lines = []
    for m in models:
        loaded = edgekit.load(m.artifact, threads=1)
        per_record: dict[int, list[float]] = {1: [], 32: []}
        for _ in range(rounds):
            for batch in per_record:
                x = np.repeat(m.x, batch, axis=0)
                loaded.predict({m.input_name: x})
                n = max(2, 64 // batch)
                t0 = time.perf_counter()
                for _ in range(n):
                    loaded.predict({m.input_name: x})
                per_record[batch].append((time.perf_counter() - t0) / n / batch * 1e6)
        one, many = (statistics.median(per_record[b]) for b in (1, 32))
        lines.append(
            f"{m.name}: bare predict {one:,.1f} µs a record one at a time, {many:,.1f} µs a record 32 at a time "
            f"({one / many:.2f}× less in a batch: the most merging can save in the model itself)"
        )
    return lines


def run_batching(args: argparse.Namespace, say: Any) -> list[str]:
    conc = [int(c) for c in args.concurrency.split(",")]
    points: dict[tuple[str, str, int], Point] = {}
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp, contextlib.ExitStack() as stack:
        work = Path(tmp)
        say("building and compiling mobilenet and wine with a dynamic batch dimension")
        models = build_dynamic(work)
        targets = start_batching(stack, models, work, args.batch_args.split(), args.edgekit_args.split())
        wine = next(m for m in models if m.sklearn is not None)
        if "mlserver" in args.servers:
            python = mlserver_python(args.mlserver_venv, say)
            mls = start_mlserver(stack, python, wine, work, {"max_batch_size": 32, "max_batch_time": 0.002})
            targets["MLServer, batching"] = mls["MLServer"]
        say(f"all servers up: {', '.join(targets)}; measuring in alternating slices")
        measure(targets, models, conc, args, points)
        ceiling = batch_ceiling(models, args.rounds)
    cpu = os.cpu_count()
    head = (
        f"bench/serve --batching: {cpu} CPUs, {args.rounds} slices × {args.seconds:g} s per point, servers alternating; medians\n"
    )
    return [head, *batching_report(points, conc), "", *ceiling]


# --------------------------------------------------------------------------- report


def render(points: dict[tuple[str, str, int], Point], models: list[str], conc: list[int]) -> list[str]:
    lines = ["| model | server | " + " | ".join(f"c={c}: req/s · p50 · p99 ms · server CPU µs/req" for c in conc) + " |"]
    lines.append("|" + " --- |" * (2 + len(conc)))
    servers = [
        "edgekit serve",
        "edgekit serve (v2)",
        "edgekit serve (npy)",
        "edgekit serve (stdlib json)",
        "minimal",
        "MLServer",
        "bare predict",
    ]
    for model in models:
        for server in servers:
            cells = []
            for c in conc:
                p = points.get((server, model, c))
                if p is None:
                    cells.append("")
                    continue
                cell = f"{p.median('rps'):,.0f} · {p.median('p50_ms'):.2f} · {p.median('p99_ms'):.2f} · {p.median('cpu_us'):,.0f}"
                cells.append(cell + (f" ({sum(int(r['errors']) for r in p.rounds)} errors)" if p.error else ""))
            if any(cells):
                lines.append(f"| {model} | {server} | " + " | ".join(cells) + " |")
    lines.append("")
    for model in models:
        for c in conc:
            ek, mini, mls, std = (
                points.get((s, model, c)) for s in ("edgekit serve", "minimal", "MLServer", "edgekit serve (stdlib json)")
            )
            parts = []
            if ek and mini:
                parts.append(
                    f"edgekit/minimal {ek.median('rps') / mini.median('rps'):.2f}× req/s, "
                    f"{ek.median('cpu_us') / mini.median('cpu_us'):.2f}× CPU per request"
                )
            if std and mini:
                parts.append(
                    f"with stdlib json {std.median('rps') / mini.median('rps'):.2f}× req/s, "
                    f"{std.median('cpu_us') / mini.median('cpu_us'):.2f}× CPU"
                )
            if ek and mls:
                parts.append(
                    f"edgekit/MLServer {ek.median('rps') / mls.median('rps'):.2f}× "
                    f"(p99 {ek.median('p99_ms'):.2f} vs {mls.median('p99_ms'):.2f} ms)"
                )
            if parts:
                lines.append(f"{model} c={c}: " + ", ".join(parts))
    return lines


def measure(
    targets: dict[str, dict[str, Target]],
    models: list[Model],
    conc: list[int],
    args: argparse.Namespace,
    points: dict[tuple[str, str, int], Point],
    say: Any = None,
) -> None:
    """Every (model, concurrency) point in ``args.rounds`` slices, the servers taking turns (A B C, C B A, ...)."""
    for m in models:
        for c in conc:
            for r in range(args.rounds):
                order = list(targets) if r % 2 == 0 else list(reversed(targets))
                for server in order:
                    if m.name not in targets[server]:
                        continue
                    port, raw, pid = targets[server][m.name]
                    cpu0 = cpu_seconds(pid)
                    load = run_load("127.0.0.1", port, raw, c, args.seconds, warmup=0.3)
                    cpu = (cpu_seconds(pid) - cpu0) / max(1, load.requests + int(0.3 * load.rps)) * 1e6
                    point = points.setdefault((server, m.name, c), Point(server, m.name, c))
                    if load.errors:
                        point.error = load.first_error
                    point.rounds.append(
                        {"rps": load.rps, "p50_ms": load.p50_ms, "p99_ms": load.p99_ms, "cpu_us": cpu, "errors": load.errors}
                    )
        if say is not None:
            say(f"{m.name}: done")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="bench/serve", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", default="mlp,cnn,wine", help="comma-separated subset of mlp,cnn,wine")
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--seconds", type=float, default=1.5, help="measured seconds per slice (after 0.3 s warm-up)")
    parser.add_argument("--rounds", type=int, default=6, help="slices per point, servers alternating; the median is reported")
    parser.add_argument("--servers", default="edgekit,minimal,mlserver,bare")
    parser.add_argument("--mlserver-venv", type=Path, default=Path.home() / ".cache" / "edgekit" / "bench" / "mlserver-venv")
    parser.add_argument("--edgekit-args", default="", help="more options for 'edgekit serve', e.g. '--threads 1'")
    parser.add_argument("--json", type=Path, help="also write every round's figures here")
    parser.add_argument("--csv", metavar="ROWS,PER_REQUEST", help="measure CSV records instead, e.g. 10000,1000")
    parser.add_argument("--batching", action="store_true", help="measure adaptive batching instead (see above)")
    parser.add_argument(
        "--batch-args", default="--max-batch-size 32 --max-batch-delay-ms 2", help="the batching server's options"
    )
    args = parser.parse_args(argv)
    if args.batching:
        if args.concurrency == "1,8,32" and "--concurrency" not in (argv or sys.argv):
            args.concurrency = "1,32"
        print("\n".join(run_batching(args, lambda msg: print(f"bench/serve: {msg}", file=sys.stderr, flush=True))))
        return 0
    if args.csv:
        total, per_request = (int(v) for v in args.csv.split(","))
        with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
            report = run_csv(total, per_request, args.rounds, Path(tmp), args.edgekit_args.split(), print)
        print(f"bench/serve: {os.cpu_count()} CPUs\n")
        print("\n".join(report))
        return 0
    names = args.models.split(",")
    conc = [int(c) for c in args.concurrency.split(",")]
    servers = args.servers.split(",")

    def say(msg: str) -> None:
        print(f"bench/serve: {msg}", file=sys.stderr, flush=True)

    points: dict[tuple[str, str, int], Point] = {}
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp, contextlib.ExitStack() as stack:
        work = Path(tmp)
        say(f"building and compiling {', '.join(names)}")
        models = build(names, work)
        wine = next((m for m in models if m.sklearn is not None), None)
        targets: dict[str, dict[str, Target]] = {}
        if "edgekit" in servers:
            targets.update(start_edgekit(stack, models, work, args.edgekit_args.split()))
        if "minimal" in servers:
            targets.update(start_minimal(stack, models, work))
        if "mlserver" in servers and wine is not None:
            targets.update(start_mlserver(stack, mlserver_python(args.mlserver_venv, say), wine, work))
        say(f"all servers up: {', '.join(targets)}; measuring in alternating slices")
        measure(targets, models, conc, args, points, say)
        if "bare" in servers:
            for _ in range(args.rounds):
                run_bare(models, points, args.seconds)
    cpu = os.cpu_count()
    print(f"bench/serve: {cpu} CPUs, {args.rounds} slices × {args.seconds:g} s per point, servers alternating; medians\n")
    print("\n".join(render(points, names, conc)))
    if args.json:
        args.json.write_text(json.dumps([asdict(p) for p in points.values()], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
