"""edgekit's public functions, one per stage; the CLI calls these and only prints. See docs/index.md.

Importing this module is cheap: each function imports its stage when called.
"""

from __future__ import annotations

import asyncio
import signal
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import numpy as np

    from edgekit.cloud.advisor import Advice, Workload
    from edgekit.cloud.model_server import ServeOptions
    from edgekit.cloud.sagemaker import ApiCall, DeployResult
    from edgekit.compiler import CompileResult
    from edgekit.demo.flow import DemoReport
    from edgekit.fleet.deploy import LocalDeployment
    from edgekit.fleet.foreground import ServedFleet
    from edgekit.fleet.logs import LogLine
    from edgekit.fleet.provision import AddedDevice
    from edgekit.fleet.scale_out import JoinedFleet
    from edgekit.fleet.status import FleetStatus
    from edgekit.greengrass.build_folder import PublishResult
    from edgekit.greengrass.deployment import DeploymentListing, DeploymentResult, DeploymentSpec
    from edgekit.greengrass.lint import Finding
    from edgekit.greengrass.package import PackageResult
    from edgekit.profiles import DeviceProfile
    from edgekit.progress import Progress
    from edgekit.runtime import LoadedModel, RunResult
    from edgekit.sim.run import SimulationRun
    from edgekit.sim.simulation import SimulationStatus
    from edgekit.verify.compare import VerifyReport

__all__ = [
    "add_device",
    "advise",
    "cancel_deployment",
    "compile",
    "delete_endpoint",
    "deploy",
    "deploy_endpoint",
    "deployment_spec",
    "deployments",
    "fleet_page",
    "fleet_status",
    "invoke_endpoint",
    "invoke_endpoint_async",
    "lint_recipes",
    "load",
    "logs",
    "package",
    "publish",
    "published_versions",
    "rpc_server",
    "run",
    "run_agent",
    "run_demo",
    "serve",
    "serve_fleet",
    "simulate",
    "targets",
    "verify_artifact",
]

DEFAULT_BUILD = Path("greengrass-build")


def compile(
    model: Any,
    target: Any,
    output_dir: Any = "build",
    *,
    force: bool = False,
    report: str | Path | None = None,
    measure_on: str | None = None,
    state_dir: str | Path | None = None,
    rpc_tracker: str | None = None,
    rpc_key: str | None = None,
    **kwargs: Any,
) -> CompileResult:
    """Compile ``model`` for a device profile; see :func:`edgekit.compiler.compile_model`.

    An artifact already in ``output_dir`` under the same name but built from another source file (``model.pt`` over
    ``model.onnx``'s) is refused unless ``force``. ``report``: also write a self-contained HTML page of what was
    measured (every candidate's latency, accuracy, size and why it won or lost). ``input_shapes``: a mapping of input
    name to dims (``-1`` or a name such as ``"batch"`` for a dynamic one), or strings as ``--input-shape`` takes them.

    ``measure_on``: a device (thing) of the local fleet running on ``state_dir`` (default ``./.edgekit/fleet``) times
    every candidate itself and the ranking is by its timings (the manifest's ``measured.on`` is ``device``,
    ``measuredOn`` the thing); without it the ranking is the compiling host's (``target`` or ``host-proxy``). See
    docs/compile.md (measured on the target).

    ``rpc_tracker`` (``HOST:PORT``) and ``rpc_key``: the other way to measure on the target, through TVM RPC as tvmc
    does — the device's RPC server of that key times every candidate (``measuredOn`` is ``rpc:<key>``)."""
    from edgekit.compiler import compile_model

    if kwargs.get("input_shapes") is not None:
        from edgekit.compiler.frontends import input_shapes_from

        kwargs["input_shapes"] = input_shapes_from(kwargs["input_shapes"])
    from edgekit.errors import ConfigError

    if measure_on is not None and (rpc_tracker is not None or rpc_key is not None):
        raise ConfigError("--measure-on and --rpc-tracker/--rpc-key are two ways to time on a device: give one")
    if rpc_tracker is not None or rpc_key is not None:
        if rpc_tracker is None:
            raise ConfigError("--rpc-key needs --rpc-tracker HOST:PORT: the tracker the device's RPC server registered with")
        from edgekit.compiler.backends.tvm_rpc import RpcDeviceTimer

        kwargs["device_timer"] = RpcDeviceTimer(rpc_tracker, rpc_key or "")  # fails fast: no tracker, no such key
    if measure_on is not None:
        from edgekit.fleet.device_timing import FleetDeviceTimer

        kwargs["device_timer"] = FleetDeviceTimer(measure_on, state_dir)  # fails fast: no fleet, no such device
    if not force:
        _check_overwrite(model, target, Path(output_dir), kwargs.get("name"))
    result = compile_model(model, target, output_dir, **kwargs)
    if report is not None:
        from edgekit.compiler.report import write_report

        write_report(result.manifest, report)
    return result


def _check_overwrite(model: Any, target: Any, output_dir: Path, name: str | None) -> None:
    from edgekit.errors import ArtifactError, OutputError
    from edgekit.manifest import read_manifest
    from edgekit.profiles import load_profile

    source = Path(str(model))
    if not source.is_file():
        return  # a factory ('pkg.module:fn') or a missing file: the compiler says what is wrong
    artifact = output_dir / (name or f"{source.stem}-{load_profile(target).name}")
    if not (artifact / "manifest.json").is_file():
        return
    try:
        old = read_manifest(artifact).source.path
    except ArtifactError:
        return  # unreadable: recompiling replaces it, as before
    if Path(old).name != source.name:
        raise OutputError(
            f"{artifact} was built from '{old}', not '{model}'; give another --name (or -o), or pass --force to replace it"
        )


def load(artifact_dir: Any, threads: int = 0, *, self_test: bool = False, stand_in: bool = False) -> LoadedModel:
    """Load a compiled artifact: ``edgekit.load(dir).predict(inputs)``. Refuses one whose code needs CPU features
    this CPU lacks (UnsupportedCpuError); ``self_test`` also runs its golden vectors (SelfTestError when they disagree).

    ``stand_in``: this host stands in for the artifact's device (the simulator's devices of another platform): its
    host twin runs where the device's code can't (see :func:`edgekit.runtime.load`)."""
    from edgekit.runtime import load as _load

    return _load(artifact_dir, threads, self_test=self_test, stand_in=stand_in)


def run(
    artifact_dir: str | Path,
    inputs: Mapping[str, np.ndarray] | None = None,
    *,
    input_files: Sequence[str] = (),
    random: bool = False,
    repeat: int = 1,
    threads: int = 0,
    save: str | Path | None = None,
    self_test: bool = True,
) -> RunResult:
    """Load an artifact and run it ``repeat`` times on ``inputs`` (or, with ``random``, on random inputs of the
    manifest's shapes): the outputs by name and each run's time (tvmc's ``--repeat``/``--print-time``).

    ``input_files``: read the inputs from files instead (``.npy``, ``.npz``, ``.json``; ``NAME=FILE`` per input).
    ``save``: also write the outputs to this ``.npz``. ``self_test``: run the artifact's golden vectors first and
    refuse it (SelfTestError) when they disagree on this machine."""
    from edgekit.errors import InferenceError
    from edgekit.runtime import RunResult
    from edgekit.runtime import load as _load
    from edgekit.runtime.inputs import random_inputs, read_inputs, time_runs

    if input_files:
        from edgekit.manifest import read_manifest

        inputs, random = read_inputs(list(input_files), read_manifest(artifact_dir).inputs), False
    model = _load(artifact_dir, threads, self_test=self_test)
    if inputs is None:
        if not random:
            raise InferenceError("give --input FILE (.npy, .npz or .json; NAME=FILE per input), or --random")
        inputs = random_inputs(model.manifest.inputs)
    outs, timing = time_runs(model.predict, dict(inputs), repeat)
    result = RunResult(model, dict(zip(model.outputs, outs, strict=True)), timing)
    if save is not None:
        import numpy as np

        from edgekit.runtime.sequences import pack_value

        arrays: dict[str, np.ndarray] = {}
        for name, value in result.outputs.items():
            pack_value(name, value, arrays)  # a sequence: NAME/# and NAME/0, NAME/1, ...
        np.savez(save, **arrays)  # type: ignore[arg-type]
    return result


def targets() -> list[DeviceProfile]:
    """The device profiles edgekit knows (bundled, ./devices and $EDGEKIT_DEVICES)."""
    from edgekit.profiles import list_profiles

    return list_profiles()


def package(
    artifacts: Sequence[str | Path],
    *,
    name: str,
    version: str = "NEXT_PATCH",
    output: str | Path = DEFAULT_BUILD,
    publisher: str = "edgekit",
    state_dir: str | Path | None = None,
    aws: bool = False,
    region: str | None = None,
    profile: str | None = None,
    endpoint_url: str | None = None,
    progress: Progress | None = None,
) -> PackageResult:
    """Turn compiled artifacts (one per platform) into runtime, model and inference Greengrass v2 components.

    ``NEXT_PATCH`` bumps the highest version of ``name`` packaged in ``output`` or published in the local fleet
    (``state_dir``, default ``./.edgekit/fleet``, when it exists) and, with ``aws``, in Greengrass v2 (``region`` from
    the argument or the standard AWS chain)."""
    from edgekit.greengrass.package import package as _package

    known: list[str] = []
    if version == "NEXT_PATCH":
        known = published_versions([name, f"{name}.Inference"], state_dir=state_dir, aws=aws, region=region,
                                   profile=profile, endpoint_url=endpoint_url)  # fmt: skip
    return _package(
        artifacts, name=name, version=version, output=output, publisher=publisher, known_versions=known, progress=progress
    )


def published_versions(
    names: Sequence[str],
    *,
    state_dir: str | Path | None = None,
    aws: bool = False,
    region: str | None = None,
    profile: str | None = None,
    endpoint_url: str | None = None,
) -> list[str]:
    """Every version of ``names`` published in the local fleet (``state_dir``, when one exists there) and, with
    ``aws``, in AWS IoT Greengrass v2."""
    from edgekit.fleet.folder import FleetFolder

    versions: list[str] = []
    folder = FleetFolder.at(state_dir)
    if folder.exists():
        state = folder.open_state()
        try:
            for n in names:
                versions += state.component_versions(n)
        finally:
            state.close()
    if aws:
        from edgekit.greengrass.aws import AwsSession, GreengrassComponents

        session = AwsSession(region=region, profile=profile, endpoint_url=endpoint_url)
        gg = GreengrassComponents(
            session.greengrass(), region=session.region, account=session.account_id(), partition=session.partition()
        )
        for n in names:
            versions += gg.list_versions(n)
    return versions


def publish(
    build: str | Path = DEFAULT_BUILD,
    *,
    local: bool = False,
    state_dir: str | Path | None = None,
    bucket: str | None = None,
    region: str | None = None,
    profile: str | None = None,
    endpoint_url: str | None = None,
    gdk_bucket_naming: bool = False,
    skip_existing: bool = False,
    dry_run: bool = False,
    progress: Progress | None = None,
) -> PublishResult:
    """Publish a packaged build folder: to AWS (artifacts to S3 ``bucket``, component versions to Greengrass v2 in
    ``region``, each waited for until DEPLOYABLE), or with ``local`` to the local fleet's registry in ``state_dir``
    (default ``./.edgekit/fleet``). Both read the folder with one reader and check everything before any upload."""
    from edgekit.errors import PublishError

    if local:
        from edgekit.fleet.deploy import publish_to_folder
        from edgekit.fleet.folder import FleetFolder
        from edgekit.greengrass.build_folder import PublishResult

        if dry_run:
            raise PublishError("--dry-run is for AWS; a local publish checks everything before it writes anything")
        folder = FleetFolder.at(state_dir)
        return PublishResult(f"local fleet {folder.root}", tuple(publish_to_folder(build, folder, progress)))
    from edgekit.greengrass.aws import NO_REGION, PublishEvent, resolve_region

    if not bucket:
        raise PublishError("publishing to AWS needs a bucket: pass --bucket (or publish with --local)")
    region = resolve_region(region, profile)
    if not region:
        raise PublishError(NO_REGION)
    from edgekit.greengrass.aws import publish as _publish

    def show(event: PublishEvent) -> None:
        if progress is not None:
            progress(f"{event.stage}: {event.component} {event.detail}".rstrip())

    return _publish(
        build,
        bucket=bucket,
        region=region,
        profile=profile,
        account_bucket_suffix=gdk_bucket_naming,
        endpoint_url=endpoint_url,
        progress=show,
        dry_run=dry_run,
        skip_existing=skip_existing,
    )


def deploy(
    spec: DeploymentSpec | dict[str, Any],
    *,
    local: bool = False,
    state_dir: str | Path | None = None,
    fleet: str | Path | None = None,
    recipes: str | Path = DEFAULT_BUILD / "recipes",
    region: str | None = None,
    profile: str | None = None,
    endpoint_url: str | None = None,
    account: str | None = None,
    dry_run: bool = False,
    recipe_dir: str | Path | None = None,
    artifact_dir: str | Path | None = None,
    cumulative: bool = False,
    remove: Sequence[str] = (),
    progress: Progress | None = None,
) -> DeploymentResult | LocalDeployment:
    """Deploy components to a thing or thing group, after a pre-flight of versions and platforms on every device.

    ``local``: against the local fleet in ``state_dir`` (its devices, plus ``fleet``'s; its registry), written into
    its state. Otherwise to AWS Greengrass v2 in ``region``; with ``fleet`` the pre-flight first runs on that fleet
    file's devices against the recipes in ``recipes``. ``dry_run`` (AWS) returns the exact request, creating nothing.

    The Greengrass CLI's local deployments (``local`` only): ``recipe_dir``/``artifact_dir`` are published to the
    local registry first; ``cumulative`` keeps the components already deployed to the target, less ``remove``.
    """
    from edgekit.errors import DeploymentError
    from edgekit.greengrass.deployment import DeploymentSpec
    from edgekit.greengrass.deployment import deploy as _deploy

    final = spec if isinstance(spec, DeploymentSpec) else DeploymentSpec.from_dict(spec)
    if local:
        if dry_run:
            raise DeploymentError("--dry-run is for AWS deployments; a local deployment is checked by its pre-flight")
        from edgekit.fleet.deploy import current_components, deploy_to_folder, publish_dirs_to_folder
        from edgekit.fleet.folder import FleetFolder
        from edgekit.greengrass.deployment import build_spec

        folder = FleetFolder.at(state_dir)
        if recipe_dir or artifact_dir:
            if not (recipe_dir and artifact_dir):
                raise DeploymentError("--recipeDir and --artifactDir go together (recipes and their artifacts)")
            publish_dirs_to_folder(recipe_dir, artifact_dir, folder, progress)
        if cumulative or remove:
            base = current_components(folder, final.target_arn) if folder.exists() else {}
            final = build_spec(final.target_arn, spec=final, base=base, remove=remove)
        return deploy_to_folder(final, folder, str(fleet) if fleet else None, progress)
    if recipe_dir or artifact_dir or remove or cumulative:
        raise DeploymentError(
            "--recipeDir, --artifactDir, --remove and cumulative deployments are the Greengrass CLI's local deployments: "
            "add --local (to AWS, publish first and deploy the full set of components)"
        )
    from edgekit.greengrass.aws import NO_REGION, resolve_region

    if fleet:
        _preflight_fleet(final, str(fleet), Path(recipes), progress)
    region = resolve_region(region, profile)
    if not region:
        raise DeploymentError(NO_REGION)
    return _deploy(final, region=region, profile=profile, endpoint_url=endpoint_url, dry_run=dry_run, account=account)


def deployments(
    *,
    local: bool = False,
    state_dir: str | Path | None = None,
    region: str | None = None,
    profile: str | None = None,
    endpoint_url: str | None = None,
) -> list[DeploymentListing]:
    """The deployments of the local fleet (``local``, with execution counts) or of AWS Greengrass v2 in ``region``,
    newest first."""
    from edgekit.greengrass.deployment import DeploymentListing

    if local:
        from edgekit.fleet.deploy import list_deployments
        from edgekit.fleet.folder import FleetFolder

        return [
            DeploymentListing(d.id, d.target, d.status, d.created_at, None, dict(d.counts))
            for d in list_deployments(FleetFolder.at(state_dir))
        ]
    from edgekit.errors import DeploymentError
    from edgekit.greengrass.aws import NO_REGION, resolve_region
    from edgekit.greengrass.deployment import list_deployments as list_aws

    region = resolve_region(region, profile)
    if not region:
        raise DeploymentError(NO_REGION)
    return list_aws(region=region, profile=profile, endpoint_url=endpoint_url)


def cancel_deployment(
    deployment_id: str,
    *,
    local: bool = False,
    state_dir: str | Path | None = None,
    region: str | None = None,
    profile: str | None = None,
    endpoint_url: str | None = None,
) -> str:
    """Cancel a deployment of the local fleet (``local``: its id or an unambiguous prefix; queued executions are
    canceled, running ones finish) or of AWS Greengrass v2; returns its full id."""
    if local:
        from edgekit.fleet.deploy import cancel_local
        from edgekit.fleet.folder import FleetFolder

        return cancel_local(FleetFolder.at(state_dir), deployment_id)[0]
    from edgekit.errors import DeploymentError
    from edgekit.greengrass.aws import NO_REGION, resolve_region
    from edgekit.greengrass.deployment import cancel_deployment as cancel_aws

    region = resolve_region(region, profile)
    if not region:
        raise DeploymentError(NO_REGION)
    return cancel_aws(deployment_id, region=region, profile=profile, endpoint_url=endpoint_url)


def logs(
    thing: str,
    component: str | None = None,
    *,
    state_dir: str | Path | None = None,
    lines: int | None = None,
    follow: bool = False,
) -> Iterator[LogLine]:
    """The component logs of a local fleet device (``greengrass-cli logs``): every component's, or ``component``'s;
    the last ``lines`` of each; with ``follow``, new lines as they come (stop iterating to stop)."""
    from edgekit.fleet.folder import FleetFolder
    from edgekit.fleet.logs import log_files, read_logs

    folder = FleetFolder.at(state_dir)
    return read_logs(log_files(folder, thing, component), lines=lines, follow=follow)


def _preflight_fleet(spec: DeploymentSpec, fleet: str, recipes: Path, progress: Progress | None) -> None:
    from edgekit.fleet_file import load_fleet
    from edgekit.greengrass.resolve import ComponentStore, GroupDeployment, preflight

    short = spec.target_arn.rsplit(":", 1)[-1]
    versions = {n: c.component_version for n, c in spec.components.items()}
    report = preflight(GroupDeployment(short, versions), [], load_fleet(fleet).expand(), ComponentStore.from_dirs(recipes))
    if progress is not None:
        progress(f"pre-flight: {len(report.devices)} device(s) reached, {len(report.failed)} with problems")
    report.raise_for_problems()


def simulate(
    fleet: str | Path = "demo",
    *,
    state_dir: str | Path | None = None,
    devices: int | None = None,
    mode: Literal["in_process", "subprocess"] | None = None,
    tls: bool | None = None,
    tick_s: float = 1.0,
    build: str | Path | None = None,
    deployments: Sequence[DeploymentSpec] = (),
    deploy: Sequence[str] | Mapping[str, str] = (),
    targets: Sequence[str] = (),
    rollout: str | None = None,
    abort_failed: str | None = None,
    until_done: bool = False,
    duration: float | None = None,
    watch: Callable[[SimulationStatus], None] | None = None,
    every: float = 0.5,
    progress: Progress | None = None,
    shards: int | None = 1,
    database: str | None = None,
) -> SimulationRun:
    """Run a simulated fleet in the foreground (mosquitto, the local fleet service, device agents) and return how
    it ended: publish ``build``, make ``deployments``, then watch until ``until_done`` / ``duration`` (or Ctrl-C).

    ``deploy``: components (``NAME=VERSION`` or a mapping) to deploy once started, to ``targets`` (default: every
    thing group of the fleet) with ``rollout`` / ``abort_failed`` (:func:`deployment_spec`'s shorthands), besides
    ``deployments``.

    ``shards``: run the devices in that many processes, split by thing name, against one broker and fleet server
    (``None``: one per core; see docs/local-fleet.md, shards); a shard that dies is reported and started again.

    ``database``: a ``postgresql://`` URL to keep the fleet's state in instead of the folder's SQLite file
    (remembered in the folder, as ``fleet serve --database``; then ``fleet serve --join`` processes can share its
    telemetry ingest). See docs/local-fleet.md (the fleet on PostgreSQL).

    For a simulation that runs beside your own code, use :class:`edgekit.sim.Simulation` as an async context.
    """
    from edgekit.errors import ConfigError, DeploymentError
    from edgekit.fleet_file import load_fleet
    from edgekit.greengrass.deployment import build_spec
    from edgekit.sim import Simulation
    from edgekit.sim.run import run_simulation

    if not deploy and (targets or rollout or abort_failed):
        raise DeploymentError("--target, --rollout and --abort-failed go with --deploy NAME=VERSION")
    if shards is not None and shards < 1:
        raise ConfigError(f"--shards {shards}: give 1 or more processes for the devices (default: one per core)")
    model = load_fleet(fleet)
    if deploy:
        groups = sorted({g for d in model.expand() for g in d.groups})
        deployments = [*deployments, *(
            build_spec(t, deploy, rollout=rollout, abort_failed=abort_failed, flag="--deploy")
            for t in (targets or [f"thinggroup/{g}" for g in groups])
        )]  # fmt: skip
    if devices is not None:
        model = model.scaled(devices)
    # emulated devices (qemu-user) run as simulated ones where their aarch64 Python can't be had (a warning says why)
    from edgekit.sim.shards import default_shards

    sim = Simulation(
        model, state_dir=state_dir, mode=mode, tls=tls, tick_s=tick_s, emulation_fallback=True,
        shards=default_shards(len(model.expand())) if shards is None else shards, database=database,
    )  # fmt: skip

    async def main() -> SimulationRun:
        loop, task = asyncio.get_running_loop(), asyncio.current_task()
        if task is not None and threading.current_thread() is threading.main_thread():
            loop.add_signal_handler(signal.SIGTERM, task.cancel)  # stop as on Ctrl-C: devices, fleet and broker
        try:
            return await run_simulation(
                sim,
                build=build,
                deployments=deployments,
                until_done=until_done,
                duration=duration,
                watch=watch,
                every=every,
                progress=progress,
            )
        except asyncio.CancelledError:
            raise KeyboardInterrupt from None
        finally:
            await sim.close()
            if threading.current_thread() is threading.main_thread():
                loop.remove_signal_handler(signal.SIGTERM)

    return asyncio.run(main())


def serve_fleet(
    *,
    state_dir: str | Path | None = None,
    host: str = "127.0.0.1",
    port: int | None = None,
    http_port: int | None = None,
    public_host: str | None = None,
    tick_s: float = 1.0,
    progress: Progress | None = None,
    ready: Callable[[ServedFleet], None] | None = None,
    database: str | None = None,
    join: bool = False,
    broker: str | None = None,
    client_id: str | None = None,
    joined: Callable[[JoinedFleet], None] | None = None,
    member: str | None = None,
) -> dict[str, Any] | None:
    """Serve the local fleet in ``state_dir`` for real devices until SIGTERM or SIGINT: mosquitto (mTLS, a
    certificate per device), the fleet service, the registry and the page, with no simulated device.

    ``host``: where it listens (loopback by default: say what else you want reachable); ``public_host``: the
    address devices use (default ``host``). ``port`` / ``http_port``: ``None`` keeps the last run's (else 8883 and
    8080: device bundles name them), 0 picks free ones. ``ready`` hears the addresses once it is up. Devices join with
    :func:`add_device` and ``edgekit agent``; deploy with ``deploy(..., local=True)``. ``database``: a
    ``postgresql://`` URL to keep the fleet's state in instead of the folder's SQLite file (remembered in the folder).

    ``join``: instead, one more fleet service process for the fleet served on ``state_dir`` on PostgreSQL (an SQLite
    fleet is refused): it ingests a share of the devices' telemetry through the broker's shared subscription, through
    the broker's fleet service listener (``broker``; default the running fleet's) with the service certificate of the
    folder's ``tls/``, as ``client_id`` (its own, required); ``database`` defaults to the folder's. ``joined`` hears
    where it works once it is up; returns what it did (``clientId``, ``messages``, ``windows``, ``duplicates``,
    ``requests``). ``member`` (``"I/N"``, on PostgreSQL): this process answers only the Jobs requests of the things
    whose name hashes to I of N — give every process of the fleet its own, the serving one and the joined ones; without
    it the serving process answers them all and a joined one none. See docs/local-fleet.md (the fleet on PostgreSQL).
    """
    from edgekit.fleet.folder import FleetFolder

    if join:
        from edgekit.fleet.scale_out import join_fleet

        return join_fleet(
            FleetFolder.at(state_dir), client_id=client_id, broker=broker, database=database, member=member, tick_s=tick_s,
            progress=progress, ready=joined,
        )  # fmt: skip
    from edgekit.fleet.foreground import serve_fleet as _serve

    _serve(
        FleetFolder.at(state_dir), host=host, port=port, http_port=http_port, public_host=public_host, tick_s=tick_s,
        progress=progress, ready=ready, database=database, member=member,
    )  # fmt: skip
    return None


def add_device(
    thing: str,
    *,
    groups: Sequence[str] = (),
    platform: str,
    state_dir: str | Path | None = None,
    out: str | Path | None = None,
    root: str = "work",
    create_groups: bool = False,
    force: bool = False,
) -> AddedDevice:
    """Add a real device to the local fleet in ``state_dir``: register ``thing`` in ``groups`` with ``platform`` (a
    device profile, or ``OS/ARCHITECTURE``) and write its device bundle to ``out`` (default
    ``<state_dir>/bundles/<thing>``): its certificate signed by the fleet's CA, its key, the CA certificate and a
    ``config.yaml`` for ``edgekit agent --config``. Needs one ``serve_fleet`` on the folder first (its CA, its
    addresses); works while it runs. Unknown groups need ``create_groups``; an existing thing or a non-empty ``out``
    needs ``force``.
    """
    from edgekit.fleet.folder import FleetFolder
    from edgekit.fleet.provision import add_device as _add

    return _add(
        FleetFolder.at(state_dir), thing, groups=tuple(groups), platform=platform, out=out, root=root,
        create_groups=create_groups, force=force,
    )  # fmt: skip


def run_agent(
    config: str | Path,
    *,
    systemd_unit: str | Path | None = None,
    setup_system_service: bool = False,
    user: str | None = None,
    progress: Progress | None = None,
) -> Path | None:
    """Run the device agent of a device bundle (``edgekit fleet add-device`` writes one; ``config`` is its
    ``config.yaml`` or its folder) in the foreground until SIGTERM or SIGINT, as the Greengrass nucleus runs; None.

    ``systemd_unit``: write the systemd unit that runs it there instead, and return its path; ``setup_system_service``:
    as the nucleus's ``--setup-system-service true``, write ``/etc/systemd/system/edgekit-agent.service`` and
    enable and start it (root). ``user``: the unit's ``User=``. Imports nothing of the fleet side (edgekit[device]).
    """
    from edgekit.device.agent_process import run_agent as _run_agent
    from edgekit.device.agent_process import setup_system_service as _setup
    from edgekit.device.agent_process import write_systemd_unit

    if setup_system_service:
        return _setup(config, unit=systemd_unit, user=user) if systemd_unit else _setup(config, user=user)
    if systemd_unit is not None:
        return write_systemd_unit(config, systemd_unit, user=user)
    _run_agent(config, progress=progress)
    return None


def rpc_server(
    *, tracker: str | None = None, key: str = "", host: str = "0.0.0.0", port: int = 9090, progress: Progress | None = None
) -> None:
    """Run TVM's RPC server on this device until interrupted, with ``edgekit.time_artifact`` added: what
    ``edgekit compile --rpc-tracker HOST:PORT --rpc-key KEY`` times every candidate with (ONNX Runtime ones too,
    loaded with their self-test). ``tracker``: ``HOST:PORT`` to register with, under ``key``. Needs TVM (``edgekit[tvm]``)."""
    from edgekit.deps import require
    from edgekit.edge.rpc_server import run_rpc_server
    from edgekit.errors import ConfigError
    from edgekit.parsing import ParseError, parse_host_port

    try:
        address = parse_host_port(tracker) if tracker else None
    except ParseError as exc:
        raise ConfigError(f"--tracker {exc}") from None
    if address is not None and not key.strip():
        raise ConfigError("--tracker needs --key KEY: the key the compile side asks the tracker for (--rpc-key)")
    require("tvm", "running a TVM RPC server")
    run_rpc_server(address, key.strip(), host=host, port=port, say=progress or print)


def fleet_page(*, state_dir: str | Path | None = None) -> str:
    """The address of the live fleet page (``/ui``) of the simulation running on the fleet folder ``state_dir``."""
    from edgekit.errors import ConfigError
    from edgekit.fleet.folder import FleetFolder

    folder = FleetFolder.at(state_dir)
    running = folder.running()
    if not running or not running.get("http"):
        raise ConfigError(
            f"no simulation runs on {folder.root}; start one with 'edgekit simulate --state {folder.root}' "
            "(it prints the page's address too)"
        )
    return f"{running['http']}/ui"


def fleet_status(*, state_dir: str | Path | None = None) -> FleetStatus:
    """The local fleet in ``state_dir`` (default ``./.edgekit/fleet``) at a glance: deployments, thing groups,
    devices, the latest failures, what the devices report and the simulation running on it (readable while it runs)."""
    from edgekit.fleet.folder import FleetFolder
    from edgekit.fleet.status import read_status

    return read_status(FleetFolder.at(state_dir))


def deployment_spec(
    target: str,
    components: Sequence[str] | Mapping[str, str] = (),
    *,
    spec_file: str | Path | None = None,
    name: str | None = None,
    rollout: str | None = None,
    abort_failed: str | None = None,
    failure_handling: str | None = None,
    timeout_minutes: int | None = None,
    merge: Sequence[str] = (),
    update_config: str | None = None,
    remove: Sequence[str] = (),
) -> DeploymentSpec:
    """A deployment request (CreateDeployment's fields) for :func:`deploy`: ``components`` as ``NAME=VERSION`` (or a
    mapping) over the spec file's, ``rollout`` like ``'10/min'``, ``abort_failed`` like ``'10%'``; ``merge``,
    ``update_config`` and ``remove`` as the Greengrass CLI's ``--merge``, ``--update-config`` and ``--remove``."""
    from edgekit.greengrass.deployment import build_spec, load_spec

    return build_spec(
        target,
        components,
        spec=load_spec(spec_file) if spec_file else None,
        name=name,
        rollout=rollout,
        abort_failed=abort_failed,
        failure_handling=failure_handling,
        timeout_minutes=timeout_minutes,
        merge=merge,
        update_config=update_config,
        remove=remove,
    )


def lint_recipes(paths: Sequence[str | Path]) -> list[Finding]:
    """Check Greengrass v2 recipe files (and folders of them) the way the nucleus reads them: every finding names
    the file, the path in it, the problem and the fix (``severity`` error or warning)."""
    from edgekit.errors import RecipeError
    from edgekit.greengrass.lint import lint_paths

    missing = [str(p) for p in paths if not Path(p).exists()]
    if missing:
        raise RecipeError(f"no such recipe file or folder: {', '.join(missing)}")
    return lint_paths(paths)


def verify_artifact(artifact_dir: str | Path, *, samples: int = 4, progress: Progress | None = None) -> VerifyReport:
    """Run an aarch64 artifact under qemu (aarch64 Python + TVM runtime) on its golden vectors and compare with this
    host; :class:`~edgekit.errors.VerificationError` when they disagree."""
    from edgekit.verify.compare import verify_artifact as _verify

    return _verify(artifact_dir, samples=samples, progress=progress)


def prepare_verify(*, device: bool = False, progress: Progress | None = None) -> Path:
    """Build the aarch64 root ``edgekit verify`` runs artifacts in (Debian arm64 packages and aarch64 wheels, ~212 MB,
    downloaded once), or find it built; with ``device`` its device layer too (what emulated fleet devices import).
    Returns its folder: a CI can cache it (``$EDGEKIT_SYSROOT_CACHE``, see docs/artifact.md). ``edgekit verify --prepare``;
    not re-exported on ``edgekit`` (its names are capped): ``edgekit.api.prepare_verify``."""
    from edgekit.verify.sysroot import default_sysroot_dir, ensure_sysroot

    ensure_sysroot(progress=progress, device=device)
    return default_sysroot_dir()


def run_demo(
    output: str | Path = "build/demo",
    *,
    targets: Sequence[str] = ("x86_64", "rasp4b"),
    fleet: str = "demo",
    state_dir: str | Path | None = None,
    no_fleet: bool = False,
    rollout_per_min: int = 600,
    seconds: float = 20.0,
    outage_s: float = 5.0,
    keep: bool = False,
    cloud_url: str | None = None,
    progress: Progress | None = None,
) -> DemoReport:
    """The whole flow on a bundled sensor model: compile for ``targets``, package, start ``edgekit serve`` as the
    cloud fallback (or use ``cloud_url``), roll out to a simulated fleet, infer through a broker outage and count
    every reading; see :mod:`edgekit.demo.flow`."""
    from edgekit.demo.flow import DemoOptions
    from edgekit.demo.flow import run_demo as _run_demo

    options = DemoOptions(
        output=Path(output),
        targets=tuple(targets),
        fleet=fleet,
        state=Path(state_dir) if state_dir is not None else None,
        rollout_per_min=rollout_per_min,
        seconds=seconds,
        outage_s=outage_s,
        no_fleet=no_fleet,
        keep=keep,
        cloud_url=cloud_url,
    )
    return _run_demo(options, progress=progress)


def serve(
    models: Sequence[str | Path] = (),
    *,
    pipelines: Mapping[str, Sequence[str]] | None = None,
    options: ServeOptions | None = None,
    on_ready: Callable[[str, list[str]], None] | None = None,
    **settings: Any,
) -> None:
    """Serve artifacts (``NAME=PATH`` to rename) and serial pipelines over SageMaker's container contract, the
    multi-model API, KServe v2 and /metrics until SIGTERM. ``settings``: the fields of
    :class:`edgekit.cloud.model_server.ServeOptions` (``host``, ``port``, ``threads``...), or pass ``options``.
    ``on_ready(url, model_names)`` once listening."""
    from edgekit.cloud.model_server import ModelServer, ServeOptions

    opts = options or ServeOptions(**settings)
    server: ModelServer | None = None

    def ready(url: str) -> None:
        if on_ready is not None:
            on_ready(url, sorted(server.registry.sources) if server is not None else [])

    server = ModelServer(models, pipelines=pipelines, options=opts, on_ready=ready)
    server.run()


def advise(
    artifact: str | Path | None = None, workload: Workload | None = None, *, rules_file: Path | None = None, **facts: Any
) -> Advice:
    """Where and how to run a model (edge or cloud; inference option, endpoint layout, instance family), with
    reasons, by AWS's deployment guide. ``facts``: the fields of :class:`edgekit.cloud.advisor.Workload`
    (``latency_ms``, ``traffic``...), or pass ``workload``; see :func:`edgekit.cloud.advisor.advise`."""
    from edgekit.cloud.advisor import Workload
    from edgekit.cloud.advisor import advise as _advise

    return _advise(artifact, workload or Workload(**facts), rules_file=rules_file)


def deploy_endpoint(
    artifact_dir: str | Path,
    *,
    name: str | None = None,
    mode: str = "real-time",
    region: str | None = None,
    profile: str | None = None,
    endpoint_url: str | None = None,
    dry_run: bool = False,
    wait: bool = True,
    timeout: float = 1800.0,
    progress: Progress | None = None,
    **spec: Any,
) -> DeployResult:
    """Upload an artifact and create a SageMaker model and endpoint (``mode``: real-time, serverless, async) or a
    batch transform job, waiting for InService / Completed unless not ``wait``; a failure deletes what it made.
    ``spec``: the other fields of :class:`edgekit.cloud.sagemaker.EndpointSpec` (``role_arn``, ``image``,
    ``bucket``, ``min_instances``/``max_instances``/``target_invocations``...). ``name`` defaults to the artifact's
    folder name made valid for SageMaker (``sensor-x86_64`` -> ``sensor-x86-64``). ``dry_run``: every request
    checked against the API model, nothing called."""
    from edgekit.cloud.sagemaker import MODES, DeployEvent, EndpointSpec, endpoint_name
    from edgekit.cloud.sagemaker import deploy_endpoint as _deploy
    from edgekit.errors import EndpointError

    if mode not in MODES:
        raise EndpointError(f"--mode must be one of {', '.join(MODES)}, not '{mode}'")
    if spec.get("instance_count") is None:  # not given: as many as the scaling minimum asks for, at least one
        spec["instance_count"] = max(1, spec.get("min_instances") or 1)
    full = EndpointSpec(name=name or endpoint_name(Path(artifact_dir).resolve().name.removesuffix(".tar.gz")), mode=mode, **spec)  # type: ignore[arg-type]

    def show(event: DeployEvent) -> None:
        if progress is not None:
            progress(f"{event.stage}: {event.detail}")

    return _deploy(
        artifact_dir, full, region=region, profile=profile, endpoint_url=endpoint_url, dry_run=dry_run, wait=wait,
        timeout=timeout, progress=show,
    )  # fmt: skip


def invoke_endpoint(
    name: str,
    inputs: Mapping[str, np.ndarray] | np.ndarray | None = None,
    *,
    input_files: Sequence[str] = (),
    target_model: str | None = None,
    region: str | None = None,
    profile: str | None = None,
    endpoint_url: str | None = None,
) -> dict[str, np.ndarray]:
    """InvokeEndpoint (a SageMaker endpoint, or a local ``edgekit serve`` at ``endpoint_url``): the outputs by name.
    ``input_files`` instead of ``inputs``: ``file.npy`` (the only input), ``NAME=file.npy`` per input, or an
    ``.npz`` of all of them."""
    from edgekit.cloud.sagemaker import invoke_endpoint as _invoke

    feeds = _endpoint_inputs(list(input_files)) if inputs is None else inputs
    return _invoke(name, feeds, target_model=target_model, region=region, profile=profile, endpoint_url=endpoint_url)


def _endpoint_inputs(items: list[str]) -> dict[str, np.ndarray] | np.ndarray:
    import numpy as np

    from edgekit.errors import EndpointError

    feeds: dict[str, np.ndarray] = {}
    for item in items:
        name, sep, file = item.partition("=")
        path = Path(file if sep else item)
        try:
            if path.suffix == ".npz":
                with np.load(path, allow_pickle=False) as data:
                    feeds.update({k: data[k] for k in data.files})
                continue
            array: np.ndarray = np.asarray(np.load(path, allow_pickle=False))
        except (OSError, ValueError) as exc:
            raise EndpointError(f"--input {item}: cannot read '{path}' as .npy/.npz ({exc})") from exc
        if not sep:
            if len(items) != 1:
                raise EndpointError(f"--input {item}: with several inputs, name each: NAME=file.npy")
            return array
        feeds[name] = array
    if not feeds:
        raise EndpointError("give --input file.npy (the model's only input), NAME=file.npy per input, or an .npz")
    return feeds


def invoke_endpoint_async(
    name: str,
    input_location: str,
    *,
    region: str | None = None,
    profile: str | None = None,
    endpoint_url: str | None = None,
) -> str:
    """InvokeEndpointAsync on a request body already in S3 (``s3://...``); returns where the result will be written."""
    from edgekit.cloud.sagemaker import invoke_endpoint_async as _invoke_async

    return _invoke_async(name, input_location, region=region, profile=profile, endpoint_url=endpoint_url)


def delete_endpoint(
    name: str,
    *,
    keep_config: bool = False,
    keep_models: bool = False,
    region: str | None = None,
    profile: str | None = None,
    endpoint_url: str | None = None,
    dry_run: bool = False,
) -> list[ApiCall]:
    """Delete a SageMaker endpoint, then (unless kept) its endpoint config and the models it serves; the calls made
    (with ``dry_run``, the calls it would make)."""
    from edgekit.cloud.sagemaker import delete_endpoint as _delete

    return _delete(
        name, keep_config=keep_config, keep_models=keep_models, region=region, profile=profile,
        endpoint_url=endpoint_url, dry_run=dry_run,
    )  # fmt: skip
