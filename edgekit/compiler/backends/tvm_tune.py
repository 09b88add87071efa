"""MetaSchedule tuning for the TVM backend, with a tuning database that outlives the compile.

Untuned TVM on a CPU runs naive loops (measured: 10-20x slower than ONNX Runtime on a small CNN). Tuning
searches schedules for every fused operator by building and timing them on this machine; the best
ones go into a database (MetaSchedule's JSON format: ``database_workload.json`` +
``database_tuning_record.json``) keyed by the operator's structure and the target. The database is kept
under edgekit's cache per target, so the next compile of this or any model that shares an operator
starts from what was found (``trials: 0`` only applies it). With ``prepack`` the weights are stored in
the layout the tuned kernels read (folded at compile time: the artifact's interface does not change).

Tuning measures on the machine that tunes, so it is refused for targets this host can't run (a
foreign architecture or CUDA): their schedules must be timed on the device.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edgekit.errors import CompilationError, ConfigError, first_problem, last_line, reject_unknown_keys
from edgekit.progress import Progress
from edgekit.resources import cache_dir

__all__ = ["TuneOptions", "TuningReport", "database_dir", "parse_tune_options", "trials_shorthand", "tune_and_apply"]

RECORDS = "database_tuning_record.json"
WORKLOADS = "database_workload.json"


class TuneOptions(BaseModel):
    """``options.tune`` of a tvm candidate in a pipeline file."""

    model_config = ConfigDict(extra="forbid")

    trials: int = Field(ge=0, description="schedules to build and time in all; 0 = only apply the database")
    trials_per_task: int | None = Field(default=None, ge=1, description="default: trials spread evenly over the tasks")
    prepack: bool = True
    strategy: Literal["evolutionary", "replay-trace"] = "evolutionary"
    database: str | None = Field(default=None, description="folder of the tuning database; default: per target in the cache")
    seed: int = 0


class TuningReport(BaseModel):
    """What tuning did, for the manifest's backend details."""

    trials: int
    tasks: int
    trials_per_task: int
    records_before: int
    records_after: int
    strategy: str
    prepack: bool
    database: str


def trials_shorthand(value: Any) -> Any:
    """``tune: 50`` means ``tune: {trials: 50}``."""
    return {"trials": value} if isinstance(value, int) and not isinstance(value, bool) else value


def parse_tune_options(value: Any) -> TuneOptions:
    value = trials_shorthand(value)
    if isinstance(value, dict):
        reject_unknown_keys(value, TuneOptions.model_fields, "tvm option 'tune'")
    try:
        return TuneOptions.model_validate(value)
    except ValidationError as exc:
        raise ConfigError(f"tvm option 'tune': {first_problem(exc)} (e.g. tune: {{trials: 200}})") from None


def database_dir(target: dict[str, Any], options: TuneOptions) -> Path:
    """The tuning database's folder: ``options.database`` or one per target under edgekit's cache."""
    if options.database:
        return Path(options.database).expanduser()
    key = hashlib.sha256(json.dumps(target, sort_keys=True).encode()).hexdigest()[:16]
    return cache_dir() / "tuning" / f"{target.get('mcpu') or target.get('kind')}-{key}"


def _count_lines(path: Path) -> int:
    try:
        with path.open("rb") as fh:
            return sum(1 for line in fh if line.strip())
    except FileNotFoundError:
        return 0


def _helpers(ms: Any, progress: Progress, trials: int) -> tuple[Any, Any]:
    """An in-process builder and a progress callback for MetaSchedule.

    TVM's LocalBuilder starts a fresh pool of worker processes for every batch, and each worker
    imports ``tvm.s_tir.tensor_intrin`` (measured: 21 s on this 2-core machine) before building
    anything: that, not the search, was 90 % of a tuning run. Building in this process pays nothing
    of the kind; the builds of a batch run one after another.
    """
    from tvm.driver import build as tvm_build
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.builder.local_builder import default_export
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    @derived_object
    class InProcessBuilder(ms.builder.PyBuilder):  # type: ignore[misc]
        def build(self, build_inputs: list[Any]) -> list[Any]:
            results = []
            for item in build_inputs:
                try:
                    mod = RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(item.mod)
                    results.append(ms.builder.BuilderResult(default_export(tvm_build(mod, target=item.target)), None))
                except Exception as exc:  # a candidate that doesn't build is a failed trial, not a failed tune
                    results.append(ms.builder.BuilderResult(None, f"edgekit in-process builder: {last_line(exc)}"))
            return results

    @derived_object
    class ReportTrials(ms.measure_callback.PyMeasureCallback):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.done = 0

        def apply(self, task_scheduler: Any, task_id: int, candidates: list[Any], builds: list[Any], runs: list[Any]) -> None:
            if not candidates:
                return
            self.done += len(candidates)
            failed = sum(1 for b in builds if b.error_msg) + sum(1 for r in runs if r.error_msg)
            extra = f", {failed} failed to build or run" if failed else ""
            progress(f"tvm: tuning: {min(self.done, trials)}/{trials} trials measured (task {task_id}{extra})")

    return InProcessBuilder(), ReportTrials()


@contextlib.contextmanager
def _quiet_meta_schedule() -> Iterator[None]:
    """MetaSchedule logs every round's table; edgekit reports progress itself."""
    names = ["tvm.s_tir.meta_schedule", "tvm.meta_schedule"]
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _open_database(ms: Any, folder: Path) -> Any:
    """MetaSchedule's JSON database in ``folder`` (created if missing), or ConfigError naming the folder."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{os.getpid()}"
        probe.touch()
        probe.unlink()
    except OSError as exc:
        raise ConfigError(
            f"tuning database folder '{folder}' is not writable ({exc.strerror}); set tune.database to another folder"
        ) from None
    try:
        return ms.database.JSONDatabase(str(folder / WORKLOADS), str(folder / RECORDS), allow_missing=True)
    except Exception as exc:
        raise ConfigError(
            f"tuning database '{folder}' cannot be read ({last_line(exc)}); delete that folder or set tune.database to another one"
        ) from None


def tune_and_apply(
    tvm: Any, mod: Any, target: Any, target_dict: dict[str, Any], options: TuneOptions, progress: Progress
) -> tuple[Any, TuningReport]:
    """Tune ``mod`` for ``target`` (adding to the database), then apply the database's best schedules."""
    from tvm.relax import pipeline as relax_pipeline
    from tvm.relax import transform as rt
    from tvm.s_tir import meta_schedule as ms

    folder = database_dir(target_dict, options)
    records = folder / RECORDS
    database = _open_database(ms, folder)
    before = _count_lines(records)

    with target:
        prepare = [rt.DecomposeOpsForInference(), rt.CanonicalizeBindings(), relax_pipeline.zero_pipeline()]
        if options.prepack:
            prepare.append(rt.AttachAttrLayoutFreeBuffers())
        mod = tvm.transform.Sequential(prepare)(mod)

    tasks = ms.relax_integration.extract_tasks(mod, target)
    per_task = options.trials_per_task or max(1, math.ceil(options.trials / max(1, len(tasks))))
    if options.trials > 0 and tasks:
        progress(
            f"tvm: tuning {len(tasks)} task(s) with MetaSchedule, {options.trials} trials ({per_task} per task); "
            f"database {folder} ({before} records)"
        )
        try:
            builder, report_trials = _helpers(ms, progress, options.trials)
            with tempfile.TemporaryDirectory(prefix="edgekit-tune-") as logs, _quiet_meta_schedule():
                ms.relax_integration.tune_relax(
                    mod,
                    params={},
                    target=target,
                    work_dir=logs,
                    max_trials_global=options.trials,
                    max_trials_per_task=per_task,
                    num_trials_per_iter=min(64, per_task),
                    database=database,
                    builder=builder,
                    measure_callbacks=[*ms.measure_callback.MeasureCallback.create("default"), report_trials],
                    strategy=options.strategy,
                    seed=options.seed,
                )
        except Exception as exc:
            raise CompilationError(f"MetaSchedule tuning failed: {last_line(exc)}") from exc
    elif before == 0:
        progress(f"tvm: tune.trials is 0 and the database {folder} is empty: nothing to apply")

    try:
        with target, database:
            mod = rt.MetaScheduleApplyDatabase()(mod)
            if options.prepack:
                mod = tvm.transform.Sequential([rt.SplitLayoutRewritePreproc(), rt.LiftTransformParams(), rt.FoldConstant()])(mod)
    except Exception as exc:
        raise CompilationError(f"applying the tuning database '{folder}' failed: {last_line(exc)}") from exc
    report = TuningReport(
        trials=options.trials,
        tasks=len(tasks),
        trials_per_task=per_task,
        records_before=before,
        records_after=_count_lines(records),
        strategy=options.strategy,
        prepack=options.prepack,
        database=str(folder),
    )
    return mod, report
