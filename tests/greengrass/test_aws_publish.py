"""Publishing: S3 and STS over real HTTP (moto server), Greengrass v2 through botocore's Stubber.

moto has no greengrassv2 backend, so the Greengrass client is a real botocore client with a
Stubber, which checks every request against the AWS API model. Retries are the exception:
Stubber answers before botocore's retry handler runs (shown below), so throttling retries are
tested over real HTTP against a scripted endpoint instead.
"""

from __future__ import annotations

import datetime as dt
import json
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import aws_server
import boto3
import pytest
from aws_server import ACCOUNT, REGION, MotoServer, Reply, ScriptedEndpoint, aws_json_error
from botocore.stub import Stubber
from helpers import write_model_build

from edgekit.errors import PublishError
from edgekit.greengrass.aws import (
    SHA256_METADATA_KEY,
    AwsSession,
    GreengrassComponents,
    PublishEvent,
    S3Artifacts,
    file_sha256,
    publish,
)

# the shared fixtures of tests/aws_server.py: moto_server (session) and aws_env (per test)
moto_server = aws_server.moto_server
aws_env = aws_server.aws_env

NAME = "com.example.Detector"
VERSION = "1.0.0"
BUCKET = "edgekit-artifacts"
NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


# --------------------------------------------------------------------------- helpers


def final_recipe_bytes(recipe: dict[str, Any], bucket: str) -> bytes:
    """What CreateComponentVersion must receive: the recipe with the placeholders replaced."""
    text = json.dumps(recipe, indent=2, ensure_ascii=False)
    text = text.replace(
        "s3://BUCKET_NAME/COMPONENT_NAME/COMPONENT_VERSION/",
        f"s3://{bucket}/{recipe['ComponentName']}/{recipe['ComponentVersion']}/",
    )
    return (text + "\n").encode()


def arn(name: str = NAME, version: str = VERSION) -> str:
    return f"arn:aws:greengrass:{REGION}:{ACCOUNT}:components:{name}:versions:{version}"


def created(name: str = NAME, version: str = VERSION) -> dict[str, Any]:
    return {
        "arn": arn(name, version),
        "componentName": name,
        "componentVersion": version,
        "creationTimestamp": NOW,
        "status": {"componentState": "REQUESTED"},
    }


def described(state: str, name: str = NAME, version: str = VERSION, **status: Any) -> dict[str, Any]:
    return {
        "arn": arn(name, version),
        "componentName": name,
        "componentVersion": version,
        "status": {"componentState": state, **status},
    }


def not_found(stub: Stubber, name: str = NAME, version: str = VERSION) -> None:
    stub.add_client_error(
        "describe_component", "ResourceNotFoundException", "not found", 404, expected_params={"arn": arn(name, version)}
    )


def keys(moto: MotoServer, bucket: str) -> set[str]:
    s3 = boto3.client("s3", region_name=REGION, endpoint_url=moto.url)
    return {o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])}


@pytest.fixture
def aws(aws_env: MotoServer) -> AwsSession:
    return AwsSession(region=REGION, endpoint_url=aws_env.url)


@pytest.fixture
def gg_stub(aws: AwsSession) -> Any:
    with Stubber(aws.greengrass()) as stub:
        yield stub
        stub.assert_no_pending_responses()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --------------------------------------------------------------------------- session


def test_importing_the_modules_does_not_import_boto3() -> None:
    code = "import sys, edgekit.greengrass.aws, edgekit.greengrass.deployment; print('boto3' in sys.modules, 'botocore' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_session_clients_use_endpoint_env_and_standard_retries(aws_env: MotoServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGEKIT_AWS_ENDPOINT_URL", aws_env.url)
    session = AwsSession(region=REGION)
    client = session.s3()
    assert client.meta.endpoint_url == aws_env.url
    retries = client.meta.config.retries  # type: ignore[attr-defined]  # set from the Config's options; not in the stubs
    assert retries["mode"] == "standard" and retries["total_max_attempts"] == 8
    assert session.s3() is client  # cached
    assert session.account_id() == ACCOUNT  # STS over HTTP


def test_unknown_profile_is_one_line(aws_env: MotoServer) -> None:
    with pytest.raises(PublishError, match="profile") as exc:
        AwsSession(region=REGION, profile="no-such-profile")
    assert "\n" not in str(exc.value)


# --------------------------------------------------------------------------- S3 over real HTTP


def test_upload_stores_sha256_and_skips_identical(aws: AwsSession, aws_env: MotoServer, tmp_path: Path) -> None:
    s3 = S3Artifacts(aws.s3())
    assert s3.ensure_bucket(BUCKET, REGION) is True
    assert s3.ensure_bucket(BUCKET, REGION) is False  # already there, right region
    art = tmp_path / "model.zip"
    art.write_bytes(b"weights v1")

    first = s3.upload(art, BUCKET, "c/1/model.zip")
    assert (first.uploaded, first.created) == (True, True)
    head = aws.s3().head_object(Bucket=BUCKET, Key="c/1/model.zip")
    assert head["Metadata"][SHA256_METADATA_KEY] == file_sha256(art) == first.sha256
    assert aws.s3().get_object(Bucket=BUCKET, Key="c/1/model.zip")["Body"].read() == b"weights v1"

    again = s3.upload(art, BUCKET, "c/1/model.zip")
    assert (again.uploaded, again.created) == (False, False)

    art.write_bytes(b"weights v2")
    changed = s3.upload(art, BUCKET, "c/1/model.zip")
    assert (changed.uploaded, changed.created) == (True, False)
    assert aws.s3().get_object(Bucket=BUCKET, Key="c/1/model.zip")["Body"].read() == b"weights v2"

    s3.delete(BUCKET, ["c/1/model.zip"])
    assert not s3.exists(BUCKET, "c/1/model.zip")


def test_bucket_in_another_region_is_refused(aws: AwsSession, aws_env: MotoServer) -> None:
    boto3.client("s3", region_name="eu-west-1", endpoint_url=aws_env.url).create_bucket(
        Bucket="elsewhere-bucket", CreateBucketConfiguration={"LocationConstraint": "eu-west-1"}
    )
    with pytest.raises(PublishError, match=r"'elsewhere-bucket' is in eu-west-1, not in us-west-2.*--region eu-west-1"):
        S3Artifacts(aws.s3()).ensure_bucket("elsewhere-bucket", REGION)


def test_new_bucket_is_created_in_the_region(aws: AwsSession, aws_env: MotoServer) -> None:
    S3Artifacts(aws.s3()).ensure_bucket("fresh-bucket", REGION)
    assert aws.s3().get_bucket_location(Bucket="fresh-bucket")["LocationConstraint"] == REGION
    with pytest.raises(PublishError, match="not a valid S3 bucket name"):
        S3Artifacts(aws.s3()).ensure_bucket("Bad_Name", REGION)


def test_bucket_name_taken_by_another_account(aws: AwsSession) -> None:
    s3 = aws.s3()
    with Stubber(s3) as stub:
        stub.add_client_error("get_bucket_location", "NoSuchBucket", "The specified bucket does not exist", 404)
        stub.add_client_error("create_bucket", "BucketAlreadyExists", "The requested bucket name is not available", 409)
        with pytest.raises(PublishError, match="taken by another AWS account.*account_bucket_suffix"):
            S3Artifacts(s3).ensure_bucket("popular-name", REGION)


def test_region_redirect_error_is_one_line(aws: AwsSession, tmp_path: Path) -> None:
    art = tmp_path / "a.zip"
    art.write_bytes(b"x")
    s3 = aws.s3()
    with Stubber(s3) as stub:
        stub.add_client_error(
            "head_object",
            "PermanentRedirect",
            "The bucket you are attempting to access must be addressed using the specified endpoint.",
            301,
        )
        with pytest.raises(PublishError, match="not in the client's region") as exc:
            S3Artifacts(s3).upload(art, BUCKET, "k/a.zip")
    assert "\n" not in str(exc.value)


# --------------------------------------------------------------------------- publish: happy paths


def test_publish_uploads_creates_and_waits(aws: AwsSession, aws_env: MotoServer, gg_stub: Stubber, tmp_path: Path) -> None:
    recipe = write_model_build(tmp_path, files={"model.zip": b"m", "labels.zip": b"l"}, extra_uris=("docker:registry/img:1",))
    not_found(gg_stub)
    gg_stub.add_response(
        "create_component_version", created(), expected_params={"inlineRecipe": final_recipe_bytes(recipe, BUCKET)}
    )
    for state in ("REQUESTED", "INITIATED", "DEPLOYABLE"):
        gg_stub.add_response("describe_component", described(state), expected_params={"arn": arn()})
    events: list[PublishEvent] = []

    result = publish(tmp_path, bucket=BUCKET, region=REGION, session=aws, poll_interval=0, progress=events.append)

    assert keys(aws_env, BUCKET) == {f"{NAME}/{VERSION}/model.zip", f"{NAME}/{VERSION}/labels.zip"}
    (component,) = result.components
    assert (component.status, component.arn) == ("published", arn())
    uris = [a["URI"] for a in component.recipe["Manifests"][0]["Artifacts"]]
    assert uris == [
        f"s3://{BUCKET}/{NAME}/{VERSION}/model.zip",
        f"s3://{BUCKET}/{NAME}/{VERSION}/labels.zip",
        "docker:registry/img:1",  # not ours: untouched
    ]
    assert len(component.uploads) == 2  # model.zip is in both manifests, uploaded once
    assert [e.stage for e in events] == ["plan", "bucket", "upload", "upload", "create", "deployable"]


def test_publish_with_gdk_bucket_naming(aws: AwsSession, aws_env: MotoServer, gg_stub: Stubber, tmp_path: Path) -> None:
    recipe = write_model_build(tmp_path)
    gdk_bucket = f"{BUCKET}-{REGION}-{ACCOUNT}"  # account from sts:GetCallerIdentity on moto
    not_found(gg_stub)
    gg_stub.add_response("create_component_version", created(), {"inlineRecipe": final_recipe_bytes(recipe, gdk_bucket)})
    gg_stub.add_response("describe_component", described("DEPLOYABLE"), {"arn": arn()})

    result = publish(tmp_path, bucket=BUCKET, region=REGION, account_bucket_suffix=True, session=aws, poll_interval=0)

    assert result.bucket == gdk_bucket
    assert keys(aws_env, gdk_bucket) == {f"{NAME}/{VERSION}/model.zip"}
    assert aws.s3().get_bucket_location(Bucket=gdk_bucket)["LocationConstraint"] == REGION


def test_republish_after_failure_skips_identical_upload(
    aws: AwsSession, aws_env: MotoServer, gg_stub: Stubber, tmp_path: Path
) -> None:
    recipe = write_model_build(tmp_path)
    S3Artifacts(aws.s3()).ensure_bucket(BUCKET, REGION)
    S3Artifacts(aws.s3()).upload(tmp_path / "artifacts" / NAME / VERSION / "model.zip", BUCKET, f"{NAME}/{VERSION}/model.zip")
    not_found(gg_stub)
    gg_stub.add_response("create_component_version", created(), {"inlineRecipe": final_recipe_bytes(recipe, BUCKET)})
    gg_stub.add_response("describe_component", described("DEPLOYABLE"), {"arn": arn()})
    events: list[PublishEvent] = []
    result = publish(tmp_path, bucket=BUCKET, region=REGION, session=aws, poll_interval=0, progress=events.append)
    assert [u.uploaded for u in result.components[0].uploads] == [False]
    assert "skip-upload" in [e.stage for e in events]


def test_dry_run_makes_no_aws_call(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    write_model_build(tmp_path)
    dead = f"http://127.0.0.1:{free_port()}"
    result = publish(tmp_path, bucket=BUCKET, region=REGION, endpoint_url=dead, dry_run=True)
    (component,) = result.components
    assert result.dry_run and component.status == "planned" and component.arn is None
    assert component.recipe["Manifests"][0]["Artifacts"][0]["URI"] == f"s3://{BUCKET}/{NAME}/{VERSION}/model.zip"
    assert [a.key for a in component.artifacts] == [f"{NAME}/{VERSION}/model.zip"]


# --------------------------------------------------------------------------- publish: refusals and rollback


def test_missing_artifact_is_named_before_any_upload(aws: AwsSession, aws_env: MotoServer, tmp_path: Path) -> None:
    write_model_build(tmp_path, files={"model.zip": b"m", "labels.zip": b"l"}, skip_files=("labels.zip",))
    with pytest.raises(PublishError, match=r"missing: .*artifacts/com\.example\.Detector/1\.0\.0/labels\.zip"):
        publish(tmp_path, bucket=BUCKET, region=REGION, session=aws)
    assert aws.s3().list_buckets()["Buckets"] == []  # nothing touched AWS


def test_recipe_file_must_match_its_component(tmp_path: Path) -> None:
    write_model_build(tmp_path)
    (tmp_path / "recipes" / f"{NAME}-{VERSION}.json").rename(tmp_path / "recipes" / f"{NAME}-2.0.0.json")
    with pytest.raises(
        PublishError, match=r"holds com\.example\.Detector 1\.0\.0 but is named com\.example\.Detector-2\.0\.0\.json"
    ):
        publish(tmp_path, bucket=BUCKET, region=REGION, dry_run=True)
    with pytest.raises(PublishError, match="no recipes in"):
        publish(tmp_path / "nowhere", bucket=BUCKET, region=REGION, dry_run=True)


def test_failed_version_rolls_back_this_runs_uploads(
    aws: AwsSession, aws_env: MotoServer, gg_stub: Stubber, tmp_path: Path
) -> None:
    recipe = write_model_build(tmp_path, files={"model.zip": b"new model", "labels.zip": b"labels"})
    s3 = S3Artifacts(aws.s3())
    s3.ensure_bucket(BUCKET, REGION)
    pre_existing = f"{NAME}/{VERSION}/labels.zip"  # uploaded by an earlier run, identical: kept
    s3.upload(tmp_path / "artifacts" / NAME / VERSION / "labels.zip", BUCKET, pre_existing)
    not_found(gg_stub)
    gg_stub.add_response("create_component_version", created(), {"inlineRecipe": final_recipe_bytes(recipe, BUCKET)})
    gg_stub.add_response("describe_component", described("REQUESTED"), {"arn": arn()})
    failed = described("FAILED", message="The artifact s3://x/model.zip could not be read", errors={"model.zip": "ACCESS_DENIED"})
    gg_stub.add_response("describe_component", failed, {"arn": arn()})
    gg_stub.add_response("describe_component", failed, {"arn": arn()})  # rollback re-reads the state
    gg_stub.add_response("delete_component", {}, {"arn": arn()})

    with pytest.raises(PublishError) as exc:
        publish(tmp_path, bucket=BUCKET, region=REGION, session=aws, poll_interval=0)

    message = str(exc.value)
    assert "\n" not in message
    assert "FAILED: The artifact s3://x/model.zip could not be read; model.zip: ACCESS_DENIED" in message
    assert "removed 1 uploaded object(s)" in message and "deleted the FAILED version" in message
    assert keys(aws_env, BUCKET) == {pre_existing}


def test_second_component_failing_keeps_the_first(aws: AwsSession, aws_env: MotoServer, gg_stub: Stubber, tmp_path: Path) -> None:
    first = write_model_build(tmp_path, name="com.example.A")
    second = write_model_build(tmp_path, name="com.example.B")
    not_found(gg_stub, "com.example.A")
    not_found(gg_stub, "com.example.B")
    gg_stub.add_response(
        "create_component_version", created("com.example.A"), {"inlineRecipe": final_recipe_bytes(first, BUCKET)}
    )
    gg_stub.add_response("describe_component", described("DEPLOYABLE", "com.example.A"), {"arn": arn("com.example.A")})
    gg_stub.add_client_error(
        "create_component_version",
        "ValidationException",
        "Lifecycle is not valid",
        400,
        expected_params={"inlineRecipe": final_recipe_bytes(second, BUCKET)},
    )
    with pytest.raises(
        PublishError,
        match=r"com\.example\.B 1\.0\.0 not published: .*ValidationException.*published earlier in this run: com\.example\.A",
    ):
        publish(tmp_path, bucket=BUCKET, region=REGION, session=aws, poll_interval=0)
    assert keys(aws_env, BUCKET) == {"com.example.A/1.0.0/model.zip"}


def test_conflict_on_create_says_bump_the_version(aws: AwsSession, aws_env: MotoServer, gg_stub: Stubber, tmp_path: Path) -> None:
    recipe = write_model_build(tmp_path)
    not_found(gg_stub)  # created by someone else between the check and the create
    gg_stub.add_client_error(
        "create_component_version",
        "ConflictException",
        "Component version already exists",
        409,
        expected_params={"inlineRecipe": final_recipe_bytes(recipe, BUCKET)},
    )
    with pytest.raises(PublishError, match=r"com\.example\.Detector version 1\.0\.0 already exists.*bump ComponentVersion"):
        publish(tmp_path, bucket=BUCKET, region=REGION, session=aws, poll_interval=0)
    assert keys(aws_env, BUCKET) == set()


def test_existing_version_is_refused_before_upload_or_skipped(
    aws: AwsSession, aws_env: MotoServer, gg_stub: Stubber, tmp_path: Path
) -> None:
    write_model_build(tmp_path)
    gg_stub.add_response("describe_component", described("DEPLOYABLE"), {"arn": arn()})
    with pytest.raises(
        PublishError,
        match="already in Greengrass: com.example.Detector 1.0.0; .*--version NEXT_PATCH --aws.*--skip-existing; nothing was uploaded",
    ):
        publish(tmp_path, bucket=BUCKET, region=REGION, session=aws)
    assert keys(aws_env, BUCKET) == set()

    gg_stub.add_response("describe_component", described("DEPLOYABLE"), {"arn": arn()})
    result = publish(tmp_path, bucket=BUCKET, region=REGION, session=aws, skip_existing=True)
    assert [c.status for c in result.components] == ["skipped"]
    assert keys(aws_env, BUCKET) == set()


def test_pending_after_timeout_is_not_rolled_back(aws: AwsSession, aws_env: MotoServer, gg_stub: Stubber, tmp_path: Path) -> None:
    recipe = write_model_build(tmp_path)
    not_found(gg_stub)
    gg_stub.add_response("create_component_version", created(), {"inlineRecipe": final_recipe_bytes(recipe, BUCKET)})
    gg_stub.add_response("describe_component", described("INITIATED"), {"arn": arn()})
    with pytest.raises(PublishError, match="still INITIATED after 0 s; it may yet become DEPLOYABLE"):
        publish(tmp_path, bucket=BUCKET, region=REGION, session=aws, wait_timeout=0, poll_interval=0)
    assert keys(aws_env, BUCKET) == {f"{NAME}/{VERSION}/model.zip"}


# --------------------------------------------------------------------------- GreengrassComponents


def test_components_exists_and_list_versions(aws: AwsSession, gg_stub: Stubber) -> None:
    gg = GreengrassComponents(aws.greengrass(), region=REGION, account=ACCOUNT)
    gg_stub.add_response("describe_component", described("DEPLOYABLE"), {"arn": arn()})
    not_found(gg_stub, version="9.9.9")
    component = f"arn:aws:greengrass:{REGION}:{ACCOUNT}:components:{NAME}"
    page = {
        "componentVersions": [{"componentName": NAME, "componentVersion": v, "arn": arn(version=v)} for v in ("1.1.0", "1.0.0")]
    }
    gg_stub.add_response("list_component_versions", page, {"arn": component})
    assert gg.exists(NAME, VERSION) is True
    assert gg.exists(NAME, "9.9.9") is False
    assert gg.list_versions(NAME) == ["1.1.0", "1.0.0"]


# --------------------------------------------------------------------------- retries and error messages


def test_stubber_bypasses_botocore_retries(aws: AwsSession, gg_stub: Stubber) -> None:
    """Why the retry tests below use HTTP: a stubbed ThrottlingException is raised at once."""
    gg_stub.add_client_error("create_component_version", "ThrottlingException", "Rate exceeded", 429)
    gg_stub.add_response("create_component_version", created())
    gg = GreengrassComponents(aws.greengrass(), region=REGION, account=ACCOUNT)
    with pytest.raises(PublishError, match=r"throttled by AWS \(ThrottlingException\) after 1 attempt"):
        gg.create_component_version(b"{}")
    assert gg.create_component_version(b"{}") == arn()  # the queued success was not consumed by a retry


@pytest.fixture
def no_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    from botocore.retries import standard

    monkeypatch.setattr(standard.ExponentialBackoff, "delay_amount", lambda self, context: 0.0)


def _greengrass_over_http(url: str, max_attempts: int) -> GreengrassComponents:
    session = AwsSession(region=REGION, endpoint_url=url, max_attempts=max_attempts)
    return GreengrassComponents(session.greengrass(), region=REGION, account=ACCOUNT)


def test_throttling_is_retried_by_the_client_config(no_backoff: None, aws_env: MotoServer) -> None:
    ok = created()
    ok["creationTimestamp"] = 1767225600
    throttled = aws_json_error(429, "ThrottlingException", "Rate exceeded")
    endpoint = ScriptedEndpoint([throttled, throttled, Reply(201, ok)])
    try:
        gg = _greengrass_over_http(endpoint.url, 8)
        assert gg.create_component_version(b'{"ComponentName": "x"}') == arn()
    finally:
        endpoint.close()
    assert [s.path for s in endpoint.seen] == ["/greengrass/v2/createComponentVersion"] * 3
    tokens = {json.loads(s.body)["clientToken"] for s in endpoint.seen}
    assert len(tokens) == 1  # botocore's idempotency token is reused across retries


def test_throttling_exhausted_is_one_line(no_backoff: None, aws_env: MotoServer) -> None:
    endpoint = ScriptedEndpoint([aws_json_error(429, "ThrottlingException", "Rate exceeded")] * 3)
    try:
        gg = _greengrass_over_http(endpoint.url, 3)
        with pytest.raises(PublishError, match=r"throttled by AWS \(ThrottlingException\) after 3 attempt\(s\); wait") as exc:
            gg.create_component_version(b"{}")
    finally:
        endpoint.close()
    assert len(endpoint.seen) == 3 and "\n" not in str(exc.value)


def test_no_credentials_is_one_line(aws_env: MotoServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    write_model_build(tmp_path)
    with pytest.raises(PublishError) as exc:
        publish(tmp_path, bucket=BUCKET, region=REGION, endpoint_url=aws_env.url)
    assert "no AWS credentials found; set AWS_PROFILE" in str(exc.value)
    assert "\n" not in str(exc.value) and "Traceback" not in str(exc.value)


@pytest.mark.parametrize("code", ["ExpiredToken", "ExpiredTokenException", "RequestExpired"])
def test_expired_credentials_is_one_line(aws: AwsSession, tmp_path: Path, code: str) -> None:
    write_model_build(tmp_path)
    with Stubber(aws.sts()) as stub:
        stub.add_client_error("get_caller_identity", code, "The security token included in the request is expired", 403)
        with pytest.raises(PublishError, match=r"sts:GetCallerIdentity\): credentials expired; refresh them") as exc:
            publish(tmp_path, bucket=BUCKET, region=REGION, account_bucket_suffix=True, session=aws)
    assert "\n" not in str(exc.value)


def test_access_denied_is_one_line(aws: AwsSession, gg_stub: Stubber, tmp_path: Path) -> None:
    write_model_build(tmp_path)
    gg_stub.add_client_error(
        "describe_component", "AccessDeniedException", "not authorized to perform greengrass:DescribeComponent", 403
    )
    with pytest.raises(PublishError, match=r"DescribeComponent\): access denied \(not authorized.*\); the AWS identity needs"):
        publish(tmp_path, bucket=BUCKET, region=REGION, session=aws)


def test_unreachable_endpoint_is_one_line(no_backoff: None, aws_env: MotoServer, tmp_path: Path) -> None:
    write_model_build(tmp_path)
    session = AwsSession(region=REGION, endpoint_url=f"http://127.0.0.1:{free_port()}", max_attempts=2)
    with pytest.raises(PublishError, match="cannot reach the AWS endpoint http://127.0.0.1:") as exc:
        publish(tmp_path, bucket=BUCKET, region=REGION, session=session)
    assert "\n" not in str(exc.value)
