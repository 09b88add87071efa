"""The AWS options the commands share; unset, each comes from the standard AWS chain. See docs/cli.md."""

from __future__ import annotations

import typer

__all__ = ["ACCOUNT", "ENDPOINT_URL", "PROFILE", "REGION"]

REGION = typer.Option(None, "--region", help="AWS region (default: $AWS_REGION, $AWS_DEFAULT_REGION, or the profile's region)")
PROFILE = typer.Option(None, "--profile", help="AWS profile (default: $AWS_PROFILE, or the standard AWS chain)")
ENDPOINT_URL = typer.Option(
    None, "--endpoint-url", metavar="URL", help="a local AWS endpoint, e.g. moto server (default: $EDGEKIT_AWS_ENDPOINT_URL)"
)
ACCOUNT = typer.Option(
    None, "--account", metavar="ID", help="AWS account id for a short target's ARN (default: sts:GetCallerIdentity)"
)
