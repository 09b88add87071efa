"""Compile pipelines (``compiler/*.yaml``): which candidates to build, the accuracy budget, how to measure."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError

from edgekit.errors import ConfigError, first_problem
from edgekit.parsing import MAX_FILE_BYTES, ParseError, loads_yaml
from edgekit.resources import bundled_dir

__all__ = [
    "ON_REQUEST",
    "AccuracyBudget",
    "CandidateSpec",
    "MeasureSpec",
    "Pipeline",
    "load_pipeline",
    "tuning_records_folder",
]

TUNING_RECORDS = "database_tuning_record.json"  # MetaSchedule's records file (the TVM backend's RECORDS)
ON_REQUEST = "on-request"
"""``options.tune: on-request`` of a tvm candidate: tuned with the compile's ``--tune`` / ``--tune-minutes`` /
``--tuning-records``, and no candidate at all without them (optimize's ``tvm-tuned-pruned``: tuning takes minutes)."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)


class AccuracyBudget(_Model):
    """Without labelled samples: agreement with the source model. With labels: the top-1 drop from the source's
    accuracy, in points; with expected outputs: the rise of the mean error over the source's (relative)."""

    max_abs_error: float = Field(1e-3, alias="maxAbsError", ge=0)
    min_top1_agreement: float = Field(0.99, alias="minTop1Agreement", ge=0, le=1)
    max_accuracy_drop: float = Field(1.0, alias="maxAccuracyDrop", ge=0, le=100)
    max_error_increase: float = Field(0.01, alias="maxErrorIncrease", ge=0)


class CandidateSpec(_Model):
    name: str
    backend: str
    options: dict[str, Any] = Field(default_factory=dict)
    passes: list[dict[str, Any]] = Field(
        default_factory=list, description="graph passes applied before the backend (see edgekit.compiler.passes)"
    )
    accuracy: AccuracyBudget | None = Field(None, description="this candidate's own budget (e.g. looser for int8)")


class MeasureSpec(_Model):
    samples: int = Field(8, ge=1, le=10_000, description="synthesized inputs when the user gives no samples")
    calibration: int = Field(
        64, ge=1, alias="calibrationSamples", description="the most user samples set aside for int8 calibration (≤ half)"
    )
    warmup: int = Field(3, ge=0)
    repeat: int = Field(30, ge=1)
    seed: int = 0


class Pipeline(_Model):
    schema_version: Literal[1] = Field(1, alias="schemaVersion")
    name: str
    candidates: list[CandidateSpec] = Field(min_length=1)
    accuracy: AccuracyBudget = AccuracyBudget()
    measure: MeasureSpec = MeasureSpec()
    select: Literal["latency", "size"] = Field(
        "latency", description="among candidates within budget: the fastest, or the smallest (ties: the fastest)"
    )

    _file: Path | None = PrivateAttr(None)  # the YAML file it was read from, for messages

    @property
    def where(self) -> str:
        """How messages name this pipeline: its file when it was read from one, else its name."""
        return f"pipeline file '{self._file}'" if self._file is not None else f"pipeline '{self.name}'"

    def fingerprint(self) -> str:
        data = self.model_dump(mode="json", by_alias=True)
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()

    def with_tuning(
        self, trials: int | None = None, minutes: float | None = None, database: str | Path | None = None
    ) -> Pipeline:
        """This pipeline plus a MetaSchedule-tuned TVM candidate (``tvm-tuned``), or its tuning options set if it has one;
        candidates with ``tune: on-request`` (:data:`ON_REQUEST`) get the same trials, minutes and database.

        ``trials``: what ``--tune`` sets; ``minutes``: ``--tune-minutes``, a time budget; ``database``: ``--tuning-records``,
        an existing tuning database (its folder or its ``database_tuning_record.json``). Only a database: apply it
        (``trials: 0``) unless the pipeline's candidate tunes already.
        """
        if trials is not None and trials < 0:
            raise ConfigError(f"tuning trials must be 0 or more, not {trials}")
        if minutes is not None and not minutes > 0:
            raise ConfigError(f"--tune-minutes must be more than 0, not {minutes}")
        kept = [c for c in self.candidates if c.name != "tvm-tuned"]
        base = next((c for c in self.candidates if c.name == "tvm-tuned"), None)
        options: dict[str, Any] = dict(base.options) if base else {"opt_level": 3}
        old = options.get("tune")
        tune: dict[str, Any] = dict(old) if isinstance(old, dict) else {"trials": old} if isinstance(old, int) else {}
        if trials is not None:
            tune["trials"] = trials
        if minutes is not None:
            tune["minutes"] = minutes  # without trials: as many as the time allows
        if database is not None:
            tune["database"] = str(tuning_records_folder(database))
            if "trials" not in tune and "minutes" not in tune:
                tune["trials"] = 0
        options["tune"] = tune
        asked = {k: v for k, v in (("trials", trials), ("minutes", minutes)) if v is not None}
        if database is not None:
            asked["database"] = tune["database"]
        on_request = {**asked, "trials": 0} if not ("trials" in asked or "minutes" in asked) else asked
        kept = [
            c.model_copy(update={"options": {**c.options, "tune": on_request}}) if _on_request(c) else c for c in kept
        ]  # tuned like tvm-tuned, for the same trials and the same clock (the build shares minutes among them)
        return self.model_copy(update={"candidates": [*kept, CandidateSpec(name="tvm-tuned", backend="tvm", options=options)]})

    def without_tuning_on_request(self) -> Pipeline:
        """This pipeline less its ``tune: on-request`` candidates (a compile that doesn't tune), or ConfigError in one
        line when that leaves none."""
        kept = [c for c in self.candidates if not _on_request(c)]
        if len(kept) == len(self.candidates):
            return self
        if not kept:
            raise ConfigError(
                f"{self.where}: every candidate has tune: {ON_REQUEST} (tuned only when the compile tunes); "
                "pass --tune N or --tune-minutes M, or give a candidate that doesn't tune"
            )
        return self.model_copy(update={"candidates": kept})

    def only_backend(self, backend: str) -> Pipeline:
        """This pipeline restricted to the candidates of one backend."""
        kept = [c for c in self.candidates if c.backend == backend]
        if not kept:
            kept = [CandidateSpec(name=backend, backend=backend)]
        return self.model_copy(update={"candidates": kept})


def _on_request(spec: CandidateSpec) -> bool:
    return spec.options.get("tune") == ON_REQUEST


def tuning_records_folder(path: str | Path) -> Path:
    """The folder of the tuning database ``--tuning-records`` names (the folder, or its ``database_tuning_record.json``),
    or ConfigError in one line: it must exist, as tvmc's records file must."""
    given = Path(path).expanduser()
    if given.is_dir():
        return given
    if given.is_file() and given.name == TUNING_RECORDS:
        return given.parent
    what = "is a file, not" if given.is_file() else "does not exist; it must be"
    raise ConfigError(
        f"--tuning-records '{path}' {what} a tuning database (the folder holding {TUNING_RECORDS}, or that file); "
        "to start a new one, create the empty folder (mkdir) or leave the flag out (one per target in the cache)"
    )


def load_pipeline(name_or_path: str | Path = "default") -> Pipeline:
    """A bundled pipeline by name (``default``, ``tvm``, ``ort``) or a YAML file."""
    text = str(name_or_path)
    path = Path(text) if text.endswith((".yaml", ".yml")) else bundled_dir("compiler") / f"{text}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in bundled_dir("compiler").glob("*.yaml")))
        raise ConfigError(f"pipeline '{text}' not found; bundled pipelines: {known}, or pass a .yaml path")
    try:
        data = loads_yaml(path.read_bytes(), max_bytes=MAX_FILE_BYTES)
        pipe = Pipeline.model_validate(data)
        pipe._file = path
        return pipe
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the pipeline: {exc.strerror or exc}") from exc
    except ParseError as exc:
        raise ConfigError(f"{path}: the pipeline {exc}") from None
    except ValidationError as exc:
        raise ConfigError(f"{path}: {first_problem(exc)}") from exc
