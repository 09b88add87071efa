"""ONNX Runtime runner (CPU execution provider). See docs/compile.md (the runtime a device needs)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

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
    ) -> None:
        super().__init__(entry, inputs, outputs)
        import onnxruntime as ort

        opts = ort.SessionOptions()
        # The artifact is already optimised; don't redo (or undo) it at load time — but for what its manifest
        # leaves to the device ('all': layout transforms for the CPU that runs it).
        opts.graph_optimization_level = (
            ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimization == "all" else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        )
        opts.intra_op_num_threads = threads
        opts.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(entry), sess_options=opts, providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise ArtifactError(f"{entry}: ONNX Runtime cannot load the model: {exc}") from exc
        self._names = [o.name for o in self.session.get_outputs()]

    def _run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        outs = self.session.run(self._names, feeds)
        for name, out in zip(self._names, outs, strict=True):
            if out is None:  # an optional output the model left empty on these inputs
                raise InferenceError(f"output '{name}' is an empty optional on these inputs; an artifact's outputs are tensors")
        return [as_value(o) for o in outs]  # a sequence output: a list of arrays
