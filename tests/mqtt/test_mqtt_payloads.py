"""Payload codecs: round trips, and clear errors for oversize, malformed JSON, schema mismatches."""

from __future__ import annotations

import json

import pytest

from edgekit.mqtt.errors import PayloadError
from edgekit.mqtt.payloads import (
    MAX_PAYLOAD_BYTES,
    ComponentState,
    DeploymentInfo,
    DescribeJobExecutionResponse,
    DeviceStatus,
    JobDocument,
    JobExecution,
    JobExecutionsChanged,
    JobExecutionSummary,
    JobsRejected,
    UpdateJobExecutionRequest,
    WireMessage,
    decode,
    encode,
)


def _document() -> JobDocument:
    return JobDocument.model_validate(
        {
            "deploymentId": "d-1",
            "target": "thinggroup/line-3",
            "components": {
                "com.example.Detector": {
                    "version": "1.2.0",
                    "configurationUpdate": {"merge": '{"threshold": "0.6"}', "reset": ["/labels"]},
                },
                "com.example.Runtime": {"version": "2.0.1"},
            },
            "failureHandlingPolicy": "ROLLBACK",
            "componentUpdatePolicy": {"action": "NOTIFY_COMPONENTS", "timeoutInSeconds": 60},
            "timeouts": {"inProgressTimeoutInMinutes": 30},
        }
    )


MESSAGES: list[WireMessage] = [
    _document(),
    JobExecutionsChanged(jobs={"QUEUED": [JobExecutionSummary(job_id="job-1", queued_at=1, version_number=1)]}, timestamp=2),
    DescribeJobExecutionResponse(
        execution=JobExecution(job_id="job-1", thing_name="dev-1", status="QUEUED", job_document=_document()),
        timestamp=3,
        client_token="tok-1",
    ),
    UpdateJobExecutionRequest(
        status="IN_PROGRESS", status_details={"step": "downloading", "progress": "40%"}, expected_version=1
    ),
    JobsRejected(code="VersionMismatch", message="expected 1, is 2", timestamp=4),
    DeviceStatus(
        thing_name="dev-1",
        sequence_number=5,
        timestamp=1_700_000_000_000,
        overall_status="UNHEALTHY",
        components=[ComponentState(name="com.example.Detector", version="1.2.0", state="BROKEN", status_codes=["INSTALL_ERROR"])],
        deployment=DeploymentInfo(
            deployment_id="d-1",
            job_id="job-1",
            status="FAILED",
            detailed_status="FAILED_ROLLBACK_COMPLETE",
            error_codes=["COMPONENT_BROKEN"],
        ),
    ),
]


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: type(m).__name__)
def test_round_trip(message: WireMessage) -> None:
    wire = encode(message)
    data = json.loads(wire)
    assert data["schemaVersion"] == 1
    assert "schema_version" not in wire.decode()  # camelCase on the wire
    assert decode(type(message), wire) == message


def test_job_document_wire_shape() -> None:
    data = json.loads(encode(_document()))
    detector = data["components"]["com.example.Detector"]
    assert detector["configurationUpdate"] == {"merge": {"threshold": "0.6"}, "reset": ["/labels"]}
    assert data["componentUpdatePolicy"] == {"action": "NOTIFY_COMPONENTS", "timeoutInSeconds": 60}
    assert data["failureHandlingPolicy"] == "ROLLBACK"


def test_oversize_is_refused_unread() -> None:
    payload = b'{"schemaVersion": 1, "x": "' + b"a" * MAX_PAYLOAD_BYTES + b'"}'
    with pytest.raises(PayloadError, match=r"DeviceStatus payload is \d+ bytes, over the 131072-byte limit"):
        decode(DeviceStatus, payload)
    big = DeviceStatus(
        thing_name="dev-1",
        sequence_number=0,
        timestamp=0,
        overall_status="HEALTHY",
        components=[ComponentState(name="c", version="1.0.0", state="RUNNING", status_reason="x" * MAX_PAYLOAD_BYTES)],
    )
    with pytest.raises(PayloadError, match="over the 131072-byte limit"):
        encode(big)


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b'{"schemaVersion": 1, "status": ', "not valid JSON: Expecting value at line 1 column 32"),
        (b"\xff\xfe", "not UTF-8"),
        (b"[1, 2]", "must be a JSON object, got list"),
        (b'{"status": "IN_PROGRESS"}', "has no 'schemaVersion'"),
        (b'{"schemaVersion": 2, "status": "IN_PROGRESS"}', "schemaVersion 2, but this edgekit reads schemaVersion 1"),
        (b'{"schemaVersion": "1", "status": "IN_PROGRESS"}', "schemaVersion '1'"),
    ],
)
def test_malformed_payloads_say_what_is_wrong(payload: bytes, message: str) -> None:
    with pytest.raises(PayloadError, match=message):
        decode(UpdateJobExecutionRequest, payload)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"status": "DONE"}, "field 'status'"),
        ({"status": "FAILED", "statusDetails": {"bad key!": "x"}}, "field 'statusDetails.bad key!.\\[key\\]'"),
        ({"status": "FAILED", "statusDetails": {"reason": "x" * 1025}}, "field 'statusDetails.reason'"),
        ({"status": "FAILED", "statusDetails": {"reason": "line\nbreak"}}, "control character"),
        ({"status": "FAILED", "statusDetails": {"reason": ""}}, "field 'statusDetails.reason'"),
        ({"status": "FAILED", "clientToken": "t" * 65}, "field 'clientToken'"),
        ({"status": "FAILED", "surprise": 1}, "field 'surprise': Extra inputs are not permitted"),
    ],
)
def test_schema_mismatches_name_the_field(body: dict[str, object], field: str) -> None:
    payload = json.dumps({"schemaVersion": 1, **body}).encode()
    with pytest.raises(PayloadError, match=f"UpdateJobExecutionRequest payload does not match its schema: .*{field}"):
        decode(UpdateJobExecutionRequest, payload)


def test_job_document_checks_versions_and_pointers() -> None:
    bad = json.loads(encode(_document()))
    bad["components"]["com.example.Runtime"]["version"] = "latest"
    with pytest.raises(PayloadError, match=r"field 'components\.com\.example\.Runtime\.version'.*not a semantic version"):
        decode(JobDocument, json.dumps(bad))
    bad = json.loads(encode(_document()))
    bad["components"]["com.example.Detector"]["configurationUpdate"]["reset"] = ["labels"]
    with pytest.raises(PayloadError, match="not a JSON pointer"):
        decode(JobDocument, json.dumps(bad))


def test_requests_without_schema_version_as_a_real_nucleus_sends_them() -> None:
    from edgekit.mqtt.payloads import UpdateJobExecutionRequest

    raw = b'{"status": "IN_PROGRESS", "expectedVersion": 1, "clientToken": "abc"}'
    with pytest.raises(PayloadError, match="has no 'schemaVersion'"):
        decode(UpdateJobExecutionRequest, raw)
    request = decode(UpdateJobExecutionRequest, raw, require_version=False)
    assert request.status == "IN_PROGRESS" and request.expected_version == 1
    with pytest.raises(PayloadError, match="schemaVersion 2"):
        decode(UpdateJobExecutionRequest, b'{"schemaVersion": 2, "status": "IN_PROGRESS"}', require_version=False)
