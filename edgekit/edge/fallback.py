"""The cloud fallback: ask a bigger model over the Open Inference Protocol when the local one can't answer, behind a breaker.

``sagemaker://<endpoint>[/<target model>]`` asks a SageMaker endpoint instead (boto3 InvokeEndpoint); see
docs/edge-runtime.md (cloud fallback and circuit breaker).
"""

from __future__ import annotations

import io
import json
import os
import threading
import urllib.error
import urllib.request
from collections.abc import Mapping
from typing import Any, Literal

import numpy as np
from pydantic import ValidationError

from edgekit.clock import SYSTEM_CLOCK, Clock
from edgekit.edge.errors import EdgeError, FallbackError, FallbackUnavailable
from edgekit.errors import first_problem
from edgekit.wire.open_inference import InferenceRequest, InferenceResponse

__all__ = [
    "CircuitBreaker",
    "CloudFallback",
    "SageMakerFallback",
    "decode_outputs",
    "encode_inputs",
    "make_fallback",
]


def encode_inputs(inputs: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """The Open Inference Protocol request for ``inputs`` (:class:`edgekit.wire.open_inference.InferenceRequest`)."""
    try:
        return InferenceRequest.from_arrays(inputs).model_dump(exclude_none=True)
    except ValueError as exc:  # a dtype the protocol has no datatype for
        raise EdgeError(str(exc)) from None


def decode_outputs(body: Any) -> list[np.ndarray]:
    """The arrays of an Open Inference Protocol response (:class:`edgekit.wire.open_inference.InferenceResponse`)."""
    try:
        return InferenceResponse.model_validate(body).arrays()
    except ValueError as exc:  # pydantic's ValidationError is one
        reason = first_problem(exc) if isinstance(exc, ValidationError) else repr(exc)
        raise FallbackError(f"the cloud endpoint's reply is not an Open Inference Protocol response ({reason})") from None


class CircuitBreaker:
    def __init__(self, failure_threshold: int = 3, reset_after_s: float = 30.0, clock: Clock = SYSTEM_CLOCK) -> None:
        if failure_threshold < 1 or reset_after_s < 0:
            raise EdgeError("circuit breaker: failure_threshold must be ≥ 1 and reset_after_s ≥ 0")
        self.failure_threshold = failure_threshold
        self.reset_after_s = reset_after_s
        self._clock = clock.monotonic
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
            raise EdgeError(f"cloud fallback url must start with http://, https:// or sagemaker://, got '{url}'")
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
        self.calls += 1
        try:
            outputs = self._call(inputs)
        except FallbackError:
            self.breaker.failure()
            raise
        self.breaker.success()
        return outputs

    def _call(self, inputs: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        body = json.dumps(encode_inputs(inputs)).encode()
        request = urllib.request.Request(self.endpoint, data=body, headers=self.headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                reply = json.loads(response.read())
            return decode_outputs(reply)
        except urllib.error.HTTPError as exc:
            detail = exc.read()[:200].decode("utf-8", "replace")
            raise FallbackError(f"cloud fallback {self.endpoint} answered HTTP {exc.code}: {detail}", "http") from None
        except (urllib.error.URLError, TimeoutError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            kind = "timeout" if isinstance(reason, TimeoutError) or "timed out" in str(reason) else "unreachable"
            raise FallbackError(f"cloud fallback {self.endpoint} unreachable: {reason}", kind) from None
        except (json.JSONDecodeError, FallbackError) as exc:
            raise FallbackError(f"cloud fallback {self.endpoint}: bad reply ({exc})", "bad_reply") from None


class SageMakerFallback(CloudFallback):
    """A client of a SageMaker endpoint (``sagemaker://<endpoint>[/<target model>]``): boto3 InvokeEndpoint.

    Inputs go as ``.npz`` by name and the answer is asked for as ``.npz`` (what ``edgekit serve`` speaks);
    one attempt per call within ``timeout_s`` (the breaker, not botocore, decides about retrying). The
    region and credentials come from boto3's chain (a Greengrass component gets ``AWS_REGION`` and the
    token exchange service); ``$EDGEKIT_AWS_ENDPOINT_URL`` points it elsewhere (a local ``edgekit serve``).
    """

    def __init__(
        self,
        url: str,
        *,
        timeout_s: float = 2.0,
        breaker: CircuitBreaker | None = None,
        region: str | None = None,
        endpoint_url: str | None = None,
    ) -> None:
        from edgekit.deps import require

        if not url.startswith("sagemaker://") or not url[len("sagemaker://") :].strip("/"):
            raise EdgeError(f"a SageMaker fallback url is sagemaker://<endpoint-name>[/<target model>], got '{url}'")
        self.name, _, target = url[len("sagemaker://") :].strip("/").partition("/")
        self.target_model = target or None
        self.endpoint = url
        self.timeout_s = timeout_s
        self.breaker = breaker or CircuitBreaker()
        self.calls = 0
        boto3 = require("boto3", "a sagemaker:// cloud fallback")
        config = require("botocore.config", "a sagemaker:// cloud fallback").Config(
            connect_timeout=timeout_s, read_timeout=timeout_s, retries={"total_max_attempts": 1}, user_agent_extra="edgekit"
        )
        try:
            self.client = boto3.Session(region_name=region or os.environ.get("AWS_REGION") or None).client(
                "sagemaker-runtime",
                endpoint_url=endpoint_url or os.environ.get("EDGEKIT_AWS_ENDPOINT_URL") or None,
                config=config,
            )
        except Exception as exc:  # no region, a broken profile: one line, at start
            raise EdgeError(f"cloud fallback {url}: cannot make a SageMaker runtime client ({exc}); set AWS_REGION") from exc

    def _call(self, inputs: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        from edgekit.greengrass.aws import describe_aws_error

        buf = io.BytesIO()
        np.savez(buf, **{k: np.asarray(v) for k, v in inputs.items()})  # type: ignore[arg-type]
        params: dict[str, Any] = {
            "EndpointName": self.name,
            "Body": buf.getvalue(),
            "ContentType": "application/x-npz",
            "Accept": "application/x-npz",
        }
        if self.target_model:
            params["TargetModel"] = self.target_model
        try:
            reply = self.client.invoke_endpoint(**params)
            body = reply["Body"].read()
        except Exception as exc:
            message = describe_aws_error(exc, f"cloud fallback {self.endpoint}")
            if message is None:
                raise
            raise FallbackError(message, "unreachable" if "reach" in message else "http") from None
        try:
            with np.load(io.BytesIO(body), allow_pickle=False) as data:
                outputs = [data[k] for k in data.files]
        except (ValueError, OSError, EOFError) as exc:
            raise FallbackError(f"cloud fallback {self.endpoint}: the reply is not .npz ({exc})", "bad_reply") from None
        if not outputs:
            raise FallbackError(f"cloud fallback {self.endpoint}: the reply holds no outputs", "bad_reply")
        return outputs


def make_fallback(url: str, model: str, *, timeout_s: float = 2.0, breaker: CircuitBreaker | None = None) -> CloudFallback:
    """The fallback client a ``FallbackEndpoint`` names: ``http(s)://`` (Open Inference Protocol) or ``sagemaker://``."""
    if url.startswith("sagemaker://"):
        return SageMakerFallback(url, timeout_s=timeout_s, breaker=breaker)
    return CloudFallback(url, model, timeout_s=timeout_s, breaker=breaker)
