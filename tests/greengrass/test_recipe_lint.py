"""The recipe linter: every rule with a failing and a passing recipe, the developer guide's examples, files and folders."""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from edgekit.errors import RecipeError
from edgekit.greengrass.lint import Finding, check_recipe, lint_paths, lint_recipe
from edgekit.greengrass.recipe import nucleus_bool

RECIPES = Path(__file__).parent / "recipes"
GUIDE = sorted(p for p in (RECIPES / "guide").iterdir() if p.suffix in (".json", ".yaml", ".yml"))
OK = sorted(p for p in (RECIPES / "ok").iterdir() if p.suffix in (".json", ".yaml", ".yml"))

Edit = Callable[[dict[str, Any]], None]
DELETE = object()


def base() -> dict[str, Any]:
    """A small recipe that lints without a single finding; every case edits a copy of it."""
    return {
        "RecipeFormatVersion": "2020-01-25",
        "ComponentName": "com.example.Lint",
        "ComponentVersion": "1.0.0",
        "ComponentConfiguration": {"DefaultConfiguration": {"Message": "hi", "Port": "8080", "Nested": {"list": ["a", "b"]}}},
        "ComponentDependencies": {"com.example.Dep": {"VersionRequirement": "^1.0.0"}},
        "Manifests": [
            {
                "Platform": {"os": "linux", "architecture": "amd64"},
                "Lifecycle": {"Run": "python3 {artifacts:path}/app.py '{configuration:/Message}'"},
                "Artifacts": [{"URI": "s3://bucket/com.example.Lint/1.0.0/app.py"}],
            }
        ],
    }


def put(path: tuple[Any, ...], value: Any) -> Edit:
    """Set, append (index == length) or, with DELETE, remove the value at ``path`` in the recipe."""

    def edit(recipe: dict[str, Any]) -> None:
        node: Any = recipe
        for step in path[:-1]:
            node = node[step]
        if value is DELETE:
            del node[path[-1]]
        elif isinstance(node, list) and path[-1] == len(node):
            node.append(copy.deepcopy(value))
        else:
            node[path[-1]] = copy.deepcopy(value)

    return edit


def apply(*edits: Edit) -> dict[str, Any]:
    recipe = base()
    for edit in edits:
        edit(recipe)
    return recipe


RUN = ("Manifests", 0, "Lifecycle", "Run")
LIFECYCLE = ("Manifests", 0, "Lifecycle")
PLATFORM = ("Manifests", 0, "Platform")
ARTIFACT = ("Manifests", 0, "Artifacts", 0)
DEP = ("ComponentDependencies", "com.example.Dep")
DEFAULTS = ("ComponentConfiguration", "DefaultConfiguration")
AT_DEP = 'ComponentDependencies["com.example.Dep"]'
PERMISSION = (*ARTIFACT, "Permission")
SEL_LIFECYCLE = {"install_apt": {"Install": "apt-get install git"}}
NO_MANIFEST_LIFECYCLE = put(LIFECYCLE, DELETE)
LINUX_ONLY = {"Platform": {"os": "linux"}, "Lifecycle": {"Run": "echo linux"}}
ACL = (*DEFAULTS, "accessControl")
MQTT_POLICY = ("aws.greengrass.ipc.mqttproxy", "com.example.Lint:mqtt:1")
AT_POLICY = "ComponentConfiguration.DefaultConfiguration.accessControl.aws.greengrass.ipc.mqttproxy.com.example.Lint:mqtt:1"
UPLINK = {"operations": ["aws.greengrass#PublishToIoTCore"], "resources": ["devices/{iot:thingName}/#"]}
GOOD_ACL = {MQTT_POLICY[0]: {MQTT_POLICY[1]: UPLINK}}

# (failing edits, passing edits, path of the finding, words in its message, severity)
# fmt: off
CASES = [
    pytest.param([put(("RecipeFormatVersion",), DELETE)], [], "RecipeFormatVersion", "missing", "error", id="format-missing"),
    pytest.param([put(("RecipeFormatVersion",), "2021-01-25")], [put(("RecipeFormatVersion",), "2020-01-25")],
                 "RecipeFormatVersion", "the only recipe format", "error", id="format-wrong"),
    pytest.param([put(("ComponentName",), DELETE)], [], "ComponentName", "missing", "error", id="name-missing"),
    pytest.param([put(("ComponentName",), "com.example/My Model")], [put(("ComponentName",), "com.example-x_1.Model")],
                 "ComponentName", "letters, digits", "error", id="name-chars"),
    pytest.param([put(("ComponentName",), "aws.greengrass.MyModel")], [put(("ComponentName",), "com.example.greengrass.MyModel")],
                 "ComponentName", "prefix of AWS's components", "error", id="name-reserved"),
    pytest.param([put(("ComponentVersion",), DELETE)], [], "ComponentVersion", "missing", "error", id="version-missing"),
    pytest.param([put(("ComponentVersion",), 1.0)], [put(("ComponentVersion",), "1.0.0")],
                 "ComponentVersion", "read as a number", "error", id="version-number"),
    pytest.param([put(("ComponentVersion",), "1.0")], [put(("ComponentVersion",), "1.0.0-beta.1+exp.sha.5114f85")],
                 "ComponentVersion", "not a semantic version", "error", id="version-semver"),
    pytest.param([put(("ComponentVersion",), "1.1000000.0")], [put(("ComponentVersion",), "999999.0.0")],
                 "ComponentVersion", "6 digits", "error", id="version-too-big"),
    pytest.param([put(("ComponentVersion",), DELETE), put(("ComponentVersoin",), "1.0.0")], [],
                 "ComponentVersoin", "did you mean ComponentVersion?", "error", id="top-key-typo"),
    pytest.param([put(("ComponentType",), "aws.greengrass.generic")], [], "ComponentType", "set by the Greengrass service",
                 "warning", id="component-type"),
    pytest.param([put(("ComponentSource",), "arn:aws:lambda:...")], [], "ComponentSource", "set by the Greengrass service",
                 "warning", id="component-source"),
    pytest.param([put(("ComponentDescription",), 3)], [put(("ComponentDescription",), "three")],
                 "ComponentDescription", "must be text", "error", id="description-text"),
    pytest.param([put(("ComponentConfiguration", "DefaultConfig"), {})], [],
                 'ComponentConfiguration.DefaultConfig', "did you mean DefaultConfiguration?", "error", id="config-key"),
    pytest.param([put(DEFAULTS, ["a"])], [], "ComponentConfiguration", "DefaultConfiguration", "error", id="config-not-mapping"),
    pytest.param([put((*DEFAULTS, "Big"), 2**60)], [put((*DEFAULTS, "Big"), str(2**60))],
                 "ComponentConfiguration.DefaultConfiguration.Big", "lose digits", "warning", id="config-big-int"),
    pytest.param([put(("ComponentDependencies",), ["com.example.Dep"])], [], "ComponentDependencies", "map names", "error",
                 id="deps-list"),
    pytest.param([put((*DEP, "VersionRequirement"), ">=1.0.0,<2.0.0")], [put((*DEP, "VersionRequirement"), ">=1.0.0 <2.0.0")],
                 f"{AT_DEP}.VersionRequirement", "npm-style", "error", id="deps-range"),
    pytest.param([put((*DEP, "VersionRequirement"), DELETE)], [put((*DEP, "VersionRequirement"), "~1.2.0")],
                 f"{AT_DEP}.VersionRequirement", "needs a VersionRequirement", "error", id="deps-missing-range"),
    pytest.param([put((*DEP, "VersionRequirement"), 1.0)], [put((*DEP, "VersionRequirement"), "1.0.0")],
                 f"{AT_DEP}.VersionRequirement", "as text", "error", id="deps-range-number"),
    pytest.param([put((*DEP, "DependencyType"), "hard")], [put((*DEP, "DependencyType"), "SOFT")],
                 f"{AT_DEP}.DependencyType", "case-sensitive", "error", id="deps-type"),
    pytest.param([put((*DEP, "VersionRequirment"), "^1.0.0")], [],
                 f"{AT_DEP}.VersionRequirment", "did you mean VersionRequirement?", "error", id="deps-key"),
    pytest.param([put(("ComponentDependencies", "com.example.Lint"), {"VersionRequirement": "^1.0.0"})], [],
                 'ComponentDependencies["com.example.Lint"]', "depends on itself", "error", id="deps-self"),
    pytest.param([put(("Manifests",), DELETE)], [], "Manifests", "non-empty list", "error", id="manifests-missing"),
    pytest.param([put(("Manifests",), [])], [], "Manifests", "non-empty list", "error", id="manifests-empty"),
    pytest.param([put(("Manifests", 0, "Artifact"), [])], [put(("Manifests", 0, "Artifacts"), [])],
                 "Manifests[0].Artifact", "did you mean Artifacts?", "error", id="manifest-key"),
    pytest.param([put(PLATFORM, {"os": "/[a-z/"})], [put(PLATFORM, {"os": "/linux|darwin/"})],
                 "Manifests[0].Platform.os", "does not compile", "error", id="platform-regex"),
    pytest.param([put(PLATFORM, {"os": "Linux"})], [put(PLATFORM, {"os": "darwin"})],
                 "Manifests[0].Platform.os", "did you mean linux?", "warning", id="platform-os"),
    pytest.param([put(PLATFORM, {"architecture": "x86_64"})], [put(PLATFORM, {"architecture": "aarch64"})],
                 "Manifests[0].Platform.architecture", "did you mean amd64?", "warning", id="platform-arch"),
    pytest.param([put(PLATFORM, {"com.example.gpu": "-cuda"})],
                 [put(PLATFORM, {"com.example.gpu": "cuda12", "architecture.detail": "*"})],
                 'Manifests[0].Platform["com.example.gpu"]', "starting with a letter or digit", "error", id="platform-exact"),
    pytest.param([put(PLATFORM, {"os": 1})], [], "Manifests[0].Platform.os", "not text", "error", id="platform-value-type"),
    pytest.param([put(PLATFORM, {"os": "*"}), put(("Manifests", 1), LINUX_ONLY)],
                 [put(PLATFORM, {"os": "linux"}), put(("Manifests", 1), {"Platform": {"os": "*"}, "Lifecycle": {"Run": "echo"}})],
                 "Manifests[0]", "never used", "warning", id="manifest-order"),
    pytest.param([put((*LIFECYCLE, "Instal"), "pip install x")], [put((*LIFECYCLE, "Install"), "pip install x")],
                 "Manifests[0].Lifecycle.Instal", "did you mean Install?", "error", id="step-typo"),
    pytest.param([put((*LIFECYCLE, "Startup"), "./start.sh &")],
                 [put(RUN, DELETE), put((*LIFECYCLE, "Startup"), "./start.sh &"), put((*LIFECYCLE, "Shutdown"), "pkill x")],
                 "Manifests[0].Lifecycle", "Run and Startup", "error", id="run-and-startup"),
    pytest.param([put(RUN, {"RequiresPrivilege": True})], [put(RUN, {"Script": "./run.sh", "RequiresPrivilege": True})],
                 "Manifests[0].Lifecycle.Run.Script", "needs a Script", "error", id="step-script"),
    pytest.param([put(RUN, ["./a.sh", "./b.sh"])], [put(RUN, "./a.sh && ./b.sh")],
                 "Manifests[0].Lifecycle.Run", "script or a mapping", "error", id="step-list"),
    pytest.param([put(RUN, {"Script": "x", "Scripts": "y"})], [], "Manifests[0].Lifecycle.Run.Scripts",
                 "did you mean Script?", "error", id="step-key"),
    pytest.param([put(RUN, {"Script": "x", "Timeout": "120"})], [put(RUN, {"Script": "x", "Timeout": 120})],
                 "Manifests[0].Lifecycle.Run.Timeout", "positive number", "error", id="timeout-text"),
    pytest.param([put(RUN, {"Script": "x", "Timeout": 0})], [], "Manifests[0].Lifecycle.Run.Timeout", "positive number", "error",
                 id="timeout-zero"),
    pytest.param([put(RUN, {"Script": "x", "RequiresPrivilege": "True"})], [put(RUN, {"Script": "x", "RequiresPrivilege": "true"})],
                 "Manifests[0].Lifecycle.Run.RequiresPrivilege", "which the nucleus reads as false", "error", id="privilege"),
    pytest.param([put(RUN, {"Script": "x", "RequiresPrivilege": 0.5})], [put(RUN, {"Script": "x", "RequiresPrivilege": 1})],
                 "Manifests[0].Lifecycle.Run.RequiresPrivilege", "0.5, which the nucleus reads as false", "error", id="privilege-float"),
    pytest.param([put((*LIFECYCLE, "Bootstrap"), {"Script": "x", "BootstrapOnRollback": "TRUE"})],
                 [put((*LIFECYCLE, "Bootstrap"), {"Script": "x", "BootstrapOnRollback": "false"})],
                 "Manifests[0].Lifecycle.Bootstrap.BootstrapOnRollback", "reads as false", "error", id="bootstrap-on-rollback"),
    pytest.param([put(RUN, {"Script": "x", "Skipif": "which git"})], [put(RUN, {"Script": "x", "Skipif": "exists /tmp/done"})],
                 "Manifests[0].Lifecycle.Run.Skipif", "onpath", "error", id="skipif"),
    pytest.param([put((*LIFECYCLE, "Setenv"), ["A=1"])], [put((*LIFECYCLE, "Setenv"), {"A": "1"})],
                 "Manifests[0].Lifecycle.Setenv", "map variable names", "error", id="setenv-mapping"),
    pytest.param([put(RUN, {"Script": "x", "Setenv": {"PORT": 8080}})], [put(RUN, {"Script": "x", "Setenv": {"PORT": "8080"}})],
                 "Manifests[0].Lifecycle.Run.Setenv.PORT", "environment variables are text", "warning", id="setenv-number"),
    pytest.param([put(RUN, {"Script": "x", "Setenv": {"A": {"B": "c"}}})], [],
                 "Manifests[0].Lifecycle.Run.Setenv.A", "must be text", "error", id="setenv-nested"),
    pytest.param([put(RUN, {"Script": "x", "BootstrapOnRollback": True})],
                 [put((*LIFECYCLE, "Bootstrap"), {"Script": "./setup.sh", "BootstrapOnRollback": True, "Timeout": 300})],
                 "Manifests[0].Lifecycle.Run.BootstrapOnRollback", "unknown Run key", "error", id="bootstrap-only-key"),
    pytest.param([put((*LIFECYCLE, "Bootstrap"), {"Script": "x", "Skipif": "onpath x"})], [],
                 "Manifests[0].Lifecycle.Bootstrap.Skipif", "not documented for Bootstrap", "warning", id="bootstrap-skipif"),
    pytest.param([put(ARTIFACT, {"Unarchive": "NONE"})], [put(ARTIFACT, {"URI": "s3://b/app.py", "Unarchive": "NONE"})],
                 "Manifests[0].Artifacts[0].URI", "no URI", "error", id="uri-missing"),
    pytest.param([put((*ARTIFACT, "URI"), "https://example.com/app.py")], [put((*ARTIFACT, "URI"), "greengrass:app.py")],
                 "Manifests[0].Artifacts[0].URI", "can download", "warning", id="uri-scheme"),
    pytest.param([put((*ARTIFACT, "URI"), "s3://bucket")], [put((*ARTIFACT, "URI"), "s3://bucket/app.py")],
                 "Manifests[0].Artifacts[0].URI", "no object", "error", id="uri-s3-key"),
    pytest.param([put(("Manifests", 0, "Artifacts", 1), {"URI": "s3://other/x/app.py"})],
                 [put(("Manifests", 0, "Artifacts", 1), {"URI": "s3://other/x/app2.py"})],
                 "Manifests[0].Artifacts[1].URI", "also the file name", "error", id="uri-unique"),
    pytest.param([put((*ARTIFACT, "Unarchive"), "zip"), put((*ARTIFACT, "URI"), "s3://b/m.zip")],
                 [put((*ARTIFACT, "Unarchive"), "ZIP"), put((*ARTIFACT, "URI"), "s3://b/m.zip")],
                 "Manifests[0].Artifacts[0].Unarchive", "case-sensitive", "error", id="unarchive-case"),
    pytest.param([put((*ARTIFACT, "Unarchive"), "ZIP")], [], "Manifests[0].Artifacts[0].Unarchive", "not a .zip", "warning",
                 id="unarchive-not-zip"),
    pytest.param([put(PERMISSION, {"Execute": "EVERYONE"})], [put(PERMISSION, {"Read": "ALL", "Execute": "OWNER"})],
                 "Manifests[0].Artifacts[0].Permission.Execute", "NONE, OWNER, ALL", "error", id="permission"),
    pytest.param([put(PERMISSION, {"Write": "ALL"})], [], "Manifests[0].Artifacts[0].Permission.Write",
                 "unknown permission", "error", id="permission-write"),
    pytest.param([put((*ARTIFACT, "Digest"), "abc=")], [], "Manifests[0].Artifacts[0].Digest", "computed by the service",
                 "warning", id="digest"),
    pytest.param([put((*ARTIFACT, "Algorithm"), "SHA-256")], [], "Manifests[0].Artifacts[0].Algorithm", "computed by the service",
                 "warning", id="algorithm"),
    pytest.param([put(RUN, "python3 {artifact:path}/app.py")], [put(RUN, "python3 {artifacts:path}/app.py")],
                 "Manifests[0].Lifecycle.Run", "did you mean artifacts?", "error", id="var-namespace"),
    pytest.param([put(RUN, "cd {artifacts:decompresedPath}")], [put(RUN, "cd {artifacts:decompressedPath}/m")],
                 "Manifests[0].Lifecycle.Run", "did you mean {artifacts:decompressedPath}?", "error", id="var-key"),
    pytest.param([put(RUN, "echo {kernel:rootpath} {iot:thing}")], [put(RUN, "echo {kernel:rootPath} {iot:thingName}")],
                 "Manifests[0].Lifecycle.Run", "{kernel:rootPath}", "error", id="var-case"),
    pytest.param([put(RUN, "echo {configuration:Message}")], [put(RUN, "echo {configuration:/Message}")],
                 "Manifests[0].Lifecycle.Run", "starts with '/'", "error", id="var-pointer"),
    pytest.param([put(RUN, "echo {configuration:/Mesage}")], [put(RUN, "echo {configuration:/Nested/list/1}")],
                 "Manifests[0].Lifecycle.Run", "has no /Mesage", "warning", id="var-missing-default"),
    pytest.param([put((*DEFAULTS, "Port"), 8080), put(RUN, "serve --port {configuration:/Port}")],
                 [put(RUN, "serve --port {configuration:/Port}")],
                 "Manifests[0].Lifecycle.Run", "8080.0", "warning", id="var-int-config"),
    pytest.param([put(RUN, "echo {com.example.Other:configuration:/x}")], [put(RUN, "echo {com.example.Dep:configuration:/x}")],
                 "Manifests[0].Lifecycle.Run", "not a direct dependency", "error", id="var-cross-dependency"),
    pytest.param([put(RUN, "echo {com.example.Dep:kernel:rootPath}")], [put(RUN, "echo {com.example.Dep:work:path}")],
                 "Manifests[0].Lifecycle.Run", "only configuration, artifacts and work", "error", id="var-cross-namespace"),
    pytest.param([put(RUN, "echo {com.example.Lint:artifacts:path}")], [put(RUN, "echo {com.example.Dep:artifacts:path}")],
                 "Manifests[0].Lifecycle.Run", "names this component", "error", id="var-cross-self"),
    pytest.param([put(("ComponentDependencies", "my-dep"), {"VersionRequirement": "1.x"}), put(RUN, "echo {my-dep:work:path}")],
                 [put(("ComponentDependencies", "my_dep"), {"VersionRequirement": "1.x"}), put(RUN, "echo {my_dep:work:path}")],
                 "Manifests[0].Lifecycle.Run", "replaces only component names", "error", id="var-cross-hyphen"),
    pytest.param([put((*LIFECYCLE, "Setenv"), {"A": "{artifacts:pth}"})], [put((*LIFECYCLE, "Setenv"), {"A": "{work:path}"})],
                 "Manifests[0].Lifecycle.Setenv.A", "did you mean {artifacts:path}?", "error", id="var-in-setenv"),
    pytest.param([put((*DEFAULTS, "Path"), "{work:pth}/data")], [put((*DEFAULTS, "Path"), "{work:path}/data")],
                 "ComponentConfiguration.DefaultConfiguration.Path", "did you mean {work:path}?", "error", id="var-in-config"),
    pytest.param([put(("Lifecycle",), SEL_LIFECYCLE), NO_MANIFEST_LIFECYCLE],
                 [put(("Lifecycle",), {**SEL_LIFECYCLE, "Run": {"Script": {"all": "./run.sh"}}}), NO_MANIFEST_LIFECYCLE,
                  put(("Manifests", 0, "Selections"), ["install_apt", "all"])],
                 "Lifecycle.install_apt", "no manifest selects it", "error", id="global-selection"),
    pytest.param([put(("Manifests", 0, "Selections"), ["linux"])], [], "Manifests[0].Selections", "ignored", "warning",
                 id="selections-ignored"),
    pytest.param([put(("Manifests", 0, "Selections"), ["linux"]), NO_MANIFEST_LIFECYCLE], [], "Manifests[0].Selections",
                 "there is none", "warning", id="selections-no-global"),
    pytest.param([put(ACL, {MQTT_POLICY[0]: {MQTT_POLICY[1]: {**UPLINK, "operations": ["aws.greengrass#PublishToIotCore"]}}})],
                 [put(ACL, GOOD_ACL)], f"{AT_POLICY}.operations", "is not an operation of", "error", id="acl-unknown-operation"),
    pytest.param([put(ACL, {"aws.greengrass.ipc.mqtt": {MQTT_POLICY[1]: UPLINK}})], [put(ACL, GOOD_ACL)],
                 "ComponentConfiguration.DefaultConfiguration.accessControl.aws.greengrass.ipc.mqtt", "not a Greengrass IPC service",
                 "error", id="acl-unknown-service"),
    pytest.param([put(ACL, {MQTT_POLICY[0]: {MQTT_POLICY[1]: {**UPLINK, "resources": ["devices/what?"]}}})], [put(ACL, GOOD_ACL)],
                 f"{AT_POLICY}.resources", "contains '?'", "error", id="acl-bad-resource"),
    pytest.param([put(ACL, {MQTT_POLICY[0]: {MQTT_POLICY[1]: {**UPLINK, "operations": []}}})], [put(ACL, GOOD_ACL)],
                 f"{AT_POLICY}.operations", "non-empty list of operations", "error", id="acl-no-operations"),
    pytest.param([put(ACL, {**GOOD_ACL, "aws.greengrass.ipc.pubsub": {MQTT_POLICY[1]: {"operations": ["*"], "resources": ["*"]}}})],
                 [put(ACL, {**GOOD_ACL, "aws.greengrass.ipc.pubsub": {"com.example.Lint:pubsub:1": {"operations": ["*"], "resources": ["*"]}}})],
                 f"ComponentConfiguration.DefaultConfiguration.accessControl.aws.greengrass.ipc.pubsub.{MQTT_POLICY[1]}", "also used under", "error", id="acl-duplicate-policy-id"),
]
# fmt: on


@pytest.mark.parametrize(("bad", "good", "where", "words", "severity"), CASES)
def test_rule_fails_then_passes(bad: list[Edit], good: list[Edit], where: str, words: str, severity: str) -> None:
    findings = lint_recipe(apply(*bad))
    hits = [f for f in findings if f.path == where and words in f.message]
    assert hits, "\n".join(map(str, findings))
    assert hits[0].severity == severity and hits[0].file == "<inline>" and hits[0].fix
    assert lint_recipe(apply(*good)) == []


def test_the_base_recipe_and_things_that_are_not_variables_lint_clean() -> None:
    script = "echo ${HOME:-/tmp} && awk '{print $1}' f && python3 -c \"print('{0:.2f}'.format(1))\" && echo '{\"a\": {\"b\": 1}}'"
    assert lint_recipe(apply(put(RUN, script), put((*DEFAULTS, "Js"), "{x:1, y:{z:2}}"))) == []


KNOWN = {"com.example.Dep": ["0.9.0", "1.0.0", "1.4.2", "not-a-version"]}


@pytest.mark.parametrize(
    ("requirement", "expected"),
    [("^1.0.0", None), (">=1.4.0 <2.0.0", None), (">=2.0.0", "no version of com.example.Dep satisfies '>=2.0.0'")],
)
def test_known_components_check_that_ranges_are_satisfiable(requirement: str, expected: str | None) -> None:
    findings = lint_recipe(apply(put((*DEP, "VersionRequirement"), requirement)), known_components=KNOWN)
    assert [f.message.split(" (known")[0] for f in findings] == ([expected] if expected else [])
    if expected:
        assert findings[0].severity == "error" and "known: 0.9.0, 1.0.0, 1.4.2" in findings[0].message


def test_a_dependency_missing_from_known_components_is_a_warning() -> None:
    (finding,) = lint_recipe(base(), known_components={})
    assert finding.severity == "warning" and "not a known component" in finding.message


@pytest.mark.parametrize("path", GUIDE, ids=lambda p: p.name)
def test_developer_guide_examples_have_no_errors(path: Path) -> None:
    findings = lint_recipe(path)
    assert [f for f in findings if f.severity == "error"] == [], "\n".join(map(str, findings))


def test_there_are_enough_guide_examples_in_both_formats() -> None:
    assert len(GUIDE) >= 5 and {p.suffix for p in GUIDE} == {".json", ".yaml"}


def test_guide_integer_configuration_read_by_a_script_is_a_warning() -> None:
    findings = lint_recipe(RECIPES / "guide" / "battery_aware_hello_world.json")
    assert {(f.severity, f.path) for f in findings} == {
        ("warning", "Manifests[0].Lifecycle.Run"),
        ("warning", "Manifests[1].Lifecycle.Run"),
    }


@pytest.mark.parametrize("path", OK, ids=lambda p: p.name)
def test_written_examples_lint_clean(path: Path) -> None:
    assert lint_recipe(path) == []


def test_the_guide_misprints_are_caught() -> None:
    findings = lint_recipe(RECIPES / "bad" / "foo_service_as_printed.json")
    assert [(f.severity, f.path) for f in findings] == [
        ("warning", "Manifests[0].Artifacts[1].URI"),
        ("error", "Manifests[1].Lifecycle.Start"),
    ]
    assert "did you mean Startup?" in findings[1].message


def test_keys_are_case_insensitive_and_check_recipe_returns_documented_casing() -> None:
    text = (RECIPES / "ok" / "all_lowercase.yaml").read_text()
    recipe = check_recipe(text, file="lower.yaml")
    assert recipe["ComponentVersion"] == "1.0.0"
    assert recipe["Manifests"][0]["Lifecycle"]["Install"]["Skipif"] == "onpath python3"
    assert recipe["Manifests"][0]["Artifacts"][0]["Permission"] == {"Read": "OWNER", "Execute": "NONE"}
    assert lint_recipe(text.replace("componentversion", "COMPONENTVERSION")) == []


def test_yaml_and_json_text_give_the_same_findings() -> None:
    recipe = apply(put((*LIFECYCLE, "Instal"), "x"), put((*ARTIFACT, "Digest"), "abc="))
    from_json = lint_recipe(json.dumps(recipe))
    from_yaml = lint_recipe(yaml.safe_dump(recipe))
    assert from_json == from_yaml and len(from_json) == 2


def test_an_unquoted_yaml_version_is_a_number_and_must_be_quoted() -> None:
    text = yaml.safe_dump(base()).replace("ComponentVersion: 1.0.0", "ComponentVersion: 1.0")
    (finding,) = lint_recipe(text, file="recipe.yaml")
    assert str(finding) == (
        "recipe.yaml: ComponentVersion: 1.0 was read as a number, not as version text (fix: quote it: '1.0.0')"
    )


def test_lint_paths_walks_folders_and_names_every_file(tmp_path: Path) -> None:
    (tmp_path / "nested" / "deeper").mkdir(parents=True)
    (tmp_path / "good.json").write_text(json.dumps(base()))
    (tmp_path / "nested" / "deeper" / "typo.yml").write_text(yaml.safe_dump(apply(put((*LIFECYCLE, "Instal"), "x"))))
    (tmp_path / "nested" / "broken.yaml").write_text("ComponentName: [unclosed\n")
    (tmp_path / "README.md").write_text("not a recipe {artifact:path}")
    (tmp_path / "empty").mkdir()
    findings = lint_paths([tmp_path, tmp_path / "empty", tmp_path / "missing.json"])
    got = sorted((Path(f.file).relative_to(tmp_path).as_posix(), f.path, f.severity) for f in findings)
    assert got == [
        ("empty", "(folder)", "warning"),
        ("missing.json", "(file)", "error"),
        ("nested/broken.yaml", "(file)", "error"),
        ("nested/deeper/typo.yml", "Manifests[0].Lifecycle.Instal", "error"),
    ]


def test_lint_paths_on_the_fixture_folder_finds_errors_only_in_bad() -> None:
    errors = [f for f in lint_paths([RECIPES]) if f.severity == "error"]
    assert errors and {Path(f.file).parent.name for f in errors} == {"bad"}


def test_a_path_is_accepted_as_str_or_path(tmp_path: Path) -> None:
    file = tmp_path / "recipe.yaml"
    file.write_text(yaml.safe_dump(apply(put(("ComponentVersion",), "one"))))
    for given in (file, str(file)):
        (finding,) = lint_recipe(given)
        assert finding.file == str(file) and finding.path == "ComponentVersion"


def test_a_recipe_that_is_not_a_mapping_is_one_finding() -> None:
    (finding,) = lint_recipe("- just\n- a list\n")
    assert finding.path == "(file)" and "mapping" in finding.message


def test_check_recipe_raises_with_every_finding(caplog: pytest.LogCaptureFixture) -> None:
    recipe = apply(put(("ComponentVersion",), "1.0"), put(RUN, "echo {artifact:path}"), put((*ARTIFACT, "Digest"), "x"))
    with pytest.raises(RecipeError) as info:
        check_recipe(recipe, file="my-recipe.json")
    findings = info.value.findings
    assert all(isinstance(f, Finding) for f in findings)
    assert sorted(f.severity for f in findings) == ["error", "error", "warning"]  # type: ignore[attr-defined]
    message = str(info.value)
    assert message.startswith("my-recipe.json: the recipe has 2 error(s):")
    assert "my-recipe.json: ComponentVersion: '1.0' is not a semantic version" in message
    assert "did you mean artifacts?" in message and "Digest" not in message
    with caplog.at_level(logging.WARNING, logger="edgekit.greengrass.lint"):
        assert check_recipe(apply(put((*ARTIFACT, "Digest"), "x")))["ComponentName"] == "com.example.Lint"
    assert "Digest is computed by the service" in caplog.text


def test_check_recipe_of_a_missing_file_raises(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match="cannot read recipe") as info:
        check_recipe(tmp_path / "nope.yaml")
    assert len(info.value.findings) == 1


def test_finding_text_names_file_path_message_and_fix() -> None:
    finding = Finding("r.yaml", "Manifests[0].Lifecycle.Run.Timeout", "Timeout must be positive", "write Timeout: 120")
    assert str(finding) == "r.yaml: Manifests[0].Lifecycle.Run.Timeout: Timeout must be positive (fix: write Timeout: 120)"
    assert finding.severity == "error"


@pytest.mark.parametrize(("value", "meant"), [("true", True), ("yes", True), ("Y", True), ("false", False), ("off", False),
                                             (True, True), (0, False), (2, True), ("True", None), ("1", None), (1.0, None)])  # fmt: skip
def test_recipe_booleans_are_read_as_the_nucleus_coerces_them(value: object, meant: bool | None) -> None:
    assert nucleus_bool(value) is meant  # Coerce.toBoolean: exact strings, numbers; anything else it reads as false


def test_the_guides_string_booleans_lint_clean_and_a_bad_one_is_one_line() -> None:
    recipe = RECIPES / "ok" / "privileged_string_booleans.json"
    assert lint_recipe(recipe) == []
    raw = json.loads(recipe.read_text())
    raw["Manifests"][0]["Lifecycle"]["Install"]["RequiresPrivilege"] = "TRUE"
    (finding,) = lint_recipe(raw, file="r.json")
    assert finding.severity == "error" and "\n" not in str(finding)
    assert "RequiresPrivilege is 'TRUE', which the nucleus reads as false" in str(finding)
