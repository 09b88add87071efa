"""``edgekit advise``: where a model should run and how, by the rules of AWS's deployment guide.

The rules are data — ``edgekit/cloud/advice.yaml``, one readable table — and this module only evaluates
them: four decisions in order (placement, inference option, endpoint layout, instance family), each the
first rule that holds, over *facts*: the workload as given, plus what the artifact's manifest measured
(latency, size) when an artifact is given. Every answer carries its reason, the figures it used, the
options it rejected and why, and the command that carries it out. See docs/cloud.md.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Literal

import yaml

from edgekit.errors import ConfigError

__all__ = ["RULES_FILE", "Advice", "Workload", "advise", "load_rules"]

RULES_FILE = Path(__file__).with_name("advice.yaml")
DECISIONS = ("placement", "inference_option", "endpoint_layout", "instance_family")
OPTIONS = {
    "placement": ("edge", "cloud"),
    "inference_option": ("real-time", "serverless", "asynchronous", "batch"),
    "endpoint_layout": ("dedicated", "multi-model", "multi-container"),
}
_SERVERLESS_MB = (1024, 2048, 3072, 4096, 5120, 6144)


@dataclass(frozen=True)
class Workload:
    """What the model is asked to do (the guide's questions). ``None``: not known."""

    latency_ms: float | None = None
    payload_mb: float | None = None
    processing_s: float | None = None
    traffic: Literal["sustained", "intermittent", "offline"] = "sustained"
    per_request: bool = True
    connectivity: Literal["always", "intermittent", "none"] = "always"
    models: int = 1
    data_must_stay_on_site: bool = False
    pre_post_processing: bool = False
    modalities: int = 1


@dataclass
class Advice:
    placement: str
    inference_option: str
    endpoint_layout: str
    instance_family: str
    reasons: list[dict[str, str]] = field(default_factory=list)  # {decision, rule, reason}
    rejected: list[dict[str, str]] = field(default_factory=list)  # {decision, option, why}
    figures: dict[str, Any] = field(default_factory=dict)  # the facts the rules used
    edge_profiles: list[str] = field(default_factory=list)  # device profiles the model fits (placement edge)
    command: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "placement": self.placement,
            "inference_option": self.inference_option,
            "endpoint_layout": self.endpoint_layout,
            "instance_family": self.instance_family,
            "reasons": self.reasons,
            "rejected": self.rejected,
            "figures": self.figures,
            "edge_profiles": self.edge_profiles,
            "command": self.command,
        }


@cache
def load_rules(path: Path = RULES_FILE) -> dict[str, Any]:
    """The rule table (checked: every decision present, every rule with a `then` and a `because`)."""
    try:
        rules = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read the advice rules ({exc})") from exc
    for decision in DECISIONS:
        for i, rule in enumerate(rules.get(decision) or []):
            if not isinstance(rule, dict) or "then" not in rule or "because" not in rule:
                raise ConfigError(f"{path}: {decision}[{i}] needs 'then' and 'because'")
    return rules  # type: ignore[no-any-return]


def _holds(condition: dict[str, Any], facts: dict[str, Any]) -> bool:
    for key, want in condition.items():
        if key == "any":
            if not any(_holds(c, facts) for c in want):
                return False
            continue
        have = facts.get(key)
        if have is None:
            return False
        if isinstance(want, dict):
            for op, other in want.items():
                bound = facts.get(other) if isinstance(other, str) else other
                if bound is None:
                    return False
                if not {"gt": have > bound, "ge": have >= bound, "lt": have < bound, "le": have <= bound}[op]:
                    return False
        elif have != want:
            return False
    return True


def _text(template: str, facts: dict[str, Any]) -> str:
    def value(match: re.Match[str]) -> str:
        v = facts.get(match.group(1))
        return f"{v:g}" if isinstance(v, float) else str(v)

    return re.sub(r"\{(\w+)\}", value, template)


def _facts(workload: Workload, artifact: str | Path | None, rules: dict[str, Any]) -> dict[str, Any]:
    facts: dict[str, Any] = {k: v for k, v in vars(workload).items()}
    facts.update(rules.get("assumptions", {}))
    facts["cloud_allowed"] = not workload.data_must_stay_on_site and workload.connectivity != "none"
    if artifact is not None:
        from edgekit.cloud.servable import artifact_dir
        from edgekit.errors import EdgekitError
        from edgekit.manifest import read_manifest

        try:
            directory, _ = artifact_dir(artifact)
            manifest = read_manifest(directory)
        except EdgekitError as exc:
            raise ConfigError(f"edgekit advise: {exc}") from exc
        facts["artifact"] = str(artifact)
        facts["target"] = manifest.profile.name
        facts["architecture"] = manifest.profile.greengrass.get("architecture", "")
        facts["model_mb"] = round(manifest.size_bytes / 2**20, 3)
        if manifest.measured is not None:
            facts["model_latency_ms"] = round(manifest.measured.latency.median_ms, 3)
            facts["latency_measured_on"] = manifest.measured.on
        if workload.processing_s is None and "model_latency_ms" in facts:
            facts["processing_s"] = facts["model_latency_ms"] / 1000
    if "model_mb" in facts:
        facts["model_memory_mb"] = math.ceil(2 * facts["model_mb"] + facts.get("runtime_memory_mb", 64))
        facts["serverless_memory_mb"] = next((m for m in _SERVERLESS_MB if m >= 2 * facts["model_memory_mb"]), 6144)
    else:
        facts["serverless_memory_mb"] = 2048
    return facts


def _decide(decision: str, facts: dict[str, Any], rules: dict[str, Any], advice: Advice) -> str:
    limits: dict[str, dict[str, float]] = rules.get("limits", {})
    out_of_limits: dict[str, str] = {}
    for option, caps in limits.items():
        over = [
            f"{k} {facts[k]:g} > {cap:g}" for k, cap in caps.items() if isinstance(facts.get(k), int | float) and facts[k] > cap
        ]
        if over:
            out_of_limits[option] = "over its limit: " + ", ".join(over)
    for rule in rules.get(decision) or []:
        if not _holds(rule.get("when", {}), facts):
            continue
        choice = str(rule["then"])
        if choice in out_of_limits:
            advice.rejected.append({"decision": decision, "option": choice, "why": out_of_limits[choice]})
            continue
        advice.reasons.append(
            {"decision": decision, "rule": str(rule.get("id", "")), "reason": _text(str(rule["because"]), facts)}
        )
        if choice != "none":
            rejects = {k: _text(str(v), facts) for k, v in (rule.get("rejects") or {}).items()}
            candidates = OPTIONS.get(decision, tuple(rules.get("families", {})))
            for option in candidates:
                if option == choice or any(r["option"] == option and r["decision"] == decision for r in advice.rejected):
                    continue
                why = out_of_limits.get(option) or rejects.get(option)
                if why is None and decision == "instance_family":
                    why = str(rules["families"][option]["not"])
                if why is not None:
                    advice.rejected.append({"decision": decision, "option": option, "why": why})
        return choice
    raise ConfigError(f"{RULES_FILE}: no {decision} rule holds for these facts; add a rule without 'when' at the end")


def _fitting_profiles(facts: dict[str, Any]) -> list[str]:
    from edgekit.profiles import list_profiles

    need = facts.get("model_memory_mb", facts.get("runtime_memory_mb", 64))
    fits = []
    for profile in list_profiles():
        if profile.memory_mb < need:
            continue
        too_slow = facts.get("latency_ms") is not None and facts.get("model_latency_ms", 0) > facts["latency_ms"]
        if profile.name == facts.get("target") and too_slow:
            continue  # measured for this very profile, and too slow
        fits.append(profile.name)
    return fits


def _command(advice: Advice, facts: dict[str, Any]) -> str:
    artifact = facts.get("artifact", "build/<model>-<target>")
    if advice.placement == "edge":
        line = f"edgekit package {artifact} && edgekit deploy --target thinggroup/<group> --component <name>=<version>"
        if advice.inference_option not in ("none", "batch"):
            line += "  (cloud fallback: FallbackEndpoint sagemaker://<endpoint> in the inference component's configuration)"
        return line
    base = f"edgekit endpoint deploy {artifact} --role <role-arn> --image <ecr-uri> --bucket <bucket>"
    option = advice.inference_option
    if option == "serverless":
        return f"{base} --mode serverless --memory {facts['serverless_memory_mb']}"
    graviton = facts.get("architecture") == "aarch64"
    family = advice.instance_family
    instance = {"g": "ml.g4dn.xlarge", "t": "ml.t2.medium", "p": "ml.p3.2xlarge", "inf": "ml.inf2.xlarge"}.get(
        family, f"ml.{family}{'7g' if graviton else '5'}.large"
    )
    extra = " --multi-model" if advice.endpoint_layout == "multi-model" else ""
    if option == "batch":
        return f"{base} --mode batch --instance-type {instance} --batch-input s3://<in> --batch-output s3://<out>"
    if option == "asynchronous":
        scale = " --min-instances 0 --max-instances 2"  # queued requests wake it; idle, it bills nothing
        return f"{base} --mode async --instance-type {instance} --async-output s3://<results>{extra}{scale}"
    return f"{base} --mode real-time --instance-type {instance}{extra}"


def advise(artifact: str | Path | None = None, workload: Workload | None = None, *, rules_file: Path | None = None) -> Advice:
    """Advice for ``workload`` (and the artifact's measured figures, when given); see the module docstring."""
    rules = load_rules(rules_file or RULES_FILE)
    work = workload or Workload()
    if work.models < 1 or work.modalities < 1:
        raise ConfigError("--models and --modalities must be at least 1")
    for name in ("latency_ms", "payload_mb", "processing_s"):
        value = getattr(work, name)
        if value is not None and value <= 0:
            raise ConfigError(f"--{name.replace('_', '-')} must be positive, not {value:g}")
    facts = _facts(work, artifact, rules)
    advice = Advice(placement="", inference_option="", endpoint_layout="", instance_family="")
    for decision in DECISIONS:
        facts[decision] = _decide(decision, facts, rules, advice)
    advice.placement = facts["placement"]
    advice.inference_option = facts["inference_option"]
    advice.endpoint_layout = facts["endpoint_layout"]
    advice.instance_family = facts["instance_family"]
    if advice.placement == "edge":
        advice.edge_profiles = _fitting_profiles(facts)
        if not advice.edge_profiles:
            advice.reasons.append(
                {"decision": "placement", "rule": "no-profile-fits", "reason": "no known device profile has the memory it needs"}
            )
    advice.figures = {k: v for k, v in facts.items() if k not in DECISIONS and v is not None}
    advice.command = _command(advice, facts)
    return advice
