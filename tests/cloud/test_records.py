"""Many records per SageMaker request on a real uvicorn server: the wine scikit-learn pipeline compiled with edgekit
(a fixed batch of 1, so the server splits the records) against scikit-learn's own predictions, in every format; the
multi-record CSV bodies a batch transform job sends (SplitType Line, BatchStrategy MultiRecord, up to MaxPayloadInMB);
a model with a fixed batch of 4; bad records, each a 400 naming its row."""

from __future__ import annotations

import io
import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from helpers import ORT_ONLY, make_mlp

import edgekit
from edgekit.cloud.content import HttpError
from edgekit.cloud.model_server import ModelServer, ServeOptions
from edgekit.cloud.servable import run_records

PAYLOAD_BYTES = 4096  # the transform job's MaxPayloadInMB, scaled down so the rows take many requests


@pytest.fixture(scope="module")
def wine(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any, np.ndarray]:
    """(artifact, the fitted scikit-learn pipeline, its rows as float32)."""
    import joblib
    from sklearn.datasets import load_wine
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    work = tmp_path_factory.mktemp("records")
    x, y = load_wine(return_X_y=True)
    x = x.astype(np.float32)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000, random_state=0)).fit(x, y)
    joblib.dump(model, work / "wine.joblib")
    result = edgekit.compile(
        work / "wine.joblib",
        "x86_64",
        work / "build",
        pipeline=ORT_ONLY,
        input_shapes={"input": [1, 13]},
        name="wine",
        use_cache=False,
        trust_unknown_types=True,  # written a moment ago by this test
    )
    return result.artifact_dir, model, x


@pytest.fixture(scope="module")
def server(wine: tuple[Path, Any, np.ndarray]) -> Iterator[ModelServer]:
    opts = ServeOptions(port=0, max_body_mb=PAYLOAD_BYTES / 2**20)
    with ModelServer([wine[0]], options=opts) as srv:
        yield srv


def post(url: str, body: bytes, content_type: str, accept: str | None = None) -> tuple[int, str, bytes]:
    headers = {"Content-Type": content_type}
    if accept:
        headers["Accept"] = accept
    request = urllib.request.Request(url + "/invocations", data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.headers["Content-Type"], response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read()


def csv_lines(x: np.ndarray) -> list[str]:
    return [",".join(f"{v:.9g}" for v in row) for row in x]


def mini_batches(lines: list[str], limit: int) -> Iterator[bytes]:
    """What a transform job with SplitType Line and BatchStrategy MultiRecord sends: as many whole lines per
    request as fit under MaxPayloadInMB."""
    batch: list[str] = []
    size = 0
    for line in lines:
        if batch and size + len(line) + 1 > limit:
            yield ("\n".join(batch) + "\n").encode()
            batch, size = [], 0
        batch.append(line)
        size += len(line) + 1
    if batch:
        yield ("\n".join(batch) + "\n").encode()


def test_batch_transform_csv_bodies_answer_sklearns_prediction_line_by_line(
    server: ModelServer, wine: tuple[Path, Any, np.ndarray]
) -> None:
    _, model, x = wine
    rows = np.concatenate([x, x[::-1]])  # 356 rows: several requests at this payload limit
    lines = csv_lines(rows)
    bodies = list(mini_batches(lines, PAYLOAD_BYTES))
    assert len(bodies) > 5 and all(len(b) <= PAYLOAD_BYTES for b in bodies)
    out: list[str] = []
    for body in bodies:
        status, media, answer = post(server.url, body, "text/csv", "text/csv")
        assert status == 200 and media.split(";")[0] == "text/csv", answer[:200]
        text = answer.decode()
        assert text.endswith("\n") and text.count("\n") == body.count(b"\n")  # one line per record, in order
        out.extend(text.splitlines())
    assert len(out) == len(rows)
    got = np.array([[float(v) for v in line.split(",")] for line in out])
    assert got.shape == (len(rows), 4)  # label, then the 3 probabilities
    np.testing.assert_array_equal(got[:, 0].astype(int), model.predict(rows))
    np.testing.assert_allclose(got[:, 1:], model.predict_proba(rows), atol=1e-5)


def test_every_format_takes_many_records_and_answers_one_result_each(
    server: ModelServer, wine: tuple[Path, Any, np.ndarray]
) -> None:
    _, model, x = wine
    rows = x[10:17]
    want_label, want_proba = model.predict(rows), model.predict_proba(rows)

    def check(labels: Any, probs: Any) -> None:
        np.testing.assert_array_equal(np.asarray(labels), want_label)
        np.testing.assert_allclose(np.asarray(probs), want_proba, atol=1e-5)

    for doc in ({"instances": rows.tolist()}, rows.tolist(), {"instances": [{"input": r} for r in rows.tolist()]}):
        status, _, body = post(server.url, json.dumps(doc).encode(), "application/json")
        assert status == 200, body
        predictions = json.loads(body)["predictions"]
        assert len(predictions) == len(rows)
        check([p["label"] for p in predictions], [p["probabilities"] for p in predictions])

    status, _, body = post(server.url, json.dumps({"inputs": rows.tolist()}).encode(), "application/json")
    outputs = json.loads(body)["outputs"]
    check(outputs["label"], outputs["probabilities"])

    status, _, body = post(server.url, json.dumps({"inputs": rows[0].tolist()}).encode(), "application/json")
    assert status == 200 and json.loads(body)["outputs"]["label"] == [want_label[0]]  # one record, no batch dimension

    jsonl = "".join(json.dumps(r) + "\n" for r in rows.tolist()).encode()
    status, media, body = post(server.url, jsonl, "application/jsonlines")  # answered in its own type
    assert status == 200 and media == "application/jsonlines"
    records = [json.loads(line) for line in body.decode().splitlines()]
    check([r["label"] for r in records], [r["probabilities"] for r in records])

    buf = io.BytesIO()
    np.save(buf, rows)
    status, _, body = post(server.url, buf.getvalue(), "application/x-npy", "application/x-npz")
    with np.load(io.BytesIO(body)) as out:
        check(out["label"], out["probabilities"])

    buf = io.BytesIO()
    np.savez(buf, input=rows)
    status, _, body = post(server.url, buf.getvalue(), "application/x-npz", "application/jsonlines")
    records = [json.loads(line) for line in body.decode().splitlines()]
    check([r["label"] for r in records], [r["probabilities"] for r in records])

    status, media, body = post(server.url, jsonl, "application/jsonlines", "text/csv, application/json")  # the first
    assert status == 200 and media.split(";")[0] == "text/csv" and body.count(b"\n") == len(rows)

    csv = "\n".join(csv_lines(rows)).encode()  # no final newline
    status, _, body = post(server.url, csv, "text/csv", "application/json")
    outputs = json.loads(body)["predictions"]
    check([p["label"] for p in outputs], [p["probabilities"] for p in outputs])


@pytest.mark.parametrize(
    ("body", "content_type", "words"),
    [
        (b"1,2,3\n", "text/csv", ["CSV line 1 has 3 fields", "takes 13"]),
        (b"%s\n%s\n1,2\n", "text/csv", ["CSV line 3 has 2 fields"]),  # ragged: the third line
        (b"%s\n%s,7\n", "text/csv", ["CSV line 2 has 14 fields"]),
        (b"%s\n%s\n1,2,3,4,5,six,7,8,9,10,11,12,13\n", "text/csv", ["CSV line 3, field 6: 'six' is not a float32 number"]),
        (b"a,b,c,d,e,f,g,h,i,j,k,l,m\n%s\n", "text/csv", ["CSV line 1, field 1", "header"]),
        (b"%s\n\n%s\n", "text/csv", ["CSV line 2 is empty"]),
        (b"\xff\xfe1,2", "text/csv", ["not UTF-8"]),
        (b'{"instances": [[%s], [1, 2]]}', "application/json", ["instance 2", "shape [2]", "[13]"]),
        (b'[[%s], [%s], [1, 2, "x", 4, 5, 6, 7, 8, 9, 10, 11, 12, 13]]', "application/json", ["instance 3", "not an array"]),
        (b"[%s]\n[%s]\n{oops\n", "application/jsonlines", ["JSON Lines line 3 is not valid JSON"]),
        (b'[%s]\n{"other": [%s]}\n', "application/jsonlines", ["JSON Lines line 2", "no input 'input'"]),
        (b'{"inputs": [[1, 2]]}', "application/json", ["expects shape [1, 13]", "got [1, 2]", "records of [13]"]),
    ],
)
def test_a_bad_record_is_a_400_naming_its_row(server: ModelServer, body: bytes, content_type: str, words: list[str]) -> None:
    good = ",".join(str(v) for v in range(13)).encode()
    body = body.replace(b"%s", good)
    status, media, answer = post(server.url, body, content_type)
    assert status == 400 and media == "application/json", answer
    message = json.loads(answer)["error"]
    assert "\n" not in message and "Traceback" not in message
    for word in words:
        assert word in message, message


def test_a_body_over_the_limit_is_still_refused(server: ModelServer, wine: tuple[Path, Any, np.ndarray]) -> None:
    body = "\n".join(csv_lines(np.tile(wine[2], (3, 1)))).encode()
    assert len(body) > PAYLOAD_BYTES
    status, _, answer = post(server.url, body, "text/csv")
    assert status == 413 and "over the limit" in json.loads(answer)["error"]


def test_a_fixed_batch_of_four_takes_any_number_of_records(tmp_path: Path) -> None:
    onnx.save(make_mlp(batch=4), str(tmp_path / "four.onnx"))
    artifact = edgekit.compile(
        tmp_path / "four.onnx", "x86_64", tmp_path / "build", pipeline=ORT_ONLY, name="four", use_cache=False
    ).artifact_dir
    model = edgekit.load(artifact)
    rng = np.random.default_rng(3)
    with ModelServer([artifact], options=ServeOptions(port=0)) as srv:
        for n in (1, 3, 4, 9):  # padded, exact, split and padded
            rows = rng.standard_normal((n, 8)).astype(np.float32)
            padded = np.concatenate([rows, np.zeros((-n % 4, 8), np.float32)])
            want = np.concatenate([model.predict({"x": padded[i : i + 4]})[0] for i in range(0, len(padded), 4)])[:n]
            status, _, body = post(srv.url, "\n".join(csv_lines(rows)).encode(), "text/csv")
            assert status == 200, body
            got = np.array([[float(v) for v in line.split(",")] for line in body.decode().splitlines()])
            np.testing.assert_allclose(got, want, rtol=1e-6)


def test_run_records_passes_a_dynamic_batch_through_and_refuses_outputs_without_rows() -> None:
    calls: list[int] = []

    def double(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        calls.append(len(feeds["x"]))
        return {"y": feeds["x"] * 2}

    x = np.arange(10, dtype=np.float32).reshape(5, 2)
    np.testing.assert_array_equal(run_records(double, {"x": x}, 0, 5)["y"], x * 2)
    assert calls == [5]  # dynamic: one run
    np.testing.assert_array_equal(run_records(double, {"x": x}, 1, 5)["y"], x * 2)
    assert calls[1:] == [1] * 5  # a fixed batch of 1: one run per record

    def total(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"sum": np.asarray(feeds["x"].sum())}

    with pytest.raises(HttpError, match="output 'sum' \\(shape \\[\\]\\) has no row per record") as caught:
        run_records(total, {"x": x}, 2, 5)
    assert caught.value.status == 400 and "send 2 per request" in caught.value.message


def test_bodies_back_to_back_on_one_keep_alive_connection(wine: tuple[Path, Any, np.ndarray]) -> None:
    """What a transform job does: multi-record bodies one after another on one connection, far past the 1 MiB bound
    on a request head in all (a body read in one go with its head once counted towards it)."""
    import socket

    _, model, x = wine
    body = ("\n".join(csv_lines(x)) + "\n").encode()  # 178 rows, ≈ 22 KB
    request = b"POST /invocations HTTP/1.1\r\nHost: test\r\nContent-Type: text/csv\r\nContent-Length: %d\r\n\r\n%s" % (
        len(body),
        body,
    )
    want = model.predict(x)
    with ModelServer([wine[0]], options=ServeOptions(port=0, max_body_mb=1)) as srv:
        host, port = srv.url.removeprefix("http://").rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=30) as sock, sock.makefile("rb") as replies:
            for n in range(80):
                sock.sendall(request)  # head and body in one write: the server reads them in one go
                status = replies.readline()
                assert status.startswith(b"HTTP/1.1 200"), f"request {n + 1}: {status!r}"  # b"": the server hung up
                headers = {}
                for line in iter(replies.readline, b"\r\n"):
                    name, _, value = line.decode().partition(":")
                    headers[name.strip().lower()] = value.strip()
                answer = replies.read(int(headers["content-length"]))
                labels = [int(line.split(",", 1)[0]) for line in answer.decode().splitlines()]
                np.testing.assert_array_equal(labels, want)
