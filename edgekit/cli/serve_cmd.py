"""edgekit serve. See docs/cloud.md."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape

from edgekit import api
from edgekit.cli.options import MaxBatchDelay, MaxBatchSize, ModelBatching
from edgekit.cli.output import MODE, console, err_console, json_output
from edgekit.errors import ServeError

__all__ = ["register", "serve"]


def _pipelines(items: list[str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for item in items:
        name, sep, steps = item.partition("=")
        if not sep or not name or not steps:
            raise ServeError(f"--pipeline '{item}': expected NAME=STEP,STEP,... (artifact folders or module:function)")
        out[name] = [s for s in steps.split(",") if s]
    return out


def _model_batching(items: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        name, sep, policy = item.partition("=")
        if not sep or not name or not policy:
            raise ServeError(f"--model-batching '{item}': expected NAME=SIZE[,DELAY_MS] (e.g. cnn=16,5) or NAME=off")
        out[name] = policy
    return out


def _ready(url: str, models: list[str]) -> None:
    if MODE.json:
        console.print(json.dumps({"url": url, "models": models}), soft_wrap=True, markup=False)
    else:
        shown = escape(", ".join(models) or "no models yet")
        err_console.print(f"serving {shown} on {escape(url)} (SIGTERM or Ctrl-C stops)", soft_wrap=True)


@json_output
def serve(
    artifacts: list[str] = typer.Argument(
        None, help="artifact folders or .tar.gz (NAME=PATH to rename); none: $EDGEKIT_MODEL_DIR or /opt/ml/model"
    ),
    host: str = typer.Option("127.0.0.1", "--host", envvar="EDGEKIT_SERVE_HOST", help="0.0.0.0 in a container"),
    port: int | None = typer.Option(None, "--port", "-p", help="default 8080 (or $SAGEMAKER_BIND_TO_PORT)"),
    pipeline: list[str] = typer.Option(
        [], "--pipeline", help="NAME=STEP,STEP,...: a serial inference pipeline of artifacts and module:function steps"
    ),
    model_repository: Path | None = typer.Option(
        None, "--model-repository", help="a folder of artifacts (or .tar.gz) loaded on first use, by folder name"
    ),
    multi_model: bool = typer.Option(
        False,
        "--multi-model",
        envvar="SAGEMAKER_MULTI_MODEL",
        help="start with no model: SageMaker's agent loads them with POST /models (a multi-model endpoint)",
    ),
    memory_budget_mb: float | None = typer.Option(
        None, "--memory-budget-mb", help="models beyond it: least recently used evicted (first use), 507 (POST /models)"
    ),
    max_body_mb: float = typer.Option(
        6.0, "--max-body-mb", envvar="EDGEKIT_MAX_BODY_MB", help="larger request bodies get 413 (a transform job sets it)"
    ),
    max_decoded_mb: float = typer.Option(
        256.0, "--max-decoded-mb", help="an .npy / .npz or gzip v2 body decoding to more (checked first) gets 413"
    ),
    max_connections: int = typer.Option(
        1000, "--max-connections", help="open at once (under the descriptor limit); past it the oldest idle one is closed"
    ),
    header_timeout: float = typer.Option(10.0, "--header-timeout", help="seconds a connection may stay without a request"),
    threads: int = typer.Option(
        1, "--threads", help="ONNX Runtime intra-op threads per model (0: its default, a spinning thread per core)"
    ),
    predict_threads: int | None = typer.Option(None, "--predict-threads", help="predictions run at once off the event loop"),
    inline_below_ms: float = typer.Option(
        1.0, "--inline-below-ms", help="models measured faster than this run on the event loop (no thread hop)"
    ),
    graceful_timeout: int = typer.Option(30, "--graceful-timeout", help="seconds in-flight requests get after SIGTERM"),
    self_test: bool = typer.Option(
        True, "--self-test/--no-self-test", help="run each artifact's golden vectors when it loads; refuse it if they disagree"
    ),
    max_batch_size: MaxBatchSize = None,
    max_batch_delay_ms: MaxBatchDelay = None,
    model_batching: ModelBatching = None,
    batching: bool = typer.Option(True, "--batching/--no-batching", help="--no-batching: every request runs alone"),
) -> None:
    """Serve compiled artifacts over SageMaker's container contract, the multi-model API, KServe v2 and /metrics.

    With --json: {"url", "models"} as one JSON line on stdout once serving."""
    settings: dict[str, Any] = {  # unset: ServeOptions' defaults
        "port": port,
        "predict_threads": predict_threads,
        "max_batch_size": max_batch_size if batching else 0,
        "max_batch_delay_ms": max_batch_delay_ms,
    }
    api.serve(
        artifacts or [],
        pipelines=_pipelines(pipeline),
        on_ready=_ready,
        host=host,
        model_repository=model_repository,
        multi_model=multi_model,
        memory_budget_mb=memory_budget_mb,
        max_body_mb=max_body_mb,
        max_decoded_mb=max_decoded_mb,
        max_connections=max_connections,
        header_timeout_s=header_timeout,
        threads=threads,
        inline_below_ms=inline_below_ms,
        graceful_timeout_s=graceful_timeout,
        self_test=self_test,
        model_batching=_model_batching(model_batching or []),
        **{k: v for k, v in settings.items() if v is not None},
    )


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)
