"""Every parser that takes bytes from a device or a file: only edgekit errors come out, with one line each.

Property-based (Hypothesis) over arbitrary bytes, arbitrary JSON/YAML values and mutations of a valid document,
plus the named attacks: an alias bomb, deep nesting, non-UTF-8, duplicate and case-duplicate keys.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from edgekit.compiler.pipeline import load_pipeline
from edgekit.errors import ArtifactError, ConfigError, DeploymentError, EdgekitError, RecipeError
from edgekit.fleet_file import load_fleet
from edgekit.greengrass.deployment import load_spec
from edgekit.greengrass.lint import check_recipe
from edgekit.greengrass.recipe import load_recipe, parse_recipe_text
from edgekit.manifest import read_manifest
from edgekit.mqtt import payloads
from edgekit.mqtt.errors import PayloadError
from edgekit.profiles import load_profile

FUZZ = settings(  # random cases on a developer's machine (new ones each run); in CI the same 300 each run, so CI
    max_examples=300,  # never fails on a case nobody has seen here
    deadline=None,
    derandomize=bool(os.environ.get("CI")),
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)

BOMB = "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"{n}: &{n} [{', '.join(['*' + p] * 9)}]\n" for p, n in zip("abcdefgh", "bcdefghi", strict=True)
)
VALID_RECIPE = {
    "RecipeFormatVersion": "2020-01-25",
    "ComponentName": "com.example.App",
    "ComponentVersion": "1.0.0",
    "ComponentConfiguration": {"DefaultConfiguration": {"threshold": "0.5"}},
    "Manifests": [{"Platform": {"os": "linux"}, "Lifecycle": {"Run": "python3 -u app.py"}}],
}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=12), children, max_size=5),
    max_leaves=40,
)


def _one_line(exc: BaseException) -> None:
    assert isinstance(exc, EdgekitError), repr(exc)
    assert "\n" not in str(exc).strip() or isinstance(exc, RecipeError), str(exc)  # RecipeError lists its findings


# --------------------------------------------------------------------------- recipes


@FUZZ
@given(st.binary(max_size=2000))
def test_recipe_parser_takes_any_bytes(data: bytes) -> None:
    try:
        parse_recipe_text(data, "fuzz.yaml")
    except EdgekitError as exc:
        _one_line(exc)


@FUZZ
@given(json_values)
def test_recipe_linter_takes_any_json_value(value: Any) -> None:
    for text in (json.dumps(value), json.dumps({**VALID_RECIPE, "ComponentConfiguration": value})):
        try:
            check_recipe(parse_recipe_text(text, "fuzz.json"), file="fuzz.json")
        except EdgekitError as exc:
            assert isinstance(exc, RecipeError)


@FUZZ
@given(st.sampled_from(sorted(VALID_RECIPE)), json_values)
def test_recipe_linter_takes_any_value_in_any_field(field: str, value: Any) -> None:
    try:
        check_recipe({**VALID_RECIPE, field: value}, file="fuzz.json")
    except EdgekitError as exc:
        assert isinstance(exc, RecipeError)


def test_non_utf8_recipe_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_bytes("ComponentName: caf\u00e9\n".encode("latin-1"))
    with pytest.raises(RecipeError, match=r"r\.yaml: the recipe is not UTF-8 text \(byte 0xe9 at offset 18\); save it as UTF-8"):
        load_recipe(path)


def test_yaml_alias_bomb_is_refused_quickly(tmp_path: Path) -> None:
    path = tmp_path / "bomb.yaml"
    path.write_text(BOMB)
    assert len(BOMB) < 1024
    # in a child process with a deadline that only catches a hang (the bomb expands to 9^9 items)
    code = f"from edgekit.greengrass.lint import lint_paths; print([f.message for f in lint_paths([{str(path)!r}])])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert "alias bomb" in out.stdout


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("ComponentName: a\nComponentName: b\n", r"the key 'ComponentName' twice in one mapping \(lines 1 and 2\)"),
        (
            "ComponentName: a\ncomponentname: b\n",
            r"\(lines 1 and 2\) \('ComponentName' and 'componentname' differ only in case\)",
        ),
        ('{"ComponentName": "a",\n "componentName": "b"}', r"\(lines 1 and 2\) \('ComponentName' and 'componentName' differ"),
        ('{"Manifests": [{"Lifecycle": {"Run": "a",\n "run": "b"}}]}', r"the key 'run' twice in one object"),
    ],
)
def test_duplicate_and_case_duplicate_keys_are_errors(text: str, message: str) -> None:
    with pytest.raises(RecipeError, match=message):
        parse_recipe_text(text, "dup.yaml")


@pytest.mark.parametrize(
    ("number", "message"),
    [("9" * 5000, "a number of 5000 characters"), ("1.0e+999", "too large for a 64-bit float")],
    ids=["int-5000-digits", "float-overflow"],
)
@pytest.mark.parametrize("form", ["json", "yaml"])
def test_numbers_past_the_bounds_are_one_line(tmp_path: Path, number: str, message: str, form: str) -> None:
    """Issue 19 item 6: Python refuses ints of over 4,300 digits with a plain ValueError (a traceback from lint)."""
    text = (
        f'{{"ComponentName": "a", "ComponentVersion": {number}}}'
        if form == "json"
        else f"ComponentName: a\nComponentVersion: {number}\n"
    )
    with pytest.raises(RecipeError, match=message) as exc:
        parse_recipe_text(text, f"big.{form}")
    _one_line(exc.value)
    path = tmp_path / f"r.{form}"
    path.write_text(text)
    code = f"from edgekit.greengrass.lint import lint_paths; print([f.message for f in lint_paths([{str(path)!r}])])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and message in out.stdout, out.stderr[-2000:]
    with pytest.raises(PayloadError, match=message):
        payloads.decode(payloads.DescribeJobExecutionRequest, f'{{"schemaVersion": 1, "x": {number}}}'.encode())


# --------------------------------------------------------------------------- MQTT payloads


PAYLOAD_MODELS = [getattr(payloads, name) for name in payloads.__all__ if isinstance(getattr(payloads, name), type)
                  and issubclass(getattr(payloads, name), payloads.WireMessage)]  # fmt: skip


@FUZZ
@given(st.sampled_from(PAYLOAD_MODELS), st.binary(max_size=600) | json_values.map(lambda v: json.dumps(v).encode()))
def test_every_payload_model_takes_any_bytes(model: type[payloads.WireMessage], data: bytes) -> None:
    try:
        payloads.decode(model, data)
    except EdgekitError as exc:
        assert isinstance(exc, PayloadError)
        _one_line(exc)


@pytest.mark.parametrize("depth", [100, 60_000])
def test_deeply_nested_payloads_are_refused(depth: int) -> None:
    nested = b'{"schemaVersion": 1, "x": ' + b"[" * depth + b"]" * depth + b"}"
    with pytest.raises(PayloadError, match="nested deeper than 64 levels"):
        payloads.decode(payloads.DescribeJobExecutionRequest, nested)


# --------------------------------------------------------------------------- files a user edits


@FUZZ
@given(data=st.binary(max_size=1500) | json_values.map(lambda v: json.dumps(v).encode()))
@example(data=b'{"\\n"}')  # found by Hypothesis: a key that is a newline once made a two-line message
def test_fleet_files_profiles_specs_and_manifests_take_any_bytes(tmp_path_factory: pytest.TempPathFactory, data: bytes) -> None:
    folder = tmp_path_factory.mktemp("fuzz")
    (folder / "manifest.json").write_bytes(data)
    for path, read, kind in [
        (folder / "fleet.yaml", load_fleet, ConfigError),
        (folder / "board.yaml", load_profile, ConfigError),
        (folder / "spec.yaml", load_spec, DeploymentError),
        (folder / "pipeline.yaml", load_pipeline, ConfigError),
        (folder, read_manifest, ArtifactError),
    ]:
        if path.suffix:
            path.write_bytes(data)
        try:
            read(path)
        except EdgekitError as exc:
            assert isinstance(exc, kind), repr(exc)
            _one_line(exc)


@pytest.mark.parametrize(
    "text", [BOMB, "[" * 50_000, "a: b\na: c\n", "\udcff".encode("utf-8", "surrogatepass").decode("latin-1")]
)
def test_named_attacks_on_user_files(tmp_path: Path, text: str) -> None:
    for name, read, kind in [("fleet.yaml", load_fleet, ConfigError), ("board.yaml", load_profile, ConfigError),
                             ("spec.yaml", load_spec, DeploymentError), ("pipeline.yaml", load_pipeline, ConfigError)]:  # fmt: skip
        path = tmp_path / name
        path.write_bytes(text.encode("utf-8", "surrogateescape") if text.isascii() else text.encode("latin-1"))
        with pytest.raises(kind) as exc:
            read(path)
        _one_line(exc.value)
