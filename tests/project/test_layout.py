"""The house's walls: what a device imports, which role may import which, and every third-party import declared."""

from __future__ import annotations

import ast
import importlib.metadata
import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "edgekit"

# What a device installs: the agent, the edge runtime, the model runtime, the wire contracts. Every module of theirs is imported.
DEVICE_SIDE = ("edgekit.device", "edgekit.edge", "edgekit.runtime", "edgekit.wire")
# ... and what none of them may pull in: the server, the simulation, the broker manager, the compiler, the CLI.
FORBIDDEN = (
    "edgekit.fleet",
    "edgekit.sim",
    "edgekit.fleet_file",
    "edgekit.mqtt.broker",
    "edgekit.mqtt.tls",
    "edgekit.compiler",
    "edgekit.cli",
    "edgekit.greengrass.aws",
    "edgekit.greengrass.package",
    "boto3",
    "botocore",
    "typer",
    "rich",
    "click",
    "cryptography",
    "tvm",
    "torch",
    "onnx",
    "amqtt",
)


def _modules(package: str) -> list[str]:
    folder = ROOT / Path(*package.split("."))
    return sorted(
        package + ("" if p.stem == "__init__" else "." + ".".join(p.relative_to(folder).with_suffix("").parts))
        for p in folder.rglob("*.py")
    )


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_device_side_imports_no_server_compiler_or_cli() -> None:
    modules = [m for p in DEVICE_SIDE for m in _modules(p)]
    code = (
        f"import importlib, json, sys\nfor m in {modules!r}: importlib.import_module(m)\nprint(json.dumps(sorted(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    loaded = json.loads(out.stdout)
    bad = sorted(m for m in loaded if any(m == f or m.startswith(f + ".") for f in FORBIDDEN))
    assert len(modules) > 20  # the walk found the device side
    assert bad == []


@pytest.mark.parametrize(
    ("lower", "upper"),
    [
        ("edgekit/device", "edgekit.sim"),
        ("edgekit/fleet", "edgekit.sim"),
        ("edgekit/device", "edgekit.fleet"),
        ("edgekit/edge", "edgekit.device"),
        ("edgekit/wire", "edgekit.edge"),  # the contracts sit below both sides that import them
        ("edgekit/wire", "edgekit.fleet"),
        ("edgekit/wire", "edgekit.device"),
        ("edgekit/runtime", "edgekit.compiler"),
    ],
)
def test_a_role_never_imports_the_one_above_it(lower: str, upper: str) -> None:
    offenders = {
        str(p.relative_to(ROOT)): sorted(n for n in _imports(p) if n == upper or n.startswith(upper + "."))
        for p in (ROOT / lower).rglob("*.py")
    }
    assert {k: v for k, v in offenders.items() if v} == {}


# Store and forward (edgekit.edge.store) is what the device agent's uplink is made of: it may import nothing of the
# edge runtime but its errors, so the agent doesn't load the inference loop (nor numpy) to spool a message.
STORE_MAY_IMPORT = ("edgekit.edge.errors", "edgekit.edge.store")


def test_the_store_imports_nothing_of_the_edge_runtime_but_its_errors() -> None:
    offenders = {
        str(p.relative_to(ROOT)): sorted(
            n for n in _imports(p) if n.startswith("edgekit.edge") and not n.startswith(STORE_MAY_IMPORT)
        )
        for p in (PACKAGE / "edge" / "store").rglob("*.py")
    }
    assert {k: v for k, v in offenders.items() if v} == {}
    code = "import json, sys; import edgekit.edge.store, edgekit.device.ipc.iotcore; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    loaded = set(json.loads(out.stdout))
    assert not loaded & {"numpy", "edgekit.edge.loop", "edgekit.edge.windows", "edgekit.edge.fallback", "paho"}


def test_every_third_party_import_is_declared() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared_specs = list(project["dependencies"]) + [d for deps in project["optional-dependencies"].values() for d in deps]

    def norm(name: str) -> str:  # PEP 503: prometheus_client, prometheus-client and Prometheus.Client are one name
        return re.sub(r"[-_.]+", "-", name).lower()

    declared = {norm(s.split(";")[0].split("[")[0].split("=")[0].split(">")[0].split("<")[0].strip()) for s in declared_specs}
    dists = importlib.metadata.packages_distributions()
    stdlib = set(sys.stdlib_module_names)
    undeclared: dict[str, list[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        for name in _imports(path):
            top = name.split(".")[0]
            if top in stdlib or top == "edgekit" or top.startswith("mypy_boto3"):  # typing-only stubs (dev extra)
                continue
            owners = {norm(d) for d in dists.get(top, [top])}
            if not owners & declared:
                undeclared.setdefault(top, []).append(str(path.relative_to(ROOT)))
    assert undeclared == {}


def test_device_and_fleet_extras_by_role() -> None:
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    device = " ".join(extras["device"])
    assert "paho-mqtt" in device and "amqtt" not in device and "cryptography" not in device
    fleet = " ".join(extras["fleet"])
    assert "edgekit[device]" in fleet and "cryptography" in fleet and "amqtt" in fleet
