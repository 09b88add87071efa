"""MetaSchedule tuning: a real (small) tuning run, the database it leaves, and its reuse.

One tuning run is shared by the module (MetaSchedule's first run in a process costs ~25 s here:
TVM registers its tensor intrinsics); the trial counts are tiny, so these check behaviour, not speed.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest
from helpers import make_mlp

import edgekit
from edgekit.compiler import CompileResult
from edgekit.compiler.backends.tvm_tune import RECORDS, parse_tune_options
from edgekit.compiler.pipeline import Pipeline, load_pipeline
from edgekit.errors import ConfigError
from edgekit.runtime.tvm_runner import TvmRunner

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


def test_tuned_artifact_runs_on_the_lean_runtime_and_agrees(tuned: Tuned) -> None:
    model = edgekit.load(tuned.result.artifact_dir)
    assert isinstance(model.runner, TvmRunner)  # libtvm_runtime + tvm_ffi, not the compiler
    assert model.selftest().passed
    x = np.random.default_rng(3).standard_normal((1, 8)).astype(np.float32)
    import onnxruntime as ort

    expected = ort.InferenceSession(str(tuned.model), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(model.predict({"x": x})[0], expected, rtol=1e-5, atol=1e-5)


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
