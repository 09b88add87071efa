"""MetaSchedule tuning for the TVM backend, with a tuning database that outlives the compile.

Untuned TVM on a CPU runs naive loops (measured: 10-20x slower than ONNX Runtime on a small CNN). Tuning
searches schedules for every fused operator by building and timing them on this machine; the best
ones go into a database (MetaSchedule's JSON format: ``database_workload.json`` +
``database_tuning_record.json``) keyed by the operator's structure and the target. The database is kept
under edgekit's cache per target, so the next compile of this or any model that shares an operator
starts from what was found (``trials: 0`` only applies it). ``trials`` counts what the database already
holds: a task (fused operator) measured that often before is reused, not tuned again, so the second compile
of a model measures nothing new. ``minutes`` bounds a compile's tuning by the clock: when it is spent,
tuning stops where it is and what was found so far is applied; a task tuned under a budget at least as long
is reused by later compiles (the budgets are kept beside the database, in ``edgekit-budgets.json``). With
``prepack`` the weights are stored in the layout the tuned kernels read (folded at compile time: the
artifact's interface does not change).

Tuning measures on the machine that tunes, so it is refused for targets this host can't run (a
foreign architecture or CUDA): their schedules must be timed on the device.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import logging
import math
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from edgekit.clock import SYSTEM_CLOCK, Clock
from edgekit.errors import CompilationError, ConfigError, first_problem, last_line, reject_unknown_keys
from edgekit.progress import Progress
from edgekit.resources import cache_dir

__all__ = [
    "BUDGETS",
    "RECORDS",
    "WORKLOADS",
    "TuneOptions",
    "TuningReport",
    "database_dir",
    "parse_tune_options",
    "trials_shorthand",
    "tune_and_apply",
]

RECORDS = "database_tuning_record.json"
WORKLOADS = "database_workload.json"
log = logging.getLogger(__name__)

BUDGETS = "edgekit-budgets.json"  # per workload: the longest time budget (minutes) it was tuned under
PER_TASK_UNDER_BUDGET = 512  # trials per task when only ``minutes`` is given: the clock stops tuning first
# The tasks holding together less than this share of the model's arithmetic (a pool, a reshape, the classifier's
# small matmul) are light: tuned first, briefly — at most LIGHT_TRIALS trials each and, under a time budget, at most
# LIGHT_BUDGET_SHARE of it — and the rest goes to the others. Measured on the trained 3×32×32 CNN (quiet, 1 thread):
# TVM's default schedules for its five light tasks (scalar loops) ran 5.7 µs of a 60 µs tuned model; 16 trials each
# (~1 s a task once MetaSchedule runs) cut them to ~2 µs and the model to 56.8 µs against 60.5 (ORT: 62.4). Tuned
# alongside the convolutions (99.5 % of the arithmetic) each cost a full search of the budget's first round: under
# load, most of a few-minute budget before the convolutions got their first trials.
LIGHT_SHARE = 0.01
LIGHT_TRIALS = 16
LIGHT_BUDGET_SHARE = 0.1
# The evolutionary search under a time budget: 128 schedules evolved over 2 generations (MetaSchedule's defaults:
# 512 over 4). Each batch's search samples, mutates and scores that population, and on a 2-core host it, not the
# trials, is most of a budget: the trained CNN's convolutions, 3 minutes at load ~10, got 128 trials with it and 32
# with the defaults (the first batch alone 126 s against 259 s). A trial budget alone keeps the defaults.
BUDGET_POPULATION = 128
BUDGET_GENERATIONS = 2
CLOCK: Clock = SYSTEM_CLOCK  # what the time budget reads (tests drive a FakeClock through it)


class TuneOptions(BaseModel):
    """``options.tune`` of a tvm candidate in a pipeline file."""

    model_config = ConfigDict(extra="forbid")

    trials: int | None = Field(
        default=None,
        ge=0,
        description="schedules each model should have been measured with in all, counting what the database holds; "
        "0 = only apply the database; default with minutes: as many as the time allows",
    )
    minutes: float | None = Field(default=None, gt=0, description="time budget of one compile's tuning")
    trials_per_task: int | None = Field(default=None, ge=1, description="default: trials spread evenly over the tasks")
    prepack: bool = True
    strategy: Literal["evolutionary", "replay-trace"] = "evolutionary"
    database: str | None = Field(default=None, description="folder of the tuning database; default: per target in the cache")
    seed: int = 0

    @model_validator(mode="after")
    def _trials_or_minutes(self) -> TuneOptions:
        if self.trials is None and self.minutes is None:
            raise ValueError("give trials or minutes (e.g. tune: {trials: 200} or tune: {minutes: 10})")
        return self


class TuningReport(BaseModel):
    """What tuning did, for the manifest's backend details."""

    trials: int | None  # asked for (None: as many as the time budget allows)
    minutes: float | None = None  # the time budget
    tasks: int
    trials_per_task: int
    measured: int = 0  # trials this compile measured
    tasks_tuned: int = 0
    tasks_reused: int = 0  # tasks the database already had enough of: not tuned again
    tasks_unmeasured: int = 0  # tasks with no measured schedule at all (a budget spent before them): TVM's defaults
    tasks_light: int = 0  # tasks under LIGHT_SHARE of the model's arithmetic: tuned first, at most LIGHT_TRIALS each
    stopped: Literal["trials", "time", "reused", "apply-only"] = "trials"
    seconds: float = 0.0  # spent tuning (the clock the budget reads)
    best_ms: float | None = None  # MetaSchedule's estimate of the model's latency: its tasks' best, weighted
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


_BUDGET_SPENT = "edgekit: the tuning time budget is spent"


class _OutOfTime(Exception):
    """Raised from the measure callback to stop MetaSchedule when the time budget is spent."""


@dataclass
class _Task:
    """One extracted task (a fused operator) and what the database knew of it before this compile."""

    name: str
    weight: float
    mod: Any
    had: int  # records in the database
    best_ms: float | None  # its best measured run, from the database
    shash: str | None
    need: int = 0  # trials this compile measures
    measured: int = 0
    extracted: Any = None  # MetaSchedule's extracted task
    flops: float | None = 0.0  # its arithmetic per model run (FLOPs × weight; None: uncounted): heaviest tuned first
    light: bool = False  # under LIGHT_SHARE of the model's arithmetic: tuned first, briefly


@dataclass
class _Run:
    """The state one tuning run shares between the builder, the measure callback and the report."""

    tasks: list[_Task]  # the tasks being tuned now, in MetaSchedule's task-id order
    everything: list[_Task]  # every task of the model
    progress: Progress
    total: int | None  # trials asked of this run (None: as many as time allows)
    started: float
    deadline: float | None
    phase_end: float | None = None  # the light tasks' share of the budget ends here
    done: int = 0
    out_of_time: bool = False
    failed: int = 0
    notes: list[str] = field(default_factory=list)

    def spent(self) -> bool:
        now = CLOCK.monotonic()
        return any(end is not None and now >= end for end in (self.deadline, self.phase_end))

    def best_ms(self) -> float | None:
        """The model's latency as MetaSchedule estimates it: each task's best run times its weight, summed (None
        while a heavy task has none; a light task with none adds nothing — it runs TVM's default schedule)."""
        if not self.everything or any(t.best_ms is None for t in self.everything if not t.light):
            return None
        return sum(t.weight * (t.best_ms or 0.0) for t in self.everything)

    def report(self, task_id: int, runs: Sequence[Any], failed: int) -> None:
        task = self.tasks[task_id]
        self.done += len(runs)
        task.measured += len(runs)
        self.failed += failed
        for r in runs:
            secs = [float(x) for x in (r.run_secs or [])]
            if secs and not r.error_msg:
                ms = 1e3 * sum(secs) / len(secs)
                task.best_ms = ms if task.best_ms is None else min(task.best_ms, ms)
        count = f"{min(self.done, self.total)}/{self.total}" if self.total is not None else f"{self.done}"
        extra = f", {failed} failed to build or run" if failed else ""
        known = [t for t in self.everything if t.best_ms is not None]
        best = sum(t.weight * (t.best_ms or 0.0) for t in known)
        some = f" ({len(known)} of {len(self.everything)} tasks timed)" if len(known) < len(self.everything) else ""
        tail = f"; best so far {best:.4f} ms{some}" if known else ""
        if self.deadline is not None:
            tail += f"; {CLOCK.monotonic() - self.started:.0f}/{self.deadline - self.started:.0f} s"
        self.progress(f"tvm: tuning: {count} trials measured (task {task_id} {task.name}{extra}){tail}")


def _helpers(ms: Any, run: _Run) -> tuple[Any, Any]:
    """An in-process builder and a progress callback for MetaSchedule; both stop tuning when the time budget is spent.

    TVM's LocalBuilder starts a fresh pool of worker processes for every batch, and each worker
    imports ``tvm.s_tir.tensor_intrin`` (measured: 21 s on this 2-core machine) before building
    anything: that, not the search, was 90 % of a tuning run. Building in this process pays nothing
    of the kind; the builds of a batch run one after another. Once the budget is spent the builder
    skips what is left and the callback (first in line, before the database records the batch) stops
    MetaSchedule at the next batch holding skipped builds.
    """
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.builder.local_builder import default_export
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock
    from tvm.tirx import build as tvm_build  # not tvm.driver.build: deprecated, it warns on every trial

    @derived_object
    class InProcessBuilder(ms.builder.PyBuilder):  # type: ignore[misc]
        def build(self, build_inputs: list[Any]) -> list[Any]:
            results = []
            for item in build_inputs:
                if run.spent():
                    results.append(ms.builder.BuilderResult(None, _BUDGET_SPENT))
                    continue
                try:
                    mod = RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(item.mod)
                    results.append(ms.builder.BuilderResult(default_export(tvm_build(mod, target=item.target)), None))
                except Exception as exc:  # a candidate that doesn't build is a failed trial, not a failed tune
                    results.append(ms.builder.BuilderResult(None, f"edgekit in-process builder: {last_line(exc)}"))
            return results

    @derived_object
    class ReportTrials(ms.measure_callback.PyMeasureCallback):  # type: ignore[misc]
        def apply(self, task_scheduler: Any, task_id: int, candidates: list[Any], builds: list[Any], runs: list[Any]) -> None:
            if not candidates:
                return
            if any(b.error_msg == _BUDGET_SPENT for b in builds):
                run.out_of_time = True
                for b in builds:  # the database's callbacks (which would remove them) don't see this batch
                    if b.artifact_path:
                        shutil.rmtree(os.path.dirname(str(b.artifact_path)), ignore_errors=True)
                raise _OutOfTime(_BUDGET_SPENT)
            failed = sum(1 for b in builds if b.error_msg) + sum(1 for r in runs if r.error_msg)
            for why in [b.error_msg for b in builds if b.error_msg] + [r.error_msg for r in runs if r.error_msg]:
                lines = str(why).strip().splitlines() or [""]  # a TVM String, not an exception
                log.debug("tvm: a trial of task %d failed: %s", task_id, lines[-1][:300])
            run.report(task_id, runs, failed)

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


def _tensorized(records: Path) -> bool:
    """Whether a schedule in the database tensorizes (its trace names a tensor intrinsic, e.g. x86's VNNI dot)."""
    try:
        with records.open() as fh:
            return any("Tensorize" in line for line in fh)
    except OSError:
        return False


def _records_per_workload(folder: Path) -> dict[str, int]:
    """How many tuning records the database holds per workload (by its structural hash)."""
    shashes: list[str] = []
    counts: dict[str, int] = {}
    try:
        with (folder / WORKLOADS).open() as fh:
            shashes = [str(json.loads(line)[0]) for line in fh if line.strip()]
        with (folder / RECORDS).open() as fh:
            for line in fh:
                if line.strip():
                    index = int(json.loads(line)[0])
                    if 0 <= index < len(shashes):
                        counts[shashes[index]] = counts.get(shashes[index], 0) + 1
    except (OSError, ValueError, IndexError, TypeError):
        return counts  # a missing or odd file: MetaSchedule's reader names the real problem
    return counts


def _read_budgets(folder: Path) -> dict[str, float]:
    try:
        data = json.loads((folder / BUDGETS).read_text())
    except (OSError, ValueError):
        return {}
    return {str(k): float(v) for k, v in data.items() if isinstance(v, int | float)} if isinstance(data, dict) else {}


def _workload(database: Any, mod: Any) -> Any | None:
    return database.commit_workload(mod) if database.has_workload(mod) else None


def _best_ms(database: Any, workload: Any) -> float | None:
    top = database.get_top_k(workload, 1) if workload is not None else []
    secs = [float(x) for x in (top[0].run_secs or [])] if top else []
    return 1e3 * sum(secs) / len(secs) if secs else None


def _flops(mod: Any) -> float | None:
    """The task's arithmetic as TVM counts it (None: an operator TVM can't count)."""
    try:
        from tvm.s_tir.analysis import estimate_tir_flops

        return float(estimate_tir_flops(mod))
    except Exception:  # an operator TVM can't count: its weight is unknown, so it is never taken as light
        return None


def _mark_light(tasks: list[_Task]) -> None:
    """Mark the lightest tasks whose arithmetic together stays under ``LIGHT_SHARE`` of the model's: tuned briefly.

    Cumulative, lightest first, so at most that share of the arithmetic gets the brief tuning whatever the number of
    tasks (of 200 equal tasks, one is light); a task TVM can't count is never light."""
    counted = [t for t in tasks if t.flops is not None]
    total = sum(t.flops or 0.0 for t in counted)
    if total <= 0:
        return
    light = 0.0
    for task in sorted(counted, key=lambda t: t.flops or 0.0):
        light += task.flops or 0.0
        if light >= LIGHT_SHARE * total:
            return
        task.light = True


def _heaviest_first(task: _Task) -> float:
    """Sort key: the most arithmetic first, a task TVM can't count before all."""
    return -(task.flops if task.flops is not None else math.inf)


def _plan(database: Any, folder: Path, extracted: list[Any], options: TuneOptions) -> tuple[list[_Task], int]:
    """Every task with what the database holds of it and the trials this compile measures for it; the per-task target."""
    counts = _records_per_workload(folder)
    budgets = _read_budgets(folder)
    tasks = []
    for t in extracted:
        mod = t.dispatched[0]
        workload = _workload(database, mod)
        shash = str(workload.as_json()[0]) if workload is not None else None
        had = counts.get(shash, 0) if shash else 0
        task = _Task(t.task_name, float(t.weight), mod, had, _best_ms(database, workload), shash, extracted=t)
        flops = _flops(mod)
        task.flops = None if flops is None else float(t.weight) * flops
        tasks.append(task)
    _mark_light(tasks)
    heavy = [t for t in tasks if not t.light]
    if options.trials_per_task is not None:
        per_task = options.trials_per_task
    elif options.trials is not None:  # spread over the tasks that are tuned
        per_task = max(1, math.ceil(options.trials / max(1, len(heavy))))
    else:
        per_task = PER_TASK_UNDER_BUDGET
    for task in tasks:
        settled = options.minutes is not None and task.shash is not None and budgets.get(task.shash, 0.0) >= options.minutes
        if options.trials != 0 and not settled and not task.extracted.mod.attrs.get("tirx.is_scheduled", False):
            task.need = max(0, (min(LIGHT_TRIALS, per_task) if task.light else per_task) - task.had)
    return tasks, per_task


def _strategy(ms: Any, options: TuneOptions) -> Any:
    """MetaSchedule's search strategy for ``options.strategy``: under a time budget a smaller evolutionary search."""
    if options.strategy == "evolutionary" and options.minutes is not None:
        return ms.search_strategy.EvolutionarySearch(population_size=BUDGET_POPULATION, genetic_num_iters=BUDGET_GENERATIONS)
    return options.strategy


def _contexts(ms: Any, todo: list[Any], options: TuneOptions) -> tuple[list[Any], list[float]]:
    """A tuning context per task, as ``extracted_tasks_to_tune_contexts`` makes them but with MetaSchedule's own
    logger instead of per-task file loggers in a temporary folder: their set-up (``logging.config.dictConfig``, for
    the whole process) failed in a second tuning run of a test process after an earlier one had stopped with an
    error ('NoneType' object has no attribute 'format')."""
    from tvm.s_tir.meta_schedule.utils import fork_seed

    contexts = [
        ms.TuneContext(
            mod=task.dispatched[0],
            target=task.target,
            space_generator="post-order-apply",
            search_strategy=_strategy(ms, options),
            task_name=task.task_name,
            rand_state=seed,
        ).clone()
        for task, seed in zip(todo, fork_seed(options.seed, n=len(todo)), strict=True)
    ]
    return contexts, [float(task.weight) for task in todo]


def _tune(ms: Any, database: Any, runner: Any, run: _Run, tasks: list[_Task], options: TuneOptions) -> None:
    """MetaSchedule over ``tasks`` (their trials); stops early (records kept) when the time budget, or the phase's
    share of it, is spent."""
    run.tasks = tasks
    todo = [t.extracted for t in tasks]  # in this order: MetaSchedule's task ids index it
    most = max(t.need for t in tasks)
    batch = min(32 if options.minutes is not None else 64, most)
    builder, report_trials = _helpers(ms, run)
    try:
        with tempfile.TemporaryDirectory(prefix="edgekit-tune-") as logs, _quiet_meta_schedule():
            contexts, weights = _contexts(ms, todo, options)
            ms.tune_tasks(
                tasks=contexts,
                task_weights=weights,
                work_dir=logs,
                max_trials_global=sum(t.need for t in tasks),
                max_trials_per_task=most,
                num_trials_per_iter=batch,
                database=database,
                builder=builder,
                runner=runner,
                measure_callbacks=[report_trials, *ms.measure_callback.MeasureCallback.create("default")],
            )
    except Exception as exc:
        if not run.out_of_time:
            raise CompilationError(f"MetaSchedule tuning failed: {last_line(exc)}") from exc


def _light_then_heavy(ms: Any, database: Any, run: _Run, light: list[_Task], heavy: list[_Task], options: TuneOptions) -> None:
    """The light tasks in a MetaSchedule run of their own, ended by their trials or their share of the time budget
    (LIGHT_BUDGET_SHARE), then the heavy ones with what is left; one runner (its worker processes) for both."""
    runner = ms.runner.LocalRunner()
    if light:
        run.phase_end = run.started + 60 * LIGHT_BUDGET_SHARE * options.minutes if options.minutes is not None else None
        _tune(ms, database, runner, run, light, options)
        run.phase_end = None
        run.out_of_time = run.spent()  # the share ended, not the budget: the heavy tasks go on
    if heavy and not run.out_of_time:
        _tune(ms, database, runner, run, heavy, options)


def _keep_budgets(database: Any, folder: Path, tasks: list[_Task], minutes: float) -> None:
    """Remember that the tasks tuned here had a budget of ``minutes``: later compiles with no more time reuse them.

    Every task of the run, even one the budget ran out before: the model had its budget, and a second compile
    must not spend it again."""
    budgets = _read_budgets(folder)
    for task in tasks:
        shash = str(database.commit_workload(task.mod).as_json()[0])
        budgets[shash] = max(budgets.get(shash, 0.0), minutes)
    try:
        (folder / BUDGETS).write_text(json.dumps(budgets, indent=1, sort_keys=True) + "\n")
    except OSError as exc:
        raise ConfigError(f"tuning database folder '{folder}' is not writable ({exc.strerror})") from None


def tune_and_apply(
    tvm: Any, mod: Any, target: Any, target_dict: dict[str, Any], options: TuneOptions, progress: Progress
) -> tuple[Any, TuningReport]:
    """Tune ``mod`` for ``target`` (adding to the database), then apply the database's best schedules.

    Tasks the database already holds ``trials`` of (or tuned under a time budget at least ``minutes``) are reused,
    not tuned again; ``minutes`` stops tuning by the clock.
    """
    from tvm.relax import pipeline as relax_pipeline
    from tvm.relax import transform as rt
    from tvm.s_tir import meta_schedule as ms

    started = CLOCK.monotonic()
    folder = database_dir(target_dict, options)
    records = folder / RECORDS
    database = _open_database(ms, folder)
    before = _count_lines(records)

    with target:
        prepare = [rt.DecomposeOpsForInference(), rt.CanonicalizeBindings(), relax_pipeline.zero_pipeline()]
        if options.prepack:
            prepare.append(rt.AttachAttrLayoutFreeBuffers())
        mod = tvm.transform.Sequential(prepare)(mod)

    extracted = list(ms.relax_integration.extract_tasks(mod, target))
    everything, per_task = _plan(database, folder, extracted, options)
    # The light tasks first, briefly (LIGHT_TRIALS each, a LIGHT_BUDGET_SHARE of a time budget at most), then the
    # heavy ones, heaviest first: MetaSchedule visits the tasks once in order before it picks by gradient, and a
    # time budget can end inside that first round (each task's first search is the slowest): the convolutions, not a
    # reshape. Two MetaSchedule runs, one runner between them: the light ones can't take more than their trials.
    light_todo = sorted((t for t in everything if t.need > 0 and t.light), key=_heaviest_first)
    heavy_todo = sorted((t for t in everything if t.need > 0 and not t.light), key=_heaviest_first)
    tuning = light_todo + heavy_todo
    if tuning or _tensorized(records):
        # MetaSchedule's tuning contexts, and a recorded schedule that tensorizes, need TVM's tensor intrinsics
        # registered: an import of ~25 s on a quiet 2-core machine, minutes on a loaded one (a reused database
        # without such a schedule skips it). Before the clock starts: a time budget buys trials, not that import.
        took = CLOCK.monotonic()
        importlib.import_module("tvm.s_tir.tensor_intrin")
        started += CLOCK.monotonic() - took
    deadline = started + 60 * options.minutes if options.minutes is not None else None
    total = sum(t.need for t in tuning) if options.trials is not None or options.trials_per_task is not None else None
    run = _Run(tuning, everything, progress, total, started, deadline)
    # not tuned again: enough records, or tuned under as long a budget (applying only: those the database knows)
    reused = sum(1 for t in everything if t.need == 0 and (t.had > 0 or options.trials != 0))
    light = sum(1 for t in everything if t.light)
    if tuning:
        budget = f", at most {options.minutes:g} min" if options.minutes is not None else ""
        asked = f"{total} trials" if total is not None else "trials"
        share = f" and {LIGHT_BUDGET_SHARE:.0%} of the time" if options.minutes is not None else ""
        lightly = (
            f"; {len(light_todo)} light task(s) under {LIGHT_SHARE:.0%} of the arithmetic first, at most "
            f"{min(LIGHT_TRIALS, per_task)} trials each{share}"
            if light_todo
            else ""
        )
        progress(
            f"tvm: tuning {len(tuning)} of {len(everything)} task(s) with MetaSchedule, {asked}{budget}; "
            f"database {folder} ({before} records; {reused} task(s) reused from it{lightly})"
        )
        _light_then_heavy(ms, database, run, light_todo, heavy_todo, options)
        if run.out_of_time:
            progress(f"tvm: tuning: the time budget ({options.minutes:g} min) is spent: stopped after {run.done} trials")
        if options.minutes is not None:
            _keep_budgets(database, folder, tuning, options.minutes)
    elif options.trials == 0:
        if before == 0:
            progress(f"tvm: tune.trials is 0 and the database {folder} is empty: nothing to apply")
    else:
        progress(f"tvm: tuning: all {len(everything)} task(s) reused from the database {folder}: no new trials")

    try:
        with target, database:
            mod = rt.MetaScheduleApplyDatabase()(mod)
            if options.prepack:
                mod = tvm.transform.Sequential([rt.SplitLayoutRewritePreproc(), rt.LiftTransformParams(), rt.FoldConstant()])(mod)
    except Exception as exc:
        raise CompilationError(f"applying the tuning database '{folder}' failed: {last_line(exc)}") from exc
    for task in everything:  # the database's best after tuning, for the estimate
        task.best_ms = _best_ms(database, _workload(database, task.mod))
    stopped: Literal["trials", "time", "reused", "apply-only"] = (
        "time" if run.out_of_time else "trials" if tuning else "apply-only" if options.trials == 0 else "reused"
    )
    report = TuningReport(
        trials=options.trials,
        minutes=options.minutes,
        tasks=len(everything),
        trials_per_task=per_task,
        measured=run.done,
        tasks_tuned=len(tuning),
        tasks_reused=reused,
        stopped=stopped,
        seconds=round(CLOCK.monotonic() - started, 3),
        best_ms=run.best_ms(),
        tasks_unmeasured=sum(
            1 for t in everything if not t.light and t.best_ms is None and not t.mod.attrs.get("tirx.is_scheduled", False)
        ),
        tasks_light=light,
        records_before=before,
        records_after=_count_lines(records),
        strategy=options.strategy,
        prepack=options.prepack,
        database=str(folder),
    )
    if report.tasks_unmeasured and options.trials != 0:
        progress(
            f"tvm: tuning: {report.tasks_unmeasured} of {len(everything)} task(s) have no measured schedule (the budget "
            "ended before them): they run TVM's default schedules; give more --tune-minutes, or compile again to "
            "continue from the database"
        )
    if tuning and report.best_ms is not None:
        progress(f"tvm: tuning: best found {report.best_ms:.4f} ms (MetaSchedule's estimate, the tuned tasks' best summed)")
    return mod, report
