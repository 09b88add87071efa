"""edgekit advise"""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.table import Table

from edgekit.cli.output import console
from edgekit.errors import ConfigError

_CHOICES = {"traffic": ("sustained", "intermittent", "offline"), "connectivity": ("always", "intermittent", "none")}


def register(app: typer.Typer) -> None:
    @app.command("advise")
    def advise_(
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
        data_must_stay_on_site: bool = typer.Option(False, "--data-must-stay-on-site", help="the data may not leave the site: run at the edge"),
        as_json: bool = typer.Option(
            False, "--json", help="placement, inference_option, endpoint_layout, instance_family, reasons, rejected"
        ),
    ) -> None:
        """Where to run a model (edge or cloud) and how (inference option, endpoint layout, instance family), with reasons."""
        from edgekit.cloud.advisor import Workload, advise

        for name, value in (("traffic", traffic), ("connectivity", connectivity)):
            if value not in _CHOICES[name]:
                raise ConfigError(f"--{name} must be one of {', '.join(_CHOICES[name])}, not '{value}'")
        workload = Workload(
            latency_ms=latency_ms,
            payload_mb=payload_mb,
            processing_s=processing_s,
            traffic=traffic,  # type: ignore[arg-type]
            per_request=per_request,
            connectivity=connectivity,  # type: ignore[arg-type]
            models=models,
            data_must_stay_on_site=data_must_stay_on_site,
            pre_post_processing=pre_post_processing,
            modalities=modalities,
        )
        advice = advise(artifact, workload)
        if as_json:
            console.print(json.dumps(advice.to_json(), indent=1), soft_wrap=True)
            return
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
            table.add_row(reason["decision"], chosen.get(reason["decision"], ""), reason["reason"])
        console.print(table)
        if advice.edge_profiles:
            console.print(f"device profiles it fits: {', '.join(advice.edge_profiles)}")
        if advice.rejected:
            rejected = Table(title="rejected", title_justify="left")
            for col in ("decision", "option", "why not"):
                rejected.add_column(col)
            for r in advice.rejected:
                rejected.add_row(r["decision"], r["option"], r["why"])
            console.print(rejected)
        shown = {k: v for k, v in advice.figures.items() if k.startswith("model_") or k in ("latency_measured_on", "target")}
        if shown:
            console.print("figures used: " + ", ".join(f"{k} {v}" for k, v in shown.items()))
        console.print(f"next: {advice.command}", soft_wrap=True)
