"""The HTTP routes of ``edgekit serve`` (a Starlette app): SageMaker's container contracts, KServe v2, metrics.

=========================================  =====================================================
``GET /ping``                               200, empty body, once the models are loaded
``POST /invocations``                       SageMaker real-time/serverless/async/batch; the model
                                            from ``X-Amzn-SageMaker-Target-Model`` (or the only one)
``POST /endpoints/{endpoint}/invocations``  the same, where a SageMaker runtime client points
                                            (``--endpoint-url``): ``edgekit endpoint invoke`` and
                                            the devices' ``sagemaker://`` fallback, locally
``POST /models`` · ``GET /models``          multi-model endpoint API: load (409, 507), list,
``GET|DELETE /models/{name}``               get, unload, invoke
``POST /models/{name}/invoke``
``GET /v2/health/live|ready`` · ``/v2``     Open Inference Protocol (KServe v2): what the
``GET /v2/models/{m}[/versions/{v}]``       devices' :class:`~edgekit.edge.CloudFallback` and
``GET /v2/models/{m}[/versions/{v}]/ready`` Triton's clients speak, with the binary tensor data
``POST /v2/models/{m}[/versions/{v}]/infer`` extension (:mod:`edgekit.cloud.v2_codec`)
``GET /metrics``                            Prometheus text format
=========================================  =====================================================

Errors are JSON ``{"error": "<one line>"}``: 400 bad input (naming the input and expected shape), 404
unknown model (naming the loaded ones), 413 body over the limit, 415/406 media types, 500 the model
raised (the server keeps serving). Fast models (measured under ``inline_below_ms`` by the compiler)
run on the event loop; others in a bounded pool of threads. Concurrent requests to a model with a dynamic batch
dimension are merged into one run and split back (:mod:`edgekit.cloud.batching`). See docs/cloud.md.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.to_thread
import numpy as np
from pydantic import BaseModel
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from edgekit._version import __version__
from edgekit.cloud.batching import BatchPolicy, ModelBatcher, batchable
from edgekit.cloud.content import MAX_DECODED_BYTES, Decoded, HttpError, batch_dim, decode_body, encode_outputs
from edgekit.cloud.model_registry import ModelRegistry
from edgekit.cloud.servable import Servable, run_records
from edgekit.cloud.serve_metrics import CONTENT_TYPE_LATEST, ServeMetrics
from edgekit.cloud.v2_codec import HEADER_LENGTH, datatype_of_spec, decode_v2, encode_v2, inflate
from edgekit.errors import last_line
from edgekit.manifest import TensorSpec
from edgekit.parsing import loads_json
from edgekit.wire.open_inference import (
    ErrorResponse,
    LiveResponse,
    MetadataModelResponse,
    MetadataServerResponse,
    MetadataTensor,
    ModelReadyResponse,
    ReadyResponse,
)

__all__ = ["TARGET_MODEL_HEADER", "ServeApp"]

log = logging.getLogger(__name__)

TARGET_MODEL_HEADER = "x-amzn-sagemaker-target-model"
_JSON = "application/json"
_BINARY = "application/octet-stream"  # a response with binary tensors after its JSON (Triton's)


_INLINE_DECODE_BYTES = 256 * 1024  # smaller bodies decode on the event loop (a thread hop costs more than they do)
_TARGET = TARGET_MODEL_HEADER.encode()
_HEADER_LENGTH = HEADER_LENGTH.encode()
_WANTED = frozenset((b"content-type", b"content-length", b"accept", _TARGET, _HEADER_LENGTH, b"content-encoding"))
MODEL_VERSION = "1"  # each model served has one version (a Triton model repository's first)
EXTENSIONS = ["binary_tensor_data"]  # the Open Inference Protocol extensions served (GET /v2)


def _headers(request: Request) -> dict[bytes, bytes]:
    """The few request headers the routes read, in one pass over the raw list (ASGI gives names in lower case)."""
    return {k: v for k, v in request.scope["headers"] if k in _WANTED}


def _text(value: bytes | None) -> str | None:
    return value.decode("latin-1") if value is not None else None


def _error(status: int, message: str) -> Response:
    return _json(ErrorResponse(error=message), status)


def _json(doc: Any, status: int = 200) -> Response:
    """``doc`` (a plain document or a :mod:`edgekit.wire.open_inference` body, unset fields left out) as JSON."""
    if isinstance(doc, BaseModel):
        doc = doc.model_dump(exclude_none=True)
    return Response(json.dumps(doc), status_code=status, media_type=_JSON)


class ServeApp:
    """The routes over one :class:`ModelRegistry`; ``.app`` is the ASGI application."""

    page_size = 100  # GET /models page size (SageMaker pages with next_page_token)

    def __init__(
        self,
        registry: ModelRegistry,
        metrics: ServeMetrics,
        *,
        max_body_bytes: int = 6 * 2**20,
        predict_threads: int = 4,
        inline_below_ms: float = 1.0,
        on_startup: Callable[[], None] | None = None,
        max_decoded_bytes: int = MAX_DECODED_BYTES,
        body_timeout_s: float = 30.0,
        batching: BatchPolicy | None = None,
        model_batching: dict[str, BatchPolicy] | None = None,
    ) -> None:
        self.registry = registry
        self.batching = batching if batching is not None else BatchPolicy()
        self.model_batching = dict(model_batching or {})
        self._batchers: dict[str, tuple[Servable, ModelBatcher | None]] = {}
        self.max_decoded_bytes = max_decoded_bytes
        self.body_timeout_s = body_timeout_s
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes
        self.inline_below_ms = inline_below_ms
        self.predict_threads = predict_threads
        self._on_startup = on_startup
        self._limiter: anyio.CapacityLimiter | None = None
        self.ready = False
        routes = [  # the router tries them in order: the inference routes first
            Route("/invocations", self.invocations, methods=["POST"]),
            Route("/v2/models/{name}/infer", self.v2_infer, methods=["POST"]),
            Route("/v2/models/{name}/versions/{version}/infer", self.v2_infer, methods=["POST"]),
            Route("/ping", self.ping, methods=["GET"]),
            Route("/endpoints/{endpoint}/invocations", self.invocations, methods=["POST"]),
            Route("/models", self.list_models, methods=["GET"]),
            Route("/models", self.load_model, methods=["POST"]),
            Route("/models/{name}", self.get_model, methods=["GET"]),
            Route("/models/{name}", self.unload_model, methods=["DELETE"]),
            Route("/models/{name}/invoke", self.invoke_model, methods=["POST"]),
            Route("/v2", self.v2_server, methods=["GET"]),
            Route("/v2/health/live", self.v2_live, methods=["GET"]),
            Route("/v2/health/ready", self.v2_ready, methods=["GET"]),
            Route("/v2/models/{name}", self.v2_model, methods=["GET"]),
            Route("/v2/models/{name}/ready", self.v2_model_ready, methods=["GET"]),
            Route("/v2/models/{name}/versions/{version}", self.v2_model, methods=["GET"]),
            Route("/v2/models/{name}/versions/{version}/ready", self.v2_model_ready, methods=["GET"]),
            Route("/metrics", self.prometheus, methods=["GET"]),
        ]
        handlers = {Exception: self._unexpected, HTTPException: self._http_error}
        self.app = Starlette(routes=routes, lifespan=self._lifespan, exception_handlers=handlers)  # type: ignore[arg-type]
        self._sync_gauges()
        registry.on_change = self._changed

    @asynccontextmanager
    async def _lifespan(self, _app: Starlette) -> AsyncIterator[None]:
        self._limiter = anyio.CapacityLimiter(self.predict_threads)
        self.ready = True
        if self._on_startup is not None:
            self._on_startup()
        try:
            yield
        finally:
            self.ready = False
            self.registry.close()

    async def _unexpected(self, request: Request, exc: Exception) -> Response:
        """What no route expected: one line, no traceback in the answer (the log has it)."""
        log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
        return _error(500, f"the server failed on this request: {last_line(exc)[:300]}")

    async def _http_error(self, request: Request, exc: HTTPException) -> Response:
        """The router's own answers (no such path, a method the path doesn't take) as JSON too."""
        what = {404: f"no route {request.url.path}", 405: f"{request.method} is not served on {request.url.path}"}
        response = _error(exc.status_code, what.get(exc.status_code, str(exc.detail)))
        response.headers.update(exc.headers or {})  # 405's Allow
        return response

    def _changed(self, event: str, model: str) -> None:
        self.metrics.events.labels(event).inc()
        if event != "load":
            self._batchers.pop(model, None)
        self._sync_gauges()

    def _sync_gauges(self) -> None:
        self.metrics.loaded.set(len(self.registry.loaded))
        self.metrics.memory.set(self.registry.used_bytes)
        self.metrics.budget.set(self.registry.budget_bytes or 0)

    # ------------------------------------------------------------------ the inference path

    async def _body(self, request: Request, length: str | None) -> bytes:
        try:
            with anyio.fail_after(self.body_timeout_s):
                return await self._read_body(request, length)
        except TimeoutError:
            raise HttpError(408, f"the body did not arrive within {self.body_timeout_s:g} s") from None

    async def _read_body(self, request: Request, length: str | None) -> bytes:
        limit = self.max_body_bytes
        if length is not None:
            if not length.isdigit() or len(length) > 18:
                raise HttpError(400, f"bad Content-Length '{length[:40]}'")
            if int(length) > limit:
                raise HttpError(413, f"the body has {int(length)} bytes, over the limit of {limit} (--max-body-mb)")
            return await request.body()
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise HttpError(413, f"the body is over the limit of {limit} bytes (--max-body-mb)")
            chunks.append(chunk)
        return b"".join(chunks)

    @staticmethod
    def _run(servable: Servable, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        run = servable.run if servable.inputs is not None else servable.predict  # inputs already checked by the codec
        assert run is not None
        try:
            return run(feeds)
        except Exception as exc:
            log.warning("model %s raised", servable.name, exc_info=True)
            raise HttpError(500, f"model '{servable.name}' failed: {last_line(exc)}") from exc

    @staticmethod
    def _run_records(servable: Servable, decoded: Decoded) -> dict[str, np.ndarray]:
        """A SageMaker request's records: one run when the model takes them as they are, else split to its batch."""
        if servable.inputs is None:
            return ServeApp._run(servable, decoded.feeds)
        run = servable.run
        assert run is not None
        batch = batch_dim(servable.inputs)
        try:
            return run_records(run, decoded.feeds, batch, decoded.records)
        except HttpError:
            raise
        except Exception as exc:
            log.warning("model %s raised", servable.name, exc_info=True)
            raise HttpError(500, f"model '{servable.name}' failed: {last_line(exc)}") from exc

    async def _predict(self, servable: Servable, feeds: dict[str, np.ndarray], records: int = 1) -> dict[str, np.ndarray]:
        latency = servable.latency_ms
        if latency is not None and latency * records < self.inline_below_ms:
            return self._run(servable, feeds)  # cheaper than a hop to a thread and back
        return await anyio.to_thread.run_sync(self._run, servable, feeds, limiter=self._limiter)

    def _batcher(self, name: str, servable: Servable) -> ModelBatcher | None:
        """The adaptive batcher of a model (None: it is not batched: a static or no batch dimension, a pipeline,
        or batching off for it), made on its first request after each load."""
        entry = self._batchers.get(name)
        if entry is not None and entry[0] is servable:
            return entry[1]
        policy = self.model_batching.get(name, self.batching)
        batcher = None
        if policy.enabled and servable.platform != "pipeline" and batchable(servable.inputs, servable.output_specs):

            async def run(feeds: dict[str, np.ndarray], records: int) -> dict[str, np.ndarray]:
                return await self._predict(servable, feeds, records)

            batcher = ModelBatcher(
                name,
                policy,
                run,
                slots=self.predict_threads,
                observe=lambda records, requests, waits: self.metrics.observe_batch(name, records, requests, waits),
                on_retry=lambda: self.metrics.retried(name),
            )
        self._batchers[name] = (servable, batcher)
        return batcher

    def _default_model(self) -> str:
        names = set(self.registry.loaded) | set(self.registry.sources)
        if len(names) == 1:
            return next(iter(names))
        raise HttpError(
            400, f"this server holds {len(names)} models {sorted(names)}: name one with the X-Amzn-SageMaker-Target-Model header"
        )

    async def _model(self, name: str) -> Servable:
        return self.registry.peek(name) or await self.registry.get(name)

    async def _sagemaker(self, request: Request, name: str | None, route: str, head: dict[bytes, bytes]) -> Response:
        t0 = time.perf_counter()
        try:
            if not name:
                name = self._default_model()
            servable = self.registry.peek(name) or await self.registry.get(name)
            body = await self._body(request, _text(head.get(b"content-length")))
            media = _text(head.get(b"content-type")) or ""
            if len(body) < _INLINE_DECODE_BYTES and "npz" not in media:
                decoded = decode_body(body, media, servable.inputs, self.max_decoded_bytes)
            else:  # inflating or parsing a big body: off the event loop, so /ping keeps its budget
                decoded = await anyio.to_thread.run_sync(
                    decode_body, body, media, servable.inputs, self.max_decoded_bytes, limiter=self._limiter
                )
            latency = servable.latency_ms
            batcher = self._batcher(name, servable)
            if batcher is not None:  # merged with concurrent requests, its own rows back
                outputs = await batcher.submit(decoded.feeds, decoded.records)
            elif latency is not None and latency * decoded.records < self.inline_below_ms:
                outputs = self._run_records(servable, decoded)  # no coroutine, no thread: the fast path
            else:
                outputs = await anyio.to_thread.run_sync(self._run_records, servable, decoded, limiter=self._limiter)
            accept = _text(head.get(b"accept")) or ""
            if decoded.records > 64:  # a long answer to write: off the event loop too
                payload, media = await anyio.to_thread.run_sync(encode_outputs, outputs, accept, decoded, limiter=self._limiter)
            else:
                payload, media = encode_outputs(outputs, accept, decoded)
        except HttpError as exc:
            self.metrics.observe(name if name and exc.status != 404 else "", route, exc.status, None)
            return _error(exc.status, exc.message)
        self.metrics.observe(name, route, 200, time.perf_counter() - t0)
        return Response(payload, media_type=media)

    async def invocations(self, request: Request) -> Response:
        head = _headers(request)
        return await self._sagemaker(request, _text(head.get(_TARGET)), "invocations", head)

    async def invoke_model(self, request: Request) -> Response:
        return await self._sagemaker(request, request.path_params["name"], "invoke", _headers(request))

    @staticmethod
    def _version(request: Request, name: str) -> None:
        """404 when the path names a version the model doesn't have."""
        version = request.path_params.get("version")
        if version is not None and version != MODEL_VERSION:
            raise HttpError(404, f"model '{name}' has no version '{version[:40]}'; its version is '{MODEL_VERSION}'")

    async def v2_infer(self, request: Request) -> Response:
        name = request.path_params["name"]
        t0 = time.perf_counter()
        head = _headers(request)
        try:
            servable = await self._model(name)
            self._version(request, name)
            body = await self._body(request, _text(head.get(b"content-length")))
            length = _text(head.get(_HEADER_LENGTH))
            encoding = _text(head.get(b"content-encoding"))
            if encoding and encoding != "identity":  # off the event loop: it may inflate to --max-decoded-mb
                body = await anyio.to_thread.run_sync(inflate, body, encoding, self.max_decoded_bytes, limiter=self._limiter)
            if len(body) < _INLINE_DECODE_BYTES:
                decoded = decode_v2(body, servable.inputs, length)
            else:
                decoded = await anyio.to_thread.run_sync(decode_v2, body, servable.inputs, length, limiter=self._limiter)
            if decoded.outputs is not None and servable.outputs:  # refused before the model runs
                unknown = [n for n, _ in decoded.outputs if n not in servable.outputs]
                if unknown:
                    raise HttpError(400, f"model '{name}' has no output(s) {unknown}; its outputs are {servable.outputs}")
            batcher = self._batcher(name, servable)
            firsts = {arr.shape[0] for arr in decoded.feeds.values() if arr.ndim}
            if batcher is not None and len(firsts) == 1 and len(decoded.feeds) == len(servable.inputs or ()):
                outputs = await batcher.submit(decoded.feeds, firsts.pop())
            else:
                outputs = await self._predict(servable, decoded.feeds)
            payload, json_length = encode_v2(name, outputs, decoded, MODEL_VERSION)
        except HttpError as exc:
            self.metrics.observe(name if exc.status != 404 else "", "v2-infer", exc.status, None)
            return _error(exc.status, exc.message)
        self.metrics.observe(name, "v2-infer", 200, time.perf_counter() - t0)
        if json_length is None:
            return Response(payload, media_type=_JSON)
        return Response(payload, media_type=_BINARY, headers={HEADER_LENGTH: str(json_length)})

    # ------------------------------------------------------------------ health

    async def ping(self, _request: Request) -> Response:
        return Response(b"", status_code=200 if self.ready else 503)

    async def v2_live(self, _request: Request) -> Response:
        return _json(LiveResponse(live=True))

    async def v2_ready(self, _request: Request) -> Response:
        return _json(ReadyResponse(ready=self.ready), 200 if self.ready else 503)

    async def v2_server(self, _request: Request) -> Response:
        return _json(MetadataServerResponse(name="edgekit", version=__version__, extensions=EXTENSIONS))

    async def v2_model(self, request: Request) -> Response:
        name = request.path_params["name"]
        try:
            servable = await self._model(name)
            self._version(request, name)
        except HttpError as exc:
            return _error(exc.status, exc.message)

        def tensor(spec: TensorSpec) -> MetadataTensor:  # -1 on a dynamic axis, as Triton's metadata has it
            dyn = spec.dynamic_dims or {}
            shape = [-1 if i in dyn else d for i, d in enumerate(spec.shape)]
            return MetadataTensor(name=spec.name, datatype=datatype_of_spec(spec.dtype), shape=shape)

        specs = servable.output_specs
        meta = MetadataModelResponse(
            name=name,
            versions=[MODEL_VERSION],
            platform=servable.platform,
            inputs=[tensor(s) for s in servable.inputs or []],
            outputs=[tensor(s) for s in specs] if specs is not None else [MetadataTensor(name=n) for n in servable.outputs],
        )
        return _json(meta)

    async def v2_model_ready(self, request: Request) -> Response:
        name = request.path_params["name"]
        if name in self.registry.loaded or name in self.registry.sources:
            try:
                self._version(request, name)
            except HttpError as exc:
                return _error(exc.status, exc.message)
        if name in self.registry.loaded:
            return _json(ModelReadyResponse(name=name, ready=True))
        if name in self.registry.sources:
            return _json(ModelReadyResponse(name=name, ready=False), 503)
        return _error(404, self.registry.not_found(name).message)

    # ------------------------------------------------------------------ the multi-model API

    async def load_model(self, request: Request) -> Response:
        try:
            doc = loads_json(await self._body(request, _text(_headers(request).get(b"content-length"))), duplicate_keys=True)
            name, url = doc["model_name"], doc["url"]
            if not isinstance(name, str) or not isinstance(url, str) or not name:
                raise TypeError
        except (ValueError, KeyError, TypeError):  # ParseError (nesting, numbers, UTF-8) included
            return _error(400, 'the body must be {"model_name": "<name>", "url": "<folder or .tar.gz>"}')
        except HttpError as exc:
            return _error(exc.status, exc.message)
        try:
            await self.registry.add(name, url)
        except HttpError as exc:
            self.metrics.observe(name, "models", exc.status, None)
            return _error(exc.status, exc.message)
        self.metrics.observe(name, "models", 200, None)
        return _json({"modelName": name, "modelUrl": url})

    async def list_models(self, request: Request) -> Response:
        token = request.query_params.get("next_page_token", "0")
        start = int(token) if token.isdigit() else 0
        names = sorted(self.registry.loaded)
        page = names[start : start + self.page_size]
        doc: dict[str, Any] = {"models": [{"modelName": n, "modelUrl": self.registry.loaded[n].url} for n in page]}
        if start + self.page_size < len(names):
            doc["nextPageToken"] = str(start + self.page_size)
        return _json(doc)

    async def get_model(self, request: Request) -> Response:
        name = request.path_params["name"]
        servable = self.registry.loaded.get(name)
        if servable is None:
            return _error(404, self.registry.not_found(name).message)
        return _json({"modelName": name, "modelUrl": servable.url})

    async def unload_model(self, request: Request) -> Response:
        name = request.path_params["name"]
        try:
            self.registry.remove(name)
        except HttpError as exc:
            return _error(exc.status, exc.message)
        return _json({"modelName": name, "unloaded": True})

    async def prometheus(self, _request: Request) -> Response:
        return Response(self.metrics.text(), media_type=CONTENT_TYPE_LATEST)
