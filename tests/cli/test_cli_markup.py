"""Text from outside is never Rich markup: paths, model and output names, the fleet's database path, error text. Each
goes through the real command (compile, run, publish, deploy, errors) with ``[bold]x[/bold]`` and a closing tag alone
(``[/]``, which rich refuses with a MarkupError when it parses it) in it, and must print as written: no traceback, no
style swallowing the brackets, no escaping backslash. (The fleet's tables and live view: test_cli_fleet.py.)"""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest
from helpers import APP, make_mlp, write_build, write_fleet

from edgekit.cli import main
from edgekit.cli.output import emit
from edgekit.errors import EXIT_CODES, ModelLoadError

# A folder name can't hold '/', but a path can: 'x[' / ']y' prints as 'x[/]y', a closing tag with nothing to close.
OUTPUT = "probs[/][bold]x[/bold]"
PIPELINE = """name: quick
candidates:
  - {name: ort, backend: onnxruntime}
measure: {samples: 2, warmup: 0, repeat: 2}
"""


def _hostile_dir(root: Path, head: str, tail: str) -> Path:
    """``root/head[/]tail``: a folder ``head[`` holding ``]tail`` (no '/' in it), so the path reads '[/]'."""
    (root / f"{head}[").mkdir(parents=True, exist_ok=True)
    return root / f"{head}[/]{tail}"


def test_emit_prints_a_line_as_written(capsys: pytest.CaptureFixture[str]) -> None:
    line = "a [/] b [bold]c[/bold] [link=https://evil.example]d[/link] e\\ :thumbs_up: f"
    emit({"line": line}, line)
    assert capsys.readouterr().out.rstrip("\n") == line  # nothing parsed, nothing escaped, no emoji code replaced


def test_compile_and_run_show_paths_and_output_names_as_written(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = make_mlp()
    model.graph.node[-1].output[0] = OUTPUT  # an output name is the model author's text
    model.graph.output[0].name = OUTPUT
    source = _hostile_dir(tmp_path, "in", "[bold]m.onnx")
    onnx.save(model, str(source))
    pipeline = tmp_path / "quick.yaml"
    pipeline.write_text(PIPELINE)
    out = _hostile_dir(tmp_path, "out", "build")
    argv = ["compile", str(source), "-t", "x86_64", "-o", str(out), "--pipeline", str(pipeline)]

    assert main(argv) == 0  # before: MarkupError "closing tag '[/]' ... has nothing to close", a traceback
    captured = capsys.readouterr()
    assert main([*argv, "--json"]) == 0
    facts = json.loads(capsys.readouterr().out)
    artifact = Path(facts["artifact"])
    assert artifact.parent == out and facts["chosen"]["artifact"] in str(captured.out)  # the model's name, as written
    assert f"artifact: {artifact}  archive: {facts['archive']}" in captured.out
    assert "\\[" not in captured.out and "Traceback" not in captured.err

    assert main(["run", str(artifact), "--random"]) == 0
    shown = capsys.readouterr().out
    assert f"{OUTPUT} float32[1, 4]" in shown  # the name as written, then its dtype and shape
    assert main(["run", str(artifact), "--random", "--json"]) == 0
    assert list(json.loads(capsys.readouterr().out)["outputs"]) == [OUTPUT]


def test_an_error_naming_a_hostile_path_is_one_literal_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = _hostile_dir(tmp_path, "in", "[bold]nosuch.onnx")
    assert main(["compile", str(missing), "-t", "x86_64", "-o", str(tmp_path / "o")]) == EXIT_CODES[ModelLoadError]
    err = capsys.readouterr().err
    progress, error = err.splitlines()  # the step it was at (plain lines off a terminal), then the error
    assert progress == f"  loading onnx model {missing}"
    assert error == f"error: model file '{missing}' does not exist"


def test_publish_and_deploy_show_a_hostile_state_path_as_written(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state = _hostile_dir(tmp_path, "fleet", "[bold]state")
    build = write_build(_hostile_dir(tmp_path, "gg", "[red]build"))
    assert main(["publish", "--local", "--state", str(state), "--build", str(build)]) == 0
    assert APP in capsys.readouterr().out
    argv = ["deploy", "--local", "--state", str(state), "--target", "thinggroup/line-1", "-c", f"{APP}=1.0.0",
            "--fleet", str(write_fleet(tmp_path / "fleet.yaml"))]  # fmt: skip
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert f"created in {state / 'fleet.db'}: 4 execution(s) QUEUED" in captured.out, captured.out
    assert f"no simulation runs on {state}" in captured.err
