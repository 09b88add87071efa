"""The wire contracts (edgekit.wire): a Hypothesis round trip per model, both deployment wires checked against
their readers (botocore's greengrassv2 model, the device's job document codec), and the Open Inference Protocol
client and server checked against each other through the models."""

from __future__ import annotations

import ast
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from botocore.model import Shape
from botocore.session import get_session
from botocore.validate import ParamValidator
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from pydantic import BaseModel, ValidationError

from edgekit.cloud.content import HttpError
from edgekit.cloud.v2_codec import decode_v2, encode_v2
from edgekit.edge.errors import FallbackError
from edgekit.edge.fallback import decode_outputs, encode_inputs
from edgekit.fleet.jobs import job_document
from edgekit.greengrass.deployment import DeploymentSpec, to_request
from edgekit.manifest import TensorSpec
from edgekit.mqtt.payloads import JobDocument, decode, encode
from edgekit.wire.deployment_parts import (
    DEFAULT_COMPONENT_UPDATE_TIMEOUT_S,
    DEFAULT_CONFIGURATION_VALIDATION_TIMEOUT_S,
    ComponentUpdatePolicy,
    ConfigurationUpdate,
    ConfigurationValidationPolicy,
    DeploymentPart,
    DeploymentPolicies,
    RunWith,
    SystemResourceLimits,
)
from edgekit.wire.open_inference import (
    DATATYPES,
    NUMPY_DTYPES,
    ErrorResponse,
    InferenceRequest,
    InferenceResponse,
    LiveResponse,
    MetadataModelResponse,
    MetadataServerResponse,
    MetadataTensor,
    ModelReadyResponse,
    ReadyResponse,
    RequestInput,
    RequestOutput,
    ResponseOutput,
)

ROUND_TRIPS = settings(  # as tests/project/test_hostile_input.py: new cases here, the same derandomized ones in CI
    max_examples=60,
    deadline=None,
    derandomize=bool(os.environ.get("CI")),
    suppress_health_check=[HealthCheck.too_slow],
)

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**53), 2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)
json_objects = st.dictionaries(st.text(max_size=8), json_values, max_size=4)
parameters = st.none() | json_objects
names = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=1, max_size=16)


def _round_trips(model: BaseModel) -> None:
    """Serialized (Python and JSON), parsed back, equal."""
    cls = type(model)
    assert cls.model_validate(model.model_dump(exclude_none=True)) == model
    assert cls.model_validate_json(model.model_dump_json(exclude_none=True)) == model
    assert cls.model_validate(json.loads(json.dumps(model.model_dump(mode="json", exclude_none=True)))) == model


# --------------------------------------------------------------------------- deployment parts

pointers = st.lists(st.just("") | st.text(max_size=30).map(lambda t: "/" + t), max_size=4)
users = st.from_regex(r"\A[a-z_][a-z0-9_-]{0,15}(:[a-z_][a-z0-9_-]{0,15})?\Z")
limits = st.builds(
    SystemResourceLimits,
    cpus=st.none() | st.floats(min_value=0.01, max_value=1024, allow_nan=False),
    memory=st.none() | st.integers(min_value=1, max_value=2**62),
)
updates = st.builds(ConfigurationUpdate, merge=st.none() | json_objects, reset=st.none() | pointers)
run_withs = st.builds(
    RunWith, posix_user=st.none() | users, windows_user=st.none() | names, system_resource_limits=st.none() | limits
)
timeouts = st.none() | st.integers(min_value=1, max_value=86_400)
component_policies = st.builds(
    ComponentUpdatePolicy, action=st.sampled_from(["NOTIFY_COMPONENTS", "SKIP_NOTIFY_COMPONENTS"]), timeout_in_seconds=timeouts
)
validation_policies = st.builds(ConfigurationValidationPolicy, timeout_in_seconds=timeouts)
policies = st.builds(
    DeploymentPolicies,
    failure_handling_policy=st.sampled_from(["ROLLBACK", "DO_NOTHING"]),
    component_update_policy=st.none() | component_policies,
    configuration_validation_policy=st.none() | validation_policies,
)
PARTS = {
    "SystemResourceLimits": limits,
    "ConfigurationUpdate": updates,
    "RunWith": run_withs,
    "ComponentUpdatePolicy": component_policies,
    "ConfigurationValidationPolicy": validation_policies,
    "DeploymentPolicies": policies,
}


@pytest.mark.parametrize("name", sorted(PARTS))
def test_each_deployment_part_round_trips_through_both_wires(name: str) -> None:
    @ROUND_TRIPS
    @given(PARTS[name])
    def check(part: DeploymentPart) -> None:
        _round_trips(part)
        cls = type(part)
        for wire in (part.to_create_deployment(), part.to_job_document()):
            assert cls.model_validate(json.loads(json.dumps(wire))) == part

    check()


@ROUND_TRIPS
@given(json_objects, st.sampled_from(["", " ", "\n  "]))
def test_a_merge_given_as_text_goes_to_aws_as_that_text_and_to_the_device_as_an_object(merge: dict[str, Any], pad: str) -> None:
    text = pad + json.dumps(merge, indent=1 if pad else None) + pad
    update = ConfigurationUpdate.model_validate({"merge": text, "reset": ["/a"]})
    assert update.to_create_deployment() == {"merge": text, "reset": ["/a"]}  # the user's own text, as it was
    assert update.to_job_document() == {"merge": merge, "reset": ["/a"]}
    assert update == ConfigurationUpdate(merge=merge, reset=["/a"])  # equal: the same meaning
    assert ConfigurationUpdate(merge=merge).to_create_deployment()["merge"] == json.dumps(
        merge, separators=(",", ":"), ensure_ascii=False
    )


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"merge": "{not json"}, "not valid JSON"),
        ({"merge": "[1, 2]"}, "must be a JSON object"),
        ({"merge": "[" * 100_000}, "nested too deeply"),
        ({"merge": {"a": {1, 2}}}, "is not JSON"),
        ({"reset": ["a/b"]}, "is not a JSON pointer"),
        ({"reset": ["/" + "a" * 256]}, "longer than 256"),
    ],
)
def test_configuration_update_rules(data: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        ConfigurationUpdate.model_validate(data)


def test_the_stricter_rule_holds_on_both_sides() -> None:
    with pytest.raises(ValidationError, match="not 'user' or 'user:group'"):
        RunWith(posix_user="a:b:c")
    with pytest.raises(ValidationError):
        SystemResourceLimits(cpus=0)
    # the nucleus's runWith has windowsUser, so the job document takes it too
    assert RunWith.model_validate({"windowsUser": "gg"}).windows_user == "gg"
    # an unset timeout stays unset on both wires; the device reads the nucleus's default
    assert ComponentUpdatePolicy().to_job_document() == {"action": "NOTIFY_COMPONENTS"}
    assert ComponentUpdatePolicy().timeout_s == DEFAULT_COMPONENT_UPDATE_TIMEOUT_S
    assert ConfigurationValidationPolicy().timeout_s == DEFAULT_CONFIGURATION_VALIDATION_TIMEOUT_S
    assert ComponentUpdatePolicy(timeout_in_seconds=5).timeout_s == 5


# --------------------------------------------------------------------------- the two messages that carry them

GROUP_ARN = "arn:aws:iot:eu-west-1:123456789012:thinggroup/line-3"
versions = st.tuples(*[st.integers(0, 99)] * 3).map(lambda v: ".".join(map(str, v)))
component_names = st.from_regex(r"\Acom\.example\.[A-Za-z]{1,12}\Z")
components = st.dictionaries(
    component_names,
    st.fixed_dictionaries(
        {"componentVersion": versions},
        optional={
            "configurationUpdate": updates.map(lambda u: u.to_create_deployment()),
            "runWith": run_withs.map(lambda r: r.to_create_deployment()),
        },
    ),
    min_size=1,
    max_size=3,
)
specs = st.builds(
    lambda comps, pol: DeploymentSpec.from_dict(
        {"targetArn": GROUP_ARN, "components": comps, "deploymentPolicies": pol.to_create_deployment()}
    ),
    components,
    policies,
)
_SHAPE = get_session().get_service_model("greengrassv2").operation_model("CreateDeployment").input_shape
assert _SHAPE is not None
_CREATE_DEPLOYMENT: Shape = _SHAPE


@ROUND_TRIPS
@given(specs)
def test_the_create_deployment_request_is_what_botocore_accepts(spec: DeploymentSpec) -> None:
    request = to_request(spec)
    report = ParamValidator().validate(request, _CREATE_DEPLOYMENT)  # what botocore checks before it sends
    assert not report.has_errors(), report.generate_report()
    assert DeploymentSpec.from_dict({k: v for k, v in request.items() if k != "clientToken"}) == spec


@ROUND_TRIPS
@given(specs)
def test_the_job_document_is_what_the_device_parses(spec: DeploymentSpec) -> None:
    document = job_document("d-1", spec, created_at=1_700_000_000.0)
    read = decode(JobDocument, encode(document))  # what the device does with the MQTT payload
    assert read == document
    policies = spec.deployment_policies
    assert read.failure_handling_policy == policies.failure_handling_policy
    assert read.component_update_policy == (policies.component_update_policy or ComponentUpdatePolicy())
    assert read.configuration_validation_policy == (policies.configuration_validation_policy or ConfigurationValidationPolicy())
    for name, component in spec.components.items():
        got = read.components[name]
        assert got.version == component.component_version
        assert got.configuration_update == component.configuration_update
        assert got.run_with == component.run_with
    merges = {n: c["configurationUpdate"]["merge"] for n, c in json.loads(encode(document))["components"].items()
              if "merge" in c.get("configurationUpdate", {})}  # fmt: skip
    assert all(isinstance(m, dict) for m in merges.values())  # an object on the device's wire, a string on AWS's


# --------------------------------------------------------------------------- Open Inference Protocol

datatypes = st.sampled_from(sorted(NUMPY_DTYPES))
shapes = st.lists(st.integers(0, 4), max_size=3)
tensor_fields = {"name": names, "shape": shapes, "datatype": datatypes, "parameters": parameters,
                 "data": st.lists(st.integers(-100, 100) | st.floats(-1e6, 1e6) | st.booleans(), max_size=8)}  # fmt: skip
OIP_MODELS: dict[str, st.SearchStrategy[Any]] = {
    "RequestInput": st.builds(RequestInput, **tensor_fields),
    "RequestOutput": st.builds(RequestOutput, name=names, parameters=parameters),
    "ResponseOutput": st.builds(ResponseOutput, **tensor_fields),
    "MetadataTensor": st.builds(MetadataTensor, name=names, datatype=st.none() | datatypes, shape=st.none() | shapes),
    "MetadataServerResponse": st.builds(
        MetadataServerResponse, name=names, version=names, extensions=st.lists(names, max_size=3)
    ),
    "LiveResponse": st.builds(LiveResponse, live=st.booleans()),
    "ReadyResponse": st.builds(ReadyResponse, ready=st.booleans()),
    "ModelReadyResponse": st.builds(ModelReadyResponse, name=names, ready=st.booleans()),
    "ErrorResponse": st.builds(ErrorResponse, error=st.text(max_size=40)),
}
OIP_MODELS["InferenceRequest"] = st.builds(
    InferenceRequest,
    id=st.none() | names,
    parameters=parameters,
    inputs=st.lists(OIP_MODELS["RequestInput"], min_size=1, max_size=3),
    outputs=st.none() | st.lists(OIP_MODELS["RequestOutput"], max_size=2),
)
OIP_MODELS["InferenceResponse"] = st.builds(
    InferenceResponse,
    model_name=names,
    model_version=st.none() | names,
    id=st.none() | names,
    parameters=parameters,
    outputs=st.lists(OIP_MODELS["ResponseOutput"], max_size=3),
)
OIP_MODELS["MetadataModelResponse"] = st.builds(
    MetadataModelResponse,
    name=names,
    versions=st.none() | st.lists(names, max_size=2),
    platform=names,
    inputs=st.none() | st.lists(OIP_MODELS["MetadataTensor"], max_size=3),
    outputs=st.none() | st.lists(OIP_MODELS["MetadataTensor"], max_size=3),
)


@pytest.mark.parametrize("name", sorted(OIP_MODELS))
def test_each_open_inference_protocol_body_round_trips(name: str) -> None:
    @ROUND_TRIPS
    @given(OIP_MODELS[name])
    def check(body: BaseModel) -> None:
        _round_trips(body)

    check()


arrays = st.sampled_from(sorted(DATATYPES)).flatmap(
    lambda dtype: hnp.arrays(
        np.dtype(dtype),
        hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=4),
        elements={"allow_nan": False, "allow_infinity": False} if dtype.startswith("float") else None,
    )
)


@ROUND_TRIPS
@given(st.dictionaries(st.from_regex(r"\A[a-z]{1,6}\Z"), arrays, min_size=1, max_size=3))
def test_the_devices_request_is_what_the_server_decodes(inputs: dict[str, np.ndarray]) -> None:
    body = json.dumps(encode_inputs(inputs)).encode()  # what CloudFallback sends
    assert InferenceRequest.model_validate_json(body).arrays().keys() == inputs.keys()
    specs = [TensorSpec(name=n, shape=list(a.shape), dtype=str(a.dtype)) for n, a in inputs.items()]
    for decoded in (decode_v2(body, specs).feeds, decode_v2(body, None).feeds):
        for name, arr in inputs.items():
            assert decoded[name].dtype == arr.dtype
            np.testing.assert_array_equal(decoded[name], arr)


@ROUND_TRIPS
@given(st.dictionaries(st.from_regex(r"\A[a-z]{1,6}\Z"), arrays, min_size=1, max_size=3))
def test_the_servers_response_is_what_the_device_decodes(outputs: dict[str, np.ndarray]) -> None:
    body, json_length = encode_v2("m", outputs)  # written straight from numpy, not through the model: checked against it here
    assert json_length is None  # no binary tensors asked for
    response = InferenceResponse.model_validate_json(body)
    expected = InferenceResponse.from_arrays("m", outputs)  # data equal as arrays (orjson writes float32 shortest)
    assert response.model_dump(exclude={"outputs": {"__all__": {"data"}}}) == expected.model_dump(
        exclude={"outputs": {"__all__": {"data"}}}
    )
    for got, arr in zip(decode_outputs(json.loads(body)), outputs.values(), strict=True):
        assert got.dtype == arr.dtype
        np.testing.assert_array_equal(got, arr)


def test_text_outputs_are_bytes_and_the_device_refuses_them() -> None:
    body = json.loads(encode_v2("m", {"label": np.array(["cat", "dog"])})[0])
    assert body["outputs"][0] == {"name": "label", "shape": [2], "datatype": "BYTES", "data": ["cat", "dog"]}
    assert InferenceResponse.model_validate(body) == InferenceResponse.from_arrays("m", {"label": np.array(["cat", "dog"])})
    with pytest.raises(FallbackError, match="datatype 'BYTES' is not one of"):
        decode_outputs(body)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"inputs": [{"name": "x", "shape": [2]}]}, 'each input needs "name", "shape", "datatype" and "data"'),
        ({"inputs": [{"name": "x", "shape": [2], "datatype": "FP32"}]}, "input 'x' has neither \"data\" nor parameters.binary"),
        ({"inputs": [{"name": "x", "shape": [2], "datatype": "FP8", "data": [1, 2]}]}, "input 'x': datatype 'FP8' is not one of"),
        (
            {"inputs": [{"name": "x", "shape": [3], "datatype": "FP32", "data": [1, 2]}]},
            r"input 'x': data does not fill shape \[3\]",
        ),
        (
            {"inputs": [{"name": "x", "shape": [2], "datatype": "FP32", "data": 5}]},
            r"data does not fill shape \[2\] \(data: must be a list",
        ),
        ({"inputs": [{"name": "x", "shape": [2], "datatype": "FP32", "data": [1, 2]}], "id": 5}, "request: id: "),
    ],
)
def test_the_server_says_what_is_wrong_with_a_request(body: dict[str, Any], message: str) -> None:
    with pytest.raises(HttpError, match=message) as caught:
        decode_v2(json.dumps(body).encode(), None)
    assert caught.value.status == 400


# --------------------------------------------------------------------------- who imports whom

PACKAGE = Path(__file__).resolve().parents[2] / "edgekit"


def _edgekit_imports(folder: Path) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for path in folder.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("edgekit"):
                found.setdefault(path.name, set()).add(node.module)
            elif isinstance(node, ast.Import):
                found.setdefault(path.name, set()).update(a.name for a in node.names if a.name.startswith("edgekit"))
    return found


def test_the_contracts_import_no_side_and_the_server_nothing_of_the_device() -> None:
    roles = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()} - {
        "wire"
    }  # the shared modules at the top may be
    wire = {f: {m for m in mods if m.split(".")[1] in roles} for f, mods in _edgekit_imports(PACKAGE / "wire").items()}
    assert {f: m for f, m in wire.items() if m} == {}
    cloud = {f: {m for m in mods if m.startswith("edgekit.edge")} for f, mods in _edgekit_imports(PACKAGE / "cloud").items()}
    assert {f: m for f, m in cloud.items() if m} == {}
