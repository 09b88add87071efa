"""Adaptive batching on a real uvicorn server, real HTTP clients in threads: MLPs compiled with a dynamic batch
dimension (ONNX Runtime), a sequence model with a dynamic length too, and a static-shape MLP. Each caller sends
inputs of its own (1-3 records) over SageMaker's /invocations or KServe v2 and must get exactly the rows the
artifact's own predict gives for its request alone; /metrics tells whether runs were merged."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from helpers import QUICK, make_mlp
from onnx import TensorProto, helper, numpy_helper
from prometheus_client.parser import text_string_to_metric_families

import edgekit
from edgekit.cloud.batching import BatchPolicy, ModelBatcher, batchable, parse_policy, policy_from_env
from edgekit.cloud.content import decode_body
from edgekit.cloud.model_server import ModelServer, ServeOptions
from edgekit.errors import EXIT_CODES, ServeError
from edgekit.manifest import read_manifest


def _seq_model() -> onnx.ModelProto:
    """[batch, time, 4] -> mean over time -> MatMul -> [batch, 3]: a model whose records may differ in length."""
    rng = np.random.default_rng(1)
    w = numpy_helper.from_array(rng.standard_normal((4, 3)).astype(np.float32), "w")
    nodes = [
        helper.make_node("ReduceMean", ["x"], ["m"], axes=[1], keepdims=0),
        helper.make_node("MatMul", ["m", "w"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "seq",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "time", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])],
        [w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """name -> artifact: 'mlp' (dynamic batch), 'seq' (dynamic batch and time), 'static' (a batch of 1)."""
    work = tmp_path_factory.mktemp("batching")
    cases = {
        "mlp": (make_mlp(batch="batch"), {"x": [-1, 8]}),
        "seq": (_seq_model(), {"x": ["batch", "time", 4]}),
        "static": (make_mlp(seed=1), {"x": [1, 8]}),
    }
    out = {}
    for name, (model, shapes) in cases.items():
        onnx.save(model, work / f"{name}.onnx")
        result = edgekit.compile(
            work / f"{name}.onnx", "x86_64", work / "build", pipeline=QUICK, input_shapes=shapes, name=name, use_cache=False
        )
        out[name] = result.artifact_dir
    return out


@pytest.fixture(scope="module")
def server(artifacts: dict[str, Path]) -> Iterator[ModelServer]:
    """Batches of up to 64 records, 150 ms for others to join, even when the model is idle: threads started together
    land in one batch. 'static' takes the default policy (never applied: it has no dynamic batch)."""
    waiting = BatchPolicy(64, 150.0, run_when_idle=False)
    opts = ServeOptions(port=0, predict_threads=2, model_batching={"mlp": waiting, "seq": waiting})
    with ModelServer(list(artifacts.values()), options=opts) as srv:
        yield srv


def post(url: str, path: str, doc: Any, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    body = json.dumps(doc).encode()
    request = urllib.request.Request(url + path, data=body, headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, json.loads(exc.read())


def invocations(url: str, model: str, x: np.ndarray) -> tuple[int, Any]:
    status, doc = post(url, "/invocations", {"inputs": {"x": x.tolist()}}, {"X-Amzn-SageMaker-Target-Model": model})
    return status, (np.asarray(next(iter(doc["outputs"].values())), dtype=np.float32) if status == 200 else doc)


def v2_infer(url: str, model: str, x: np.ndarray) -> tuple[int, Any]:
    tensor = {"name": "x", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}
    status, doc = post(url, f"/v2/models/{model}/infer", {"inputs": [tensor]})
    if status != 200:
        return status, doc
    out = doc["outputs"][0]
    return status, np.asarray(out["data"], dtype=np.float32).reshape(out["shape"])


def together(calls: Sequence[Callable[[], tuple[int, Any]]]) -> list[tuple[int, Any]]:
    """Every call in a thread of its own, released at once; their answers in order."""
    results: list[tuple[int, Any] | None] = [None] * len(calls)
    barrier = threading.Barrier(len(calls))

    def one(i: int) -> None:
        barrier.wait()
        results[i] = calls[i]()

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert all(r is not None for r in results), "a caller did not get an answer"
    return [r for r in results if r is not None]


def metrics(url: str) -> dict[tuple[str, str], float]:
    """(sample name, model label) -> value of every batch sample on /metrics."""
    with urllib.request.urlopen(url + "/metrics", timeout=10) as response:
        text = response.read().decode()
    out: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(text):
        if family.name.startswith("edgekit_batch"):
            for s in family.samples:
                if s.name.endswith(("_count", "_sum", "_total")):
                    out[(s.name, s.labels.get("model", ""))] = s.value
    return out


def delta(before: dict[tuple[str, str], float], after: dict[tuple[str, str], float], name: str, model: str) -> float:
    return after.get((name, model), 0.0) - before.get((name, model), 0.0)


def test_each_caller_gets_its_own_rows_from_merged_runs(server: ModelServer, artifacts: dict[str, Path]) -> None:
    model = edgekit.load(artifacts["mlp"])
    rng = np.random.default_rng(7)
    inputs = [rng.standard_normal((1 + i % 3, 8)).astype(np.float32) * (i + 1) for i in range(16)]
    want = [model.predict({"x": x})[0] for x in inputs]
    before = metrics(server.url)
    calls = [partial(invocations if i % 2 else v2_infer, server.url, "mlp", x) for i, x in enumerate(inputs)]  # both protocols
    answers = together(calls)
    for (status, got), x, expected in zip(answers, inputs, want, strict=True):
        assert status == 200, got
        assert got.shape == (len(x), 4)
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    after = metrics(server.url)
    runs = delta(before, after, "edgekit_batch_requests_count", "mlp")
    assert delta(before, after, "edgekit_batch_requests_sum", "mlp") == 16
    assert delta(before, after, "edgekit_batch_size_sum", "mlp") == sum(len(x) for x in inputs)
    assert 1 <= runs < 16  # merged: fewer runs than requests
    assert delta(before, after, "edgekit_batch_wait_seconds_count", "mlp") == 16
    assert delta(before, after, "edgekit_batch_retries_total", "mlp") == 0


def test_a_lone_request_waits_at_most_the_delay(server: ModelServer, artifacts: dict[str, Path]) -> None:
    x = np.ones((2, 8), np.float32)
    before = metrics(server.url)
    t0 = time.monotonic()
    status, got = invocations(server.url, "mlp", x)
    elapsed = time.monotonic() - t0
    assert status == 200
    np.testing.assert_allclose(got, edgekit.load(artifacts["mlp"]).predict({"x": x})[0], rtol=1e-5, atol=1e-6)
    after = metrics(server.url)
    waited = delta(before, after, "edgekit_batch_wait_seconds_sum", "mlp")
    assert 0.14 <= waited < 1.0  # the 150 ms delay, then it ran alone
    assert elapsed < 5.0


def test_records_of_other_lengths_are_never_stacked(server: ModelServer, artifacts: dict[str, Path]) -> None:
    model = edgekit.load(artifacts["seq"])
    rng = np.random.default_rng(3)
    inputs = [rng.standard_normal((1 + i % 2, 5 if i % 3 else 9, 4)).astype(np.float32) for i in range(12)]
    before = metrics(server.url)
    answers = together([partial(invocations, server.url, "seq", x) for x in inputs])
    for (status, got), x in zip(answers, inputs, strict=True):
        assert status == 200, got
        np.testing.assert_allclose(got, model.predict({"x": x})[0], rtol=1e-5, atol=1e-6)
    after = metrics(server.url)
    assert delta(before, after, "edgekit_batch_retries_total", "seq") == 0  # no failed concatenation behind the answers
    assert delta(before, after, "edgekit_batch_requests_sum", "seq") == 12
    assert 2 <= delta(before, after, "edgekit_batch_requests_count", "seq") < 12  # a batch per length at least


def test_a_bad_request_fails_alone_among_good_ones(server: ModelServer, artifacts: dict[str, Path]) -> None:
    model = edgekit.load(artifacts["mlp"])
    good = [np.full((1, 8), i, np.float32) for i in range(6)]
    bad = np.ones((1, 7), np.float32)  # a record of 7 features, the model takes 8
    calls = [partial(invocations, server.url, "mlp", x) for x in [*good[:3], bad, *good[3:]]]
    answers = together(calls)
    status, doc = answers[3]
    assert status == 400 and "input 'x'" in doc["error"] and "[batch, 8]" in doc["error"]
    for (status, got), x in zip(answers[:3] + answers[4:], good, strict=True):
        assert status == 200
        np.testing.assert_allclose(got, model.predict({"x": x})[0], rtol=1e-5, atol=1e-6)


def test_a_static_shape_model_is_never_batched(server: ModelServer, artifacts: dict[str, Path]) -> None:
    model = edgekit.load(artifacts["static"])
    inputs = [np.full((1, 8), i / 3, np.float32) for i in range(8)]
    answers = together([partial(invocations, server.url, "static", x) for x in inputs])
    for (status, got), x in zip(answers, inputs, strict=True):
        assert status == 200
        np.testing.assert_allclose(got, model.predict({"x": x})[0], rtol=1e-5, atol=1e-6)
    assert not [k for k in metrics(server.url) if k[1] == "static"]


def test_v2_metadata_and_requests_follow_the_dynamic_dims(server: ModelServer, artifacts: dict[str, Path]) -> None:
    with urllib.request.urlopen(server.url + "/v2/models/seq", timeout=10) as response:
        meta = json.loads(response.read())
    assert meta["inputs"][0]["shape"] == [-1, -1, 4] and meta["outputs"][0]["shape"] == [-1, 3]
    x = np.random.default_rng(0).standard_normal((3, 11, 4)).astype(np.float32)  # a length no sample had
    status, got = v2_infer(server.url, "seq", x)
    assert status == 200
    np.testing.assert_allclose(got, edgekit.load(artifacts["seq"]).predict({"x": x})[0], rtol=1e-5, atol=1e-6)
    status, doc = v2_infer(server.url, "seq", np.ones((2, 5, 3), np.float32))
    assert status == 400 and "[batch, time, 4]" in doc["error"]


def test_by_default_a_request_to_an_idle_model_runs_at_once(artifacts: dict[str, Path]) -> None:
    model = edgekit.load(artifacts["mlp"])
    # run_when_idle: the delay is only for a busy model. A delay far beyond any slow machine's round trip, so that
    # a request that waited for it can't be taken for a slow one (0.5 s left CI ~50 ms of margin)
    opts = ServeOptions(port=0, max_batch_delay_ms=10_000)
    with ModelServer([artifacts["mlp"]], options=opts) as srv:
        for i in range(3):
            x = np.full((1, 8), i, np.float32)
            t0 = time.monotonic()
            status, got = invocations(srv.url, "mlp", x)
            assert status == 200 and time.monotonic() - t0 < 5
            np.testing.assert_allclose(got, model.predict({"x": x})[0], rtol=1e-5, atol=1e-6)
        after = metrics(srv.url)
    assert after[("edgekit_batch_wait_seconds_count", "mlp")] == 3
    assert after[("edgekit_batch_wait_seconds_sum", "mlp")] < 3


def test_batching_off_runs_each_request_alone(artifacts: dict[str, Path]) -> None:
    model = edgekit.load(artifacts["mlp"])
    opts = ServeOptions(port=0, max_batch_size=0, max_batch_delay_ms=150)
    inputs = [np.full((2, 8), i, np.float32) for i in range(6)]
    with ModelServer([artifacts["mlp"]], options=opts) as srv:
        t0 = time.monotonic()
        answers = together([partial(invocations, srv.url, "mlp", x) for x in inputs])
        elapsed = time.monotonic() - t0
        assert not metrics(srv.url)
    for (status, got), x in zip(answers, inputs, strict=True):
        assert status == 200
        np.testing.assert_allclose(got, model.predict({"x": x})[0], rtol=1e-5, atol=1e-6)
    assert elapsed < 5.0


def test_per_model_policy_and_bad_settings(artifacts: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SAGEMAKER_TS_BATCH_SIZE", "8")
    monkeypatch.setenv("EDGEKIT_MAX_BATCH_DELAY_MS", "7")
    assert policy_from_env() == BatchPolicy(8, 7.0)
    assert parse_policy("16", policy_from_env()) == BatchPolicy(16, 7.0)
    assert not parse_policy("off", BatchPolicy()).enabled
    for bad in ("lots", "nan", "inf", "1e400"):
        monkeypatch.setenv("EDGEKIT_MAX_BATCH_SIZE", bad)
        with pytest.raises(ServeError, match=rf"\$EDGEKIT_MAX_BATCH_SIZE='{bad}' is not a number"):
            ServeOptions(port=0).batch_policies()
    monkeypatch.delenv("EDGEKIT_MAX_BATCH_SIZE")
    with pytest.raises(ServeError, match="batching of model 'mlp' '16,x': expected SIZE"):
        ServeOptions(port=0, model_batching={"mlp": "16,x"}).batch_policies()
    with pytest.raises(ServeError, match=r"batching given for model\(s\) \['mpl'\]"):
        ModelServer([artifacts["mlp"]], options=ServeOptions(port=0, model_batching={"mpl": "off"}))
    specs = read_manifest(artifacts["mlp"])
    assert batchable(specs.inputs, specs.outputs)
    static = read_manifest(artifacts["static"])
    assert not batchable(static.inputs, static.outputs)
    # a model turned off on its own: served, never batched, while the default stays on
    with ModelServer([artifacts["mlp"]], options=ServeOptions(port=0, model_batching={"mlp": "off"})) as srv:
        together([partial(invocations, srv.url, "mlp", np.ones((1, 8), np.float32)) for _ in range(4)])
        assert not metrics(srv.url)


def test_the_decoder_takes_any_size_on_a_dynamic_axis(artifacts: dict[str, Path]) -> None:
    specs = read_manifest(artifacts["seq"]).inputs
    doc = {"instances": [np.ones((6, 4)).tolist(), np.zeros((6, 4)).tolist()]}
    decoded = decode_body(json.dumps(doc).encode(), "application/json", specs)
    assert decoded.records == 2 and decoded.feeds["x"].shape == (2, 6, 4)
    ragged = {"instances": [np.ones((6, 4)).tolist(), np.zeros((5, 4)).tolist()]}
    with pytest.raises(Exception, match=r"instance 2: input 'x' has shape \[5, 4\], record 1 \[6, 4\]"):
        decode_body(json.dumps(ragged).encode(), "application/json", specs)


@pytest.mark.anyio
async def test_a_merged_run_that_fails_is_retried_request_by_request() -> None:
    """The batcher's contract on its own: a run that raises when any request of it holds a poisoned record."""
    runs: list[int] = []

    async def run(feeds: dict[str, np.ndarray], records: int) -> dict[str, np.ndarray]:
        runs.append(records)
        await asyncio.sleep(0.001)
        if np.any(feeds["x"] < 0):
            raise ValueError(f"negative input in a run of {records}")
        return {"y": feeds["x"] * 2}

    seen: list[tuple[int, int]] = []
    retried: list[int] = []
    batcher = ModelBatcher(
        "m",
        BatchPolicy(16, 50.0, run_when_idle=False),
        run,
        slots=1,
        observe=lambda records, requests, _waits: seen.append((records, requests)),
        on_retry=lambda: retried.append(1),
    )
    xs = [np.full((1 + i % 2, 3), i, np.float32) for i in range(5)]
    xs[2] = -xs[2] - 1
    results = await asyncio.gather(*(batcher.submit({"x": x}, len(x)) for x in xs), return_exceptions=True)
    assert seen == [(sum(len(x) for x in xs), 5)]  # one merged run
    assert runs[0] == sum(len(x) for x in xs) and runs[1:] == [len(x) for x in xs]  # then each alone
    assert retried == [1]
    for i, (x, result) in enumerate(zip(xs, results, strict=True)):
        if i == 2:
            assert isinstance(result, ValueError) and "run of 1" in str(result)  # its own error, from its own run
        else:
            assert isinstance(result, dict)
            np.testing.assert_array_equal(result["y"], x * 2)


def test_a_csv_body_to_a_dynamic_batch_model_is_one_run(server: ModelServer, artifacts: dict[str, Path]) -> None:
    """Many records in one request: one run of all of them (the dynamic batch), answered line by line."""
    x = np.random.default_rng(5).standard_normal((5, 8)).astype(np.float32)
    body = ("\n".join(",".join(f"{v:.9g}" for v in row) for row in x) + "\n").encode()
    headers = {"Content-Type": "text/csv", "Accept": "text/csv", "X-Amzn-SageMaker-Target-Model": "mlp"}
    before = metrics(server.url)
    request = urllib.request.Request(server.url + "/invocations", data=body, headers=headers)
    with urllib.request.urlopen(request, timeout=30) as response:
        got = np.array([[float(v) for v in line.split(",")] for line in response.read().decode().splitlines()])
    np.testing.assert_allclose(got, edgekit.load(artifacts["mlp"]).predict({"x": x})[0], rtol=1e-5, atol=1e-6)
    after = metrics(server.url)
    assert delta(before, after, "edgekit_batch_size_sum", "mlp") == 5
    assert delta(before, after, "edgekit_batch_size_count", "mlp") == 1


def test_the_cli_refuses_bad_batching_settings_in_one_line(artifacts: dict[str, Path], tmp_path: Path) -> None:
    edgekit_cli = Path(sys.executable).with_name("edgekit")
    root = Path(__file__).resolve().parents[2]
    for args, env, expected in (
        (["--model-batching", "mlp=lots"], {}, "batching of model 'mlp' 'lots': expected SIZE[,DELAY_MS]"),
        ([], {"EDGEKIT_MAX_BATCH_SIZE": "2.5"}, "$EDGEKIT_MAX_BATCH_SIZE=2.5: give a whole number of records"),
    ):
        proc = subprocess.run(
            [str(edgekit_cli), "serve", str(artifacts["mlp"]), "--port", "0", *args],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            env={**os.environ, "PYTHONPATH": str(root), **env},
            timeout=120,
        )
        assert proc.returncode == EXIT_CODES[ServeError] == 25, proc.stderr
        assert proc.stderr.count("\n") == 1 and expected in proc.stderr and "Traceback" not in proc.stderr
