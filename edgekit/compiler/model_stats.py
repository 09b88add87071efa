"""FLOPs (multiply-accumulates) and parameter counts of an ONNX graph, counted by ``onnx-tool``.

Recorded in the manifest for the source and each candidate (pruning lowers both). ``None`` when
onnx-tool is not installed or can't follow the graph (ai.onnx.ml ops, say): a count is a report,
never a reason to fail a compile.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings

import onnx

__all__ = ["model_stats"]

log = logging.getLogger(__name__)


def model_stats(model: onnx.ModelProto) -> tuple[int | None, int | None]:
    """(MACs of one run, parameters) of ``model`` with its static input shapes, or (None, None)."""
    try:
        import onnx_tool
    except ImportError:
        return None, None
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            copy = onnx.ModelProto()
            copy.CopyFrom(model)
            graph = onnx_tool.Model(copy).graph
            graph.shape_infer()
            graph.profile()
        return int(sum(graph.macs)), int(graph.params)
    except Exception as exc:  # onnx-tool raises what its op handlers raise; a count is only a report
        log.info("onnx-tool cannot count this graph: %s", exc)
        return None, None
