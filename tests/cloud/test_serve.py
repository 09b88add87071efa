"""edgekit serve on a real uvicorn server over real HTTP: SageMaker's contracts, the multi-model API, pipelines,
KServe v2 with the devices' own fallback client, Prometheus metrics, bad input, SIGTERM, the container layout."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import tarfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from helpers import ORT_ONLY, make_mlp
from prometheus_client.parser import text_string_to_metric_families

import edgekit
from edgekit.cloud.model_server import ModelServer, ServeOptions
from edgekit.edge.fallback import CloudFallback
from edgekit.errors import EXIT_CODES, ServeError
from edgekit.wire.open_inference import InferenceRequest

ROOT = Path(__file__).resolve().parents[2]
EDGEKIT = Path(sys.executable).with_name("edgekit")  # the console script: the container's ENTRYPOINT
X = np.linspace(-1, 1, 8, dtype=np.float32).reshape(1, 8)


def _compile(work: Path, name: str, target: str = "x86_64", **mlp: Any) -> Path:
    path = work / f"{name}.onnx"
    onnx.save(make_mlp(**mlp), str(path))
    return edgekit.compile(path, target, work / "build", pipeline=ORT_ONLY, name=name, use_cache=False).artifact_dir


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    work = tmp_path_factory.mktemp("serve-artifacts")
    return {
        "small": _compile(work, "small"),
        "big": _compile(work, "big", hidden=256, seed=1),  # a bigger model file, for the memory budget
        "arm": _compile(work, "arm", target="rasp4b"),
    }


def call(
    method: str, url: str, body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, data=body, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def invoke(url: str, doc: Any, model: str | None = None, path: str = "/invocations") -> tuple[int, Any]:
    headers = {"Content-Type": "application/json"}
    if model:
        headers["X-Amzn-SageMaker-Target-Model"] = model
    status, _, body = call("POST", url + path, json.dumps(doc).encode(), headers)
    return status, json.loads(body) if body else None


@pytest.fixture
def server(artifacts: dict[str, Path]) -> Iterator[ModelServer]:
    with ModelServer([artifacts["small"]], options=ServeOptions(port=0, max_body_mb=0.01)) as srv:
        yield srv


def _expected(artifact: Path, x: np.ndarray = X) -> np.ndarray:
    return edgekit.load(artifact).predict({"x": x})[0]


# --------------------------------------------------------------------------- SageMaker inference container contract


def test_ping_and_invocations_in_json_npy_and_npz(server: ModelServer, artifacts: dict[str, Path]) -> None:
    status, _, body = call("GET", server.url + "/ping")
    assert (status, body) == (200, b"")
    want = _expected(artifacts["small"])

    status, doc = invoke(server.url, {"inputs": {"x": X.tolist()}})  # the only model: no header needed
    assert status == 200
    np.testing.assert_allclose(doc["outputs"]["probs"], want, rtol=1e-6)
    status, doc = invoke(server.url, {"inputs": X.tolist()})  # a single input may be sent bare
    np.testing.assert_allclose(doc["outputs"]["probs"], want, rtol=1e-6)

    buf = io.BytesIO()
    np.save(buf, X)
    headers = {"Content-Type": "application/x-npy", "Accept": "application/x-npy"}
    status, got, body = call("POST", server.url + "/invocations", buf.getvalue(), headers)
    assert status == 200 and got["content-type"] == "application/x-npy"
    np.testing.assert_allclose(np.load(io.BytesIO(body)), want, rtol=1e-6)

    buf = io.BytesIO()
    np.savez(buf, x=X)
    headers = {"Content-Type": "application/x-npz", "Accept": "application/x-npz"}
    status, _, body = call("POST", server.url + "/invocations", buf.getvalue(), headers)
    with np.load(io.BytesIO(body)) as out:
        assert status == 200 and out.files == ["probs"]
        np.testing.assert_allclose(out["probs"], want, rtol=1e-6)


def test_bad_input_is_one_clear_answer_each(server: ModelServer) -> None:
    status, doc = invoke(server.url, {"inputs": {"x": X.tolist()}}, model="nope")
    assert status == 404 and "'nope'" in doc["error"] and "small" in doc["error"]  # names the loaded ones

    status, doc = invoke(server.url, {"inputs": {"y": X.tolist()}})
    assert status == 400 and "missing input 'x'" in doc["error"] and "[1, 8]" in doc["error"]

    status, doc = invoke(server.url, {"inputs": {"x": [[1.0, 2.0]]}})
    assert status == 400 and "'x' expects shape [1, 8]" in doc["error"] and "got [1, 2]" in doc["error"]

    status, doc = invoke(server.url, {"inputs": {"x": X.tolist(), "extra": [1]}})
    assert status == 400 and "unknown input(s) ['extra']" in doc["error"]

    status, _, body = call("POST", server.url + "/invocations", b"{not json", {"Content-Type": "application/json"})
    assert status == 400 and "not valid JSON" in json.loads(body)["error"]

    big = json.dumps({"inputs": {"x": [[0.0] * 8] * 2000}}).encode()  # over --max-body-mb 0.01
    status, _, body = call("POST", server.url + "/invocations", big, {"Content-Type": "application/json"})
    assert status == 413 and "over the limit" in json.loads(body)["error"]

    status, _, body = call("POST", server.url + "/invocations", b"x,y", {"Content-Type": "text/plain"})
    assert status == 415 and "text/plain" in json.loads(body)["error"] and "text/csv" in json.loads(body)["error"]

    status, _, _ = call("GET", server.url + "/ping")
    assert status == 200  # and it still serves


def test_artifact_for_another_architecture_is_refused_at_start(artifacts: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(ServeError, match=r"built for aarch64 \(profile 'rasp4b'\) and this host is x86_64"):
        ModelServer([artifacts["arm"]], options=ServeOptions(port=0))
    proc = subprocess.run(
        [str(EDGEKIT), "serve", str(artifacts["arm"]), "--port", "0"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=120,
    )
    assert proc.returncode == EXIT_CODES[ServeError] == 25
    assert proc.stderr.count("\n") == 1 and "built for aarch64" in proc.stderr and "Traceback" not in proc.stderr


# --------------------------------------------------------------------------- multi-model endpoint


def test_multi_model_lifecycle_with_lru_eviction_409_and_507(artifacts: dict[str, Path], tmp_path: Path) -> None:
    repo = tmp_path / "models"
    repo.mkdir()
    for name in ("small", "big"):
        (repo / name).symlink_to(artifacts[name])
    sizes = {n: (artifacts[n] / "model.onnx").stat().st_size for n in ("small", "big")}
    assert sizes["big"] > 2 * sizes["small"]
    budget_mb = (sizes["big"] + sizes["small"] // 2) / 2**20  # holds either model, never both
    opts = ServeOptions(port=0, model_repository=repo, memory_budget_mb=budget_mb)
    body = {"inputs": {"x": X.tolist()}}
    with ModelServer([], options=opts) as srv:
        assert json.loads(call("GET", srv.url + "/models")[2]) == {"models": []}
        status, doc = invoke(srv.url, body)
        assert status == 400 and "X-Amzn-SageMaker-Target-Model" in doc["error"]

        status, doc = invoke(srv.url, body, model="small")  # loaded on first use
        assert status == 200
        np.testing.assert_allclose(doc["outputs"]["probs"], _expected(artifacts["small"]), rtol=1e-6)
        status, doc = invoke(srv.url, body, model="big")  # evicts small, the least recently used
        assert status == 200
        np.testing.assert_allclose(doc["outputs"]["probs"], _expected(artifacts["big"]), rtol=1e-6)
        listed = json.loads(call("GET", srv.url + "/models")[2])["models"]
        assert [m["modelName"] for m in listed] == ["big"]

        # SageMaker's agent: POST /models does not evict; it is told 507 and unloads by itself
        load = json.dumps({"model_name": "small", "url": str(artifacts["small"])}).encode()
        status, _, reply = call("POST", srv.url + "/models", load, {"Content-Type": "application/json"})
        assert status == 507 and "unload a model" in json.loads(reply)["error"]
        assert call("DELETE", srv.url + "/models/big")[0] == 200
        assert call("DELETE", srv.url + "/models/big")[0] == 404
        status, _, reply = call("POST", srv.url + "/models", load, {"Content-Type": "application/json"})
        assert status == 200 and json.loads(reply) == {"modelName": "small", "modelUrl": str(artifacts["small"])}
        assert call("POST", srv.url + "/models", load, {"Content-Type": "application/json"})[0] == 409
        status, _, reply = call("GET", srv.url + "/models/small")
        assert status == 200 and json.loads(reply)["modelUrl"] == str(artifacts["small"])
        assert call("GET", srv.url + "/models/big")[0] == 404
        status, doc = invoke(srv.url, body, path="/models/small/invoke")
        assert status == 200 and len(doc["outputs"]["probs"][0]) == 4

        bad = json.dumps({"model_name": "arm", "url": str(artifacts["arm"])}).encode()
        status, _, reply = call("POST", srv.url + "/models", bad, {"Content-Type": "application/json"})
        assert status == 400 and "aarch64" in json.loads(reply)["error"]
        status, _, reply = call("POST", srv.url + "/models", b'{"model_name": 1}', {"Content-Type": "application/json"})
        assert status == 400 and "model_name" in json.loads(reply)["error"]

        families = {f.name: f for f in text_string_to_metric_families(call("GET", srv.url + "/metrics")[2].decode())}
        events = {s.labels["event"]: s.value for s in families["edgekit_model_events"].samples if s.name.endswith("_total")}
        assert events == {"load": 3.0, "evict": 1.0, "unload": 1.0}
        assert families["edgekit_models_loaded"].samples[0].value == 1.0
        assert families["edgekit_model_memory_bytes"].samples[0].value == sizes["small"]


def test_a_model_archive_is_served_like_sagemaker_extracts_it(artifacts: dict[str, Path]) -> None:
    archive = artifacts["small"].with_name(artifacts["small"].name + ".tar.gz")  # the compile step's model.tar.gz
    with ModelServer([f"packed={archive}"], options=ServeOptions(port=0)) as srv:
        status, doc = invoke(srv.url, {"inputs": {"x": X.tolist()}}, model="packed")
        assert status == 200
        np.testing.assert_allclose(doc["outputs"]["probs"], _expected(artifacts["small"]), rtol=1e-6)
        extracted = srv.registry.loaded["packed"].cleanup[0]
        assert extracted.is_dir()
    assert not extracted.exists()  # removed when the server stops


@pytest.mark.parametrize("failure", ["repository", "port"])
def test_a_start_that_fails_after_loading_removes_what_it_extracted(
    artifacts: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failure: str
) -> None:
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    archive = artifacts["small"].with_name(artifacts["small"].name + ".tar.gz")
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    with taken:
        opts = (
            ServeOptions(port=0, model_repository=tmp_path / "missing")
            if failure == "repository"
            else ServeOptions(host="127.0.0.1", port=taken.getsockname()[1])
        )
        with pytest.raises(ServeError, match="is not a folder" if failure == "repository" else "cannot listen"):
            ModelServer([f"packed={archive}"], options=opts)
    assert list((tmp_path / "tmp").iterdir()) == []  # the extracted archive went with the failed start


# --------------------------------------------------------------------------- inference pipeline


STEPS = """
import time
from pathlib import Path
import numpy as np

def double(inputs):
    return {"x": inputs["x"] * 2}

def label(outputs):
    probs = outputs["probs"]
    return {"label": probs.argmax(axis=1).astype(np.int64), "confidence": probs.max(axis=1)}

def boom(inputs):
    raise RuntimeError("the post-processing step is broken")

def slow(inputs):
    Path(inputs["flag"].astype(np.uint8).tobytes().decode()).touch()
    time.sleep(1.5)
    return {"done": np.ones(1, dtype=np.float32)}
"""


@pytest.fixture
def steps_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    name = f"serve_steps_{os.getpid()}_{tmp_path.name}".replace("-", "_")
    (tmp_path / f"{name}.py").write_text(STEPS)
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


def test_pipeline_chain_and_a_model_that_raises(artifacts: dict[str, Path], steps_module: str) -> None:
    pipelines = {
        "chain": [f"{steps_module}:double", str(artifacts["small"]), f"{steps_module}:label"],
        "broken": [str(artifacts["small"]), f"{steps_module}:boom"],
    }
    with ModelServer([artifacts["small"]], pipelines=pipelines, options=ServeOptions(port=0)) as srv:
        status, doc = invoke(srv.url, {"inputs": {"x": X.tolist()}}, model="chain")
        assert status == 200
        probs = _expected(artifacts["small"], X * 2)
        assert doc["outputs"]["label"] == [int(probs.argmax())]
        np.testing.assert_allclose(doc["outputs"]["confidence"], [probs.max()], rtol=1e-6)

        status, doc = invoke(srv.url, {"inputs": {"x": X.tolist()}}, model="broken")
        assert status == 500 and "'broken' failed: the post-processing step is broken" in doc["error"]
        status, doc = invoke(srv.url, {"inputs": {"x": X.tolist()}}, model="small")
        assert status == 200  # the server keeps serving

    with pytest.raises(ServeError, match="step 'no_such_module:fn': cannot import it"):
        ModelServer([], pipelines={"bad": ["no_such_module:fn"]}, options=ServeOptions(port=0))


# --------------------------------------------------------------------------- Open Inference Protocol


def test_kserve_v2_routes_answer_the_devices_fallback_client(server: ModelServer, artifacts: dict[str, Path]) -> None:
    assert json.loads(call("GET", server.url + "/v2/health/live")[2]) == {"live": True}
    assert json.loads(call("GET", server.url + "/v2/health/ready")[2]) == {"ready": True}
    status, _, body = call("GET", server.url + "/v2/models/small")
    meta = json.loads(body)
    assert status == 200 and meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [1, 8]}]
    assert meta["outputs"] == [{"name": "probs", "datatype": "FP32", "shape": [1, 4]}] and meta["platform"] == "onnxruntime_onnx"
    assert call("GET", server.url + "/v2/models/small/ready")[0] == 200
    assert call("GET", server.url + "/v2/models/other/ready")[0] == 404

    client = CloudFallback(server.url, "small")  # the device's own client, unchanged
    (probs,) = client.infer({"x": X})
    np.testing.assert_allclose(probs, _expected(artifacts["small"]), rtol=1e-6)
    assert client.breaker.state == "closed"

    wrong = InferenceRequest.from_arrays({"x": np.array([[1, 2, 3]], dtype=np.float32)}).model_dump_json().encode()
    status, _, body = call("POST", server.url + "/v2/models/small/infer", wrong, {"Content-Type": "application/json"})
    assert status == 400 and "expects shape [1, 8]" in json.loads(body)["error"]


# --------------------------------------------------------------------------- metrics


def test_metrics_parse_as_prometheus_text(server: ModelServer) -> None:
    for _ in range(3):
        assert invoke(server.url, {"inputs": {"x": X.tolist()}}, model="small")[0] == 200
    assert invoke(server.url, {"inputs": {"x": [[1.0]]}}, model="small")[0] == 400
    assert invoke(server.url, {"inputs": {"x": X.tolist()}}, model="ghost")[0] == 404
    CloudFallback(server.url, "small").infer({"x": X})

    status, headers, text = call("GET", server.url + "/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(text.decode())}

    def value(family: str, sample: str, **labels: str) -> float:
        return sum(s.value for s in families[family].samples if s.name == sample and labels.items() <= s.labels.items())

    assert value("edgekit_requests", "edgekit_requests_total", model="small", route="invocations", code="200") == 3
    assert value("edgekit_requests", "edgekit_requests_total", model="small", route="v2-infer", code="200") == 1
    assert value("edgekit_request_errors", "edgekit_request_errors_total", model="small", code="400") == 1
    assert value("edgekit_request_errors", "edgekit_request_errors_total", model="", code="404") == 1  # no label per unknown name
    assert value("edgekit_request_duration_seconds", "edgekit_request_duration_seconds_count", model="small") == 4
    assert value("edgekit_models_loaded", "edgekit_models_loaded") == 1
    assert value("process_resident_memory_bytes", "process_resident_memory_bytes") > 10e6


# --------------------------------------------------------------------------- process: SIGTERM, the container


@contextlib.contextmanager
def _serve_process(args: list[str], env: dict[str, str], cwd: Path) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """`edgekit serve ... --json` as a subprocess: (process, url) once it serves; killed if the test left it running."""
    proc = subprocess.Popen(
        [str(EDGEKIT), "serve", *args, "--port", "0", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(cwd)]), **env},
    )
    with proc:
        try:
            assert proc.stdout is not None and proc.stderr is not None
            line = proc.stdout.readline()
            if not line:
                proc.wait(timeout=30)
                raise AssertionError(f"serve exited {proc.returncode}: {proc.stderr.read()}")
            yield proc, json.loads(line)["url"]
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()


def test_sigterm_lets_the_request_in_flight_finish(artifacts: dict[str, Path], steps_module: str, tmp_path: Path) -> None:
    with _serve_process(["--pipeline", f"slow={steps_module}:slow"], {}, tmp_path) as (proc, url):
        flag = tmp_path / "started"
        reply: dict[str, Any] = {}

        def request() -> None:
            data = np.frombuffer(str(flag).encode(), dtype=np.uint8).tolist()
            reply["status"], reply["doc"] = invoke(url, {"inputs": {"flag": data}}, model="slow")

        client = threading.Thread(target=request)
        client.start()
        deadline = time.monotonic() + 30
        while not flag.exists():
            assert time.monotonic() < deadline, f"the slow step never started: {reply}"
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
        client.join(timeout=30)
        assert reply == {"status": 200, "doc": {"outputs": {"done": [1.0]}}}
        assert proc.wait(timeout=30) == 0
        with pytest.raises(urllib.error.URLError):
            urllib.request.urlopen(url + "/ping", timeout=5)


def test_container_entry_point_serves_the_opt_ml_model_layout(artifacts: dict[str, Path], tmp_path: Path) -> None:
    dockerfile = (ROOT / "docker" / "serve.Dockerfile").read_text().replace("\\\n", " ")  # join continued lines
    directives = {line.split(None, 1)[0]: line.split(None, 1)[1] for line in dockerfile.splitlines() if line[:1].isupper()}
    entry, cmd = json.loads(directives["ENTRYPOINT"]), json.loads(directives["CMD"])
    assert entry == ["edgekit"] and cmd == ["serve"]  # what `docker run <image> serve` runs
    env = dict(item.split("=", 1) for item in shlex.split(directives["ENV"]))
    assert env["EDGEKIT_MODEL_DIR"] == "/opt/ml/model" and env["EDGEKIT_SERVE_HOST"] == "0.0.0.0"

    model_dir = tmp_path / "opt" / "ml" / "model"  # SageMaker extracts model.tar.gz here
    model_dir.mkdir(parents=True)
    with tarfile.open(artifacts["small"].with_name(artifacts["small"].name + ".tar.gz")) as tar:
        tar.extractall(model_dir, filter="data")
    assert (model_dir / "manifest.json").is_file()
    env.update(EDGEKIT_MODEL_DIR=str(model_dir), EDGEKIT_SERVE_HOST="127.0.0.1")  # loopback only in a test
    with _serve_process([], env, tmp_path) as (proc, url):
        assert call("GET", url + "/ping")[:1] == (200,)
        status, doc = invoke(url, {"inputs": {"x": X.tolist()}})
        assert status == 200
        np.testing.assert_allclose(doc["outputs"]["probs"], _expected(artifacts["small"]), rtol=1e-6)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0

    multi = {**env, "SAGEMAKER_MULTI_MODEL": "true", "EDGEKIT_MODEL_DIR": str(tmp_path / "none")}
    with _serve_process([], multi, tmp_path) as (proc, url):
        assert json.loads(call("GET", url + "/models")[2]) == {"models": []}  # a multi-model endpoint starts empty
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0


def test_json_backends_write_the_same_documents(monkeypatch: pytest.MonkeyPatch) -> None:
    from edgekit.cloud import content as codec

    loads, dumps, takes_numpy = codec._json_backend()  # orjson: installed with the serve extra
    monkeypatch.setenv("EDGEKIT_SERVE_JSON", "stdlib")
    std_loads, std_dumps, std_numpy = codec._json_backend()
    assert takes_numpy and not std_numpy
    outputs = {"probs": np.array([[0.25, 0.5, 0.125]], np.float32), "label": np.array([2]), "t": np.arange(6.0).reshape(2, 3).T}
    fast = json.loads(dumps({"outputs": outputs}))  # a transposed (non-contiguous) array goes through the fallback
    slow = json.loads(std_dumps({"outputs": {k: v.tolist() for k, v in outputs.items()}}))
    assert fast == slow
    assert loads(b'{"inputs": {"x": [[1.5]]}}') == std_loads(b'{"inputs": {"x": [[1.5]]}}')


def test_the_cloud_side_loads_its_stack_only_when_used() -> None:
    script = (
        "import sys, edgekit, edgekit.cli, edgekit.cloud, edgekit.cloud.sagemaker, edgekit.cloud.advisor, edgekit.edge.fallback; "
        "print(sorted({k.split('.')[0] for k in sys.modules} & "
        "{'starlette', 'uvicorn', 'prometheus_client', 'orjson', 'boto3', 'botocore', 'onnxruntime'}))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)}
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
