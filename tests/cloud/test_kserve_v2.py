"""edgekit serve's Open Inference Protocol (KServe v2) driven by Triton's own HTTP client (``tritonclient[http]``, a
v2 client nobody here wrote) over real HTTP: health, server and model metadata, versions, JSON and binary tensors
(the binary tensor data extension), requested outputs, the request id, datatype checks, BYTES both ways; results
compared with the artifact run directly."""

from __future__ import annotations

import gzip
import json
import os
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.http as th  # the dev extra installs it: a missing one fails the run, never skips it
from helpers import small_ort_artifact
from tritonclient.utils import InferenceServerException

import edgekit
from edgekit.cloud.model_server import ModelServer, ServeOptions

X = np.linspace(-1, 1, 8, dtype=np.float32).reshape(1, 8)
STEPS = """
import numpy as np

def featurize(inputs):  # text in (BYTES): one feature per character code, 8 of them
    codes = [float(ord(c)) / 128 for c in str(inputs["text"].ravel()[0])[:8].ljust(8)]
    return {"x": np.array([codes], dtype=np.float32)}

def name_it(outputs):  # text out (BYTES)
    probs = outputs["probs"]
    return {"label": np.array(["class-%d" % probs.argmax()]), "probs": probs}
"""


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return small_ort_artifact(tmp_path_factory.mktemp("kserve"), "small")


@pytest.fixture(scope="module")
def server(artifact: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModelServer]:
    folder = tmp_path_factory.mktemp("steps")
    module = f"kserve_steps_{os.getpid()}"
    (folder / f"{module}.py").write_text(STEPS)
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(folder))
        pipelines = {"words": [f"{module}:featurize", str(artifact), f"{module}:name_it"]}
        with ModelServer([artifact], pipelines=pipelines, options=ServeOptions(port=0, max_decoded_mb=1)) as srv:
            yield srv


@pytest.fixture
def client(server: ModelServer) -> Iterator[Any]:
    c = th.InferenceServerClient(server.url.removeprefix("http://"))
    yield c
    c.close()


def _input(name: str, arr: np.ndarray, datatype: str, binary: bool) -> Any:
    t = th.InferInput(name, list(arr.shape), datatype)
    t.set_data_from_numpy(arr, binary_data=binary)
    return t


def _refused(call: Any) -> tuple[str | None, str]:
    with pytest.raises(InferenceServerException) as caught:
        call()
    return caught.value.status(), caught.value.message()


def test_health_and_metadata_through_tritonclient(client: Any) -> None:
    assert client.is_server_live() and client.is_server_ready()
    assert client.get_server_metadata()["extensions"] == ["binary_tensor_data"]
    meta = client.get_model_metadata("small", "1")
    assert meta["versions"] == ["1"] and meta["platform"] == "onnxruntime_onnx"
    assert meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [1, 8]}]
    assert meta["outputs"] == [{"name": "probs", "datatype": "FP32", "shape": [1, 4]}]  # from the manifest
    words = client.get_model_metadata("words")  # a Python callable at each end: names known only when it runs
    assert words["platform"] == "pipeline" and words["inputs"] == [] and words["outputs"] == []
    assert client.is_model_ready("small") and client.is_model_ready("small", "1")
    assert not client.is_model_ready("small", "2")
    assert _refused(lambda: client.get_model_metadata("small", "2")) == (
        "404",
        "model 'small' has no version '2'; its version is '1'",
    )
    status, message = _refused(lambda: client.get_model_metadata("nope"))
    assert status == "404" and "'nope'" in message and "small" in message


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_infer_through_tritonclient_matches_the_artifact_run_directly(client: Any, artifact: Path, binary: bool) -> None:
    expected = edgekit.load(artifact).predict({"x": X})[0]
    x = _input("x", X, "FP32", binary)
    asked = [th.InferRequestedOutput("probs", binary_data=binary)]
    result = client.infer("small", [x], outputs=asked, request_id=f"req-{binary}", model_version="1")
    doc = result.get_response()
    assert doc["id"] == f"req-{binary}" and doc["model_name"] == "small" and doc["model_version"] == "1"
    assert ("parameters" in doc["outputs"][0]) == binary and ("data" in doc["outputs"][0]) != binary
    np.testing.assert_allclose(result.as_numpy("probs"), expected, rtol=1e-6)
    result = client.infer("small", [x])  # no outputs named: tritonclient asks for all of them as binary
    assert result.get_response()["outputs"][0]["parameters"]["binary_data_size"] == expected.nbytes
    np.testing.assert_allclose(result.as_numpy("probs"), expected, rtol=1e-6)


def test_requested_outputs_bytes_both_ways_and_a_mix_of_json_and_binary(client: Any, artifact: Path) -> None:
    text = np.array(["héllo"], dtype=object)
    features = np.array([[ord(c) / 128 for c in "héllo".ljust(8)]], dtype=np.float32)
    probs = edgekit.load(artifact).predict({"x": features})[0]
    for binary_in in (False, True):
        asked = [th.InferRequestedOutput("label", binary_data=True)]  # "probs" not asked for: not answered
        result = client.infer("words", [_input("text", text, "BYTES", binary_in)], outputs=asked, request_id="w")
        doc = result.get_response()
        assert [o["name"] for o in doc["outputs"]] == ["label"] and doc["outputs"][0]["datatype"] == "BYTES"
        assert result.as_numpy("label").tolist() == [f"class-{probs.argmax()}".encode()]
        assert result.as_numpy("probs") is None
    asked = [th.InferRequestedOutput("probs", binary_data=False), th.InferRequestedOutput("label", binary_data=False)]
    result = client.infer("words", [_input("text", text, "BYTES", True)], outputs=asked)
    assert [o["name"] for o in result.get_response()["outputs"]] == ["probs", "label"]  # in the order asked
    assert result.as_numpy("label").tolist() == [f"class-{probs.argmax()}"]
    np.testing.assert_allclose(result.as_numpy("probs"), probs, rtol=1e-6)


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_compressed_requests_through_tritonclient(client: Any, artifact: Path, algorithm: str) -> None:
    expected = edgekit.load(artifact).predict({"x": X})[0]
    for binary in (False, True):
        result = client.infer("small", [_input("x", X, "FP32", binary)], request_compression_algorithm=algorithm)
        np.testing.assert_allclose(result.as_numpy("probs"), expected, rtol=1e-6)


def test_what_tritonclient_gets_refused_is_one_json_line(client: Any) -> None:
    x = _input("x", X.astype(np.int64), "INT64", True)
    assert _refused(lambda: client.infer("small", [x])) == ("400", "input 'x' is FP32 [1, 8], the request sends INT64: send FP32")
    text = _input("x", np.array([["a"] * 8], dtype=object), "BYTES", True)
    assert _refused(lambda: client.infer("small", [text]))[1].startswith("input 'x' is FP32 [1, 8], the request sends BYTES")
    x = _input("x", X, "FP32", True)
    asked = [th.InferRequestedOutput("probs"), th.InferRequestedOutput("logits")]
    status, message = _refused(lambda: client.infer("small", [x], outputs=asked))
    assert (status, message) == ("400", "model 'small' has no output(s) ['logits']; its outputs are ['probs']")
    status, message = _refused(lambda: client.infer("small", [x], model_version="7"))
    assert (status, message) == ("404", "model 'small' has no version '7'; its version is '1'")


def _call(url: str, body: bytes | None = None, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, data=body, headers=headers or {}, method="POST" if body is not None else "GET")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def test_raw_binary_requests_and_json_errors_on_every_v2_path(server: ModelServer, artifact: Path) -> None:
    expected = edgekit.load(artifact).predict({"x": X})[0]
    status, headers, body = _call(
        server.url + "/v2/models/small/versions/1/infer", X.tobytes(), {"Inference-Header-Content-Length": "0"}
    )
    length = int(headers["inference-header-content-length"])
    head = json.loads(body[:length])
    assert status == 200 and headers["content-type"] == "application/octet-stream"
    assert head["outputs"][0]["parameters"] == {"binary_data_size": 16}
    np.testing.assert_allclose(np.frombuffer(body[length:], "<f4").reshape(1, 4), expected, rtol=1e-6)
    for path, want in [
        ("/v2/models/small/versions/2/ready", 404),
        ("/v2/models/small/versions/2/infer", 404),
        ("/v2/models/small/stats", 404),
        ("/v2/repository/index", 404),
    ]:
        status, headers, body = _call(server.url + path, b"{}" if path.endswith("infer") else None)
        assert status == want and headers["content-type"] == "application/json", path
        assert set(json.loads(body)) == {"error"}
    status, headers, body = _call(server.url + "/v2/models/small/infer")  # GET on a POST route
    assert status == 405 and json.loads(body) == {"error": "GET is not served on /v2/models/small/infer"}
    assert headers["allow"] == "POST"
    status, _, body = _call(server.url + "/v2/models/small/infer", b"{}", {"Content-Encoding": "br"})
    assert status == 415 and "Content-Encoding 'br' is not served; send gzip, deflate" in json.loads(body)["error"]
    bomb = gzip.compress(b" " * (2 * 2**20))  # 2 MiB of spaces in 2 KB, over --max-decoded-mb 1
    status, _, body = _call(server.url + "/v2/models/small/infer", bomb, {"Content-Encoding": "gzip"})
    assert status == 413 and "the gzip body inflates to over 1048576 bytes" in json.loads(body)["error"]
    cut = gzip.compress(b"{}" * 100)[:-12]  # the stream cut short
    status, _, body = _call(server.url + "/v2/models/small/infer", cut, {"Content-Encoding": "gzip"})
    assert status == 400 and "the gzip body ends before its compressed stream does" in json.loads(body)["error"]
