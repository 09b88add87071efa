"""What many test files share: the system tools a test needs, deadline polling, a quick pipeline, tiny models,
packaged builds, a fleet file and a fake inference server. Import it as ``from helpers import ...`` (the tests'
folder is on sys.path: pyproject's tool.pytest pythonpath).

An async test is written ``@pytest.mark.anyio`` ``async def test_...``: anyio's pytest plugin (anyio is a dependency
already) runs it on asyncio, instead of a sync test wrapping ``asyncio.run(scenario())``."""

from __future__ import annotations

import asyncio
import functools
import importlib.util
import io
import json
import os
import shutil
import threading
import time
import zipfile
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgekit.compiler.pipeline import CandidateSpec, MeasureSpec, Pipeline
from edgekit.wire.open_inference import InferenceRequest, InferenceResponse

# --------------------------------------------------------------------------- system tools: skip here, fail in CI

# CI (.ci/run: make test) installs every tool (scripts/system-deps): there a missing one fails the run instead of
# skipping its tests, or a run that tested nothing of the broker or the page would still pass.
IN_CI = os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def _on_path(*names: str, extra: str | None = None) -> Callable[[], bool]:
    return lambda: any(shutil.which(n) or (extra and shutil.which(n, path=extra)) for n in names)


# name -> (is it there?, how to install it)
TOOLS: dict[str, tuple[Callable[[], bool], str]] = {
    "mosquitto": (_on_path("mosquitto", extra="/usr/sbin:/usr/local/sbin"), "apt-get install -y mosquitto"),
    "chromium": (_on_path("chromium", "chromium-browser"), "apt-get install -y chromium"),
    "qemu-aarch64": (_on_path("qemu-aarch64-static", "qemu-aarch64"), "apt-get install -y qemu-user-static"),
    "qemu-x86_64": (_on_path("qemu-x86_64-static", "qemu-x86_64"), "apt-get install -y qemu-user-static"),
    "aarch64-linux-gnu-g++": (_on_path("aarch64-linux-gnu-g++"), "apt-get install -y g++-aarch64-linux-gnu"),
    "amqtt": (lambda: importlib.util.find_spec("amqtt") is not None, "pip install 'edgekit[fleet]'"),
}


@functools.cache
def tool_missing(name: str) -> str | None:
    """None when ``name`` (a key of TOOLS) is there, else why not and how to install it."""
    if name not in TOOLS:
        raise KeyError(f"unknown tool {name!r}: add it to tests/helpers.py TOOLS")
    present, install = TOOLS[name]
    return None if present() else f"{name} not installed ({install}; make system-deps installs every tool)"


def requires(*tools: str) -> pytest.MarkDecorator:
    """Mark a test (or a module: ``pytestmark = requires("mosquitto")``) as needing system tools. Where one is
    missing the test is skipped, or fails under CI=true (conftest.py: pytest_runtest_setup)."""
    for name in tools:
        if name not in TOOLS:
            raise KeyError(f"unknown tool {name!r}: add it to tests/helpers.py TOOLS")
    return pytest.mark.requires(*tools)


def check_requirements(item: pytest.Item) -> None:
    """Skip ``item`` (fail it under CI) when a tool its ``requires`` marks name is missing."""
    for mark in item.iter_markers("requires"):
        for name in mark.args:
            why = tool_missing(name)
            if why is not None:
                if IN_CI:
                    pytest.fail(f"{why}; CI=true: a missing tool fails the run instead of skipping", pytrace=False)
                pytest.skip(why)


# --------------------------------------------------------------------------- deadline polling, never sleep-then-assert


async def eventually(check: Callable[[], bool], timeout: float = 20.0, what: str = "condition", every: float = 0.02) -> None:
    """Wait until ``check()`` holds, polling; AssertionError when it still doesn't after ``timeout`` s. The timeout
    only catches a hang: a passing run waits no longer than it must."""
    end = time.monotonic() + timeout
    while not check():
        if time.monotonic() > end:
            raise AssertionError(f"{what} not met within {timeout} s")
        await asyncio.sleep(every)


def wait_until(check: Callable[[], bool], timeout: float = 20.0, what: str = "condition", every: float = 0.02) -> None:
    """:func:`eventually` for synchronous tests."""
    end = time.monotonic() + timeout
    while not check():
        if time.monotonic() > end:
            raise AssertionError(f"{what} not met within {timeout} s")
        time.sleep(every)


# --------------------------------------------------------------------------- a quick pipeline

# One ONNX Runtime candidate, measured just enough to produce a manifest: for tests about what comes after a compile.
QUICK = Pipeline.model_validate(
    {
        "name": "quick",
        "candidates": [{"name": "ort", "backend": "onnxruntime"}],
        "measure": {"samples": 2, "warmup": 0, "repeat": 2},
    }
)


# --------------------------------------------------------------------------- tiny models


ORT_ONLY = Pipeline(
    name="test-ort",
    candidates=[CandidateSpec(name="ort", backend="onnxruntime", options={"optimization": "extended"})],
    measure=MeasureSpec(samples=3, warmup=0, repeat=3),
)
"""ONNX Runtime only (portable `extended` graph level), a short measurement: the quickest real compile."""


def small_ort_artifact(work: Path, name: str) -> Path:
    """:func:`make_mlp` saved in ``work`` and compiled for x86_64 with :data:`ORT_ONLY`, named ``name``."""
    import edgekit

    onnx.save(make_mlp(), str(work / f"{name}.onnx"))
    return edgekit.compile(
        work / f"{name}.onnx", "x86_64", work / "build", pipeline=ORT_ONLY, name=name, use_cache=False
    ).artifact_dir


def make_mlp(in_features: int = 8, hidden: int = 16, classes: int = 4, batch: int | str = 1, seed: int = 0) -> onnx.ModelProto:
    """A tiny MLP classifier (MatMul, Add, Relu, MatMul, Add, Softmax)."""
    rng = np.random.default_rng(seed)
    inits = [
        numpy_helper.from_array(rng.standard_normal((in_features, hidden)).astype(np.float32) * 0.5, "w1"),
        numpy_helper.from_array(rng.standard_normal(hidden).astype(np.float32) * 0.1, "b1"),
        numpy_helper.from_array(rng.standard_normal((hidden, classes)).astype(np.float32) * 0.5, "w2"),
        numpy_helper.from_array(rng.standard_normal(classes).astype(np.float32) * 0.1, "b2"),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"),
        helper.make_node("Add", ["h", "b1"], ["hb"], name="fc1_bias"),
        helper.make_node("Relu", ["hb"], ["r"], name="relu"),
        helper.make_node("MatMul", ["r", "w2"], ["o"], name="fc2"),
        helper.make_node("Add", ["o", "b2"], ["logits"], name="fc2_bias"),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=1, name="softmax"),
    ]
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, in_features])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, [batch, classes])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def make_cnn(seed: int = 0) -> onnx.ModelProto:
    """Conv 3→16 (3x3) + ReLU, Conv 16→16 + ReLU, global pool, Gemm → 5 classes, input 1x3x16x16."""
    rng = np.random.default_rng(seed)
    inits = [
        numpy_helper.from_array(rng.standard_normal((16, 3, 3, 3)).astype(np.float32) * 0.3, "w1"),
        numpy_helper.from_array(rng.standard_normal(16).astype(np.float32) * 0.1, "b1"),
        numpy_helper.from_array(rng.standard_normal((16, 16, 3, 3)).astype(np.float32) * 0.1, "w2"),
        numpy_helper.from_array(rng.standard_normal(16).astype(np.float32) * 0.1, "b2"),
        numpy_helper.from_array(rng.standard_normal((5, 16)).astype(np.float32) * 0.5, "wf"),
        numpy_helper.from_array(rng.standard_normal(5).astype(np.float32) * 0.1, "bf"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1], name="conv2"),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("GlobalAveragePool", ["r2"], ["p"], name="pool"),
        helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "wf", "bf"], ["logits"], transB=1, name="fc"),
    ]
    graph = helper.make_graph(
        nodes,
        "cnn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 5])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


# --------------------------------------------------------------------------- an inference server


class InferServer:
    """An Open Inference Protocol server (what KServe / Triton expose) for one model, with switchable faults.

    Real HTTP over a real socket, but not edgekit serve: a test switches it to answer 503s or garbage mid-run, which a
    healthy real server never does (edgekit serve itself is driven by Triton's client in tests/cloud/test_kserve_v2.py)."""

    def __init__(self, model: str, predict: Any) -> None:
        self.model, self.predict = model, predict
        self.mode = "ok"  # ok | error | garbage
        self.requests = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                server.requests += 1
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if self.path != f"/v2/models/{server.model}/infer" or server.mode == "error":
                    self.send_response(503 if server.mode == "error" else 404)
                    self.end_headers()
                    self.wfile.write(b"model unavailable")
                    return
                if server.mode == "garbage":
                    reply = b"<html>proxy error</html>"
                else:
                    feeds = {n: a.astype(np.float32) for n, a in InferenceRequest.model_validate(body).arrays().items()}
                    outs = {f"out{i}": np.asarray(o, dtype=np.float32) for i, o in enumerate(server.predict(feeds))}
                    reply = InferenceResponse.from_arrays(server.model, outs).model_dump_json(exclude_none=True).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


# --------------------------------------------------------------------------- packaged builds and a fleet file

APP = "com.example.App"  # the component of write_build


def write_build(build: Path, version: str = "1.0.0", lifecycle: dict[str, Any] | None = None) -> Path:
    """A packaged build of APP for any linux device: recipes/<APP>-<version>.json + artifacts/<APP>/<version>/app.bin."""
    recipe = {
        "RecipeFormatVersion": "2020-01-25",
        "ComponentName": APP,
        "ComponentVersion": version,
        "ComponentDescription": "a CLI test component",
        "ComponentPublisher": "edgekit tests",
        "Manifests": [
            {
                "Platform": {"os": "linux"},
                "Lifecycle": lifecycle or {"Install": "true"},
                "Artifacts": [{"URI": "s3://BUCKET_NAME/COMPONENT_NAME/COMPONENT_VERSION/app.bin"}],
            }
        ],
    }
    (build / "recipes").mkdir(parents=True, exist_ok=True)
    (build / "recipes" / f"{APP}-{version}.json").write_text(json.dumps(recipe))
    folder = build / "artifacts" / APP / version
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "app.bin").write_bytes(b"app " * 4096)
    return build


DETECTOR = "com.example.Detector"  # the component of write_model_build


def write_model_build(
    root: Path,
    name: str = DETECTOR,
    version: str = "1.0.0",
    files: dict[str, bytes] | None = None,
    run: str = "run.sh",
    extra_uris: tuple[str, ...] = (),
    skip_files: tuple[str, ...] = (),
) -> dict[str, Any]:
    """A packaged build as `edgekit package` writes one (recipes/<name>-<version>.json + artifacts/<name>/<version>/<file>):
    an aarch64 manifest with every file (Unarchive ZIP) and the ``extra_uris``, an amd64 one with the first file.
    ``skip_files`` are named in the recipe but not written. Returns the recipe."""
    files = files if files is not None else {"model.zip": b"model-bytes-" + name.encode() + version.encode()}
    artifacts: list[dict[str, str]] = [
        {"URI": f"s3://BUCKET_NAME/COMPONENT_NAME/COMPONENT_VERSION/{f}", "Unarchive": "ZIP"} for f in files
    ]
    artifacts += [{"URI": uri} for uri in extra_uris]
    recipe = {
        "RecipeFormatVersion": "2020-01-25",
        "ComponentName": name,
        "ComponentVersion": version,
        "ComponentPublisher": "edgekit tests",
        "Manifests": [
            {"Platform": {"os": "linux", "architecture": "aarch64"}, "Lifecycle": {"Run": run}, "Artifacts": artifacts},
            {"Platform": {"os": "linux", "architecture": "amd64"}, "Lifecycle": {"Run": run}, "Artifacts": artifacts[:1]},
        ],
    }
    (root / "recipes").mkdir(parents=True, exist_ok=True)
    (root / "recipes" / f"{name}-{version}.json").write_text(json.dumps(recipe, indent=2))
    folder = root / "artifacts" / name / version
    folder.mkdir(parents=True, exist_ok=True)
    for file, data in files.items():
        if file not in skip_files:
            (folder / file).write_bytes(data)
    return recipe


def write_fleet(path: Path, devices: int = 4) -> Path:
    """A fleet file: half rasp4b (line-1), half x86_64 (line-1 and gateways), in process."""
    half = devices // 2
    path.write_text(
        json.dumps(
            {
                "name": "clitest",
                "mode": "in_process",
                "devices": [
                    {"prefix": "pi-", "count": half, "profile": "rasp4b", "groups": ["line-1"]},
                    {"prefix": "gw-", "count": devices - half, "profile": "x86_64", "groups": ["line-1", "gateways"]},
                ],
            }
        )
    )
    return path


def zip_bytes(entries: dict[str, bytes]) -> bytes:
    """A zip archive in memory holding ``entries`` (name → bytes), stored as they are: an artifact to serve."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return buffer.getvalue()
