"""The one exception tree of edgekit.

Every error a user can act on derives from :class:`EdgekitError` and carries a
message that names *what* is wrong (file, field, op, target) and *what to do*::

    EdgekitError
    ├── ConfigError               a profile / pipeline / option is wrong
    │   ├── UnknownTargetError    no device profile of that name
    │   ├── InputShapeError       --input-shape missing, malformed or not matching the model
    │   └── SamplesError          --samples unreadable or not matching the model, or the model can't run on its inputs
    ├── MissingDependencyError    an optional extra is not installed (names the pip extra)
    ├── ModelLoadError            the model file is missing, corrupt or truncated
    ├── ModelConversionError      the source framework could not be exported to ONNX
    ├── UnsupportedOperatorError  a backend cannot import an op (names op, node, backend)
    ├── CompilationError          a backend failed while compiling
    ├── ToolchainError            a cross compiler / nvcc / qemu is missing or refused the target
    ├── ArtifactError             an artifact directory or manifest is missing or corrupt
    │   ├── UnsupportedCpuError   the artifact's code needs CPU features this CPU lacks (refused at load) 28
    │   └── SelfTestError         the artifact's golden vectors disagree on this machine (at load) 29
    ├── AccuracyError             no candidate met the accuracy budget
    ├── InferenceError            predict() got the wrong inputs, or the backend failed running
    ├── VerificationError         the emulated run disagreed with the host or could not run
    ├── OutputError               the output directory cannot be written
    ├── RecipeError               a Greengrass recipe is invalid (carries the lint findings)
    ├── PackagingError            an artifact cannot be turned into components
    ├── ResolutionError           a deployment can't be satisfied (Greengrass error code)
    ├── PublishError              S3 / Greengrass calls failed (credentials, region, throttling, FAILED version)
    ├── DeploymentError           CreateDeployment was refused or its options are wrong
    ├── ServeError                `edgekit serve` can't serve what it was given (artifact for another arch, bad pipeline step, port in use)
    ├── EndpointError             a SageMaker endpoint / transform job can't be deployed, invoked or deleted (one line, what to do)
    └── (in their subpackages) mqtt.BrokerError 18, mqtt.PayloadError 19, device.DeviceError 20,
        fleet.FleetError 21, sim.SimulationError 22, edge.EdgeError 23, device.ipc.IpcServerError 24 — each sets
        ``exit_code`` on its class; ServeError is 25, EndpointError 26, SamplesError 27, UnsupportedCpuError 28,
        SelfTestError 29

The CLI maps each class to an exit code in one place (:data:`EXIT_CODES`). See docs/errors.md.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pydantic import ValidationError

__all__ = [
    "EXIT_CODES",
    "AccuracyError",
    "ArtifactError",
    "CompilationError",
    "ConfigError",
    "DeploymentError",
    "EdgekitError",
    "EndpointError",
    "InferenceError",
    "InputShapeError",
    "MissingDependencyError",
    "ModelConversionError",
    "ModelLoadError",
    "OutputError",
    "PackagingError",
    "PublishError",
    "RecipeError",
    "ResolutionError",
    "SamplesError",
    "SelfTestError",
    "ServeError",
    "ToolchainError",
    "UnknownTargetError",
    "UnsupportedCpuError",
    "UnsupportedOperatorError",
    "VerificationError",
    "cause_chain",
    "did_you_mean",
    "exit_code_for",
    "first_problem",
    "last_line",
    "one_line",
    "reject_unknown_keys",
    "root_cause",
]


class EdgekitError(Exception):
    """Root of every error edgekit raises on purpose."""


class ConfigError(EdgekitError):
    """A device profile, pipeline file or option is invalid."""


class UnknownTargetError(ConfigError):
    """No device profile has the requested name."""


class InputShapeError(ConfigError):
    """Input shapes are missing, malformed or disagree with the model."""


class SamplesError(ConfigError):
    """Samples (``--samples``) are unreadable, don't match the model, or are too few; or no inputs run the source."""


class MissingDependencyError(EdgekitError):
    """An optional dependency is not installed."""

    def __init__(self, module: str, extra: str, purpose: str) -> None:
        self.module = module
        self.extra = extra
        super().__init__(
            f"{purpose} needs the Python package '{module}', which is not installed; "
            f"install it with: pip install 'edgekit[{extra}]'"
        )


class ModelLoadError(EdgekitError):
    """The model file is missing, unreadable, corrupt or truncated."""


class ModelConversionError(EdgekitError):
    """A PyTorch / scikit-learn model could not be converted to ONNX."""


class UnsupportedOperatorError(EdgekitError):
    """A backend cannot import one or more operators of the model."""

    def __init__(self, backend: str, ops: list[tuple[str, str, str]]) -> None:
        # ops: (domain-qualified op type, node name, reason)
        self.backend = backend
        self.ops = ops
        shown = "; ".join(f"op '{op}' at node '{node}'" + (f" ({why})" if why else "") for op, node, why in ops[:5])
        more = f" and {len(ops) - 5} more" if len(ops) > 5 else ""
        super().__init__(
            f"backend '{backend}' cannot import {shown}{more}; choose another backend (--backend) or replace the op in the model"
        )


class CompilationError(EdgekitError):
    """A backend failed while compiling a supported model."""


class ToolchainError(EdgekitError):
    """A required toolchain (cross compiler, nvcc, qemu) is missing or refused the target."""


class ArtifactError(EdgekitError):
    """An artifact directory or its manifest is missing, incomplete or corrupt."""


class UnsupportedCpuError(ArtifactError):
    """The artifact's code needs instruction-set features (``avx2``, ``avx512f``...) this CPU lacks: refused at load,
    before any of it runs, instead of dying of SIGILL."""


class SelfTestError(ArtifactError):
    """The artifact ran at load and its golden vectors disagreed with the source model's outputs on this machine."""


class AccuracyError(EdgekitError):
    """No compiled candidate met the pipeline's accuracy budget."""


class InferenceError(EdgekitError):
    """predict() was given wrong inputs, or the backend failed at run time."""


class VerificationError(EdgekitError):
    """An emulated run of an artifact failed or disagreed with the host run."""


class OutputError(EdgekitError):
    """The output location cannot be written."""


class RecipeError(EdgekitError):
    """A Greengrass recipe is invalid; ``findings`` lists every problem found."""

    def __init__(self, message: str, findings: list[object] | None = None) -> None:
        self.findings = list(findings or [])
        super().__init__(message)


class PackagingError(EdgekitError):
    """An artifact or component source can't be packaged."""


class ResolutionError(EdgekitError):
    """Component versions or platforms can't be resolved for some device.

    ``code`` is the Greengrass error code (NO_AVAILABLE_COMPONENT_VERSION,
    COMPONENT_VERSION_REQUIREMENTS_NOT_MET, ...) or ``NO_MATCHING_PLATFORM``.
    """

    def __init__(self, code: str, message: str, lines: Sequence[str] = ()) -> None:
        self.code = code
        self.lines = list(lines)
        """One line per device and reason (a refused pre-flight): ``<thing>: <CODE>: <why>``."""
        super().__init__(f"{code}: {message}")


class PublishError(EdgekitError):
    """Publishing to S3 / Greengrass failed."""


class DeploymentError(EdgekitError):
    """A deployment's options are invalid or the service refused it."""


class ServeError(EdgekitError):
    """``edgekit serve`` refused a model or its options (at start, or a model loaded through the API)."""


class EndpointError(EdgekitError):
    """A SageMaker endpoint, its configuration or a transform job can't be created, invoked or deleted."""


EXIT_CODES: dict[type[EdgekitError], int] = {
    ConfigError: 2,
    UnknownTargetError: 2,
    InputShapeError: 2,
    SamplesError: 27,
    MissingDependencyError: 3,
    ModelLoadError: 4,
    ModelConversionError: 4,
    UnsupportedOperatorError: 5,
    CompilationError: 6,
    ToolchainError: 7,
    ArtifactError: 8,
    UnsupportedCpuError: 28,
    SelfTestError: 29,
    AccuracyError: 9,
    InferenceError: 10,
    VerificationError: 11,
    OutputError: 12,
    RecipeError: 13,
    PackagingError: 14,
    ResolutionError: 15,
    PublishError: 16,
    DeploymentError: 17,
    ServeError: 25,
    EndpointError: 26,
}


def exit_code_for(error: BaseException) -> int:
    """Exit code of the CLI for ``error``: the most specific class wins, 1 otherwise.

    Error classes defined in a subpackage (``edgekit.mqtt.errors``, ...) set a class
    attribute ``exit_code`` instead of being listed here.
    """
    for cls in type(error).__mro__:
        if cls in EXIT_CODES:
            return EXIT_CODES[cls]
        code = cls.__dict__.get("exit_code")
        if isinstance(code, int):
            return code
    return 1


def one_line(text: str) -> str:
    """``text`` with control characters escaped (``\\n``), so that a key or value from a file stays on one line."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def first_problem(exc: ValidationError) -> str:
    """``field 'a.b': <message>`` for the first problem pydantic found, to put after a file name."""
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"])
    return one_line(f"field '{where}': {err['msg']}")


# Lines of a message that aren't the cause: a compiler driver's summary and command (TVM's cc puts them after the
# linker's own error), a traceback's frames.
_NOT_THE_CAUSE = re.compile(
    r"^(Command line:|Compilation error:?$|collect2: error: ld returned|Traceback \(most recent call last\)|File \"|\d+: )"
)


def root_cause(error: BaseException) -> BaseException:
    """The innermost exception ``error`` was raised from (``raise ... from``, followed down), or ``error`` itself.

    Only explicit causes: an exception raised while another was being handled may have nothing to do with it."""
    seen = {id(error)}
    while True:
        inner = error.__cause__
        if inner is None or id(inner) in seen:
            return error
        seen.add(id(inner))
        error = inner


# Where in a C++ library a message was raised ('/onnxruntime_src/.../reshape_helper.h:91 onnxruntime::ReshapeHelper::
# ReshapeHelper(const TensorShape&, ...) '): long, and in front of the part that says what is wrong.
_CXX_WHERE = re.compile(r"/\S+\.(?:h|hh|hpp|cc|cpp|cxx):\d+:?\s+(?:[\w:~<>,*& ]+\([^()]*\)\s*(?:const\s*)?)?")


def _own_line(error: BaseException, first: bool) -> str:
    lines = [_CXX_WHERE.sub("", line).strip() for line in str(error).strip().splitlines() if line.strip()]
    telling = [line for line in lines if not _NOT_THE_CAUSE.match(line)] or lines
    if not telling:
        return type(error).__name__
    return telling[0] if first else telling[-1]


def _cut(text: str, limit: int | None) -> str:
    """``text`` in at most ``limit`` characters: its start and its end (where a wrapped message's cause often is)."""
    if limit is None or len(text) <= limit:
        return text
    head = max(limit * 2 // 5, 1)
    return text[:head] + " … " + text[len(text) - max(limit - head - 3, 0) :]


def last_line(exc: BaseException, limit: int | None = 400, *, first: bool = False) -> str:
    """The line of an exception's message that says what went wrong, on one line, at most ``limit`` characters.

    That is the last line (where TVM, ORT and friends put the cause), or the first with ``first`` (skl2onnx and
    torch's exporter put it there), leaving out lines that aren't the cause (a compiler driver's ``Command line:``
    and ``collect2`` summary after the linker's own error, traceback frames). When ``exc`` was raised from another
    exception (a converter wrapping protobuf's TypeError), the root cause's own line follows:
    ``<line> (cause: TypeError: <its line>)`` — so no wrapping loses it. See docs/errors.md (causes)."""
    own = _own_line(exc, first)
    root = root_cause(exc)
    deep = _own_line(root, False) if root is not exc else ""
    if not deep or deep in own:
        return one_line(_cut(own, limit))
    half = None if limit is None else max(limit // 2, 40)
    deep = f"{type(root).__name__}: {deep}"
    return one_line(f"{_cut(own, half)} (cause: {_cut(deep, half)})")


def cause_chain(exc: BaseException) -> list[str]:
    """The exceptions behind ``exc`` (each one's ``__cause__``, else the exception it was raised while handling), outermost
    first, as ``module.Type: message`` (messages whole, several lines where they have them): what ``-v`` prints."""
    chain: list[str] = []
    error: BaseException | None = exc
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        chain.append(f"{type(error).__module__}.{type(error).__qualname__}: {str(error).strip()}")
        error = error.__cause__ or (None if error.__suppress_context__ else error.__context__)
    return chain[1:]


def did_you_mean(word: str, known: Iterable[str]) -> str:
    """``"did you mean 'x'? "`` for the closest of ``known`` to a misspelt ``word``, or ``""``."""
    close = difflib.get_close_matches(word, list(known), n=1)
    return f"did you mean '{close[0]}'? " if close else ""


def reject_unknown_keys(given: Iterable[object], known: Iterable[str], where: str) -> None:
    """ConfigError ``<where>: unknown key 'k'; did you mean ...? known keys: ...`` for the first key not in ``known``."""
    names = list(known)
    for key in given:
        if key not in names:
            raise ConfigError(f"{where}: unknown key '{key}'; {did_you_mean(str(key), names)}known keys: {', '.join(names)}")
