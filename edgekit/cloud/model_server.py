"""``edgekit serve``: load the models, bind the port, run uvicorn until SIGTERM (in-flight requests finish).

:func:`serve` blocks (what the CLI and the container's entry point call); :class:`ModelServer` also
runs in a background thread (``start()`` / ``stop()``) for tests and benchmarks. Every model given
at start is loaded before the port opens, so an artifact that can't be served here (another CPU
architecture, a missing file, a pipeline step that doesn't import) stops the start with one
:class:`~edgekit.errors.ServeError` line. With no models given it serves SageMaker's model folder
(``$EDGEKIT_MODEL_DIR``, default ``/opt/ml/model``): one artifact, or one per sub-folder — unless it is a
multi-model endpoint (``multi_model``, ``SAGEMAKER_MULTI_MODEL=true``), which starts empty. See docs/cloud.md.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from edgekit.cloud.connection_guard import ConnectionGuard
from edgekit.deps import require
from edgekit.errors import ServeError

if TYPE_CHECKING:
    from edgekit.cloud.batching import BatchPolicy

__all__ = ["DEFAULT_MODEL_DIR", "ModelServer", "ServeOptions", "default_port", "serve"]

log = logging.getLogger(__name__)

DEFAULT_MODEL_DIR = "/opt/ml/model"  # where SageMaker extracts model.tar.gz
MODEL_DIR_ENV = "EDGEKIT_MODEL_DIR"


def default_port() -> int:
    """8080, or the port SageMaker assigns a container of an inference pipeline (``SAGEMAKER_BIND_TO_PORT``)."""
    value = os.environ.get("SAGEMAKER_BIND_TO_PORT", "")
    return int(value) if value.isdigit() else 8080


@dataclass
class ServeOptions:
    """What :func:`serve` takes besides the models. Sizes in MiB.

    ``threads`` is 1 by default: a server gets its parallelism from concurrent requests, and ONNX Runtime's
    default (a thread per core, spinning between runs) costs a loaded server more than it gives — measured
    with bench/serve on the CNN at concurrency 8: 384 req/s at 1,319 µs of CPU a request with the default,
    951 req/s at 667 µs with one thread.
    """

    host: str = "127.0.0.1"
    port: int = field(default_factory=default_port)
    model_repository: Path | None = None  # folders / .tar.gz loaded on first use (multi-model endpoint)
    multi_model: bool = False  # no models given: start empty (SageMaker's agent loads them) instead of /opt/ml/model
    memory_budget_mb: float | None = None  # None: no budget
    max_body_mb: float = 6.0  # SageMaker real-time's payload limit
    threads: int = 1  # ONNX Runtime intra-op threads per model (0: its default, every core, threads that spin)
    predict_threads: int = field(default_factory=lambda: os.cpu_count() or 2)
    inline_below_ms: float = 1.0  # models measured faster than this run on the event loop
    graceful_timeout_s: int = 30  # SIGTERM: how long in-flight requests may take to finish
    self_test: bool = True  # run each artifact's golden vectors when it loads; refuse it when they disagree here
    # hardening (docs/cloud.md): what a hostile client can hold
    max_connections: int = 1000  # open at once (at most the descriptor limit less 192); past it the oldest idle one goes
    header_timeout_s: float = 10.0  # a connection with no complete request head in this time is closed
    keep_alive_s: int = 5  # uvicorn's timeout_keep_alive: idle after a response
    body_timeout_s: float = 30.0  # a request body not received in full in this time: 408
    max_decoded_mb: float = 256.0  # an .npy / .npz (or a compressed v2) body may decode to at most this
    # adaptive batching of models with a dynamic batch dimension (docs/cloud.md); None: the environment's
    # (EDGEKIT_MAX_BATCH_SIZE / SAGEMAKER_TS_BATCH_SIZE, EDGEKIT_MAX_BATCH_DELAY_MS / SAGEMAKER_TS_MAX_BATCH_DELAY), else 32 / 2 ms
    max_batch_size: int | None = None  # records merged into one run at most; 0 or 1: no batching
    max_batch_delay_ms: float | None = None  # how long a request waits for others to join it
    model_batching: Mapping[str, str | BatchPolicy] = field(default_factory=dict)  # per model: "SIZE[,DELAY_MS]" or "off"

    def batch_policies(self) -> tuple[BatchPolicy, dict[str, BatchPolicy]]:
        """(the default policy, each named model's own); ServeError naming a bad value."""
        from edgekit.cloud.batching import BatchPolicy, parse_policy, policy_from_env

        env = policy_from_env()
        default = BatchPolicy(
            env.max_batch_size if self.max_batch_size is None else self.max_batch_size,
            env.max_delay_ms if self.max_batch_delay_ms is None else self.max_batch_delay_ms,
        )
        per_model = {
            name: p if isinstance(p, BatchPolicy) else parse_policy(p, default, f"batching of model '{name}'")
            for name, p in self.model_batching.items()
        }
        return default, per_model


def _connection_cap(wanted: int) -> int:
    """``wanted``, or fewer where the descriptor limit is lower: 192 stay for model files, logs, the pool and the
    connections being closed."""
    try:
        import resource

        soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (ImportError, OSError, ValueError):
        return wanted
    if soft == resource.RLIM_INFINITY:
        return wanted
    return max(16, min(wanted, soft - 192))  # 64 of them: uvicorn's margin (limit_concurrency)


def _named(models: Sequence[str | Path]) -> list[tuple[str | None, str]]:
    out: list[tuple[str | None, str]] = []
    for item in models:
        text = str(item)
        name, sep, path = text.partition("=")
        if sep and name and not Path(text).exists() and "/" not in name:
            out.append((name, path))
        else:
            out.append((None, text))
    return out


def _model_folder() -> list[tuple[str | None, str]]:
    root = Path(os.environ.get(MODEL_DIR_ENV) or DEFAULT_MODEL_DIR)
    if not root.is_dir():
        raise ServeError(
            f"no models given and the model folder {root} does not exist; pass artifact folders "
            f"(edgekit serve build/model-x86_64) or set {MODEL_DIR_ENV}"
        )
    if (root / "manifest.json").is_file():
        return [(None, str(root))]
    subs = [d for d in sorted(root.iterdir()) if (d / "manifest.json").is_file()]
    if not subs:
        raise ServeError(f"the model folder {root} holds no artifact (no manifest.json in it or its sub-folders)")
    return [(None, str(d)) for d in subs]


class ModelServer:
    """Models loaded, app built, port bound — ready to :meth:`run` (blocking) or :meth:`start` (thread)."""

    def __init__(
        self,
        models: Sequence[str | Path] = (),
        *,
        pipelines: Mapping[str, Sequence[str]] | None = None,
        options: ServeOptions | None = None,
        on_ready: Callable[[str], None] | None = None,
    ) -> None:
        require("starlette", "edgekit serve")
        require("uvicorn", "edgekit serve")
        require("prometheus_client", "edgekit serve")
        from edgekit.cloud.app import ServeApp
        from edgekit.cloud.model_registry import ModelRegistry, ModelSource
        from edgekit.cloud.servable import Servable, load_artifact, load_pipeline
        from edgekit.cloud.serve_metrics import ServeMetrics

        self.options = opts = options or ServeOptions()
        batching, model_batching = opts.batch_policies()  # a bad value stops the start before any model loads
        pipelines = dict(pipelines or {})
        given = _named(models)
        if not given and not pipelines and opts.model_repository is None and not opts.multi_model:
            given = _model_folder()
        threads, self_test = opts.threads, opts.self_test

        def loader(name: str, source: ModelSource) -> Servable:
            if source.steps:
                return load_pipeline(name, source.steps, threads=threads, self_test=self_test)
            return load_artifact(name, source.url, threads=threads, self_test=self_test)

        budget = int(opts.memory_budget_mb * 2**20) if opts.memory_budget_mb else None
        self.registry = ModelRegistry(loader, budget)
        loaded: list[tuple[str, Servable]] = []
        try:
            for name, path in given:
                servable = load_artifact(name or "", path, threads=threads, self_test=self_test)
                loaded.append((servable.name, servable))
            for name, steps in pipelines.items():
                loaded.append((name, load_pipeline(name, list(steps), threads=threads, self_test=self_test)))
            seen: set[str] = set()
            for name, _ in loaded:
                if name in seen:
                    raise ServeError(f"two models are named '{name}'; name them apart with NAME=PATH (e.g. {name}-a=build/...)")
                seen.add(name)
            used = sum(s.memory_bytes for _, s in loaded)
            if budget is not None and used > budget:
                raise ServeError(
                    f"the models given need {used / 2**20:.1f} MiB, over the memory budget of {opts.memory_budget_mb} MiB; "
                    "raise --memory-budget-mb or serve fewer models at start (--model-repository loads on first use)"
                )
        except BaseException:
            for _, s in loaded:
                s.close()
            raise
        for name, servable in loaded:
            steps = tuple(pipelines.get(name, ())) if servable.platform == "pipeline" else ()
            self.registry.sources[name] = ModelSource(servable.url, steps)
        try:
            if opts.model_repository is not None:
                self._scan_repository(opts.model_repository)
            unknown = sorted(set(model_batching) - set(self.registry.sources))
            if unknown and not opts.multi_model:
                raise ServeError(
                    f"batching given for model(s) {unknown} this server does not serve; its models are {sorted(self.registry.sources)}"
                )
            self.socket = self._bind(opts.host, opts.port)
        except BaseException:  # the models loaded above are closed, not left to the garbage collector
            for _, s in loaded:
                s.close()
            raise
        self.registry.preload(loaded)
        self.metrics = ServeMetrics()
        self._on_ready = on_ready
        self.serve_app = ServeApp(
            self.registry,
            self.metrics,
            max_body_bytes=int(opts.max_body_mb * 2**20),
            predict_threads=opts.predict_threads,
            inline_below_ms=opts.inline_below_ms,
            on_startup=self._ready,
            max_decoded_bytes=int(opts.max_decoded_mb * 2**20),
            body_timeout_s=opts.body_timeout_s,
            batching=batching,
            model_batching=model_batching,
        )
        self.guard = ConnectionGuard(_connection_cap(opts.max_connections), opts.header_timeout_s)
        host, port = self.socket.getsockname()[:2]
        self.url = f"http://{host if ':' not in host else f'[{host}]'}:{port}"
        self._server: object | None = None
        self._thread: threading.Thread | None = None

    def _scan_repository(self, root: Path) -> None:
        from edgekit.cloud.model_registry import ModelSource

        if not root.is_dir():
            raise ServeError(f"--model-repository {root} is not a folder")
        for entry in sorted(root.iterdir()):
            name = entry.name.removesuffix(".tar.gz").removesuffix(".tgz")
            if name not in self.registry.sources and (entry.is_dir() or entry.name.endswith((".tar.gz", ".tgz"))):
                self.registry.sources[name] = ModelSource(str(entry))

    def _ready(self) -> None:
        log.info("serving %s on %s", ", ".join(self.registry.sources) or "no models yet", self.url)
        if self._on_ready is not None:
            self._on_ready(self.url)

    @staticmethod
    def _bind(host: str, port: int) -> socket.socket:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            sock.close()
            raise ServeError(f"cannot listen on {host}:{port}: {exc.strerror or exc}; pass another --port / --host") from exc
        sock.listen(2048)
        sock.set_inheritable(True)
        return sock

    def _uvicorn(self) -> object:
        import uvicorn
        from uvicorn.config import HTTP_PROTOCOLS
        from uvicorn.importer import import_from_string

        opts = self.options
        config = uvicorn.Config(
            self.serve_app.app,
            log_config=None,  # the library stays quiet; the CLI sets up logging
            access_log=False,
            lifespan="on",
            timeout_graceful_shutdown=max(1, round(opts.graceful_timeout_s)),
            server_header=False,
            http=self.guard.protocol(import_from_string(HTTP_PROTOCOLS["auto"])),
            # a backstop (503 past it): uvicorn counts connections, and the guard holds them at the cap; the margin
            # covers the evicted ones uvicorn has not yet seen go (their close lands on the next turn of the loop)
            limit_concurrency=self.guard.max_connections + 64,
            timeout_keep_alive=max(1, opts.keep_alive_s),
            h11_max_incomplete_event_size=64 * 1024,  # a request head's bound under h11 (httptools: the guard's)
        )
        return uvicorn.Server(config)

    def run(self) -> None:
        """Serve until SIGTERM / SIGINT; in-flight requests finish (up to ``graceful_timeout_s``)."""
        server = self._uvicorn()
        self._server = server
        previous = None
        if threading.current_thread() is threading.main_thread():
            # uvicorn raises the signal it caught again once it has shut down; with this handler in place a
            # graceful SIGTERM ends in a normal return (exit status 0) instead of death by the signal.
            previous = signal.signal(signal.SIGTERM, lambda _sig, _frame: None)
        try:
            server.run(sockets=[self.socket])  # type: ignore[attr-defined]
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
            self.socket.close()
            self.registry.close()

    def start(self) -> str:
        """Serve in a background thread (no signal handlers); returns the base URL once it answers."""
        server = self._uvicorn()
        self._server = server
        self._thread = threading.Thread(
            target=server.run,  # type: ignore[attr-defined]
            kwargs={"sockets": [self.socket]},
            name="edgekit-serve",
            daemon=True,
        )
        self._thread.start()
        deadline = time.monotonic() + 30
        while not getattr(server, "started", False):
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise ServeError(f"the server on {self.url} did not start")
            time.sleep(0.01)
        return self.url

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True  # type: ignore[attr-defined]
        if self._thread is not None:
            self._thread.join(timeout=30)
        with contextlib.suppress(OSError):
            self.socket.close()
        self.registry.close()

    def __enter__(self) -> ModelServer:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()


def serve(
    models: Sequence[str | Path] = (),
    *,
    pipelines: Mapping[str, Sequence[str]] | None = None,
    options: ServeOptions | None = None,
    on_ready: Callable[[str], None] | None = None,
) -> None:
    """Serve compiled artifacts (``NAME=PATH`` to rename) and pipelines until SIGTERM; see :class:`ServeOptions`.

    Raises :class:`~edgekit.errors.ServeError` before listening when a model can't be served here.
    """
    ModelServer(models, pipelines=pipelines, options=options, on_ready=on_ready).run()
