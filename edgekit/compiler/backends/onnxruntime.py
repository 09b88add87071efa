"""ONNX Runtime backend: an offline graph-optimised ONNX file."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import ValidationError

from edgekit.compiler.backends.backend import Backend, BackendOptions, Built, UnsupportedOp
from edgekit.compiler.frontends.frontend import SourceModel
from edgekit.compiler.measurement import fewer_threads, host_description, sample_inputs
from edgekit.deps import package_version
from edgekit.errors import CompilationError, last_line
from edgekit.manifest import CpuRequirement
from edgekit.profiles import DeviceProfile
from edgekit.progress import Progress
from edgekit.runtime.cpu_features import host_features

__all__ = ["OnnxRuntimeBackend", "OrtOptions"]

_LEVELS = {"none": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED", "all": "ORT_ENABLE_ALL"}
_NOT_IMPL = re.compile(r"Could not find an implementation for (\w+)\((\d+)\) node with name '([^']*)'")
_NOT_REGISTERED = re.compile(r"([\w.]+):(\w+)\((-?\d+)\) is not a registered function/op")


class OrtOptions(BackendOptions):
    """``options`` of an onnxruntime candidate in a pipeline file."""

    optimization: Literal["none", "basic", "extended", "all"] = "extended"
    threads: Literal["profile", "measure"] = "measure"
    """'measure': where this host is the profile's CPU (its arch and flags, as many cores as the profile's threads)
    and the profile leaves ``intraOpThreads`` unset, time the artifact at one thread and at the profile's count and
    record the faster (one thread wins only clearly; see :func:`edgekit.compiler.measurement.fewer_threads`).
    'profile': the profile's threads as they are."""

    @classmethod
    def invalid(cls, name: str, value: Any, exc: ValidationError, backend: str) -> str:
        allowed = sorted(_LEVELS) if name == "optimization" else ["measure", "profile"]
        return f"onnxruntime option '{name}' must be one of {allowed}, got '{value}'"


class OnnxRuntimeBackend(Backend[OrtOptions]):
    name = "onnxruntime"
    portable = True  # an ONNX file runs wherever ONNX Runtime does: measured here as built

    def version(self) -> str:
        return package_version("onnxruntime")

    def unsupported_ops(self, source: SourceModel, profile: DeviceProfile) -> list[UnsupportedOp]:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        opts.log_severity_level = 3
        try:
            ort.InferenceSession(str(source.onnx_path), sess_options=opts, providers=["CPUExecutionProvider"])
        except Exception as exc:
            text = str(exc)
            found = [(m.group(1), m.group(3), f"opset {m.group(2)}") for m in _NOT_IMPL.finditer(text)]
            for m in _NOT_REGISTERED.finditer(text):
                domain, op = m.group(1), m.group(2)
                nodes = [n.name or "(unnamed)" for n in source.model.graph.node if n.op_type == op and n.domain == domain]
                found.append((f"{domain}.{op}", ", ".join(nodes) or "?", "not a registered op in ONNX Runtime"))
            if found:
                return found
            raise CompilationError(f"ONNX Runtime cannot load the model: {last_line(exc, first=True)}") from exc
        return []

    def parse_options(self, options: Mapping[str, Any], profile: DeviceProfile) -> OrtOptions:
        return OrtOptions.parse(options, self.name)

    def compile(
        self,
        source: SourceModel,
        profile: DeviceProfile,
        options: OrtOptions,
        out_dir: Path,
        progress: Progress,
        *,
        for_host: bool = False,
    ) -> Built:
        import onnxruntime as ort

        level: str = options.optimization
        notes = []
        details: dict[str, Any] = {}
        cpu = CpuRequirement(arch=profile.machine, cpu="any")
        if level == "all":
            if profile.host_cpu and not for_host:
                # Level 'all' writes com.microsoft.nchwc layouts blocked for this CPU's vector width (8 floats
                # with AVX2, 16 with AVX-512): right here, wrong on a CPU of another width. Only a build for this host bakes it.
                cpu = CpuRequirement(arch=profile.machine, cpu="host", features=host_features(), host_specific=True)
            else:
                level = "extended"
                details["loadOptimization"] = "all"
                notes.append(
                    "optimization 'all' lays tensors out for the compiling CPU's vectors; the artifact holds 'extended' "
                    "and ONNX Runtime applies 'all' when the device loads it, for the device's CPU"
                )
        progress(f"onnxruntime: optimising graph ({level})")
        out_dir.mkdir(parents=True, exist_ok=True)
        opts = ort.SessionOptions()
        opts.graph_optimization_level = getattr(ort.GraphOptimizationLevel, _LEVELS[level])
        opts.optimized_model_filepath = str(out_dir / "model.onnx")
        opts.log_severity_level = 3
        try:
            ort.InferenceSession(str(source.onnx_path), sess_options=opts, providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise CompilationError(f"ONNX Runtime failed to optimise the model: {last_line(exc, first=True)}") from exc
        # The device's session options (threads, execution mode, memory pattern): the measurement runs with them, the
        # manifest records them and the runtime applies them on the device.
        session = profile.onnxruntime.resolved(profile.cores)
        if options.threads == "measure":
            count, why = _measurable_threads(profile, session["intraOpThreads"])
            if count:
                progress(f"onnxruntime: timing 1 against {count} intra-op threads on this host (the profile's CPU)")
                session, details["threadTiming"] = _measure_threads(out_dir / "model.onnx", source, details, session, count)
            elif why:
                details["threadTiming"] = {"chosen": session["intraOpThreads"], "notMeasured": why}
        details["session"] = session
        return Built(
            files=["model.onnx"], entry="model.onnx", details={"optimization": level, **details, "notes": notes}, cpu=cpu
        )


def _measurable_threads(profile: DeviceProfile, threads: int) -> tuple[int, str]:
    """The profile's intra-op thread count to time against one thread here, or 0 and why not ('' for nothing to say:
    the profile sets the threads itself, or gives one)."""
    if profile.onnxruntime.intra_op_threads or threads == 1:
        return 0, ""
    if not profile.runs_on_host():
        return 0, f"this host ({host_description()}) is not the profile's CPU: its threads, untimed"
    try:
        here = len(os.sched_getaffinity(0))
    except AttributeError:  # no sched_getaffinity (macOS)
        here = os.cpu_count() or 1
    if threads == 0:  # no cores in the profile: ONNX Runtime's default, one per core; timed only on the host's own
        if profile.host_cpu:
            return here, ""
        return 0, "the profile gives no cores: ONNX Runtime's default threads, untimed"
    if threads != here:
        return 0, f"this host has {here} cores, the profile {threads}: its threads, untimed"
    return threads, ""


def _measure_threads(
    entry: Path, source: SourceModel, details: Mapping[str, Any], session: dict[str, Any], count: int
) -> tuple[dict[str, Any], dict[str, Any]]:
    """``session`` with the intra-op threads that ran ``entry`` faster here (1 or the profile's), and the figures."""
    from edgekit.runtime import runner_for

    def runner(threads: int) -> Any:
        options = {**details, "session": {**session, "intraOpThreads": threads}}
        return runner_for("onnxruntime", entry, source.inputs, [], options=options).predict

    feed = sample_inputs(source.inputs, 1, seed=0)[0]
    try:
        chosen, figures = fewer_threads({session["intraOpThreads"]: runner(session["intraOpThreads"]), 1: runner(1)}, feed)
    except Exception as exc:  # the measure phase reports what fails in running the model; here only the threads stay
        return session, {"chosen": session["intraOpThreads"], "notMeasured": f"timing failed: {last_line(exc)}"}
    figures["note"] = (
        f"timed on this host ({count} cores, the profile's CPU) at 1 and {count} intra-op threads; a device of another "
        "CPU may differ: set onnxruntime.intraOpThreads in the profile to fix them"
    )
    return {**session, "intraOpThreads": chosen}, figures
