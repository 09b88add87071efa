"""The compile stage: frontends → backends → measured candidates → artifact."""

from __future__ import annotations

from edgekit.compiler.compile import CompileResult, compile_model
from edgekit.compiler.pipeline import Pipeline, load_pipeline

__all__ = ["CompileResult", "Pipeline", "compile_model", "load_pipeline"]
