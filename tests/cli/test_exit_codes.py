"""Each kind of error has its own exit code: two classes share one only when one is a kind of the other."""

from __future__ import annotations

import importlib
import pkgutil

import edgekit
from edgekit.errors import EXIT_CODES, EdgekitError


def _code(cls: type[EdgekitError]) -> int:
    """What ``exit_code_for`` answers for an instance of ``cls`` (without having to build one)."""
    for c in cls.__mro__:
        if c in EXIT_CODES:
            return EXIT_CODES[c]
        code = c.__dict__.get("exit_code")
        if isinstance(code, int):
            return code
    return 1


def _all_error_classes() -> list[type[EdgekitError]]:
    for info in pkgutil.walk_packages(edgekit.__path__, "edgekit."):
        if info.name.endswith(("aarch64_run", "__main__")):  # runs inside the emulated device / runs the CLI
            continue
        importlib.import_module(info.name)
    seen: list[type[EdgekitError]] = []
    stack: list[type[EdgekitError]] = [EdgekitError]
    while stack:
        cls = stack.pop()
        seen.append(cls)
        stack.extend(cls.__subclasses__())
    return seen


SHARED = {frozenset({"ModelLoadError", "ModelConversionError"})}  # one code on purpose: "the model can't be read" (4)


def test_no_two_unrelated_errors_share_an_exit_code() -> None:
    classes = _all_error_classes()
    assert len(classes) > 30
    clashes = []
    for a in classes:
        for b in classes:
            if a is b or a is EdgekitError or b is EdgekitError or issubclass(a, b) or issubclass(b, a):
                continue
            if frozenset({a.__name__, b.__name__}) in SHARED:
                continue
            code_a, code_b = _code(a), _code(b)
            if code_a == code_b and not any(issubclass(a, c) and issubclass(b, c) and c is not EdgekitError
                                            and _code(c) == code_a for c in classes):  # fmt: skip
                clashes.append((a.__module__ + "." + a.__name__, b.__module__ + "." + b.__name__, code_a))
    assert clashes == []
