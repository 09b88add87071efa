"""The server's Open Inference Protocol codec against bodies Triton's own client writes and reads
(``tritonclient.http``'s ``generate_request_body`` / ``parse_response_body``): JSON and binary tensors of every
datatype, BYTES included, requested outputs, the request id; and one clear 400 for each broken body."""

from __future__ import annotations

import json
import struct
from typing import Any

import numpy as np
import pytest
import tritonclient.http as th  # the dev extra installs it: a missing one fails the run, never skips it
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from edgekit.cloud.content import HttpError
from edgekit.cloud.v2_codec import V2Request, datatype_of_spec, decode_v2, encode_v2
from edgekit.manifest import TensorSpec
from edgekit.wire.open_inference import DATATYPES

Client = th.InferenceServerClient

CASES = settings(max_examples=60, deadline=None, derandomize=True)
_text = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=6)


def _texts(shape: tuple[int, ...]) -> st.SearchStrategy[np.ndarray]:
    count = int(np.prod(shape))

    def array(values: list[str]) -> np.ndarray:
        arr = np.empty(count, dtype=object)
        arr[:] = values
        return arr.reshape(shape)

    return st.lists(_text, min_size=count, max_size=count).map(array)


def _tensors(dtype: str) -> st.SearchStrategy[np.ndarray]:
    shapes = hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=4)
    if dtype == "object":
        return shapes.flatmap(_texts)
    floats = {"allow_nan": False, "allow_infinity": False} if dtype.startswith("float") else None
    return hnp.arrays(np.dtype(dtype), shapes, elements=floats)


tensors = st.sampled_from([*sorted(DATATYPES), "object"]).flatmap(_tensors)
requests = st.dictionaries(st.from_regex(r"\A[a-z]{1,6}\Z"), st.tuples(tensors, st.booleans()), min_size=1, max_size=3)


def _request(inputs: dict[str, tuple[np.ndarray, bool]], **kwargs: Any) -> tuple[bytes, str | None]:
    """What tritonclient sends: the body and its Inference-Header-Content-Length (None: all JSON)."""
    tensors = []
    for name, (arr, binary) in inputs.items():
        t = th.InferInput(name, list(arr.shape), datatype_of_spec(str(arr.dtype)))
        t.set_data_from_numpy(arr, binary_data=binary)
        tensors.append(t)
    body, json_size = Client.generate_request_body(tensors, **kwargs)
    return body, None if json_size is None else str(json_size)


@CASES
@given(requests, st.text(st.characters(codec="ascii", categories=["L", "N"]), max_size=8))
def test_what_tritonclient_sends_is_what_the_server_decodes(inputs: dict[str, tuple[np.ndarray, bool]], rid: str) -> None:
    body, length = _request(inputs, request_id=rid)
    assert (length is not None) == any(binary for _, binary in inputs.values())
    specs = [TensorSpec(name=n, shape=list(a.shape), dtype=str(a.dtype)) for n, (a, _) in inputs.items()]
    decoded = decode_v2(body, specs, length)
    assert decoded.id == (rid or None)
    assert decoded.outputs is None and decoded.binary_output  # no outputs named: tritonclient asks for all, as binary
    for name, (arr, _) in inputs.items():
        assert decoded.feeds[name].dtype == arr.dtype and decoded.feeds[name].shape == arr.shape
        np.testing.assert_array_equal(decoded.feeds[name], arr)


@CASES
@given(requests)
def test_what_the_server_answers_is_what_tritonclient_reads(outputs: dict[str, tuple[np.ndarray, bool]]) -> None:
    arrays = {n: a for n, (a, _) in outputs.items()}
    asked = [(n, binary) for n, (_, binary) in reversed(outputs.items())]  # a requested order of its own
    body, length = encode_v2("m", arrays, V2Request(feeds={}, id="r-1", outputs=asked), "1")
    assert (length is not None) == any(binary for _, binary in asked)
    result = Client.parse_response_body(body, header_length=length)
    doc = result.get_response()
    assert doc["id"] == "r-1" and doc["model_version"] == "1"
    assert [o["name"] for o in doc["outputs"]] == [n for n, _ in asked]
    for name, arr in arrays.items():
        got = result.as_numpy(name)
        if arr.dtype == object:  # BYTES: tritonclient gives bytes (binary) or str (JSON)
            got = np.array([v.decode() if isinstance(v, bytes) else v for v in got.ravel()], dtype=object).reshape(got.shape)
        else:
            assert got.dtype == arr.dtype
        assert got.shape == arr.shape
        np.testing.assert_array_equal(got, arr)


def test_requested_outputs_and_the_binary_flags_follow_the_request() -> None:
    x = np.arange(4, dtype=np.float32).reshape(1, 4)
    t = th.InferInput("x", [1, 4], "FP32")
    t.set_data_from_numpy(x, binary_data=False)
    outs = [th.InferRequestedOutput("b", binary_data=False), th.InferRequestedOutput("a", binary_data=True)]
    body, _ = Client.generate_request_body([t], outputs=outs)
    decoded = decode_v2(body, [TensorSpec(name="x", shape=[1, 4], dtype="float32")])
    assert decoded.outputs == [("b", False), ("a", True)] and not decoded.binary_output
    arrays = {"a": x * 2, "b": x + 1, "c": x}
    payload, length = encode_v2("m", arrays, decoded)
    assert length is not None
    head = json.loads(payload[:length])
    assert [o["name"] for o in head["outputs"]] == ["b", "a"]  # "c" was not asked for
    assert head["outputs"][0]["data"] == [1.0, 2.0, 3.0, 4.0] and head["outputs"][1]["parameters"] == {"binary_data_size": 16}
    np.testing.assert_array_equal(np.frombuffer(payload[length:], "<f4"), [0, 2, 4, 6])
    with pytest.raises(HttpError, match=r"model 'm' has no output\(s\) \['zz'\]; its outputs are \['a', 'b', 'c'\]"):
        encode_v2("m", arrays, V2Request(feeds={}, outputs=[("zz", False)]))


def test_a_raw_binary_request_is_the_single_inputs_bytes() -> None:
    x = np.arange(8, dtype=np.float32).reshape(1, 8)
    decoded = decode_v2(x.tobytes(), [TensorSpec(name="x", shape=[1, 8], dtype="float32")], "0")
    np.testing.assert_array_equal(decoded.feeds["x"], x)
    assert decoded.binary_output
    with pytest.raises(HttpError, match="binary_data_size 16 does not fill shape"):
        decode_v2(x.tobytes()[:16], [TensorSpec(name="x", shape=[1, 8], dtype="float32")], "0")
    with pytest.raises(HttpError, match="needs a model of one input"):
        decode_v2(x.tobytes(), [TensorSpec(name="x", shape=[1, 4], dtype="float32")] * 2, "0")


SPEC = [TensorSpec(name="x", shape=[1, 2], dtype="float32")]
TEXT = [TensorSpec(name="s", shape=[2], dtype="object")]


def _binary(doc_inputs: list[dict[str, Any]], tail: bytes) -> tuple[bytes, str]:
    head = json.dumps({"inputs": doc_inputs}).encode()
    return head + tail, str(len(head))


def _x(size: Any, datatype: str = "FP32", shape: list[int] | None = None) -> dict[str, Any]:
    return {"name": "x", "shape": shape or [1, 2], "datatype": datatype, "parameters": {"binary_data_size": size}}


@pytest.mark.parametrize(
    ("body", "length", "specs", "message"),
    [
        (*_binary([_x(8)], b"\0" * 4), SPEC, r"input 'x': binary_data_size 8 runs past the body \(4 bytes left"),
        (*_binary([_x(4)], b"\0" * 4), SPEC, r"binary_data_size 4 does not fill shape \[1, 2\] FP32 \(8 bytes\)"),
        (*_binary([_x(8)], b"\0" * 9), SPEC, "the body has 9 bytes after the JSON, the inputs' binary_data_size add up to 8"),
        (*_binary([_x("8")], b"\0" * 8), SPEC, "input 'x': binary_data_size must be a byte count, got '8'"),
        (*_binary([_x(16, "INT64")], b"\0" * 16), SPEC, r"input 'x' is FP32 \[1, 2\], the request sends INT64: send FP32"),
        (*_binary([_x(16, "BYTES")], b"\0" * 16), SPEC, "the request sends BYTES; BYTES is for text inputs: send FP32"),
        (b'{"inputs": []}', "99", SPEC, "Inference-Header-Content-Length '99' is not a length within the body's 14 bytes"),
        (b'{"inputs": []}', "-1", SPEC, "Inference-Header-Content-Length '-1' is not a length"),
        (*_binary([_x(8, shape=[-1, -2])], b"\0" * 8), SPEC, r"input 'x': shape \[-1, -2\] has a negative dimension"),
        (
            *_binary(
                [{"name": "s", "shape": [2], "datatype": "BYTES", "parameters": {"binary_data_size": 9}}],
                struct.pack("<I", 3) + b"abc",
            ),
            TEXT,
            "input 's': binary_data_size 9 runs past the body",
        ),
        (
            *_binary(
                [{"name": "s", "shape": [2], "datatype": "BYTES", "parameters": {"binary_data_size": 9}}],
                struct.pack("<I", 9) + b"abcde",
            ),
            TEXT,
            "input 's': a BYTES element of 9 bytes runs past its binary_data_size",
        ),
        (
            *_binary(
                [{"name": "s", "shape": [2], "datatype": "BYTES", "parameters": {"binary_data_size": 7}}],
                struct.pack("<I", 3) + b"xyz",
            ),
            TEXT,
            "input 's': 1 BYTES elements sent, its shape holds 2",
        ),
        (
            *_binary(
                [{"name": "s", "shape": [1], "datatype": "BYTES", "parameters": {"binary_data_size": 6}}],
                struct.pack("<I", 2) + b"\xff\xfe",
            ),
            [TensorSpec(name="s", shape=[1], dtype="object")],
            "input 's': element 0 of its BYTES data is not UTF-8 text",
        ),
        (
            json.dumps(
                {
                    "inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]}],
                    "parameters": {"binary_data_output": "yes"},
                }
            ).encode(),
            None,
            SPEC,
            "parameter \"binary_data_output\" must be true or false, got 'yes'",
        ),
    ],
)
def test_each_broken_binary_request_is_one_400_line(body: bytes, length: str, specs: list[TensorSpec], message: str) -> None:
    with pytest.raises(HttpError, match=message) as caught:
        decode_v2(body, specs, length)
    assert caught.value.status == 400


@settings(max_examples=300, deadline=None, derandomize=True)
@given(
    st.sampled_from([*sorted(DATATYPES.values()), "BYTES", "FP8"]),
    st.lists(st.integers(-2, 5), max_size=3),
    st.one_of(st.integers(-5, 40), st.floats(), st.text(max_size=3), st.none(), st.booleans()),
    st.binary(max_size=40),
    st.sampled_from(["float32", "int64", "object", "bool"]),
)
def test_any_binary_request_is_decoded_or_refused_with_a_400(
    datatype: str, shape: list[int], size: Any, tail: bytes, model_dtype: str
) -> None:
    body, length = _binary([{"name": "x", "shape": shape, "datatype": datatype, "parameters": {"binary_data_size": size}}], tail)
    spec = [TensorSpec(name="x", shape=shape, dtype=model_dtype)]
    for specs in (spec, None):
        try:
            decoded = decode_v2(body, specs, length)
        except HttpError as exc:
            assert exc.status == 400 and "\n" not in exc.message
        else:
            assert list(decoded.feeds["x"].shape) == shape
