"""edgekit advise. See docs/cloud.md."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.console import RenderableType
from rich.table import Table

from edgekit import api
from edgekit.cli.output import camel, camel_keys, emit, json_output, plain
from edgekit.errors import ConfigError

if TYPE_CHECKING:
    from edgekit.cloud.advisor import Advice

__all__ = ["advise", "register"]

_CHOICES = {"traffic": ("sustained", "intermittent", "offline"), "connectivity": ("always", "intermittent", "none")}


@json_output
def advise(
    artifact: Path | None = typer.Argument(None, help="an artifact folder: its measured latency and size are used"),
    latency_ms: float | None = typer.Option(None, "--latency-ms", help="an answer is needed within this many ms"),
    payload_mb: float | None = typer.Option(None, "--payload-mb", help="size of one request"),
    processing_s: float | None = typer.Option(None, "--processing-s", help="time to process one request (default: measured)"),
    traffic: str = typer.Option("sustained", "--traffic", help="sustained, intermittent or offline"),
    per_request: bool = typer.Option(True, "--per-request/--no-per-request", help="does each request need its own answer"),
    connectivity: str = typer.Option("always", "--connectivity", help="the site's connection: always, intermittent, none"),
    models: int = typer.Option(1, "--models", help="how many models to host"),
    pre_post_processing: bool = typer.Option(False, "--pre-post-processing", help="steps before/after the model"),
    modalities: int = typer.Option(1, "--modalities", help="kinds of input (image, text, sensor...)"),
    data_must_stay_on_site: bool = typer.Option(
        False, "--data-must-stay-on-site", help="the data may not leave the site: run at the edge"
    ),
) -> None:
    """Where to run a model (edge or cloud) and how (inference option, endpoint layout, instance family), with reasons.

    With --json: placement, inferenceOption, endpointLayout, instanceFamily, reasons, rejected, figures,
    edgeProfiles and the command that carries it out."""
    for name, value in (("traffic", traffic), ("connectivity", connectivity)):
        if value not in _CHOICES[name]:
            raise ConfigError(f"--{name} must be one of {', '.join(_CHOICES[name])}, not '{value}'")
    advice = api.advise(
        artifact,
        latency_ms=latency_ms,
        payload_mb=payload_mb,
        processing_s=processing_s,
        traffic=traffic,
        per_request=per_request,
        connectivity=connectivity,
        models=models,
        data_must_stay_on_site=data_must_stay_on_site,
        pre_post_processing=pre_post_processing,
        modalities=modalities,
    )
    facts: dict[str, Any] = camel_keys(advice.to_json())
    facts["figures"] = camel_keys(advice.figures)
    for key in ("reasons", "rejected"):  # each names its decision by the key it has here
        facts[key] = [{**r, "decision": camel(r["decision"])} for r in facts[key]]
    emit(facts, *_shown(advice))


def _shown(advice: Advice) -> list[RenderableType]:
    table = Table(title="advice", title_justify="left")
    for col in ("decision", "choice", "why"):
        table.add_column(col)
    chosen = {
        "placement": advice.placement,
        "inference_option": advice.inference_option,
        "endpoint_layout": advice.endpoint_layout,
        "instance_family": advice.instance_family,
    }
    for reason in advice.reasons:
        table.add_row(plain(reason["decision"]), plain(chosen.get(reason["decision"], "")), plain(reason["reason"]))
    shown: list[RenderableType] = [table]
    if advice.edge_profiles:
        shown.append(f"device profiles it fits: {', '.join(advice.edge_profiles)}")
    if advice.rejected:
        rejected = Table(title="rejected", title_justify="left")
        for col in ("decision", "option", "why not"):
            rejected.add_column(col)
        for r in advice.rejected:
            rejected.add_row(plain(r["decision"]), plain(r["option"]), plain(r["why"]))
        shown.append(rejected)
    figures = {k: v for k, v in advice.figures.items() if k.startswith("model_") or k in ("latency_measured_on", "target")}
    if figures:
        shown.append("figures used: " + ", ".join(f"{k} {v}" for k, v in figures.items()))
    shown.append(f"next: {advice.command}")
    return shown


def register(app: typer.Typer) -> None:
    app.command("advise")(advise)
