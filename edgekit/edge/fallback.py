"""The cloud fallback: ask a bigger model over HTTP when the local one can't answer, behind a breaker.

The wire format is the **Open Inference Protocol** (KServe v2, also spoken by NVIDIA Triton, Seldon
MLServer and others): ``POST {url}/v2/models/{model}/infer`` with
``{"inputs": [{"name", "shape", "datatype", "data"}]}``, answered by ``{"outputs": [...]}`` in the same
form. Any of those servers can stand behind a device; tests run a real HTTP server speaking it.

**Circuit breaker.** After ``failure_threshold`` consecutive failures the breaker opens and calls fail
at once (:class:`FallbackUnavailable`, no network wait) for ``reset_after_s``; then one trial call is let
through (half-open): success closes the breaker, failure opens it again. A device whose uplink is down
keeps answering locally instead of stalling on timeouts.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from typing import Any, Literal

import numpy as np

from edgekit.edge.errors import EdgeError, FallbackError, FallbackUnavailable

__all__ = ["DATATYPES", "CircuitBreaker", "CloudFallback", "decode_outputs", "encode_inputs"]

DATATYPES = {  # numpy dtype name -> Open Inference Protocol datatype (edgekit serve decodes with it too)
    "float32": "FP32",
    "float64": "FP64",
    "float16": "FP16",
    "int8": "INT8",
    "int16": "INT16",
    "int32": "INT32",
    "int64": "INT64",
    "uint8": "UINT8",
    "bool": "BOOL",
}
_NUMPY = {v: k for k, v in DATATYPES.items()}


def encode_inputs(inputs: Mapping[str, np.ndarray]) -> dict[str, Any]:
    tensors = []
    for name, value in inputs.items():
        arr = np.asarray(value)
        dtype = DATATYPES.get(str(arr.dtype))
        if dtype is None:
            raise EdgeError(f"input '{name}': dtype {arr.dtype} has no Open Inference Protocol datatype")
        tensors.append({"name": name, "shape": list(arr.shape), "datatype": dtype, "data": arr.ravel().tolist()})
    return {"inputs": tensors}


def decode_outputs(body: Any) -> list[np.ndarray]:
    try:
        outputs = body["outputs"]
        arrays = []
        for out in outputs:
            dtype = _NUMPY[out["datatype"]]
            arrays.append(np.asarray(out["data"], dtype=dtype).reshape(out["shape"]))
        if not arrays:
            raise ValueError("no outputs")
        return arrays
    except (KeyError, TypeError, ValueError) as exc:
        raise FallbackError(f"the cloud endpoint's reply is not an Open Inference Protocol response ({exc!r})") from None


class CircuitBreaker:
    def __init__(
        self, failure_threshold: int = 3, reset_after_s: float = 30.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if failure_threshold < 1 or reset_after_s < 0:
            raise EdgeError("circuit breaker: failure_threshold must be ≥ 1 and reset_after_s ≥ 0")
        self.failure_threshold = failure_threshold
        self.reset_after_s = reset_after_s
        self._clock = clock
        self._failures = 0
        self._opened_at: float | None = None
        self._trial = False
        self._lock = threading.Lock()
        self.opened = 0  # how many times it opened

    @property
    def state(self) -> Literal["closed", "open", "half-open"]:
        with self._lock:
            return self._state()

    def _state(self) -> Literal["closed", "open", "half-open"]:
        if self._opened_at is None:
            return "closed"
        return "half-open" if self._clock() - self._opened_at >= self.reset_after_s else "open"

    def allow(self) -> bool:
        """Whether a call may go out now (in half-open, only one trial at a time)."""
        with self._lock:
            state = self._state()
            if state == "closed":
                return True
            if state == "half-open" and not self._trial:
                self._trial = True
                return True
            return False

    def success(self) -> None:
        with self._lock:
            self._failures, self._opened_at, self._trial = 0, None, False

    def failure(self) -> None:
        with self._lock:
            self._failures += 1
            if self._trial or self._failures >= self.failure_threshold:
                if self._opened_at is None or self._trial:
                    self.opened += 1
                self._opened_at, self._trial = self._clock(), False


class CloudFallback:
    """A client of one model on an Open Inference Protocol server."""

    def __init__(
        self,
        url: str,
        model: str,
        *,
        timeout_s: float = 2.0,
        breaker: CircuitBreaker | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise EdgeError(f"cloud fallback url must start with http:// or https://, got '{url}'")
        self.endpoint = f"{url.rstrip('/')}/v2/models/{model}/infer"
        self.timeout_s = timeout_s
        self.breaker = breaker or CircuitBreaker()
        self.headers = {"Content-Type": "application/json", **(headers or {})}
        self.calls = 0

    def infer(self, inputs: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        if not self.breaker.allow():
            raise FallbackUnavailable(
                f"cloud fallback {self.endpoint} skipped: its circuit breaker is open after repeated failures"
            )
        body = json.dumps(encode_inputs(inputs)).encode()
        request = urllib.request.Request(self.endpoint, data=body, headers=self.headers, method="POST")
        self.calls += 1
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                reply = json.loads(response.read())
            outputs = decode_outputs(reply)
        except urllib.error.HTTPError as exc:
            self.breaker.failure()
            detail = exc.read()[:200].decode("utf-8", "replace")
            raise FallbackError(f"cloud fallback {self.endpoint} answered HTTP {exc.code}: {detail}") from None
        except (urllib.error.URLError, TimeoutError, OSError) as exc:
            self.breaker.failure()
            reason = getattr(exc, "reason", exc)
            raise FallbackError(f"cloud fallback {self.endpoint} unreachable: {reason}") from None
        except (json.JSONDecodeError, FallbackError) as exc:
            self.breaker.failure()
            raise FallbackError(f"cloud fallback {self.endpoint}: bad reply ({exc})") from None
        self.breaker.success()
        return outputs
