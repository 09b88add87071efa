"""MetaSchedule tuning: a real (small) tuning run, the database it leaves, and its reuse.

One tuning run is shared by the module (MetaSchedule's first run in a process costs ~25 s here:
TVM registers its tensor intrinsics); the trial counts are tiny, so these check behaviour, not speed.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest
from helpers import make_mlp

import edgekit
from edgekit.cli import main
from edgekit.clock import FakeClock
from edgekit.compiler import CompileResult
from edgekit.compiler.backends import tvm_tune
from edgekit.compiler.backends.tvm_tune import BUDGETS, RECORDS, parse_tune_options
from edgekit.compiler.pipeline import Pipeline, load_pipeline
from edgekit.errors import EXIT_CODES, ConfigError
from edgekit.runtime.tvm_runner import TvmRunner, physical_cores

TRIALS = 6


def _pipeline(tune: object, name: str = "tuned") -> Pipeline:
    return Pipeline.model_validate(
        {
            "name": "tune-test",
            "candidates": [{"name": name, "backend": "tvm", "options": {"tune": tune}}],
            "measure": {"samples": 4, "warmup": 1, "repeat": 5},
        }
    )


@dataclass
class Tuned:
    model: Path
    database: Path
    result: CompileResult
    messages: list[str]


@pytest.fixture(scope="module")
def tuned(tmp_path_factory: pytest.TempPathFactory) -> Tuned:
    root = tmp_path_factory.mktemp("tune")
    model = root / "mlp.onnx"
    onnx.save(make_mlp(seed=11), str(model))
    database = root / "tuning-db"
    messages: list[str] = []
    result = edgekit.compile(
        model,
        "x86_64",
        root / "build",
        pipeline=_pipeline({"trials": TRIALS, "strategy": "replay-trace", "database": str(database)}),
        use_cache=False,
        progress=messages.append,
    )
    return Tuned(model, database, result, messages)


def _tuning(result: CompileResult) -> dict[str, object]:
    details = result.manifest.backend.options
    assert details["tuned"] is True
    tuning = details["tuning"]
    assert isinstance(tuning, dict)
    return tuning


def test_tuning_measures_trials_fills_the_database_and_reports_progress(tuned: Tuned) -> None:
    tuning = _tuning(tuned.result)
    assert tuning["tasks"] == 3  # three fused dense layers
    assert tuning["records_before"] == 0 and tuning["records_after"] == TRIALS
    assert tuning["database"] == str(tuned.database) and tuning["prepack"] is True
    records = [json.loads(line) for line in (tuned.database / RECORDS).read_text().splitlines() if line.strip()]
    assert len(records) == TRIALS
    measured = [m for m in tuned.messages if "trials measured" in m]
    assert measured and measured[-1].startswith(f"tvm: tuning: {TRIALS}/{TRIALS} trials measured")
    assert tuning["measured"] == TRIALS and tuning["stopped"] == "trials" and tuning["tasks_reused"] == 0
    # progress carries the best latency found so far (MetaSchedule's estimate: the tasks' best, weighted)
    assert any("best so far" in m for m in measured), measured  # a trial or two may fail on a loaded machine: not all
    best = tuning["best_ms"]
    assert best is None or (isinstance(best, float) and best > 0)  # the estimate needs every task timed


def test_the_heaviest_task_is_tuned_first(tuned: Tuned) -> None:
    """A time budget can end in MetaSchedule's first round over the tasks: it starts with the most arithmetic."""
    first = next(m for m in tuned.messages if "trials measured" in m)
    assert "(task 0 fused_matmul_add_relu" in first, first  # 8×16 weights, against the next layer's 16×4


def test_the_second_compile_reuses_the_database(tuned: Tuned, tmp_path: Path) -> None:
    """Same model, same trials, same database: every task already has its trials, so nothing new is measured."""
    messages: list[str] = []
    again = edgekit.compile(
        tuned.model,
        "x86_64",
        tmp_path / "again",
        pipeline=_pipeline({"trials": TRIALS, "strategy": "replay-trace", "database": str(tuned.database)}),
        use_cache=False,
        progress=messages.append,
    )
    tuning = _tuning(again)
    assert tuning["measured"] == 0 and tuning["stopped"] == "reused"
    assert tuning["tasks_reused"] == tuning["tasks"] == 3 and tuning["tasks_tuned"] == 0
    assert tuning["records_before"] == tuning["records_after"] == TRIALS
    assert any("reused from the database" in m and "no new trials" in m for m in messages)
    assert (again.artifact_dir / "model.so").read_bytes() == (tuned.result.artifact_dir / "model.so").read_bytes()
    # asking for more trials tunes further, and only the shortfall (in a copy: the module's database stays as it is)
    copy = shutil.copytree(tuned.database, tmp_path / "db")
    more = edgekit.compile(
        tuned.model,
        "x86_64",
        tmp_path / "more",
        pipeline=_pipeline({"trials": TRIALS + 3, "strategy": "replay-trace", "database": str(copy)}),
        use_cache=False,
    )
    grown = _tuning(more)
    assert grown["measured"] == 3 and grown["records_after"] == TRIALS + 3 and grown["tasks_tuned"] == 3


class _TickingClock(FakeClock):
    """Every reading moves it a second on: each build MetaSchedule asks for 'takes' one second."""

    def monotonic(self) -> float:
        return self.advance(1.0)


@pytest.mark.slow  # a tuning run of its own
def test_tune_minutes_bound_tuning(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tvm_tune, "CLOCK", _TickingClock())
    model = tmp_path / "mlp.onnx"
    onnx.save(make_mlp(seed=13), str(model))
    database = tmp_path / "db"
    asked = 12  # 4 per task; the budget (6 ticks) runs out while the second task builds
    messages: list[str] = []
    result = edgekit.compile(
        model,
        "x86_64",
        tmp_path / "build",
        pipeline=_pipeline({"trials": asked, "minutes": 0.1, "strategy": "replay-trace", "database": str(database)}),
        use_cache=False,
        progress=messages.append,
    )
    tuning = _tuning(result)
    assert tuning["stopped"] == "time" and tuning["minutes"] == 0.1
    measured = tuning["measured"]
    assert isinstance(measured, int) and 0 < measured < asked
    assert tuning["records_after"] == tuning["measured"]  # what was measured before the stop is kept
    assert any("time budget (0.1 min) is spent" in m for m in messages)
    # the task the budget never reached runs TVM's default schedule, and the compile says so
    assert isinstance(tuning["tasks_unmeasured"], int) and tuning["tasks_unmeasured"] >= 1
    assert any("have no measured schedule" in m for m in messages), messages
    budgets = json.loads((database / BUDGETS).read_text())
    assert len(budgets) == 3 and set(budgets.values()) == {0.1}  # every task of the run, the one left untuned too
    assert model_agrees(result)
    # the next compile with no more time reuses them all: the budget is not spent twice
    again = edgekit.compile(
        model,
        "x86_64",
        tmp_path / "again",
        pipeline=_pipeline({"trials": asked, "minutes": 0.1, "strategy": "replay-trace", "database": str(database)}),
        use_cache=False,
    )
    assert _tuning(again)["measured"] == 0 and _tuning(again)["stopped"] == "reused"


def model_agrees(result: CompileResult) -> bool:
    return edgekit.load(result.artifact_dir).selftest().passed


def test_tuning_records_flag(tuned: Tuned, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """tvmc's --tuning-records: an existing database (folder or its records file) is applied; a bad path is one line."""
    out = tmp_path / "build"
    args = ["compile", str(tuned.model), "-t", "x86_64", "-o", str(out), "-b", "tvm", "--no-cache", "--json"]
    assert main([*args, "--tuning-records", str(tuned.database / RECORDS)]) == 0
    manifest = json.loads((out / "mlp-x86_64" / "manifest.json").read_text())
    tuned_candidate = next(c for c in manifest["candidates"] if c["name"] == "tvm-tuned")  # chosen or not
    assert tuned_candidate["tuning"]["database"] == str(tuned.database)
    assert tuned_candidate["tuning"]["stopped"] == "apply-only" and tuned_candidate["tuning"]["measured"] == 0
    capsys.readouterr()
    for bad in (tmp_path / "no-such-db", tuned.model):
        assert main([*args, "--tuning-records", str(bad)]) == EXIT_CODES[ConfigError]
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and f"--tuning-records '{bad}'" in err and "mkdir" in err


def test_with_tuning_sets_minutes_and_database(tuned: Tuned) -> None:
    pipe = load_pipeline("default").with_tuning(minutes=10)
    assert pipe.candidates[-1].options["tune"] == {"minutes": 10}
    assert load_pipeline("tuned").with_tuning(minutes=2).candidates[-1].options["tune"]["trials"] == 200  # both bound it
    applied = load_pipeline("default").with_tuning(database=tuned.database)
    assert applied.candidates[-1].options["tune"] == {"database": str(tuned.database), "trials": 0}
    with pytest.raises(ConfigError, match="more than 0"):
        load_pipeline("default").with_tuning(minutes=0)
    with pytest.raises(ConfigError, match="trials or minutes"):
        parse_tune_options({"prepack": True})


def test_tuned_artifact_runs_on_the_lean_runtime_and_agrees(tuned: Tuned) -> None:
    model = edgekit.load(tuned.result.artifact_dir)
    assert isinstance(model.runner, TvmRunner)  # libtvm_runtime + tvm_ffi, not the compiler
    assert model.selftest().passed
    x = np.random.default_rng(3).standard_normal((1, 8)).astype(np.float32)
    import onnxruntime as ort

    expected = ort.InferenceSession(str(tuned.model), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(model.predict({"x": x})[0], expected, rtol=1e-5, atol=1e-5)


def test_a_tuned_artifact_makes_no_syscalls_of_its_own_per_call(tuned: Tuned) -> None:
    """With neither TVM_NUM_THREADS nor OMP_NUM_THREADS set, TVM works its thread count out again at every parallel
    loop a kernel starts, reading /sys/devices/system/cpu/online (the tuned MLP: 2 reads a call; the tuned trained
    CNN: 10, its call 2× slower). edgekit sets the count once, before TVM runs (one thread a physical core): 200 calls
    read nothing."""
    script = textwrap.dedent(
        f"""
        import os, numpy as np, edgekit
        model = edgekit.load({str(tuned.result.artifact_dir)!r})
        x = np.zeros(model.manifest.inputs[0].shape, np.float32)
        model.predict(x)
        def reads():
            with open("/proc/self/io") as fh:
                return int(next(line for line in fh if line.startswith("syscr")).split()[1])
        before = reads()
        for _ in range(200):
            model.predict(x)
        print(reads() - before, os.environ.get("TVM_NUM_THREADS"))
        """
    )
    env = {k: v for k, v in os.environ.items() if k not in ("TVM_NUM_THREADS", "OMP_NUM_THREADS")}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env, check=True)
    reads, threads = out.stdout.split()[-2:]
    cpus = os.cpu_count() or 1
    cores = physical_cores() or max(1, cpus // 2 if platform.machine() == "x86_64" else cpus)  # else TVM's own rule
    assert threads == str(min(cores, cpus))  # one a physical core
    assert int(reads) < 20, out.stdout  # 400 without


def test_zero_trials_applies_the_database_without_tuning(tuned: Tuned, tmp_path: Path) -> None:
    again = edgekit.compile(
        tuned.model,
        "x86_64",
        tmp_path / "again",
        pipeline=_pipeline({"trials": 0, "database": str(tuned.database)}),
        use_cache=False,
    )
    tuning = _tuning(again)
    assert tuning["records_before"] == tuning["records_after"] == TRIALS  # nothing new measured
    # the same schedules applied to the same model give the same machine code
    lib = (again.artifact_dir / "model.so").read_bytes()
    assert lib == (tuned.result.artifact_dir / "model.so").read_bytes()
    untuned = edgekit.compile(tuned.model, "x86_64", tmp_path / "untuned", pipeline="tvm", use_cache=False)
    assert (untuned.artifact_dir / "model.so").read_bytes() != lib


def test_a_grown_database_is_a_cache_miss(tuned: Tuned, tmp_path: Path) -> None:
    database = tmp_path / "db"
    database.mkdir()
    pipe = _pipeline({"trials": 0, "database": str(database)})
    first = edgekit.compile(tuned.model, "x86_64", tmp_path / "build", pipeline=pipe)
    assert not first.cache_hit
    assert edgekit.compile(tuned.model, "x86_64", tmp_path / "build", pipeline=pipe).cache_hit
    for name in (RECORDS, "database_workload.json"):
        shutil.copyfile(tuned.database / name, database / name)
    learnt = edgekit.compile(tuned.model, "x86_64", tmp_path / "build", pipeline=pipe)
    assert not learnt.cache_hit  # the database learnt more: compile again
    assert (learnt.artifact_dir / "model.so").read_bytes() == (tuned.result.artifact_dir / "model.so").read_bytes()


def test_cli_tune_flag_adds_a_tuned_candidate(tuned: Tuned, tmp_path: Path) -> None:
    pipe = load_pipeline("default").with_tuning(0)
    names = [c.name for c in pipe.candidates]
    assert names == ["ort", "tvm", "tvm-tuned"]
    assert pipe.candidates[-1].options["tune"] == {"trials": 0}
    assert [c.name for c in pipe.with_tuning(5).candidates].count("tvm-tuned") == 1
    with pytest.raises(ConfigError, match="0 or more"):
        pipe.with_tuning(-1)


def test_default_database_lives_in_the_cache_per_target(tmp_path: Path) -> None:
    model = tmp_path / "mlp.onnx"
    onnx.save(make_mlp(seed=12), str(model))
    result = edgekit.compile(model, "x86_64", tmp_path / "build", pipeline=_pipeline({"trials": 0}), use_cache=False)
    folder = Path(str(_tuning(result)["database"]))
    assert folder.parent == Path(os.environ["EDGEKIT_CACHE_DIR"]) / "tuning"
    assert folder.is_dir()


def test_tuning_is_refused_for_a_target_this_host_cannot_run(tmp_path: Path) -> None:
    model = tmp_path / "mlp.onnx"
    onnx.save(make_mlp(), str(model))
    with pytest.raises(ConfigError, match=r"candidate 'tuned'.*tune.*rasp4b.*aarch64.*tune on the device"):
        edgekit.compile(model, "rasp4b", tmp_path / "build", pipeline=_pipeline({"trials": 4}), use_cache=False)
    assert not (tmp_path / "build").exists()  # refused before anything was written


def test_pipeline_option_typos_fail_before_the_model_is_loaded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def must_not_load(*args: object, **kwargs: object) -> None:
        raise AssertionError("options are checked before the model is loaded")

    monkeypatch.setattr("edgekit.compiler.compile.load_source", must_not_load)
    model = tmp_path / "mlp.onnx"
    onnx.save(make_mlp(), str(model))
    bad = Pipeline.model_validate(
        {
            "name": "typo",
            "candidates": [
                {"name": "ort", "backend": "onnxruntime", "options": {"optimisation": "extended"}},
            ],
        }
    )
    with pytest.raises(ConfigError, match=r"pipeline 'typo', candidate 'ort': onnxruntime options \['optimisation'\]"):
        edgekit.compile(model, "x86_64", tmp_path / "build", pipeline=bad, use_cache=False)
    with pytest.raises(ConfigError, match=r"candidate 'tuned'.*unknown key 'trails'; did you mean 'trials'"):
        edgekit.compile(model, "x86_64", tmp_path / "build", pipeline=_pipeline({"trails": 4}), use_cache=False)
    tvm_level = _pipeline(None).model_copy(
        update={"candidates": [_pipeline(None).candidates[0].model_copy(update={"options": {"opt_level": 9}})]}
    )
    with pytest.raises(ConfigError, match=r"opt_level' must be an integer from 0 to 3, got 9"):
        edgekit.compile(model, "x86_64", tmp_path / "build", pipeline=tvm_level, use_cache=False)


@pytest.mark.parametrize(
    ("tune", "match"),
    [
        ({"trials": -1}, r"tune.*trials.*greater than or equal to 0"),
        ({"trails": 5}, r"tune.*trails"),
        ({"trials": 4, "strategy": "random"}, r"tune.*strategy"),
        ("lots", r"tune"),
    ],
)
def test_bad_tune_options_are_named(tune: object, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        parse_tune_options(tune)


def test_tune_shorthand_is_the_trial_count() -> None:
    assert parse_tune_options(50).trials == 50


def test_a_corrupt_database_is_named(tmp_path: Path) -> None:
    model = tmp_path / "mlp.onnx"
    onnx.save(make_mlp(), str(model))
    database = tmp_path / "db"
    database.mkdir()
    (database / RECORDS).write_text('{"this is": not json\n')
    (database / "database_workload.json").write_text("[garbage\n")
    with pytest.raises(ConfigError, match=rf"tuning database '{database}' cannot be read.*delete that folder"):
        edgekit.compile(
            model, "x86_64", tmp_path / "build", pipeline=_pipeline({"trials": 0, "database": str(database)}), use_cache=False
        )
    assert not (tmp_path / "build").exists()  # not even the output folder the failed compile made


def test_an_unusable_database_folder_is_named(tmp_path: Path) -> None:
    model = tmp_path / "mlp.onnx"
    onnx.save(make_mlp(), str(model))
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(ConfigError, match=r"tuning database folder .*a-file/db.* is not writable.*tune.database"):
        edgekit.compile(
            model,
            "x86_64",
            tmp_path / "build",
            pipeline=_pipeline({"trials": 0, "database": str(blocker / "db")}),
            use_cache=False,
        )


def _task(name: str, flops: float | None) -> tvm_tune._Task:
    return tvm_tune._Task(name, 1.0, None, 0, None, None, flops=flops)


def test_the_lightest_tasks_under_one_percent_are_light() -> None:
    """The trained 3×32×32 CNN's tasks (MFLOP, as TVM counts them): its pools, mean, reshape and classifier hold
    0.5 % of the arithmetic together: they are light, tuned first and briefly; the three convolutions are not."""
    tasks = [
        _task(n, f)
        for n, f in [("conv1", 2.376), ("conv2", 2.367), ("conv0", 0.918), ("pool0", 0.016), ("pool1", 0.008),
                     ("mean", 0.004), ("matmul", 0.001), ("reshape", 0.0)]
    ]  # fmt: skip
    tvm_tune._mark_light(tasks)
    assert [t.name for t in tasks if t.light] == ["pool0", "pool1", "mean", "matmul", "reshape"]
    # cumulative, lightest first: the light tasks together stay under the share, whatever their number
    even = [_task(f"t{i}", 1.0) for i in range(200)]
    tvm_tune._mark_light(even)
    assert sum(t.light for t in even) == 1  # 1 of 200 equal tasks is 0.5 %; two would be 1 %
    # a task TVM can't count is never light (its weight is unknown); the others are judged among themselves
    odd = [_task("uncounted", None), _task("conv", 100.0), _task("pool", 0.5)]
    tvm_tune._mark_light(odd)
    assert [t.name for t in odd if t.light] == ["pool"]
    nothing = [_task("a", 0.0), _task("b", 0.0)]  # no arithmetic counted at all: all are tuned
    tvm_tune._mark_light(nothing)
    assert not any(t.light for t in nothing)


def _wide(tmp_path: Path) -> Path:
    """A wide first layer makes the softmax over 4 classes ~0.1 % of the arithmetic: a light task."""
    model = tmp_path / "wide.onnx"
    onnx.save(make_mlp(in_features=64, hidden=128, classes=4, seed=3), str(model))
    return model


def _measured_per_task(messages: list[str]) -> dict[str, int]:
    """Trials per task from the progress lines ('tvm: tuning: 12 trials measured (task 0 softmax); ...'), in the
    order the tasks were first measured."""
    out: dict[str, int] = {}
    done = 0
    for m in messages:
        found = re.match(r"tvm: tuning: (\d+)(?:/\d+)? trials measured \(task \d+ (\w+)", m)
        if found:
            out[found.group(2)] = out.get(found.group(2), 0) + int(found.group(1)) - done
            done = int(found.group(1))
    return out


@pytest.mark.slow  # a tuning run of its own
def test_a_light_task_is_tuned_first_with_a_few_trials(tmp_path: Path) -> None:
    """The light softmax is tuned before the two matmuls, with no more trials than each of them gets (here 2, the
    trials spread over the heavy tasks; at most LIGHT_TRIALS), and the compile says so; the model still agrees."""
    model = _wide(tmp_path)
    messages: list[str] = []
    result = edgekit.compile(
        model,
        "x86_64",
        tmp_path / "build",
        pipeline=_pipeline({"trials": 4, "strategy": "replay-trace", "database": str(tmp_path / "db")}),
        use_cache=False,
        progress=messages.append,
    )
    tuning = _tuning(result)
    assert tuning["tasks"] == 3 and tuning["tasks_light"] == 1 and tuning["tasks_tuned"] == 3
    assert tuning["trials_per_task"] == 2 and tuning["measured"] == 6  # 2 + 2 for the matmuls, 2 for the softmax
    assert tuning["tasks_unmeasured"] == 0
    per_task = _measured_per_task(messages)
    first = next(iter(per_task))
    assert first.startswith("softmax") and per_task[first] == 2, per_task
    assert any("1 light task(s) under 1% of the arithmetic first, at most 2 trials each" in m for m in messages), messages
    assert model_agrees(result)


@pytest.mark.slow  # a tuning run of its own
def test_under_a_time_budget_the_light_tasks_share_ends_and_the_heavy_ones_get_the_rest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 30-second budget on a clock that ticks a second a reading: the softmax's share (a tenth: 3 s) ends before
    its batch of 4 is built, so it keeps TVM's default schedule, and the matmuls get their 4 trials each after it."""
    monkeypatch.setattr(tvm_tune, "CLOCK", _TickingClock())
    messages: list[str] = []
    result = edgekit.compile(
        _wide(tmp_path),
        "x86_64",
        tmp_path / "build",
        pipeline=_pipeline({"trials": 8, "minutes": 0.5, "strategy": "replay-trace", "database": str(tmp_path / "db")}),
        use_cache=False,
        progress=messages.append,
    )
    assert any(
        "1 light task(s) under 1% of the arithmetic first, at most 4 trials each and 10% of the time" in m for m in messages
    )
    per_task = _measured_per_task(messages)
    assert len(per_task) == 2 and not any(n.startswith("softmax") for n in per_task), per_task
    assert all(n.startswith("fused_matmul") and count == 4 for n, count in per_task.items()), per_task
    tuning = _tuning(result)
    assert tuning["stopped"] == "trials" and tuning["measured"] == 8 and tuning["tasks_unmeasured"] == 0  # not "time"
    assert len(json.loads((tmp_path / "db" / BUDGETS).read_text())) == 3  # the light task had its budget: kept too
    assert model_agrees(result)


def test_a_reused_database_skips_the_tensor_intrinsics_import(tuned: Tuned, tmp_path: Path) -> None:
    """Nothing to tune and no recorded schedule that tensorizes: TVM's tensor intrinsics (minutes to import on a
    loaded 2-core host) are not imported, and the database's schedules are applied all the same."""
    assert not tvm_tune._tensorized(tuned.database / RECORDS)  # fp32 matmuls: no schedule names an intrinsic
    tune = {"trials": TRIALS, "strategy": "replay-trace", "database": str(tuned.database)}
    pipeline = {"name": "tune-test", "candidates": [{"name": "tuned", "backend": "tvm", "options": {"tune": tune}}],
                "measure": {"samples": 4, "warmup": 1, "repeat": 5}}  # fmt: skip
    code = (
        "import sys, edgekit\n"
        "from edgekit.compiler.pipeline import Pipeline\n"
        f"r = edgekit.compile({str(tuned.model)!r}, 'x86_64', {str(tmp_path / 'again')!r}, "
        f"pipeline=Pipeline.model_validate({pipeline!r}), use_cache=False)\n"
        "print('tvm.s_tir.tensor_intrin' in sys.modules, r.manifest.backend.options['tuning']['stopped'])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, env=os.environ.copy())
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "False reused", out.stdout
    built = next((tmp_path / "again").rglob("model.so"))  # the same schedules applied: the same library
    assert built.read_bytes() == (tuned.result.artifact_dir / "model.so").read_bytes()
    # a schedule that tensorizes (x86's VNNI dot product, say) names its intrinsic: then the import happens
    records = tmp_path / RECORDS
    records.write_text('[0, [[["GetSBlock", [], ["conv"]], ["Tensorize", [0], ["dot_16x4_vnni", 1]]]]]\n')
    assert tvm_tune._tensorized(records)
    assert not tvm_tune._tensorized(tmp_path / "missing.json")
