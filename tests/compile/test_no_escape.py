"""No backend exception leaves edgekit.compile: ONNX's own node-test models that some backend can't take, compiled
with and without their inputs as samples; every failure is an EdgekitError with a one-line message. The wider
run (every node test, pass rates beside ORT as ONNX's own runner feeds it and raw TVM) is bench/conformance; a slice of it is slow-marked here."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest

import edgekit
from edgekit.compiler.pipeline import Pipeline
from edgekit.errors import EdgekitError

# Node tests that fail somewhere: TVM can't import them (Col2Im, non-constant axes or scales), ONNX Runtime can't
# initialise them (batch-wise RNN), or random values are no valid input (indices, shapes, k, depth, split sizes).
FAILING = [
    "test_col2im",
    "test_reduce_prod_do_not_keepdims_example",
    "test_resize_upsample_scales_nearest",
    "test_simple_rnn_batchwise",
    "test_scatter_elements_with_negative_indices",
    "test_top_k",
    "test_onehot_with_axis",
    "test_gather_elements_negative_indices",
    "test_reshape_negative_dim",
    "test_split_variable_parts_1d_opset18",
]
QUICK = {"samples": 2, "warmup": 0, "repeat": 2}


def _cases(names: list[str] | None = None, every: int = 1) -> list[Any]:
    from onnx.backend.test.case.node import collect_testcases

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the test generators overflow casts on purpose
        cases = sorted(collect_testcases(), key=lambda c: c.name)
    if names is not None:
        cases = [c for c in cases if c.name in names]
    return cases[::every]


def _samples(case: Any) -> dict[str, np.ndarray]:
    inits = {i.name for i in case.model.graph.initializer}
    names = [i.name for i in case.model.graph.input if i.name not in inits]
    inputs, outputs = case.data_sets[0]
    samples = {n: np.asarray(v)[None] for n, v in zip(names, inputs, strict=False)}
    samples.update({o.name: np.asarray(v)[None] for o, v in zip(case.model.graph.output, outputs, strict=False)})
    return samples


def test_failing_node_tests_fail_as_one_line_edgekit_errors(tmp_path: Path) -> None:
    cases = _cases(FAILING)
    assert len(cases) == len(FAILING)
    failures: list[str] = []
    for case in cases:
        path = tmp_path / f"{case.name}.onnx"
        onnx.save(case.model, str(path))
        pipeline = Pipeline.model_validate(
            {
                "name": "both",
                "candidates": [{"name": "ort", "backend": "onnxruntime"}, {"name": "tvm", "backend": "tvm"}],
                "measure": QUICK,
            }
        )
        for kwargs in ({"backend": "tvm", "samples": _samples(case)}, {"samples": None}):
            try:
                edgekit.compile(path, "x86_64", tmp_path / "build", pipeline=pipeline, use_cache=False, **kwargs)
            except EdgekitError as exc:  # the point: nothing else may come out
                message = str(exc)
                assert message and "\n" not in message, f"{case.name}: not one line: {message!r}"
                assert len(message) < 1200, f"{case.name}: {len(message)} characters"
                failures.append(f"{case.name}: {type(exc).__name__}")
    assert len(failures) >= len(FAILING) // 2, failures  # these models do fail somewhere


@pytest.mark.slow
def test_conformance_slice_keeps_what_onnx_runtime_passes() -> None:
    """Every 40th node test through bench/conformance's own runner (pass rates: docs/benchmarks.md)."""
    from bench.conformance import ANCHOR, run_case

    outcomes = [run_case(case, [ANCHOR, "tvm-raw", "edgekit", "edgekit-tvm"]) for case in _cases(every=40)]
    assert not [o.escaped for o in outcomes if o.escaped]
    ort_ok = [o for o in outcomes if o.passed[ANCHOR]]
    kept = sum(o.passed["edgekit"] for o in ort_ok)
    assert kept >= 0.99 * len(ort_ok), [(o.test, o.why.get("edgekit")) for o in ort_ok if not o.passed["edgekit"]]
    assert sum(o.passed["edgekit-tvm"] for o in outcomes) >= sum(o.passed["tvm-raw"] for o in outcomes)
