"""Accuracy on show: labelled top-1 (or the error against expected outputs) beside the source model's, in the
candidate table, --json and --report; the budget in words; a warning when the evaluation set is too small for it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from helpers import make_mlp

from edgekit.cli import main
from edgekit.compiler.evaluation import Truth, percent, too_few_to_judge


def _labelled(tmp_path: Path, n: int) -> tuple[Path, Path, float]:
    """An MLP, an .npz of ``n`` inputs with labels (the model's own class for 3 in 4 of them, another otherwise),
    and the top-1 the model really reaches on them (computed here with ONNX Runtime)."""
    model = make_mlp(batch="N")
    path = tmp_path / "mlp.onnx"
    onnx.save(model, str(path))
    rng = np.random.default_rng(1)
    x = rng.standard_normal((n, 8)).astype(np.float32)
    predicted = ort.InferenceSession(str(path)).run(None, {"x": x})[0].argmax(axis=1)
    labels = np.where(np.arange(n) % 4 == 0, (predicted + 1) % 4, predicted).astype(np.int64)
    np.savez(tmp_path / "val.npz", x=x, labels=labels)
    return path, tmp_path / "val.npz", float(np.mean(predicted == labels))


def _compile(tmp_path: Path, model: Path, samples: Path, *extra: str) -> int:
    return main(["compile", str(model), "-t", "x86_64", "-o", str(tmp_path / "b"), "-b", "onnxruntime",
                 "--samples", str(samples), "--no-cache", *extra])  # fmt: skip


def test_a_too_small_labelled_set_warns_and_top1_shows_beside_the_source(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model, samples, top1 = _labelled(tmp_path, 12)
    report = tmp_path / "report.html"
    assert _compile(tmp_path, model, samples, "--report", str(report)) == 0
    out, err = capsys.readouterr()
    shown = percent(top1)
    assert f"top-1 {shown} (source {shown})" in out  # the float ORT candidate scores exactly as the source
    assert f"accuracy budget: top-1 ≤ 1 point below the source's {shown} (12 evaluation samples with labels)" in out
    warning = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warning) == 1 and "only 12 labelled evaluation sample(s)" in warning[0] and "at least 100" in warning[0]
    page = report.read_text()
    assert f"top-1 <b>{shown}</b>" in page and "≤ 1 point below the source" in page and "only 12 labelled" in page

    assert _compile(tmp_path, model, samples, "--json") == 0
    facts = json.loads(capsys.readouterr().out)
    accuracy = facts["chosen"]["accuracy"]
    assert accuracy["top1Accuracy"] == pytest.approx(top1) and accuracy["sourceTop1Accuracy"] == pytest.approx(top1)
    assert accuracy["budget"].startswith("top-1 ≤ 1 point below")
    assert facts["candidates"][0]["accuracy"]["top1Accuracy"] == pytest.approx(top1)
    assert "only 12 labelled" in facts["samples"]["warning"]


def test_enough_labels_for_the_budget_give_no_warning(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model, samples, _ = _labelled(tmp_path, 120)
    assert _compile(tmp_path, model, samples, "--json") == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["samples"]["warning"] is None and "warning" not in err


def test_expected_outputs_show_the_error_beside_the_source(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = tmp_path / "mlp.onnx"
    onnx.save(make_mlp(batch="N"), str(model))
    x = np.random.default_rng(2).standard_normal((6, 8)).astype(np.float32)
    want = ort.InferenceSession(str(model)).run(None, {"x": x})[0] + 0.25  # the truth is off the model's by 0.25
    np.savez(tmp_path / "val.npz", x=x, probs=want)
    assert _compile(tmp_path, model, tmp_path / "val.npz") == 0
    out = capsys.readouterr().out
    assert "error 0.25 (source 0.25)" in out and "mean error against the expected outputs ≤ 0.25" in out


def test_the_warning_threshold_is_one_sample_against_the_budget() -> None:
    def truth(n: int) -> Truth:
        return Truth([np.zeros(1, np.int64)] * n, None, ["probs"])

    assert too_few_to_judge(truth(99), 1.0) is not None and too_few_to_judge(truth(100), 1.0) is None
    assert too_few_to_judge(truth(19), 5.0) is not None and too_few_to_judge(truth(20), 5.0) is None
    assert too_few_to_judge(truth(10), 0.0) is None  # a budget of no loss at all: any change rejects, as asked
    assert too_few_to_judge(Truth(None, [{}], ["probs"]), 1.0) is None  # expected outputs: no top-1 to judge


def test_agreement_is_shown_unrounded() -> None:
    assert percent(0.998) == "99.80 %" and percent(1.0) == "100.00 %"
    assert percent(0.99999) == "99.999 %"  # never shown as 100 % when one sample disagreed
