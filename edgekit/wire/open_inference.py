"""The Open Inference Protocol (KServe v2) bodies, defined once: what a device's cloud fallback sends and
``edgekit serve`` answers.

The models follow MLServer's ``mlserver/types/dataplane.py`` (the protocol's own names, snake_case on the wire):
:class:`InferenceRequest` of :class:`RequestInput` tensors, :class:`InferenceResponse` of :class:`ResponseOutput`
tensors, and the metadata and health bodies. :data:`DATATYPES` is the one table between numpy dtypes and the
protocol's datatypes. The device's client (:class:`edgekit.edge.fallback.CloudFallback`) builds and reads these
models; the server (:mod:`edgekit.cloud.content`) validates requests with :meth:`InferenceRequest.model_validate` on
the already-parsed body and writes responses of this shape straight from numpy (no per-request model: orjson
writes the arrays itself), which tests/wire/test_wire.py checks against :class:`InferenceResponse`.

Unknown keys are ignored (a protocol extension's fields pass through a reader that doesn't know them);
``data`` is checked to be a list but not element by element (numpy does that when it makes the array). A tensor
without ``data`` is one sent as binary after the JSON (Triton's binary tensor data extension, its size in
``parameters["binary_data_size"]``): :mod:`edgekit.cloud.v2_codec` reads and writes those.
See docs/cloud.md.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, ClassVar, Final, Literal

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field, PlainSerializer, PlainValidator

__all__ = [
    "DATATYPES",
    "NUMPY_DTYPES",
    "Datatype",
    "ErrorResponse",
    "InferenceRequest",
    "InferenceResponse",
    "LiveResponse",
    "MetadataModelResponse",
    "MetadataServerResponse",
    "MetadataTensor",
    "ModelReadyResponse",
    "ReadyResponse",
    "RequestInput",
    "RequestOutput",
    "ResponseOutput",
    "TensorData",
    "datatype_of",
]

Datatype = Literal[
    "BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP16", "FP32", "FP64", "BYTES"
]
"""A tensor's datatype (the protocol's tensor data types)."""

DATATYPES: Final[Mapping[str, Datatype]] = {
    "bool": "BOOL",
    "uint8": "UINT8",
    "uint16": "UINT16",
    "uint32": "UINT32",
    "uint64": "UINT64",
    "int8": "INT8",
    "int16": "INT16",
    "int32": "INT32",
    "int64": "INT64",
    "float16": "FP16",
    "float32": "FP32",
    "float64": "FP64",
}
"""numpy dtype name -> datatype, for every numeric datatype (``BYTES``, text, has no numpy dtype here)."""
NUMPY_DTYPES: Final[Mapping[str, str]] = {v: k for k, v in DATATYPES.items()}
"""datatype -> numpy dtype name: the datatypes a tensor can be read into an array from."""


def datatype_of(dtype: npt.DTypeLike) -> Datatype | None:
    """The datatype of a numpy dtype (``None``: the protocol has none for it)."""
    return DATATYPES.get(str(np.dtype(dtype)))


def _a_list(value: Any) -> list[Any]:
    if not isinstance(value, list):
        raise ValueError(f"must be a list (flat or nested in row-major order), got {type(value).__name__}")
    return value


TensorData = Annotated[list[Any], PlainValidator(_a_list), PlainSerializer(lambda v: v)]
"""A tensor's elements: a flat list (or nested lists) in row-major order. Checked to be a list, not copied or
checked element by element: numpy does that when it makes the array (a large input costs nothing more here)."""


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore", protected_namespaces=())


class _Tensor(_Body):
    _role: ClassVar[str] = "tensor"  # how messages name it: "input" or "output"

    name: str
    shape: list[int]
    datatype: Datatype
    parameters: dict[str, Any] | None = None
    data: TensorData | None = None  # None: sent as binary (the binary tensor data extension's ``binary_data_size``)

    def to_array(self) -> np.ndarray:
        """The tensor as a numpy array of its datatype's dtype; ValueError when it has none or the data doesn't fit."""
        if self.data is None:
            raise ValueError(f"{self._role} '{self.name}' has no \"data\" (binary tensor data is read by the server's codec)")
        dtype = NUMPY_DTYPES.get(self.datatype)
        if dtype is None:
            raise ValueError(f"{self._role} '{self.name}': datatype '{self.datatype}' is not one of {sorted(NUMPY_DTYPES)}")
        try:
            return np.asarray(self.data, dtype=dtype).reshape(self.shape)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"{self._role} '{self.name}': data does not fill shape {self.shape} ({exc})") from None

    @classmethod
    def _fields_of(cls, name: str, value: npt.ArrayLike) -> dict[str, Any]:
        arr = np.asarray(value)
        datatype = datatype_of(arr.dtype)
        if datatype is None:
            raise ValueError(f"{cls._role} '{name}': dtype {arr.dtype} has no Open Inference Protocol datatype")
        return {"name": name, "shape": list(arr.shape), "datatype": datatype, "data": arr.ravel().tolist()}


# --------------------------------------------------------------------------- inference


class RequestInput(_Tensor):
    """One input tensor of a request."""

    _role: ClassVar[str] = "input"

    @classmethod
    def from_array(cls, name: str, value: npt.ArrayLike) -> RequestInput:
        """The tensor for ``value``; ValueError when its dtype has no datatype."""
        return cls.model_validate(cls._fields_of(name, value))


class RequestOutput(_Body):
    """An output the client asks for (only those asked for are answered; ``parameters["binary_data"]``: as binary)."""

    name: str
    parameters: dict[str, Any] | None = None


class InferenceRequest(_Body):
    """``POST /v2/models/{model}/infer``."""

    id: str | None = None
    parameters: dict[str, Any] | None = None
    inputs: list[RequestInput] = Field(min_length=1)
    outputs: list[RequestOutput] | None = None

    @classmethod
    def from_arrays(cls, inputs: Mapping[str, npt.ArrayLike]) -> InferenceRequest:
        """A request of ``inputs`` by name; ValueError naming an input whose dtype has no datatype."""
        return cls(inputs=[RequestInput.from_array(name, value) for name, value in inputs.items()])

    def arrays(self) -> dict[str, np.ndarray]:
        """The inputs as arrays by name; ValueError naming a tensor that can't be one."""
        return {t.name: t.to_array() for t in self.inputs}


class ResponseOutput(_Tensor):
    """One output tensor of a response (``BYTES`` for text, e.g. a post-processing step's labels)."""

    _role: ClassVar[str] = "output"

    @classmethod
    def from_array(cls, name: str, value: npt.ArrayLike) -> ResponseOutput:
        """The tensor for ``value``; text becomes ``BYTES``."""
        arr = np.asarray(value)
        if datatype_of(arr.dtype) is None:
            return cls(name=name, shape=list(arr.shape), datatype="BYTES", data=arr.astype(str).ravel().tolist())
        return cls.model_validate(cls._fields_of(name, arr))


class InferenceResponse(_Body):
    """The answer to an :class:`InferenceRequest`."""

    model_name: str
    model_version: str | None = None
    id: str | None = None
    parameters: dict[str, Any] | None = None
    outputs: list[ResponseOutput]

    @classmethod
    def from_arrays(cls, model_name: str, outputs: Mapping[str, npt.ArrayLike]) -> InferenceResponse:
        return cls(model_name=model_name, outputs=[ResponseOutput.from_array(n, v) for n, v in outputs.items()])

    def arrays(self) -> list[np.ndarray]:
        """The outputs as arrays, in order; ValueError when there are none or one can't be an array."""
        if not self.outputs:
            raise ValueError("no outputs")
        return [t.to_array() for t in self.outputs]


class ErrorResponse(_Body):
    """Any error: ``{"error": "<one line>"}`` (with the HTTP status saying which kind)."""

    error: str


# --------------------------------------------------------------------------- metadata and health


class MetadataTensor(_Body):
    """An input or output a model declares. ``-1`` in a shape is a dimension of any size (edgekit serve: an output
    whose size depends on the data, e.g. ``NonZero``'s), ``[]`` a scalar; edgekit serve leaves out the datatype and
    shape of a pipeline's outputs when its last step is a callable."""

    name: str
    datatype: Datatype | None = None
    shape: list[int] | None = None
    parameters: dict[str, Any] | None = None


class MetadataModelResponse(_Body):
    """``GET /v2/models/{model}``."""

    name: str
    versions: list[str] | None = None
    platform: str
    inputs: list[MetadataTensor] | None = None
    outputs: list[MetadataTensor] | None = None
    parameters: dict[str, Any] | None = None


class MetadataServerResponse(_Body):
    """``GET /v2``."""

    name: str
    version: str
    extensions: list[str]


class LiveResponse(_Body):
    """``GET /v2/health/live``."""

    live: bool


class ReadyResponse(_Body):
    """``GET /v2/health/ready``."""

    ready: bool


class ModelReadyResponse(_Body):
    """``GET /v2/models/{model}/ready``."""

    name: str
    ready: bool
