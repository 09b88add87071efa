"""ONNX's own backend node tests through ``edgekit.compile`` + ``edgekit.load``, beside ONNX Runtime alone and raw TVM.

    python -m bench.conformance [--every 2] [--jobs 1] [--only gather,topk] [--json out.json]

Each test (``onnx.backend.test.case.node.collect_testcases``) ships a one-node model, inputs and expected
outputs. Every variant runs the same tests, on this host (x86_64 profile):

- **ORT alone**: an ``onnxruntime.InferenceSession`` on the model;
- **raw TVM**: the Relax ONNX frontend, ``tvm.compile`` for ``llvm``, the Relax VM;
- **edgekit default**: ``edgekit.compile`` with the default pipeline and the test's inputs and expected outputs as
  ``samples``, then ``edgekit.load(...).predict``;
- **edgekit tvm**: the same with ``backend="tvm"``.

A test passes when every output matches the expected one within the test's own rtol/atol (dtype included).
Failures of edgekit must be :class:`~edgekit.errors.EdgekitError`: any other exception is counted as
*escaped* and listed. See docs/benchmarks.md (conformance).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
import tempfile
import time
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

VARIANTS = ("ort", "tvm-raw", "edgekit", "edgekit-tvm")


@dataclass
class Outcome:
    test: str
    passed: dict[str, bool] = field(default_factory=dict)
    why: dict[str, str] = field(default_factory=dict)
    escaped: dict[str, str] = field(default_factory=dict)  # variant -> exception type and message (edgekit only)


def _cases(every: int, only: Sequence[str]) -> list[Any]:
    from onnx.backend.test.case.node import collect_testcases

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the test generators overflow casts on purpose
        cases = sorted(collect_testcases(), key=lambda c: c.name)
    if only:
        cases = [c for c in cases if any(o in c.name for o in only)]
    return cases[::every]


def _matches(got: Sequence[Any], want: Sequence[Any], rtol: float, atol: float) -> str:
    """'' when ``got`` matches ``want``, else why not."""
    if len(got) != len(want):
        return f"{len(got)} outputs, expected {len(want)}"
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        if not isinstance(w, np.ndarray) or not isinstance(g, np.ndarray):
            return f"output {i} is not a tensor"
        if g.dtype != w.dtype:
            return f"output {i}: dtype {g.dtype}, expected {w.dtype}"
        if g.shape != w.shape:
            return f"output {i}: shape {g.shape}, expected {w.shape}"
        try:
            if w.dtype.kind in "fc":
                np.testing.assert_allclose(g, w, rtol=rtol, atol=atol, equal_nan=True)
            elif not np.array_equal(g, w):
                return f"output {i}: values differ"
        except AssertionError:
            return f"output {i}: values differ beyond rtol {rtol:g} / atol {atol:g}"
    return ""


def _inputs(case: Any, data: tuple[list[Any], list[Any]]) -> dict[str, Any]:
    inits = {i.name for i in case.model.graph.initializer}
    names = [i.name for i in case.model.graph.input if i.name not in inits]
    # numpy scalars as 0-d arrays (ONNX Runtime refuses np.float32(1.0)); sequences stay lists
    return {n: v if isinstance(v, list) else np.asarray(v) for n, v in zip(names, data[0], strict=False)}


def _ort(case: Any) -> str:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 4
    session = ort.InferenceSession(case.model.SerializeToString(), sess_options=opts, providers=["CPUExecutionProvider"])
    for data in case.data_sets:
        why = _matches(session.run(None, _inputs(case, data)), data[1], case.rtol, case.atol)
        if why:
            return why
    return ""


def _tvm_raw(case: Any) -> str:
    import tvm
    from tvm import relax
    from tvm.relax.frontend.onnx import from_onnx

    with contextlib.redirect_stdout(io.StringIO()):
        mod = from_onnx(case.model, keep_params_in_input=False)
    vm = relax.VirtualMachine(tvm.compile(mod, target="llvm"), tvm.cpu())
    for data in case.data_sets:
        feeds = _inputs(case, data)
        out = vm["main"](*[tvm.runtime.tensor(np.asarray(v)) for v in feeds.values()])
        items = [out] if hasattr(out, "numpy") else list(out)
        why = _matches([np.asarray(o.numpy()) for o in items], data[1], case.rtol, case.atol)
        if why:
            return why
    return ""


def _edgekit(case: Any, work: Path, backend: str | None) -> str:
    import onnx

    import edgekit

    work.mkdir(parents=True, exist_ok=True)
    model = work / f"{case.name}.onnx"
    onnx.save(case.model, str(model))
    samples: dict[str, Any] = {}
    outputs = [o.name for o in case.model.graph.output]
    for data in case.data_sets[:1]:  # one data set: the model's shapes are fixed by it
        for name, value in _inputs(case, data).items():
            samples[name] = value if isinstance(value, list) else value[None]  # sequences: edgekit says no
        for name, value in zip(outputs, data[1], strict=False):
            if isinstance(value, np.ndarray) and name not in samples:
                samples[name] = value[None]
    result = edgekit.compile(model, "x86_64", work / "build", backend=backend, samples=samples, use_cache=False, name=case.name)
    loaded = edgekit.load(result.artifact_dir)
    for data in case.data_sets:
        why = _matches(loaded.predict(_inputs(case, data)), data[1], case.rtol, case.atol)
        if why:
            return why
    return ""


def run_case(case: Any, variants: Sequence[str]) -> Outcome:
    from edgekit.errors import EdgekitError

    outcome = Outcome(case.name)
    with tempfile.TemporaryDirectory(prefix="edgekit-conformance-") as tmp:
        runs: dict[str, Callable[[], str]] = {
            "ort": lambda: _ort(case),
            "tvm-raw": lambda: _tvm_raw(case),
            "edgekit": lambda: _edgekit(case, Path(tmp) / "default", None),
            "edgekit-tvm": lambda: _edgekit(case, Path(tmp) / "tvm", "tvm"),
        }
        for variant in variants:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    why = runs[variant]()
            except EdgekitError as exc:
                why = f"{type(exc).__name__}: {exc}"
                if "\n" in str(exc):
                    outcome.escaped[variant] = f"multi-line message: {str(exc)[:200]!r}"
            except Exception as exc:  # raw TVM and ORT fail this way; for edgekit it is a bug: counted
                why = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ''}"
                if variant.startswith("edgekit"):
                    outcome.escaped[variant] = why
            outcome.passed[variant] = not why
            if why:
                outcome.why[variant] = why[:300]
    return outcome


def _run_chunk(args: tuple[list[str], int, Sequence[str], Sequence[str]]) -> list[Outcome]:
    names, every, only, variants = args
    os.environ.setdefault("TVM_NUM_THREADS", "1")
    cases = {c.name: c for c in _cases(every, only)}
    return [run_case(cases[n], variants) for n in names]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="bench/conformance", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--every", type=int, default=2, help="run every N-th test, sorted by name (default 2)")
    parser.add_argument("--only", default="", help="comma-separated substrings of test names")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"subset of {','.join(VARIANTS)}")
    parser.add_argument("--jobs", type=int, default=1, help="worker processes (default 1)")
    parser.add_argument("--json", type=Path, help="also write every outcome as JSON to this file")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    variants = [v for v in args.variants.split(",") if v]
    if set(variants) - set(VARIANTS) or args.every < 1 or args.jobs < 1:
        parser.error(f"--variants from {','.join(VARIANTS)}; --every and --jobs at least 1")
    only = [o for o in args.only.split(",") if o]
    started = time.perf_counter()
    names = [c.name for c in _cases(args.every, only)]
    chunks = [names[i :: args.jobs] for i in range(args.jobs)]
    outcomes: list[Outcome] = []
    if args.jobs == 1:
        for i, name in enumerate(names):
            outcomes.extend(_run_chunk(([name], args.every, only, variants)))
            if not args.quiet:
                o = outcomes[-1]
                marks = " ".join(f"{v}={'ok' if o.passed[v] else 'FAIL'}" for v in variants)
                print(f"[{i + 1}/{len(names)}] {name}: {marks}", file=sys.stderr, flush=True)
    else:
        with ProcessPoolExecutor(args.jobs) as pool:
            for chunk in pool.map(_run_chunk, [(c, args.every, only, variants) for c in chunks]):
                outcomes.extend(chunk)
    total = time.perf_counter() - started
    report(outcomes, variants, total)
    if args.json:
        args.json.write_text(
            json.dumps({"every": args.every, "seconds": round(total, 1), "outcomes": [asdict(o) for o in outcomes]}, indent=1)
        )
    return 0


def report(outcomes: list[Outcome], variants: Sequence[str], seconds: float) -> None:
    n = len(outcomes)
    print(f"{n} ONNX node tests, {seconds:.0f} s")
    passed = {v: sum(o.passed[v] for o in outcomes) for v in variants}
    for v in variants:
        print(f"  {v:12s} {passed[v]:5d} / {n} = {passed[v] / n:.1%}" if n else f"  {v}: no tests")
    if "ort" in variants:
        ort_ok = [o for o in outcomes if o.passed["ort"]]
        for v in (x for x in variants if x.startswith("edgekit")):
            kept = sum(o.passed[v] for o in ort_ok)
            print(f"  {v} passes {kept} / {len(ort_ok)} of the tests ORT alone passes = {kept / max(1, len(ort_ok)):.1%}")
            lost = Counter(o.why[v].split(":")[0] for o in ort_ok if not o.passed[v])
            if lost:
                print(f"    failing where ORT passes, by kind: {dict(lost.most_common(8))}")
                for o in [o for o in ort_ok if not o.passed[v]][:15]:
                    print(f"      {o.test}: {o.why[v][:160]}")
    escaped = [(o.test, v, e) for o in outcomes for v, e in o.escaped.items()]
    print(f"  exceptions that escaped edgekit (not an EdgekitError, or not one line): {len(escaped)}")
    for test, v, e in escaped[:20]:
        print(f"    {test} [{v}]: {e}")


if __name__ == "__main__":
    sys.exit(main())
