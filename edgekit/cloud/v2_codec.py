"""Open Inference Protocol (KServe v2) bodies on ``edgekit serve``'s side, with Triton's binary tensor data extension.

A request is JSON (:class:`~edgekit.wire.open_inference.InferenceRequest`), optionally followed by the raw bytes of
its tensors: the ``Inference-Header-Content-Length`` header gives the JSON's length, each binary input carries
``parameters["binary_data_size"]`` and no ``data``, and the bytes follow in the order of the inputs
(little-endian, row-major; ``BOOL`` one byte; ``BYTES`` elements each a 4-byte little-endian length and the
bytes); the body may be gzip or deflate (``Content-Encoding``, inflated under ``--max-decoded-mb``). A header of 0 is a *raw binary request*: the whole body is the single input's bytes. Outputs go back as
JSON, or as binary where asked (``parameters["binary_data_output"]`` on the request, ``parameters["binary_data"]``
on a requested output, which wins); the response then has the same header and layout. Only the outputs asked for
(``outputs``) are answered, in that order; the request's ``id`` is echoed.

The request's datatype must be the model's (as Triton: ``INT64`` for an ``FP32`` input is refused, not cast).
Every problem is an :class:`~edgekit.cloud.content.HttpError` with one line naming the tensor. See docs/cloud.md.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import ValidationError

from edgekit.cloud.content import HttpError, check_inputs, dumps_json, load_json, numpy_json
from edgekit.manifest import TensorSpec
from edgekit.wire.open_inference import DATATYPES, NUMPY_DTYPES, InferenceRequest, RequestInput

__all__ = ["HEADER_LENGTH", "V2Request", "datatype_of_spec", "decode_v2", "encode_v2", "inflate"]

HEADER_LENGTH = "inference-header-content-length"
_LENGTH = struct.Struct("<I")
_BY_DTYPE = {np.dtype(name): datatype for name, datatype in DATATYPES.items()}  # str(dtype) costs µs a call


def datatype_of_spec(dtype: str) -> str:
    """The protocol's datatype of a model tensor's numpy dtype (ONNX string tensors, numpy ``object``: ``BYTES``)."""
    return DATATYPES.get(dtype) or ("BYTES" if dtype in ("object", "str") else dtype)


@dataclass
class V2Request:
    """A decoded request: the inputs, and what the response must hold."""

    feeds: dict[str, np.ndarray]
    id: str | None = None
    outputs: list[tuple[str, bool]] | None = None  # (name, as binary) in the order asked; None: every output
    binary_output: bool = False  # outputs not named in ``outputs`` (all of them when it is None): as binary


def _flag(parameters: Mapping[str, Any] | None, key: str) -> bool | None:
    value = (parameters or {}).get(key)
    if value is None or isinstance(value, bool):
        return value
    raise HttpError(400, f'parameter "{key}" must be true or false, got {value!r}')


_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}  # deflate: the zlib format, as HTTP means it


def inflate(body: bytes, encoding: str, limit: int) -> bytes:
    """A ``Content-Encoding: gzip`` / ``deflate`` body (tritonclient's ``request_compression_algorithm``) inflated,
    to at most ``limit`` bytes (413 past it: a small body can inflate to gigabytes)."""
    wbits = _WBITS.get(encoding.strip().lower())
    if wbits is None:
        raise HttpError(415, f"Content-Encoding '{encoding[:40]}' is not served; send gzip, deflate or the body as is")
    inflater = zlib.decompressobj(wbits)
    try:
        out = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise HttpError(400, f"the body is not {encoding} data ({exc})") from None
    if len(out) > limit:
        raise HttpError(413, f"the {encoding} body inflates to over {limit} bytes (--max-decoded-mb)")
    if not inflater.eof:
        raise HttpError(400, f"the {encoding} body ends before its compressed stream does")
    return out


def _split(body: bytes, header_length: str | None) -> tuple[bytes, memoryview]:
    if header_length is None:
        return body, memoryview(b"")
    if not header_length.isdigit() or int(header_length) > len(body):
        raise HttpError(
            400, f"Inference-Header-Content-Length '{header_length[:20]}' is not a length within the body's {len(body)} bytes"
        )
    n = int(header_length)
    return body[:n], memoryview(body)[n:]


def _bytes_elements(chunk: memoryview, count: int, name: str) -> np.ndarray:
    """``BYTES`` elements (each a 4-byte little-endian length and that many bytes) as text."""
    out: list[str] = []
    offset, end = 0, len(chunk)
    while offset < end:
        if offset + 4 > end:
            raise HttpError(400, f"input '{name}': BYTES data ends inside an element's 4-byte length")
        (size,) = _LENGTH.unpack_from(chunk, offset)
        offset += 4
        if offset + size > end:
            raise HttpError(400, f"input '{name}': a BYTES element of {size} bytes runs past its binary_data_size")
        try:
            out.append(str(chunk[offset : offset + size], "utf-8"))  # text, as ONNX string tensors take it
        except UnicodeDecodeError:
            raise HttpError(400, f"input '{name}': element {len(out)} of its BYTES data is not UTF-8 text") from None
        offset += size
    if len(out) != count:
        raise HttpError(400, f"input '{name}': {len(out)} BYTES elements sent, its shape holds {count}")
    arr = np.empty(count, dtype=object)
    arr[:] = out
    return arr


def _from_binary(tensor: RequestInput, chunk: memoryview) -> np.ndarray:
    count = int(np.prod(tensor.shape)) if tensor.shape else 1
    if tensor.datatype == "BYTES":
        return _bytes_elements(chunk, count, tensor.name).reshape(tensor.shape)
    dtype = np.dtype(NUMPY_DTYPES[tensor.datatype])
    if len(chunk) != count * dtype.itemsize:
        raise HttpError(
            400,
            f"input '{tensor.name}': binary_data_size {len(chunk)} does not fill shape {tensor.shape} {tensor.datatype} "
            f"({count * dtype.itemsize} bytes)",
        )
    return np.frombuffer(chunk, dtype=dtype.newbyteorder("<")).astype(dtype).reshape(tensor.shape)


def _from_json(tensor: RequestInput) -> np.ndarray:
    if tensor.datatype == "BYTES":
        data = np.asarray(tensor.data, dtype=object)
        if data.size != (int(np.prod(tensor.shape)) if tensor.shape else 1):
            raise HttpError(400, f"input '{tensor.name}': data does not fill shape {tensor.shape}")
        return data.reshape(tensor.shape)
    try:
        return tensor.to_array()
    except ValueError as exc:  # data that doesn't fill the shape
        raise HttpError(400, str(exc)) from None


def _tensors(request: InferenceRequest, tail: memoryview) -> dict[str, np.ndarray]:
    raw: dict[str, np.ndarray] = {}
    offset = 0
    for t in request.inputs:
        if any(d < 0 for d in t.shape):
            raise HttpError(400, f"input '{t.name}': shape {t.shape} has a negative dimension; send the tensor's actual shape")
        size = (t.parameters or {}).get("binary_data_size")
        if size is None:
            if t.data is None:
                raise HttpError(400, f"input '{t.name}' has neither \"data\" nor parameters.binary_data_size")
            raw[t.name] = _from_json(t)
            continue
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise HttpError(400, f"input '{t.name}': binary_data_size must be a byte count, got {size!r}")
        if offset + size > len(tail):
            raise HttpError(
                400,
                f"input '{t.name}': binary_data_size {size} runs past the body "
                f"({len(tail) - offset} bytes left after the JSON; Inference-Header-Content-Length gives the JSON's length)",
            )
        raw[t.name] = _from_binary(t, tail[offset : offset + size])
        offset += size
    if offset != len(tail):
        raise HttpError(400, f"the body has {len(tail)} bytes after the JSON, the inputs' binary_data_size add up to {offset}")
    return raw


def _check_datatypes(request: InferenceRequest, specs: Sequence[TensorSpec]) -> None:
    for t in request.inputs:
        spec = next((s for s in specs if s.name == t.name), None)  # a model has a few inputs
        if spec is None:
            continue  # check_inputs names it with the model's inputs
        want = datatype_of_spec(spec.dtype)
        if t.datatype != want:
            how = "" if t.datatype != "BYTES" else "; BYTES is for text inputs"
            raise HttpError(
                400, f"input '{t.name}' is {want} {spec.declared()}, the request sends {t.datatype}{how}: send {want}"
            )


def _raw_request(body: bytes, specs: Sequence[TensorSpec] | None) -> V2Request:
    """Inference-Header-Content-Length 0: the whole body is the single input's bytes (every output as binary)."""
    if specs is None or len(specs) != 1:
        names = None if specs is None else [s.name for s in specs]
        raise HttpError(400, f"a raw binary request (Inference-Header-Content-Length 0) needs a model of one input, not {names}")
    spec = specs[0]
    dynamic = set(spec.dynamic_dims or {})
    datatype = datatype_of_spec(spec.dtype)
    if any(d < 0 for d in spec.shape) or datatype not in NUMPY_DTYPES or not dynamic <= {0}:
        raise HttpError(400, f"input '{spec.name}' ({spec.declared()} {spec.dtype}) can't be sent raw; send the JSON header too")
    shape = list(spec.shape)
    if dynamic:  # a dynamic batch: as many records as the bytes hold
        record = int(np.prod(shape[1:])) * np.dtype(NUMPY_DTYPES[datatype]).itemsize
        if record == 0 or len(body) % record or not body:
            raise HttpError(400, f"input '{spec.name}': {len(body)} raw bytes are not whole records of {record} bytes")
        shape[0] = len(body) // record
    tensor = RequestInput(name=spec.name, shape=shape, datatype=datatype)
    return V2Request(feeds={spec.name: _from_binary(tensor, memoryview(body))}, binary_output=True)


def decode_v2(body: bytes, specs: Sequence[TensorSpec] | None, header_length: str | None = None) -> V2Request:
    """The request in ``body`` (``header_length``: the Inference-Header-Content-Length header), checked against the
    model's ``specs`` (None: a pipeline starting with a Python callable, which takes what it is sent)."""
    if header_length == "0":
        return _raw_request(body, specs)
    head, tail = _split(body, header_length)
    doc = load_json(head)
    tensors = doc.get("inputs") if isinstance(doc, dict) else None
    if not isinstance(tensors, list) or not tensors:
        raise HttpError(400, 'the body has no "inputs" list of tensors {"name", "shape", "datatype", "data"}')
    try:
        request = InferenceRequest.model_validate(doc)
    except ValidationError as exc:
        raise HttpError(400, _problem(tensors, exc)) from None
    if specs is not None:
        _check_datatypes(request, specs)
    raw = _tensors(request, tail)
    decoded = V2Request(feeds=raw, id=request.id, binary_output=bool(_flag(request.parameters, "binary_data_output")))
    if request.outputs is not None:
        decoded.outputs = [
            (o.name, bool(flag) if (flag := _flag(o.parameters, "binary_data")) is not None else decoded.binary_output)
            for o in request.outputs
        ]
    if specs is None:
        return decoded
    for spec in specs:
        if spec.name not in raw:
            raise HttpError(
                400, f"missing input '{spec.name}' (expects shape {spec.declared()} {spec.dtype}); sent: {sorted(raw)}"
            )
    check_inputs(raw, specs)  # nothing extra: the feeds are the inputs by name
    return decoded


def _problem(tensors: list[Any], exc: ValidationError) -> str:
    """What is wrong with the first tensor (or the body) pydantic refused, in the words of the checks it replaced."""
    first = exc.errors()[0]
    loc = first["loc"]
    message = first["msg"].removeprefix("Value error, ")
    if len(loc) < 2 or loc[0] != "inputs" or not isinstance(loc[1], int):
        where = ".".join(str(part) for part in loc)
        return f"the body is not an Open Inference Protocol request: {where}: {message}"
    tensor = tensors[loc[1]]
    problems = {e["loc"][2]: e for e in exc.errors() if e["loc"][:2] == loc[:2] and len(e["loc"]) > 2}
    if not isinstance(tensor, dict) or any(e["type"] == "missing" for e in problems.values()):
        return 'each input needs "name", "shape", "datatype" and "data" (or parameters.binary_data_size)'
    name = tensor["name"]
    if "datatype" in problems:
        return f"input '{name}': datatype '{tensor['datatype']}' is not one of {sorted([*NUMPY_DTYPES, 'BYTES'])}"
    for field in ("shape", "data"):
        if field in problems:
            reason = problems[field]["msg"].removeprefix("Value error, ")
            return f"input '{name}': data does not fill shape {tensor['shape']} ({field}: {reason})"
    key, error = next(iter(problems.items()))
    return f"input {name!r}: {key}: {error['msg'].removeprefix('Value error, ')}"


# --------------------------------------------------------------------------- responses


def selected(outputs: Mapping[str, np.ndarray], request: V2Request, model: str) -> list[tuple[str, np.ndarray, bool]]:
    """(name, array, as binary) of the outputs to answer; 400 naming an output the model doesn't have."""
    if request.outputs is None:
        return [(n, a, request.binary_output) for n, a in outputs.items()]
    unknown = [n for n, _ in request.outputs if n not in outputs]
    if unknown:
        raise HttpError(400, f"model '{model}' has no output(s) {unknown}; its outputs are {list(outputs)}")
    return [(n, outputs[n], binary) for n, binary in request.outputs]


def _text(arr: np.ndarray) -> list[str]:
    return [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in arr.ravel().tolist()]


def _binary(arr: np.ndarray, datatype: str) -> bytes:
    if datatype == "BYTES":
        parts: list[bytes] = []
        for v in arr.ravel().tolist():
            b = v if isinstance(v, bytes) else str(v).encode()
            parts += (_LENGTH.pack(len(b)), b)
        return b"".join(parts)
    return np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<")).tobytes()


def encode_v2(
    model: str, outputs: Mapping[str, np.ndarray], request: V2Request | None = None, version: str | None = None
) -> tuple[bytes, int | None]:
    """(body, length of its JSON when binary tensors follow it, else None) of an
    :class:`~edgekit.wire.open_inference.InferenceResponse`, written straight from the arrays (orjson writes numpy
    itself: building the model would cost more than the rest of the request)."""
    chosen = [(n, a, False) for n, a in outputs.items()] if request is None else selected(outputs, request, model)
    tensors = []
    blobs: list[bytes] = []
    for name, out, binary in chosen:
        arr = np.asarray(out)
        datatype = _BY_DTYPE.get(arr.dtype) or "BYTES"  # BYTES: text, e.g. from a post-processing step
        tensor: dict[str, Any] = {"name": name, "shape": list(arr.shape), "datatype": datatype}
        if binary:
            blob = _binary(arr, datatype)
            blobs.append(blob)
            tensor["parameters"] = {"binary_data_size": len(blob)}
        elif datatype == "BYTES":
            tensor["data"] = _text(arr)
        else:
            data = arr.ravel()
            tensor["data"] = data if numpy_json() else data.tolist()
        tensors.append(tensor)
    doc: dict[str, Any] = {"model_name": model}
    if version is not None:
        doc["model_version"] = version
    if request is not None and request.id is not None:
        doc["id"] = request.id
    doc["outputs"] = tensors
    head = dumps_json(doc)
    if not blobs:
        return head, None
    return b"".join([head, *blobs]), len(head)
