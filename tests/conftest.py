"""Shared fixtures: tiny models generated in the tests, isolated caches."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgekit.wire.inference import InferenceRequest, InferenceResponse


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test gets its own artifact cache, so no test sees another's compiles."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("EDGEKIT_CACHE_DIR", str(cache))
    return cache


@pytest.fixture(scope="session", autouse=True)
def _wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Wheels downloaded for packaging (the aarch64 apache-tvm, 94 MB) are shared by the session's isolated caches
    (or reused from $EDGEKIT_TEST_WHEELHOUSE)."""
    env = os.environ.get("EDGEKIT_TEST_WHEELHOUSE")
    house = Path(env) if env else tmp_path_factory.mktemp("wheelhouse")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("EDGEKIT_WHEELHOUSE", str(house))
        yield house


@pytest.fixture(scope="session")
def sysroot_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The aarch64 sysroot is built once per session (or reused from $EDGEKIT_TEST_SYSROOT_CACHE)."""
    env = os.environ.get("EDGEKIT_TEST_SYSROOT_CACHE")
    return Path(env) if env else tmp_path_factory.mktemp("sysroot-cache")


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


@pytest.fixture
def mlp_onnx(tmp_path: Path) -> Path:
    path = tmp_path / "mlp.onnx"
    onnx.save(make_mlp(), str(path))
    return path


@pytest.fixture
def out_dir(tmp_path: Path) -> Path:
    return tmp_path / "build"


class InferServer:
    """An Open Inference Protocol server (what KServe / Triton expose) for one model, with switchable faults."""

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


# --------------------------------------------------------------------------- a packaged build and a fleet file

APP = "com.example.App"  # the component of write_build


def write_build(build: Path, version: str = "1.0.0", lifecycle: dict[str, Any] | None = None) -> Path:
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


def write_fleet(path: Path, devices: int = 4) -> Path:
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
