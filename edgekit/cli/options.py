"""The options several commands take, declared once: ``state: State = None`` in a command's signature.

Each alias is a typer ``Annotated`` type: the flag, its metavar and its help live here, the default in the command.
AWS options unset come from the standard AWS chain; see docs/cli.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

__all__ = [
    "AbortFailed",
    "Account",
    "Build",
    "BuildOrNone",
    "Database",
    "DeploymentTarget",
    "DeploymentTargets",
    "DeviceTarget",
    "DeviceTargets",
    "EndpointUrl",
    "Fleet",
    "FleetOrNone",
    "JobsMember",
    "Join",
    "JoinBroker",
    "JoinClientId",
    "Local",
    "LocalState",
    "MaxBatchDelay",
    "MaxBatchSize",
    "MeasureOn",
    "ModelBatching",
    "Profile",
    "Region",
    "Report",
    "Rollout",
    "RpcKey",
    "RpcTracker",
    "State",
    "Tune",
    "TuneMinutes",
    "TuningRecords",
]

_FLEET_FOLDER = "the local fleet's folder (default ./.edgekit/fleet)"
_FLEET_FILE = "fleet file: a name under devices/fleets/ or a .yaml path"

State = Annotated[Path | None, typer.Option("--state", metavar="DIR", help=_FLEET_FOLDER)]
MaxBatchSize = Annotated[
    int | None,
    typer.Option(
        "--max-batch-size",
        metavar="N",
        help="adaptive batching: concurrent requests to a model with a dynamic batch dimension run as one, up to N "
        "records (default 32, or $EDGEKIT_MAX_BATCH_SIZE / $SAGEMAKER_TS_BATCH_SIZE; 0 or 1: off)",
    ),
]
MaxBatchDelay = Annotated[
    float | None,
    typer.Option(
        "--max-batch-delay-ms",
        metavar="MS",
        help="how long a request waits for others to join its batch (default 2, or $EDGEKIT_MAX_BATCH_DELAY_MS / "
        "$SAGEMAKER_TS_MAX_BATCH_DELAY)",
    ),
]
ModelBatching = Annotated[
    list[str] | None,
    typer.Option(
        "--model-batching",
        metavar="NAME=SIZE[,MS]",
        help="one model's own batching (repeatable): e.g. cnn=16,5, or NAME=off",
    ),
]
LocalState = Annotated[Path | None, typer.Option("--state", metavar="DIR", help=f"with --local: {_FLEET_FOLDER}")]
MeasureOn = Annotated[
    str | None,
    typer.Option(
        "--measure-on",
        metavar="THING",
        help="rank by a device's own timings: every candidate is sent to THING, a device of the fleet running on "
        "--state ('edgekit fleet serve' or 'edgekit simulate'), which times it itself",
    ),
]
Report = Annotated[
    Path | None,
    typer.Option("--report", metavar="FILE", help="also write a self-contained HTML page of every candidate's measurements"),
]
RpcTracker = Annotated[
    str | None,
    typer.Option(
        "--rpc-tracker",
        metavar="HOST:PORT",
        help="rank by a device's own timings through TVM RPC (tvmc's flag): the tracker the device's RPC server "
        "registered with ('edgekit rpc-server' times every backend; TVM's own server, TVM candidates only)",
    ),
]
RpcKey = Annotated[
    str | None, typer.Option("--rpc-key", metavar="KEY", help="with --rpc-tracker: the key of the device's RPC server")
]
Local = Annotated[bool, typer.Option("--local", help="the local fleet (--state) instead of AWS")]
_BUILD = typer.Option("--build", metavar="DIR", help="the folder 'edgekit package' wrote (default ./greengrass-build)")
Build = Annotated[Path, _BUILD]  # typer copies an option before it fills it in: one may serve two aliases
BuildOrNone = Annotated[Path | None, _BUILD]
_FLEET = typer.Option("--fleet", help=_FLEET_FILE)
Fleet = Annotated[str, _FLEET]
FleetOrNone = Annotated[str | None, _FLEET]

DeviceTarget = Annotated[
    str, typer.Option("--target", "-t", metavar="TARGET", help="device profile name (see 'edgekit targets') or a profile .yaml")
]
DeviceTargets = Annotated[
    list[str], typer.Option("--target", "-t", metavar="TARGET", help="device profiles to compile for; repeat per target")
]
DeploymentTarget = Annotated[
    str | None, typer.Option("--target", metavar="TARGET", help="thinggroup/<name>, thing/<name> or a full ARN")
]
DeploymentTargets = Annotated[
    list[str],
    typer.Option("--target", metavar="TARGET", help="thinggroup/<name> to deploy to (default: every group of the fleet)"),
]
Rollout = Annotated[str | None, typer.Option("--rollout", metavar="N/min", help="e.g. 10/min (maximum per minute)")]
AbortFailed = Annotated[str | None, typer.Option("--abort-failed", metavar="PCT", help="e.g. 10% or 10%:FAILED:min=5")]

Region = Annotated[
    str | None,
    typer.Option("--region", help="AWS region (default: $AWS_REGION, $AWS_DEFAULT_REGION, or the profile's region)"),
]
Profile = Annotated[str | None, typer.Option("--profile", help="AWS profile (default: $AWS_PROFILE, or the standard AWS chain)")]
EndpointUrl = Annotated[
    str | None,
    typer.Option(
        "--endpoint-url",
        metavar="URL",
        help="a local AWS endpoint, e.g. moto server or edgekit serve (default: $EDGEKIT_AWS_ENDPOINT_URL)",
    ),
]
Account = Annotated[
    str | None,
    typer.Option("--account", metavar="ID", help="AWS account id for a short target's ARN (default: sts:GetCallerIdentity)"),
]
Tune = Annotated[
    int | None,
    typer.Option(
        "--tune",
        min=0,
        metavar="TRIALS",
        help="add a TVM candidate tuned with MetaSchedule for N trials (minutes: ~1 s a trial here, plus ~25 s "
        "to start); the tuning database is kept per target and reused: operators it has N trials of are not tuned "
        "again; 0 applies it without tuning",
    ),
]
TuneMinutes = Annotated[
    float | None,
    typer.Option(
        "--tune-minutes",
        min=0.001,
        metavar="MIN",
        help="tune TVM with MetaSchedule for at most MIN minutes (with --tune N: N trials or MIN minutes, whichever "
        "comes first); operators tuned before under as long a budget are reused, not tuned again",
    ),
]
TuningRecords = Annotated[
    Path | None,
    typer.Option(
        "--tuning-records",
        metavar="PATH",
        help="the tuning database to use (tvmc's flag): its folder or its database_tuning_record.json; applied as is, "
        "or added to with --tune/--tune-minutes (default: one per target in edgekit's cache)",
    ),
]

Database = Annotated[
    str | None,
    typer.Option(
        "--database",
        metavar="URL",
        help="the fleet's state in PostgreSQL: postgresql://USER[:PASSWORD]@HOST[:PORT]/DB (remembered in --state; "
        "default: the one --state names, else its SQLite file)",
    ),
]

# fleet serve --join: one more fleet service process on the fleet's PostgreSQL
Join = Annotated[
    bool,
    typer.Option(
        "--join",
        help="instead of serving, join the fleet served on --state (on PostgreSQL) as one more fleet service process: "
        "it ingests a share of the devices' telemetry; no broker, HTTP server or page of its own",
    ),
]
JoinBroker = Annotated[
    str | None,
    typer.Option(
        "--broker",
        metavar="URL",
        help="with --join: the broker's fleet service listener, mqtts://HOST:PORT (default: the running fleet's; "
        "mqtts uses the service certificate in --state's tls/)",
    ),
]
JobsMember = Annotated[
    str | None,
    typer.Option(
        "--member",
        metavar="I/N",
        help="on PostgreSQL: answer only the Jobs requests of things I of N (0-based, by a hash of the thing name); "
        "give each of the N fleet service processes its own (with --join: else it answers none)",
    ),
]
JoinClientId = Annotated[
    str | None,
    typer.Option(
        "--client-id",
        metavar="ID",
        help="with --join: this process's MQTT client id, its own and the same across restarts (required)",
    ),
]
