"""ONNX's own backend node tests through ``edgekit.compile`` + ``edgekit.load``, beside ONNX Runtime alone and raw TVM.

    python -m bench.conformance [--every 2] [--jobs 1] [--only gather,topk] [--json out.json]

Each test (``onnx.backend.test.case.node.collect_testcases``) ships a one-node model, inputs and expected
outputs. ONNX's own writer (``onnx.backend.test.cmd_tools.generate_data``) writes each test as ONNX lays it out
(``model.onnx``, ``test_data_set_N/input_*.pb`` and ``output_*.pb``), and every variant reads those files back with
ONNX's runner's own reader (``Runner._load_proto``), on this host (x86_64 profile):

- **ORT via ONNX's runner** (``ort-runner``, the anchor): ``onnxruntime.backend`` fed exactly as
  ``onnx.backend.test.runner`` feeds a backend from a test's folder (``is_compatible``, ``prepare(model, "CPU")``,
  ``run`` on the inputs in order), compared by its ``assert_similar_outputs`` with the test's rtol/atol;
- **ORT alone**: an ``onnxruntime.InferenceSession`` on the model, inputs by name;
- **raw TVM**: the Relax ONNX frontend, ``tvm.compile`` for ``llvm``, the Relax VM;
- **edgekit default**: ``edgekit.compile`` with the default pipeline and the test's inputs and expected outputs as
  ``samples``, then ``edgekit.load(...).predict``;
- **edgekit tvm**: the same with ``backend="tvm"``.

A test passes when every output matches the expected one the way ONNX's runner checks it
(``Runner.assert_similar_outputs``: count, shape, dtype, then ``assert_allclose`` with the test's own rtol/atol).
edgekit's passes are reported as a share of the anchor's (goal: at least 99 %), and edgekit's TVM backend's beside
raw TVM's (goal: at least as many).
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
from types import SimpleNamespace
from typing import Any

import numpy as np

VARIANTS = ("ort-runner", "ort", "tvm-raw", "edgekit", "edgekit-tvm")
ANCHOR = "ort-runner"


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


@dataclass(frozen=True)
class Data:
    """A test as ONNX's runner reads it from its folder: the model and each data set's inputs and expected outputs."""

    folder: Path
    model: Any
    sets: list[tuple[list[Any], list[Any]]]


def write_and_read(case: Any, root: Path) -> Data:
    """``case`` written by ONNX's own writer (``generate_data``) under ``root``, then read back as its runner reads it."""
    import glob

    import onnx
    from onnx.backend.test import cmd_tools
    from onnx.backend.test.runner import Runner

    # ONNX's writer writes every test its collector gives: give it this one.
    saved = cmd_tools.model_test  # type: ignore[attr-defined]
    cmd_tools.model_test = SimpleNamespace(collect_testcases=lambda: [case])  # type: ignore[attr-defined,assignment]
    try:
        cmd_tools.generate_data(argparse.Namespace(output=str(root)))
    finally:
        cmd_tools.model_test = saved  # type: ignore[attr-defined]
    folder = root / case.kind / case.name
    model = onnx.load(str(folder / "model.onnx"))
    sets = []
    for data_dir in sorted(glob.glob(str(folder / "test_data_set*"))):  # the runner's own loop
        inputs: list[Any] = []
        for i in range(len(glob.glob(os.path.join(data_dir, "input_*.pb")))):
            Runner._load_proto(None, os.path.join(data_dir, f"input_{i}.pb"), inputs, model.graph.input[i].type)  # type: ignore[arg-type]
        outputs: list[Any] = []
        for i in range(len(glob.glob(os.path.join(data_dir, "output_*.pb")))):
            Runner._load_proto(None, os.path.join(data_dir, f"output_{i}.pb"), outputs, model.graph.output[i].type)  # type: ignore[arg-type]
        sets.append((inputs, outputs))
    return Data(folder, model, sets)


def _matches(got: Sequence[Any], want: Sequence[Any], rtol: float, atol: float) -> str:
    """'' when ``got`` matches ``want`` as ONNX's runner checks it (``Runner.assert_similar_outputs``), else why not."""
    from onnx.backend.test.runner import Runner

    try:
        Runner.assert_similar_outputs(want, list(got), rtol=rtol, atol=atol)
    except (AssertionError, TypeError, ValueError, AttributeError, IndexError) as exc:
        lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
        return " ".join(lines[:2])[:200] or type(exc).__name__
    return ""


def _inputs(data: Data, values: list[Any]) -> dict[str, Any]:
    inits = {i.name for i in data.model.graph.initializer}
    names = [i.name for i in data.model.graph.input if i.name not in inits]
    return dict(zip(names, values, strict=False))


def _ort_runner(case: Any, data: Data) -> str:
    """onnxruntime.backend, fed as ``onnx.backend.test.runner`` feeds a backend from a test's folder."""
    import onnxruntime.backend as backend

    if not backend.is_compatible(data.model):
        return "skipped: not compatible with the backend"
    prepared = backend.prepare(data.model, "CPU")
    for inputs, ref_outputs in data.sets:
        why = _matches(list(prepared.run(inputs)), ref_outputs, case.rtol, case.atol)
        if why:
            return why
    return ""


def _ort(case: Any, data: Data) -> str:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 4
    session = ort.InferenceSession(data.model.SerializeToString(), sess_options=opts, providers=["CPUExecutionProvider"])
    for inputs, ref_outputs in data.sets:
        why = _matches(session.run(None, _inputs(data, inputs)), ref_outputs, case.rtol, case.atol)
        if why:
            return why
    return ""


def _tvm_raw(case: Any, data: Data) -> str:
    import tvm
    from tvm import relax
    from tvm.relax.frontend.onnx import from_onnx

    with contextlib.redirect_stdout(io.StringIO()):
        mod = from_onnx(data.model, keep_params_in_input=False)
    vm = relax.VirtualMachine(tvm.compile(mod, target="llvm"), tvm.cpu())
    for inputs, ref_outputs in data.sets:
        feeds = _inputs(data, inputs)
        out = vm["main"](*[tvm.runtime.tensor(np.asarray(v)) for v in feeds.values()])
        items = [out] if hasattr(out, "numpy") else list(out)
        why = _matches([np.asarray(o.numpy()) for o in items], ref_outputs, case.rtol, case.atol)
        if why:
            return why
    return ""


def _edgekit(case: Any, data: Data, work: Path, backend: str | None) -> str:
    import edgekit

    work.mkdir(parents=True, exist_ok=True)
    model = data.folder / "model.onnx"
    samples: dict[str, Any] = {}
    outputs = [o.name for o in data.model.graph.output]
    inputs, ref_outputs = data.sets[0]  # one data set: the model's shapes are fixed by it
    for name, value in _inputs(data, inputs).items():  # one sample: a tensor stacked, a sequence in a list of one
        samples[name] = value[None] if isinstance(value, np.ndarray) else [value] if isinstance(value, list) else value
    for name, value in zip(outputs, ref_outputs, strict=False):
        if name not in samples and isinstance(value, (np.ndarray, list)):
            samples[name] = value[None] if isinstance(value, np.ndarray) else [value]
    result = edgekit.compile(model, "x86_64", work / "build", backend=backend, samples=samples, use_cache=False, name=case.name)
    loaded = edgekit.load(result.artifact_dir)
    for inputs, ref_outputs in data.sets:
        why = _matches(loaded.predict(_inputs(data, inputs)), ref_outputs, case.rtol, case.atol)
        if why:
            return why
    return ""


def run_case(case: Any, variants: Sequence[str]) -> Outcome:
    from edgekit.errors import EdgekitError

    outcome = Outcome(case.name)
    with tempfile.TemporaryDirectory(prefix="edgekit-conformance-") as tmp:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            data = write_and_read(case, Path(tmp) / "onnx")
        runs: dict[str, Callable[[], str]] = {
            "ort-runner": lambda: _ort_runner(case, data),
            "ort": lambda: _ort(case, data),
            "tvm-raw": lambda: _tvm_raw(case, data),
            "edgekit": lambda: _edgekit(case, data, Path(tmp) / "default", None),
            "edgekit-tvm": lambda: _edgekit(case, data, Path(tmp) / "tvm", "tvm"),
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
    for anchor in (a for a in (ANCHOR, "ort") if a in variants):
        anchor_ok = [o for o in outcomes if o.passed[anchor]]
        for v in (x for x in variants if x.startswith("edgekit")):
            kept = sum(o.passed[v] for o in anchor_ok)
            goal = " (goal >= 99 %)" if anchor == ANCHOR else ""
            print(
                f"  {v} passes {kept} / {len(anchor_ok)} of the tests {anchor} passes = {kept / max(1, len(anchor_ok)):.1%}{goal}"
            )
            lost = Counter(o.why[v].split(":")[0] for o in anchor_ok if not o.passed[v])
            if lost and anchor == ANCHOR:
                print(f"    failing where {anchor} passes, by kind: {dict(lost.most_common(8))}")
                for o in [o for o in anchor_ok if not o.passed[v]][: 25 if v == "edgekit" else 0]:  # TVM: raw TVM's
                    print(f"      {o.test}: {o.why[v][:160]}")
    if "tvm-raw" in variants and "edgekit-tvm" in variants:
        raw_ok = [o for o in outcomes if o.passed["tvm-raw"]]
        kept = sum(o.passed["edgekit-tvm"] for o in raw_ok)
        print(
            f"  edgekit-tvm passes {passed['edgekit-tvm']} vs raw TVM's {passed['tvm-raw']} (goal >=); "
            f"of raw TVM's passes it keeps {kept} / {len(raw_ok)}"
        )
        for o in [o for o in raw_ok if not o.passed["edgekit-tvm"]][:15]:
            print(f"      {o.test}: {o.why['edgekit-tvm'][:160]}")
    escaped = [(o.test, v, e) for o in outcomes for v, e in o.escaped.items()]
    print(f"  exceptions that escaped edgekit (not an EdgekitError, or not one line): {len(escaped)}")
    for test, v, e in escaped[:20]:
        print(f"    {test} [{v}]: {e}")


if __name__ == "__main__":
    sys.exit(main())
