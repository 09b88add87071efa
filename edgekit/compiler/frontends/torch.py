"""PyTorch frontend: a TorchScript file or an importable ``module:factory``, exported with torch.onnx."""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import inspect
import io
import itertools
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from edgekit.compiler.frontends.frontend import SourceModel
from edgekit.compiler.frontends.onnx import finish_onnx
from edgekit.deps import require
from edgekit.digests import file_sha256
from edgekit.errors import InputShapeError, ModelConversionError, ModelLoadError, last_line

__all__ = ["OPSET", "export_module", "load_torch"]

OPSET = 17
_MAX_TRIES = 16  # combinations of example inputs tried before forward()'s first error is the answer


def _load_module(spec: str) -> tuple[Any, str, str, int]:
    """(module, sha256, display path, size) for a TorchScript file or a factory spec."""
    torch = require("torch", "compiling a PyTorch model")
    path = Path(spec)
    if path.exists():
        if path.stat().st_size == 0:
            raise ModelLoadError(f"model file '{path}' is empty; re-save the model with torch.jit.script(model).save(path)")
        try:
            with warnings.catch_warnings():
                # torch >= 2.10 deprecates torch.jit.load; TorchScript files are still what users hand us.
                warnings.filterwarnings("ignore", message=r"`torch\.jit\.load` is deprecated", category=DeprecationWarning)
                module = torch.jit.load(str(path), map_location="cpu")
        except (RuntimeError, ValueError, OSError) as exc:
            raise ModelLoadError(
                f"'{path}' is not a TorchScript file ({str(exc).splitlines()[0][:200]}); save the model with "
                f"torch.jit.script(model).save(path) or torch.jit.trace(...), or pass a factory 'pkg.module:make_model'"
            ) from exc
        return module, file_sha256(path), str(path), path.stat().st_size
    if ":" not in spec:
        raise ModelLoadError(f"model file '{spec}' does not exist")
    mod_name, _, attr = spec.partition(":")
    if "" not in sys.path and str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    try:
        mod = importlib.import_module(mod_name)
        factory = getattr(mod, attr)
    except Exception as exc:  # importing runs the user's module: it may raise anything
        raise ModelLoadError(
            f"cannot import the model factory '{spec}': {type(exc).__name__}: {last_line(exc)}; fix the module, or check "
            "that it imports without side effects"
        ) from exc
    try:
        module = factory() if callable(factory) and not isinstance(factory, torch.nn.Module) else factory
    except Exception as exc:
        raise ModelLoadError(f"the model factory '{spec}' raised {type(exc).__name__}: {exc}") from exc
    if not isinstance(module, torch.nn.Module):
        raise ModelLoadError(f"the model factory '{spec}' returned {type(module).__name__}, not a torch.nn.Module")
    return module, "", spec, 0


def _forward_params(module: Any) -> list[str]:
    """Names of forward()'s positional parameters (empty when they can't be read)."""
    try:
        schema = getattr(getattr(module, "forward", None), "schema", None)
        if schema is not None:  # TorchScript
            return [a.name for a in schema.arguments[1:]]
        kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
        return [p.name for p in inspect.signature(module.forward).parameters.values() if p.kind in kinds]
    except (TypeError, ValueError, AttributeError, RuntimeError):
        return []


def _flatten(out: Any) -> list[Any]:
    """Tensors of a (nested) tuple/list/dict output, in the order torch.onnx.export flattens them."""
    if isinstance(out, (tuple, list)):
        return [t for o in out for t in _flatten(o)]
    if isinstance(out, dict):
        return [t for o in out.values() for t in _flatten(o)]
    return [out]


def load_torch(
    spec: str,
    workdir: Path,
    input_shapes: dict[str, list[int]] | None,
    examples: dict[str, list[np.ndarray]] | None = None,
) -> SourceModel:
    """``spec`` exported to ONNX. ``examples``: per input, arrays from the user's samples to trace with, tried in turn
    (the samples' dtypes: int64 token ids stay int64); inputs without them get float32 noise, or int64 zeros when
    forward() refuses floats (an ``nn.Embedding`` first)."""
    torch = require("torch", "compiling a PyTorch model")
    examples = dict(examples or {})
    if not input_shapes:
        raise InputShapeError(
            f"'{spec}': PyTorch models need their input shapes, e.g. --input-shape input:1,3,224,224 "
            f"(one per input, in the order forward() takes them)"
        )
    if "" in input_shapes:
        if len(input_shapes) != 1:
            raise InputShapeError(f"'{spec}': name every input when there are several: --input-shape NAME:D1,...")
        input_shapes = {"input": input_shapes[""]}
    module, sha, display, size = _load_module(spec)
    module.eval()
    params = _forward_params(module)
    if set(input_shapes) <= set(params):
        # Named after forward()'s parameters: bind by name, not by the order they were given in.
        input_shapes = {n: input_shapes[n] for n in sorted(input_shapes, key=params.index)}
        if list(input_shapes) != params[: len(input_shapes)]:
            raise InputShapeError(
                f"'{spec}': --input-shape names {list(input_shapes)}, but forward() takes {params}; inputs are passed "
                f"by position, so give shapes for the first {params.index(list(input_shapes)[-1]) + 1} parameters"
            )
    names = list(input_shapes)
    workdir.mkdir(parents=True, exist_ok=True)
    example, n_out = _first_that_runs(module, spec, names, _example_choices(input_shapes, examples))
    input_shapes = {n: list(t.shape) for n, t in zip(names, example, strict=True)}
    data = export_module(module, example, names, n_out, spec)
    model = onnx.load_from_string(data)
    if not sha:
        sha = hashlib.sha256(data).hexdigest()
    source = finish_onnx(
        model,
        workdir,
        input_shapes,
        where=display,
        path=display,
        fmt="torch",
        framework=f"torch {torch.__version__.split('+')[0]}",
        sha256=sha,
        size_bytes=size or len(data),
    )

    def reference(feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        with torch.no_grad():
            # ascontiguousarray makes a 0-d array 1-d: keep its shape
            out = module(*(torch.from_numpy(np.ascontiguousarray(feeds[n]).reshape(np.shape(feeds[n]))) for n in names))
        return [t.detach().cpu().numpy() for t in _flatten(out)]

    source.reference = reference
    source.reference_name = f"torch {torch.__version__.split('+')[0]} eager"
    if not isinstance(module, torch.jit.ScriptModule):
        source.module = module  # an eager module: pruning can use torch-pruning on it
    return source


def _example_choices(shapes: dict[str, list[int]], examples: dict[str, list[np.ndarray]]) -> list[tuple[np.ndarray, ...]]:
    """Example inputs to try, in order: each combination of the samples' readings (the likelier first), then, for
    inputs the samples don't give, float32 noise and int64 zeros."""
    rng = np.random.default_rng(0)
    per_input: list[list[np.ndarray]] = []
    for name, shape in shapes.items():
        given = examples.get(name)
        if given:  # numpy's float64 samples feed a float32 model as float32 (the samples are cast alike)
            given = [
                c for a in given for c in ([a.astype(np.float32), a] if a.dtype.kind == "f" and a.dtype != np.float32 else [a])
            ]
        per_input.append(given or [rng.standard_normal(shape).astype(np.float32), np.zeros(shape, np.int64)])
    combos = list(itertools.islice(itertools.product(*per_input), _MAX_TRIES))
    if len(combos) > 1 and not any(examples.get(n) for n in shapes):  # no samples: all float first, then all int64
        combos.sort(key=lambda c: sum(a.dtype.kind != "f" for a in c))
    return combos


def _first_that_runs(
    module: Any, spec: str, names: list[str], choices: list[tuple[np.ndarray, ...]]
) -> tuple[tuple[Any, ...], int]:
    """The first of ``choices`` that forward() takes, as tensors, and how many outputs it gives; else the first failure."""
    torch = require("torch", "compiling a PyTorch model")
    first: Exception | None = None
    for arrays in choices:
        example = tuple(torch.from_numpy(np.ascontiguousarray(a).reshape(np.shape(a))) for a in arrays)  # keep 0-d as 0-d
        try:
            with torch.no_grad():
                return example, len(_flatten(module(*example)))
        except Exception as exc:  # the model's own forward() failed on these inputs
            first = first or exc
    shapes = [list(a.shape) for a in choices[0]]
    raise ModelConversionError(
        f"'{spec}': forward() fails on inputs of shapes {shapes}: {_cause(first)} "
        f"(check --input-shape: one shape per forward() argument, in order; got {names})"
    ) from first


def _cause(exc: BaseException | None) -> str:
    """The line of a torch error that says what went wrong: TorchScript puts it last, under a traceback of its code."""
    text = str(exc).strip() if exc is not None else ""
    if not text:
        return type(exc).__name__
    lines = text.splitlines()
    return last_line(exc, 300) if exc is not None and "TorchScript interpreter" in lines[0] else lines[0][:300]


def export_module(module: Any, example: tuple[Any, ...], names: list[str], n_out: int, spec: str) -> bytes:
    """``module`` exported to ONNX (opset 17, TorchScript exporter) as bytes; ModelConversionError when it can't be."""
    torch = require("torch", "compiling a PyTorch model")
    output_names = ["output"] if n_out == 1 else [f"output_{i}" for i in range(n_out)]
    buf = io.BytesIO()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module,
                example,
                buf,
                input_names=names,
                output_names=output_names,
                opset_version=OPSET,
                dynamo=False,
                do_constant_folding=True,
            )
    except Exception as exc:  # torch raises many unrelated types here
        msg = last_line(exc, first=True)
        if "forward()" in msg or "positional argument" in msg:
            msg += f" (check that --input-shape gives one shape per forward() argument; got {names})"
        raise ModelConversionError(f"'{spec}': torch.onnx.export failed: {msg}") from exc
    return buf.getvalue()
