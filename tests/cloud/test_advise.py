"""edgekit advise: every rule of edgekit/cloud/advice.yaml, each with the case AWS's deployment guide names for it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import onnx
import pytest
from helpers import ORT_ONLY, make_mlp

import edgekit
from edgekit.cli import main
from edgekit.cloud.advisor import Workload, advise, load_rules
from edgekit.errors import EXIT_CODES, ConfigError


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    work = tmp_path_factory.mktemp("advise")
    onnx.save(make_mlp(), str(work / "m.onnx"))
    small = edgekit.compile(work / "m.onnx", "x86_64", work / "build", pipeline=ORT_ONLY, name="m", use_cache=False).artifact_dir

    def variant(name: str, **change: Any) -> Path:  # the same artifact, as if measured slower or built bigger
        copy = work / name
        shutil.copytree(small, copy)
        manifest = json.loads((copy / "manifest.json").read_text())
        if "latency_ms" in change:
            manifest["measured"]["latency"]["medianMs"] = change["latency_ms"]
        if "size_bytes" in change:
            manifest["sizeBytes"] = change["size_bytes"]
        (copy / "manifest.json").write_text(json.dumps(manifest))
        return copy

    return {"small": small, "slow": variant("slow", latency_ms=80.0), "big": variant("big", size_bytes=3 * 2**30)}


CASES: list[tuple[str, dict[str, Any], str | None, dict[str, str], list[str]]] = [
    # (guide's case, workload, artifact, expected choices, rules that decide)
    ("data that must stay on site", {"data_must_stay_on_site": True}, "small",
     {"placement": "edge", "inference_option": "none", "endpoint_layout": "none", "instance_family": "none"},
     ["data-stays-on-site", "no-cloud", "no-endpoint", "no-instances"]),
    ("a site with no connection", {"connectivity": "none"}, None, {"placement": "edge"}, ["no-connectivity"]),
    ("an answer faster than a round trip", {"latency_ms": 10}, None, {"placement": "edge"}, ["latency-under-round-trip"]),
    ("a connection that comes and goes: edge, with a real-time fallback", {"connectivity": "intermittent"}, None,
     {"placement": "edge", "inference_option": "real-time"}, ["intermittent-connectivity", "sustained-traffic"]),
    ("no answer needed per request", {"per_request": False}, "small",
     {"placement": "cloud", "inference_option": "batch", "endpoint_layout": "none", "instance_family": "c"},
     ["connected", "no-answer-per-request", "no-endpoint", "cpu-inference"]),
    ("payloads over a gigabyte", {"payload_mb": 2000}, None, {"inference_option": "batch"}, ["beyond-asynchronous"]),
    ("payloads up to 1 GB", {"payload_mb": 500}, None, {"inference_option": "asynchronous"}, ["large-payload-or-long-processing"]),
    ("processing up to an hour", {"processing_s": 600}, None, {"inference_option": "asynchronous"}, ["large-payload-or-long-processing"]),
    ("a data set processed offline", {"traffic": "offline"}, None, {"inference_option": "batch"}, ["offline-traffic"]),
    ("intermittent traffic", {"traffic": "intermittent", "latency_ms": 200}, "small",
     {"inference_option": "serverless", "endpoint_layout": "dedicated", "instance_family": "none"},
     ["intermittent-traffic", "one-model", "serverless-no-instances"]),
    ("intermittent traffic over serverless' payload limit", {"traffic": "intermittent", "payload_mb": 5}, None,
     {"inference_option": "real-time", "instance_family": "t"}, ["over-serverless-limits", "intermittent-cheap"]),
    ("sustained traffic needing low latency", {"traffic": "sustained", "latency_ms": 100}, "small",
     {"placement": "cloud", "inference_option": "real-time", "endpoint_layout": "dedicated", "instance_family": "c"},
     ["sustained-traffic", "one-model", "cpu-inference"]),
    ("many rarely used models", {"models": 200}, None, {"endpoint_layout": "multi-model"}, ["many-models"]),
    ("several models, serverless", {"models": 3, "traffic": "intermittent"}, None,
     {"inference_option": "serverless", "endpoint_layout": "dedicated"}, ["serverless-one-per-model"]),
    ("pre- and post-processing", {"pre_post_processing": True}, None, {"endpoint_layout": "multi-container"}, ["pipeline"]),
    ("several modalities", {"modalities": 2}, None, {"endpoint_layout": "multi-container"}, ["pipeline"]),
    ("a model too slow on a CPU for its budget", {"latency_ms": 50}, "slow", {"instance_family": "g"}, ["accelerator-needed"]),
    ("a model that needs lots of memory", {"traffic": "intermittent"}, "big",
     {"inference_option": "real-time", "instance_family": "r"}, ["over-serverless-limits", "large-model"]),
]  # fmt: skip


@pytest.mark.parametrize(("case", "workload", "artifact", "expected", "rules"), CASES, ids=[c[0] for c in CASES])
def test_each_rule_with_the_guides_case(
    artifacts: dict[str, Path],
    case: str,
    workload: dict[str, Any],
    artifact: str | None,
    expected: dict[str, str],
    rules: list[str],
) -> None:
    advice = advise(artifacts[artifact] if artifact else None, Workload(**workload))
    got = advice.to_json()
    assert {k: got[k] for k in expected} == expected, case
    decided = [r["rule"] for r in advice.reasons]
    assert set(rules) <= set(decided), (case, decided)
    assert len(decided) >= 4 and all(r["reason"] and "{" not in r["reason"] for r in advice.reasons)


def test_every_rule_in_the_table_has_a_case() -> None:
    table = load_rules()
    ids = {
        rule["id"]
        for decision in ("placement", "inference_option", "endpoint_layout", "instance_family")
        for rule in table[decision]
    }
    named = set().union(*(set(case[4]) for case in CASES))  # each case names the rules it must be decided by
    assert ids == named


def test_rejected_alternatives_say_why(artifacts: dict[str, Path]) -> None:
    advice = advise(artifacts["small"], Workload(traffic="intermittent", payload_mb=5))
    why = {(r["decision"], r["option"]): r["why"] for r in advice.rejected}
    assert why[("inference_option", "serverless")] == "over its limit: payload_mb 5 > 4"
    assert ("inference_option", "batch") in why and ("placement", "edge") in why
    assert why[("instance_family", "inf")].startswith("needs the model compiled for Neuron")
    assert advice.figures["model_latency_ms"] > 0 and advice.figures["latency_measured_on"] == "target"
    assert "--mode real-time --instance-type ml.t2.medium" in advice.command


def test_edge_advice_names_the_profiles_the_model_fits(artifacts: dict[str, Path]) -> None:
    advice = advise(artifacts["small"], Workload(data_must_stay_on_site=True))
    assert {"x86_64", "rasp4b"} <= set(advice.edge_profiles)
    assert advice.command.startswith(f"edgekit package {artifacts['small']}")


def test_cli_json_keys_and_bad_input(artifacts: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    args = [
        "advise",
        str(artifacts["small"]),
        "--latency-ms",
        "50",
        "--payload-mb",
        "0.01",
        "--traffic",
        "intermittent",
        "--json",
    ]
    assert main(args) == 0
    doc = json.loads(capsys.readouterr().out)
    assert {"placement", "inferenceOption", "endpointLayout", "instanceFamily", "reasons", "rejected"} <= set(doc)
    assert (doc["placement"], doc["inferenceOption"]) == ("cloud", "serverless")
    assert doc["command"].endswith("--mode serverless --memory 1024")
    assert main(["advise", "--traffic", "sometimes"]) == EXIT_CODES[ConfigError]
    assert "--traffic must be one of sustained, intermittent, offline" in capsys.readouterr().err
    assert main(["advise", "--models", "0"]) == EXIT_CODES[ConfigError]
