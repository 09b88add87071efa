"""ONNX Runtime runner (CPU execution provider). See docs/compile.md (the runtime a device needs)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.errors import ArtifactError, InferenceError
from edgekit.manifest import TensorSpec
from edgekit.runtime.backend_runner import Runner
from edgekit.runtime.sequences import as_value

__all__ = ["OrtRunner"]


class OrtRunner(Runner):
    backend = "onnxruntime"

    def __init__(
        self,
        entry: Path,
        inputs: Sequence[TensorSpec],
        outputs: Sequence[TensorSpec],
        threads: int = 0,
        optimization: str = "none",
        session: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(entry, inputs, outputs)
        import onnxruntime as ort

        self.settings = _settings(entry, session or {}, threads)
        """The session options applied: the device profile's (``backend.options.session`` in the manifest), with
        ``threads`` > 0 in place of its intra-op threads."""
        opts = ort.SessionOptions()
        # The artifact is already optimised; don't redo (or undo) it at load time — but for what its manifest
        # leaves to the device ('all': layout transforms for the CPU that runs it).
        opts.graph_optimization_level = (
            ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimization == "all" else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        )
        opts.intra_op_num_threads = self.settings["intraOpThreads"]
        opts.inter_op_num_threads = self.settings["interOpThreads"]
        parallel = self.settings["executionMode"] == "parallel"
        opts.execution_mode = ort.ExecutionMode.ORT_PARALLEL if parallel else ort.ExecutionMode.ORT_SEQUENTIAL
        opts.enable_mem_pattern = self.settings["memoryPattern"]
        opts.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(entry), sess_options=opts, providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise ArtifactError(f"{entry}: ONNX Runtime cannot load the model: {exc}") from exc
        self._names = [o.name for o in self.session.get_outputs()]

    def _run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        outs: list[Any] = self.session.run(self._names, feeds)
        for out in outs:
            if type(out) is not np.ndarray:
                break
        else:
            return outs  # tensors, as ONNX Runtime returns them: nothing to convert
        for name, out in zip(self._names, outs, strict=True):
            if out is None:  # an optional output the model left empty on these inputs
                raise InferenceError(f"output '{name}' is an empty optional on these inputs; an artifact's outputs are tensors")
        return [as_value(o) for o in outs]  # a sequence output: a list of arrays


def _settings(entry: Path, session: Mapping[str, Any], threads: int) -> dict[str, Any]:
    """The manifest's session options checked (ArtifactError in one line naming the field), ``threads`` applied."""
    out: dict[str, Any] = {}
    for key in ("intraOpThreads", "interOpThreads"):
        value = session.get(key, 0)
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 256:
            raise ArtifactError(f"{entry}: manifest backend.options.session.{key} must be 0-256 threads, not {value!r}")
        out[key] = value
    if threads > 0:
        out["intraOpThreads"] = threads
    mode = session.get("executionMode", "sequential")
    if mode not in ("sequential", "parallel"):
        raise ArtifactError(
            f"{entry}: manifest backend.options.session.executionMode must be sequential or parallel, not {mode!r}"
        )
    out["executionMode"] = mode
    pattern = session.get("memoryPattern", True)
    if not isinstance(pattern, bool):
        raise ArtifactError(f"{entry}: manifest backend.options.session.memoryPattern must be true or false, not {pattern!r}")
    out["memoryPattern"] = pattern
    return out
