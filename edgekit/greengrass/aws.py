"""Publishing packaged components to AWS: S3 artifacts + Greengrass v2 component versions, through boto3.

One small class per service used; every botocore failure becomes one line that says what to do.
boto3 is imported when a session is made, never at ``import edgekit``. See docs/publishing.md.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

from edgekit.deps import require
from edgekit.digests import file_sha256
from edgekit.errors import EdgekitError, PublishError
from edgekit.greengrass.build_folder import (
    BUCKET_PLACEHOLDER,
    NAME_PLACEHOLDER,
    VERSION_PLACEHOLDER,
    BuiltComponent,
    PublishedArtifact,
    PublishedComponent,
    PublishResult,
    read_build,
)
from edgekit.greengrass.recipe import dump_recipe

if TYPE_CHECKING:
    import boto3
    from mypy_boto3_greengrassv2 import GreengrassV2Client
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_sts import STSClient

__all__ = [
    "BUCKET_PLACEHOLDER",
    "ENDPOINT_ENV",
    "MAX_ATTEMPTS",
    "NAME_PLACEHOLDER",
    "SHA256_METADATA_KEY",
    "VERSION_PLACEHOLDER",
    "AwsSession",
    "ComponentStatus",
    "GreengrassComponents",
    "PublishEvent",
    "PublishResult",
    "PublishedComponent",
    "S3Artifacts",
    "UploadResult",
    "aws_error_code",
    "aws_errors",
    "describe_aws_error",
    "file_sha256",
    "make_session",
    "partition_for_region",
    "publish",
]

log = logging.getLogger(__name__)

ENDPOINT_ENV = "EDGEKIT_AWS_ENDPOINT_URL"
MAX_ATTEMPTS = 8
SHA256_METADATA_KEY = "sha256"  # x-amz-meta-sha256: hex digest of the uploaded file

_BUCKET_NAME = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")

# --------------------------------------------------------------------------- errors

_NO_CREDENTIALS = (
    "no AWS credentials found; set AWS_PROFILE (or pass --profile), set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, "
    "or run 'aws configure' / 'aws sso login'"
)
_EXPIRED = {"ExpiredToken", "ExpiredTokenException", "RequestExpired", "TokenRefreshRequired"}
_REJECTED = {
    "InvalidClientTokenId",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "UnrecognizedClientException",
    "InvalidToken",
    "InvalidSignatureException",
}
_DENIED = {"AccessDenied", "AccessDeniedException", "Forbidden", "403", "AllAccessDisabled"}
_THROTTLED = {
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "RequestThrottled",
    "RequestThrottledException",
    "TooManyRequestsException",
    "RequestLimitExceeded",
    "SlowDown",
    "BandwidthLimitExceeded",
    "ProvisionedThroughputExceededException",
    "PriorRequestNotComplete",
    "429",
}
_WRONG_REGION = {
    "PermanentRedirect",
    "AuthorizationHeaderMalformed",
    "IllegalLocationConstraintException",
    "301",
    "IncorrectEndpoint",
}


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def describe_aws_error(exc: BaseException, action: str) -> str | None:
    """One-line, actionable description of a botocore/boto3 failure while doing ``action``; None if not one."""
    try:
        import botocore.exceptions as bex
    except ImportError:  # no botocore: nothing it raised
        return None

    if isinstance(exc, bex.NoCredentialsError | bex.PartialCredentialsError):
        return f"{action}: {_NO_CREDENTIALS}"
    if isinstance(exc, bex.ProfileNotFound):
        return f"{action}: {_one_line(str(exc))}; check the profile name or ~/.aws/config"
    if isinstance(exc, bex.TokenRetrievalError | bex.SSOTokenLoadError | bex.UnauthorizedSSOTokenError):
        return f"{action}: credentials expired; refresh them ('aws sso login' or new session credentials) and retry"
    if isinstance(exc, bex.NoRegionError):
        return f"{action}: no AWS region configured; pass --region or set AWS_REGION"
    if isinstance(exc, bex.EndpointConnectionError | bex.ConnectTimeoutError | bex.ReadTimeoutError | bex.ConnectionClosedError):
        endpoint = getattr(exc, "kwargs", {}).get("endpoint_url", "")
        return (
            f"{action}: cannot reach the AWS endpoint {endpoint}".rstrip()
            + "; check the network, the region and any endpoint override "
            f"({ENDPOINT_ENV} / AWS_ENDPOINT_URL)"
        )
    if isinstance(exc, bex.ParamValidationError):
        return f"{action}: request rejected before sending: {_one_line(str(exc))}"
    if isinstance(exc, bex.ClientError):
        err = exc.response.get("Error", {})
        code = str(err.get("Code", "") or "")
        message = _one_line(str(err.get("Message", "") or ""))
        meta = exc.response.get("ResponseMetadata", {})
        status = meta.get("HTTPStatusCode")
        attempts = int(meta.get("RetryAttempts", 0) or 0) + 1
        detail = f" ({message})" if message else ""
        if code in _EXPIRED:
            return f"{action}: credentials expired; refresh them ('aws sso login' or new session credentials) and retry{detail}"
        if code in _REJECTED:
            return f"{action}: AWS rejected the credentials ({code}); check the access key / profile and the system clock"
        if code in _THROTTLED or status == 429:
            return f"{action}: throttled by AWS ({code}) after {attempts} attempt(s); wait a minute and retry"
        if code in _WRONG_REGION or status == 301:
            headers = meta.get("HTTPHeaders", {})
            real = err.get("Region") or headers.get("x-amz-bucket-region")
            where = f" it is in {real}" if real else " it is in another region"
            return f"{action}: the bucket is not in the client's region;{where}; use that region or another bucket ({code})"
        if code in _DENIED or status == 403:
            return f"{action}: access denied{detail}; the AWS identity needs that permission"
        return f"{action}: {code or status or 'error'}{detail}"
    if isinstance(exc, bex.BotoCoreError):
        return f"{action}: {_one_line(str(exc))}"
    return None


def aws_error_code(exc: BaseException) -> str:
    """The service error code of a botocore ClientError ('' for anything else)."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return str(response.get("Error", {}).get("Code", "") or "")
    return ""


@contextlib.contextmanager
def aws_errors(action: str, error: type[EdgekitError] = PublishError) -> Iterator[None]:
    """Turn botocore failures inside the block into a one-line ``error`` (raised from the cause)."""
    try:
        yield
    except EdgekitError:
        raise
    except Exception as exc:
        message = describe_aws_error(exc, action)
        if message is None:
            raise
        raise error(message) from exc


# --------------------------------------------------------------------------- session

NO_REGION = "no AWS region: pass --region, set AWS_REGION, or give the profile a region ('aws configure set region ...')"


def make_session(profile: str | None, region: str | None) -> boto3.Session:
    """A boto3 session for ``profile`` / ``region`` (None: :func:`resolve_region`, then boto3's own resolution)."""
    boto3_mod = require("boto3", "publishing to AWS")
    with aws_errors("opening the AWS session"):
        return cast("boto3.Session", boto3_mod.Session(profile_name=profile, region_name=region or _env_region()))


def _env_region() -> str | None:
    return os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or None


def resolve_region(region: str | None, profile: str | None = None) -> str | None:
    """The region as the AWS SDKs find it, without any network call: ``region``, else ``$AWS_REGION``, else
    ``$AWS_DEFAULT_REGION``, else the region of ``profile`` (or ``$AWS_PROFILE``, or default) in ~/.aws/config."""
    if region:
        return region
    if env := _env_region():
        return env
    try:
        boto3_mod = require("boto3", "reading the AWS configuration")
        return cast("str | None", boto3_mod.Session(profile_name=profile).region_name)
    except Exception:  # no boto3, or a profile that does not exist: the caller says what to pass
        return None


def has_credentials(profile: str | None = None) -> bool:
    """True if the standard chain finds credentials (environment, profile, ...), without any network call
    beyond what the chain itself does (e.g. an instance's metadata service)."""
    try:
        boto3_mod = require("boto3", "reading the AWS credentials")
        return boto3_mod.Session(profile_name=profile).get_credentials() is not None
    except Exception:
        return False


def partition_for_region(region: str) -> str:
    """AWS partition of a region (``aws``, ``aws-cn``, ``aws-us-gov``...), from botocore's bundled data."""
    try:
        boto3_mod = require("boto3", "resolving the AWS partition")
        return str(boto3_mod.Session().get_partition_for_region(region))
    except Exception:  # unknown region or no boto3: the commercial partition
        return "aws"


class AwsSession:
    """A boto3 session plus the client settings edgekit uses everywhere.

    Clients get ``endpoint_url`` (the argument, else ``$EDGEKIT_AWS_ENDPOINT_URL``, else boto3's own
    ``AWS_ENDPOINT_URL[_<SERVICE>]`` handling) and standard-mode retries with up to ``max_attempts``
    attempts in all (first call included), so throttling and transient errors back off and retry.
    Clients are cached per service. ``error`` is the EdgekitError class its own failures raise
    (PublishError for publishing, DeploymentError for deploying).
    """

    def __init__(
        self,
        *,
        region: str | None = None,
        profile: str | None = None,
        endpoint_url: str | None = None,
        max_attempts: int = MAX_ATTEMPTS,
        error: type[EdgekitError] = PublishError,
    ) -> None:
        self.error = error
        try:
            self.session = make_session(profile, region)
        except PublishError as exc:
            raise error(str(exc)) from exc.__cause__
        resolved = self.session.region_name
        if not resolved:
            raise error(NO_REGION)
        self.region: str = resolved
        self.profile = profile
        self.endpoint_url = endpoint_url or os.environ.get(ENDPOINT_ENV) or None
        self.max_attempts = max_attempts
        self._clients: dict[str, Any] = {}
        self._account: str | None = None

    def config(self) -> Any:
        """The botocore client config: standard retries, edgekit in the user agent."""
        botocore_config = require("botocore.config", "publishing to AWS")
        # Config's own "max_attempts" counts retries (8 -> 9 calls); "total_max_attempts" counts calls,
        # like max_attempts in ~/.aws/config and AWS_MAX_ATTEMPTS.
        return botocore_config.Config(
            retries={"mode": "standard", "total_max_attempts": self.max_attempts},
            user_agent_extra="edgekit",
        )

    def client(self, service: str) -> Any:
        if service not in self._clients:
            with aws_errors(f"creating the {service} client", self.error):
                self._clients[service] = self.session.client(
                    service,  # type: ignore[call-overload]
                    region_name=self.region,
                    endpoint_url=self.endpoint_url,
                    config=self.config(),
                )
        return self._clients[service]

    def s3(self) -> S3Client:
        return cast("S3Client", self.client("s3"))

    def greengrass(self) -> GreengrassV2Client:
        return cast("GreengrassV2Client", self.client("greengrassv2"))

    def sts(self) -> STSClient:
        return cast("STSClient", self.client("sts"))

    def account_id(self) -> str:
        """The account of the caller (sts:GetCallerIdentity), looked up once."""
        if self._account is None:
            with aws_errors("looking up the AWS account (sts:GetCallerIdentity)", self.error):
                self._account = self.sts().get_caller_identity()["Account"]
        return self._account

    def partition(self) -> str:
        return partition_for_region(self.region)


# --------------------------------------------------------------------------- S3


@dataclass(frozen=True)
class UploadResult:
    """One artifact in S3 after :meth:`S3Artifacts.upload`."""

    bucket: str
    key: str
    sha256: str
    size: int
    uploaded: bool  # False: an object with the same sha256 was already there
    created: bool  # True: no object had this key before (so a rollback may delete it)

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


def _normalize_location(location: str | None) -> str:
    # GetBucketLocation: None/"" means us-east-1, the legacy "EU" means eu-west-1
    if not location:
        return "us-east-1"
    return "eu-west-1" if location == "EU" else location


class S3Artifacts:
    """The artifact bucket: region check, idempotent uploads (sha256 metadata), deletes for rollback."""

    def __init__(self, client: S3Client) -> None:
        self.client = client

    def bucket_region(self, bucket: str) -> str | None:
        """Region of ``bucket``, or None when it does not exist."""
        try:
            with aws_errors(f"reading the region of bucket '{bucket}' (s3:GetBucketLocation)"):
                try:
                    response = self.client.get_bucket_location(Bucket=bucket)
                except Exception as exc:
                    if aws_error_code(exc) in ("NoSuchBucket", "404"):
                        return None
                    raise
        except PublishError as exc:
            if aws_error_code(exc.__cause__ or exc) in _DENIED:
                raise PublishError(
                    f"{exc}; if the bucket belongs to another AWS account, choose another name "
                    "(S3 names are global; account_bucket_suffix gives GDK's <bucket>-<region>-<account>)"
                ) from exc.__cause__
            raise
        return _normalize_location(response.get("LocationConstraint"))

    def ensure_bucket(self, bucket: str, region: str) -> bool:
        """Make sure ``bucket`` exists in ``region``; create it if missing. True if it was created.

        A bucket in another region is an error: Greengrass downloads artifacts from the
        component's region, and GDK refuses the same way.
        """
        if not _BUCKET_NAME.match(bucket) or ".." in bucket:
            raise PublishError(
                f"'{bucket}' is not a valid S3 bucket name (3-63 characters: lowercase letters, digits, '.' and '-')"
            )
        current = self.bucket_region(bucket)
        if current is None:
            log.info("creating artifact bucket %s in %s", bucket, region)
            try:
                with aws_errors(f"creating bucket '{bucket}' in {region} (s3:CreateBucket)"):
                    try:
                        if region == "us-east-1":
                            self.client.create_bucket(Bucket=bucket)
                        else:
                            self.client.create_bucket(
                                Bucket=bucket,
                                CreateBucketConfiguration={"LocationConstraint": region},  # type: ignore[typeddict-item]
                            )
                        return True
                    except Exception as exc:
                        if aws_error_code(exc) != "BucketAlreadyOwnedByYou":
                            raise
            except PublishError as exc:
                if aws_error_code(exc.__cause__ or exc) == "BucketAlreadyExists":
                    raise PublishError(
                        f"bucket name '{bucket}' is taken by another AWS account (S3 names are global); choose another name "
                        "or use account_bucket_suffix for GDK's <bucket>-<region>-<account> naming"
                    ) from exc.__cause__
                raise
            current = self.bucket_region(bucket)  # created concurrently by us: check where
        if current != region:
            raise PublishError(
                f"bucket '{bucket}' is in {current}, not in {region}; Greengrass needs the artifacts in the component's "
                f"region: publish with --region {current}, or use another bucket"
            )
        return False

    def head(self, bucket: str, key: str) -> dict[str, Any] | None:
        """HeadObject of ``key``, or None when there is no such object."""
        # without s3:ListBucket a missing object reads as 403, not 404
        with aws_errors(f"checking s3://{bucket}/{key} (s3:GetObject, s3:ListBucket)"):
            try:
                return cast("dict[str, Any]", self.client.head_object(Bucket=bucket, Key=key))
            except Exception as exc:
                if aws_error_code(exc) in ("404", "NoSuchKey", "NotFound"):
                    return None
                raise

    def exists(self, bucket: str, key: str) -> bool:
        return self.head(bucket, key) is not None

    def upload(self, file: str | Path, bucket: str, key: str) -> UploadResult:
        """Upload ``file`` to ``s3://bucket/key`` with its sha256 in the object metadata.

        Skipped when the object is already there with the same sha256 metadata.
        """
        path = Path(file)
        try:
            digest = file_sha256(path)
            size = path.stat().st_size
        except OSError as exc:
            raise PublishError(f"cannot read artifact {path}: {exc.strerror or exc}") from exc
        existing = self.head(bucket, key)
        if existing is not None and existing.get("Metadata", {}).get(SHA256_METADATA_KEY) == digest:
            log.info("s3://%s/%s is up to date (sha256 %s), not uploading", bucket, key, digest[:12])
            return UploadResult(bucket, key, digest, size, uploaded=False, created=False)
        log.info("uploading %s to s3://%s/%s", path, bucket, key)
        with aws_errors(f"uploading {path.name} to s3://{bucket}/{key} (s3:PutObject)"):
            self.client.upload_file(str(path), bucket, key, ExtraArgs={"Metadata": {SHA256_METADATA_KEY: digest}})
        return UploadResult(bucket, key, digest, size, uploaded=True, created=existing is None)

    def delete(self, bucket: str, keys: Iterable[str]) -> None:
        for key in keys:
            with aws_errors(f"deleting s3://{bucket}/{key} (s3:DeleteObject)"):
                self.client.delete_object(Bucket=bucket, Key=key)


# --------------------------------------------------------------------------- Greengrass


@dataclass(frozen=True)
class ComponentStatus:
    """``status`` of DescribeComponent."""

    state: str
    message: str = ""
    errors: dict[str, str] = field(default_factory=dict)

    def describe(self) -> str:
        parts = [self.message] if self.message else []
        parts += [f"{k}: {v}" for k, v in self.errors.items()]
        return _one_line("; ".join(parts)) or "no message from the service"


class _StillPending(PublishError):
    """The version did not reach DEPLOYABLE in time (it may still get there: nothing is rolled back)."""


class GreengrassComponents:
    """Component versions in Greengrass v2: create, wait until deployable, look up, delete."""

    def __init__(self, client: GreengrassV2Client, *, region: str, account: str, partition: str = "aws") -> None:
        self.client = client
        self.region = region
        self.account = account
        self.partition = partition

    def component_arn(self, name: str) -> str:
        return f"arn:{self.partition}:greengrass:{self.region}:{self.account}:components:{name}"

    def version_arn(self, name: str, version: str) -> str:
        return f"{self.component_arn(name)}:versions:{version}"

    def create_component_version(self, inline_recipe: bytes) -> str:
        """CreateComponentVersion from a recipe; returns the version's ARN."""
        try:
            with aws_errors("creating the component version (greengrass:CreateComponentVersion)"):
                response = self.client.create_component_version(inlineRecipe=inline_recipe)
        except PublishError as exc:
            if aws_error_code(exc.__cause__ or exc) == "ConflictException":
                raise PublishError(
                    f"{_recipe_label(inline_recipe)} already exists in Greengrass; versions are immutable: "
                    "bump ComponentVersion and package again (or publish with skip_existing=True)"
                ) from exc.__cause__
            raise
        return response["arn"]

    def status(self, arn: str) -> ComponentStatus:
        with aws_errors(f"reading the status of {arn} (greengrass:DescribeComponent)"):
            status = self.client.describe_component(arn=arn).get("status", {})
        return ComponentStatus(
            state=str(status.get("componentState", "")),
            message=str(status.get("message", "") or ""),
            errors=dict(status.get("errors", {}) or {}),
        )

    def wait_deployable(self, arn: str, *, timeout: float = 300.0, poll: float = 2.0) -> None:
        """Poll DescribeComponent until the version is DEPLOYABLE.

        FAILED (or DEPRECATED) raises :class:`PublishError` with the service's message; a version
        not yet visible (ResourceNotFoundException right after creation) counts as still pending.
        """
        deadline = time.monotonic() + timeout
        state = "REQUESTED"
        while True:
            try:
                current = self.status(arn)
            except PublishError as exc:
                if aws_error_code(exc.__cause__ or exc) != "ResourceNotFoundException":
                    raise
            else:
                state = current.state
                if state == "DEPLOYABLE":
                    return
                if state in ("FAILED", "DEPRECATED"):
                    raise PublishError(f"Greengrass marked {arn} {state}: {current.describe()}")
            if time.monotonic() >= deadline:
                raise _StillPending(
                    f"{arn} is still {state} after {timeout:g} s; it may yet become DEPLOYABLE: check it with "
                    "'aws greengrassv2 describe-component' before publishing again"
                )
            time.sleep(poll)

    def exists(self, name: str, version: str) -> bool:
        """True if ``name`` ``version`` exists in this account and region (in any state)."""
        arn = self.version_arn(name, version)
        try:
            self.status(arn)
        except PublishError as exc:
            if aws_error_code(exc.__cause__ or exc) == "ResourceNotFoundException":
                return False
            raise
        return True

    def list_versions(self, name: str) -> list[str]:
        """Versions of the account's component ``name``, newest first (empty if there is none)."""
        versions: list[str] = []
        with aws_errors(f"listing the versions of {name} (greengrass:ListComponentVersions)"):
            try:
                for page in self.client.get_paginator("list_component_versions").paginate(arn=self.component_arn(name)):
                    versions += [v["componentVersion"] for v in page.get("componentVersions", []) if "componentVersion" in v]
            except Exception as exc:
                if aws_error_code(exc) == "ResourceNotFoundException":
                    return []
                raise
        return versions

    def delete_version(self, arn: str) -> None:
        with aws_errors(f"deleting {arn} (greengrass:DeleteComponent)"):
            self.client.delete_component(arn=arn)


def _recipe_label(inline_recipe: bytes) -> str:
    import json

    try:
        recipe = json.loads(inline_recipe)
        return f"component {recipe['ComponentName']} version {recipe['ComponentVersion']}"
    except Exception:
        return "this component version"


# --------------------------------------------------------------------------- publish


@dataclass(frozen=True)
class PublishEvent:
    """Progress of :func:`publish`, for the CLI to draw."""

    stage: Literal["plan", "bucket", "upload", "skip-upload", "create", "deployable", "skip", "rollback"]
    component: str
    detail: str = ""


@dataclass
class _Plan:
    name: str
    version: str
    recipe: dict[str, Any]
    artifacts: list[PublishedArtifact]

    def component(
        self, status: Literal["published", "skipped", "planned"], arn: str | None = None, uploads: tuple[UploadResult, ...] = ()
    ) -> PublishedComponent:
        return PublishedComponent(self.name, self.version, status, self.recipe, tuple(self.artifacts), arn, uploads)


def _plan(component: BuiltComponent, bucket: str) -> _Plan:
    """The component's recipe with its placeholder URIs replaced by ``s3://<bucket>/<key>``, and what to upload."""
    planned: dict[str, PublishedArtifact] = {}
    for entry in component.artifact_entries():
        artifact = component.artifacts.get(entry["URI"])
        if artifact is None:
            continue  # a concrete S3 URI: someone else's object, left as it is
        key = artifact.key(component.name, component.version)
        entry["URI"] = f"s3://{bucket}/{key}"
        planned.setdefault(key, PublishedArtifact(artifact.name, entry["URI"], key, artifact.file))  # one upload per file
    return _Plan(component.name, component.version, component.recipe, list(planned.values()))


def publish(
    build_dir: str | Path,
    *,
    bucket: str,
    region: str,
    profile: str | None = None,
    account_bucket_suffix: bool = False,
    endpoint_url: str | None = None,
    progress: Callable[[PublishEvent], None] | None = None,
    dry_run: bool = False,
    skip_existing: bool = False,
    wait_timeout: float = 300.0,
    poll_interval: float = 2.0,
    session: AwsSession | None = None,
) -> PublishResult:
    """Publish every component of a packaged build folder to S3 + Greengrass v2.

    Order: read every recipe and check that every artifact file exists (before any AWS call);
    resolve the bucket (``<bucket>-<region>-<account>`` with ``account_bucket_suffix``, GDK's naming);
    make sure the bucket exists in ``region``; refuse versions that already exist (or skip them with
    ``skip_existing``) before uploading anything; then per component: upload its artifacts (skipping
    identical objects), create the version from the recipe with final URIs, wait for DEPLOYABLE.

    Nothing is half-published: if a component's upload, creation or build fails, the S3 objects this
    run created for it are deleted (objects that were there before are kept) and a FAILED version is
    deleted, then :class:`PublishError` is raised. Components published earlier in the run stay.
    A version still pending after ``wait_timeout`` is not rolled back (it may become DEPLOYABLE).

    ``dry_run`` checks everything local and returns the plan (final recipes, uploads) without any
    AWS call, except sts:GetCallerIdentity when ``account_bucket_suffix`` needs the account.
    ``session`` replaces the session built from ``region``/``profile``/``endpoint_url`` (tests, reuse).
    """
    emit = progress or (lambda _event: None)
    build = read_build(build_dir)  # every recipe and artifact file checked before any AWS call

    aws = session
    if account_bucket_suffix:
        aws = aws or AwsSession(region=region, profile=profile, endpoint_url=endpoint_url)
        bucket = f"{bucket}-{region}-{aws.account_id()}"

    plans = [_plan(c, bucket) for c in build.components]
    for p in plans:
        emit(PublishEvent("plan", p.name, f"{p.version}: {len(p.artifacts)} artifact(s)"))

    if dry_run:
        return PublishResult(f"s3://{bucket} ({region})", tuple(p.component("planned") for p in plans), True, bucket, region)

    aws = aws or AwsSession(region=region, profile=profile, endpoint_url=endpoint_url)
    if aws.region != region:
        raise PublishError(f"the AWS session is for {aws.region}, the publish for {region}")
    s3 = S3Artifacts(aws.s3())
    if any(p.artifacts for p in plans):  # like GDK: a bucket only when there is something to upload
        created = s3.ensure_bucket(bucket, region)
        emit(PublishEvent("bucket", "", f"{'created' if created else 'using'} s3://{bucket} in {region}"))
    gg = GreengrassComponents(aws.greengrass(), region=region, account=aws.account_id(), partition=aws.partition())

    existing = [p for p in plans if gg.exists(p.name, p.version)]
    skipped = {id(p) for p in existing}
    if existing and not skip_existing:
        listed = ", ".join(f"{p.name} {p.version}" for p in existing)
        raise PublishError(
            f"already in Greengrass: {listed}; component versions are immutable: package again with "
            "'edgekit package ... --version NEXT_PATCH --aws' (one above the published versions), or skip them "
            "with --skip-existing; nothing was uploaded"
        )

    results: list[PublishedComponent] = []
    for p in plans:
        if id(p) in skipped:
            emit(PublishEvent("skip", p.name, f"{p.version} already exists"))
            results.append(p.component("skipped", gg.version_arn(p.name, p.version)))
            continue
        results.append(_publish_one(p, bucket, s3, gg, emit, results, wait_timeout, poll_interval))
    return PublishResult(f"s3://{bucket} ({region})", tuple(results), False, bucket, region)


def _publish_one(
    p: _Plan,
    bucket: str,
    s3: S3Artifacts,
    gg: GreengrassComponents,
    emit: Callable[[PublishEvent], None],
    done: list[PublishedComponent],
    wait_timeout: float,
    poll_interval: float,
) -> PublishedComponent:
    uploads: list[UploadResult] = []
    arn: str | None = None
    try:
        for artifact in p.artifacts:
            result = s3.upload(artifact.file, bucket, artifact.key)
            uploads.append(result)
            emit(PublishEvent("upload" if result.uploaded else "skip-upload", p.name, result.uri))
        emit(PublishEvent("create", p.name, p.version))
        arn = gg.create_component_version(dump_recipe(p.recipe, "json").encode("utf-8"))
        gg.wait_deployable(arn, timeout=wait_timeout, poll=poll_interval)
    except _StillPending:
        raise
    except PublishError as exc:
        undone = _rollback(p, bucket, s3, gg, arn, uploads, emit)
        kept = f"; published earlier in this run: {', '.join(f'{c.name} {c.version}' for c in done)}" if done else ""
        raise PublishError(f"{p.name} {p.version} not published: {exc}; {undone}{kept}") from exc
    emit(PublishEvent("deployable", p.name, arn))
    return p.component("published", arn, tuple(uploads))


def _rollback(
    p: _Plan,
    bucket: str,
    s3: S3Artifacts,
    gg: GreengrassComponents,
    arn: str | None,
    uploads: list[UploadResult],
    emit: Callable[[PublishEvent], None],
) -> str:
    """Undo what this run did for one component; best effort, returns what was undone, for the message."""
    notes: list[str] = []
    if arn is not None:
        try:
            if gg.status(arn).state == "FAILED":
                gg.delete_version(arn)
                notes.append(f"deleted the FAILED version {arn}")
        except PublishError as exc:
            log.warning("could not delete the failed version %s: %s", arn, exc)
            notes.append(f"could not delete the failed version ({exc})")
    created = [u.key for u in uploads if u.created]
    removed = 0
    for key in created:
        try:
            s3.delete(bucket, [key])
            removed += 1
            emit(PublishEvent("rollback", p.name, f"s3://{bucket}/{key}"))
        except PublishError as exc:
            log.warning("could not delete s3://%s/%s: %s", bucket, key, exc)
            notes.append(f"left s3://{bucket}/{key} ({exc})")
    notes.insert(0, f"rolled back: removed {removed} uploaded object(s), kept pre-existing ones")
    return "; ".join(notes)
