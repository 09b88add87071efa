"""Instruction-set features: the names an artifact's manifest records, and what the running CPU has.

One vocabulary, Linux's: the flag names of ``/proc/cpuinfo`` (``flags`` on x86, ``Features`` on aarch64), so
``sse4_2``, ``avx2``, ``avx512f`` on x86 and ``asimd``, ``asimddp`` on aarch64. The compiler maps the LLVM
features of a TVM target (``mcpu``/``mattr``) to these names with :func:`from_llvm` and records the result in
the manifest; :func:`edgekit.load` compares them with :func:`running_features` and refuses an artifact that
needs a feature this CPU lacks, in one line, before any of its code runs (never SIGILL).

Only features that code generation can emit in a model's kernels are recorded: vector and arithmetic
extensions, not crypto, system or cache-control instructions (LLVM's ``cortex-a72`` lists ``aes`` and
``sha2``, which a Raspberry Pi 4 lacks and no kernel uses).

The running CPU: numpy's own CPUID/HWCAP probe (``__cpu_features__``) for the features it knows — it asks
the CPU, so it also tells the truth under ``qemu-x86_64 -cpu Haswell``, where ``/proc/cpuinfo`` still shows
the host's — and ``/proc/cpuinfo`` for the rest. A feature neither source knows about is not held against
the artifact. See docs/compile.md (CPU baselines).
"""

from __future__ import annotations

import functools
import importlib
import platform
from collections.abc import Iterable
from pathlib import Path

from edgekit.machines import machine_of

__all__ = [
    "X86_LEVELS",
    "from_llvm",
    "host_features",
    "missing_features",
    "running_features",
]


# LLVM target feature -> /proc/cpuinfo flag, x86-64. What LLVM may emit in compute code.
_X86_LLVM = {
    "64bit": "lm",
    "x87": "fpu",
    "cmov": "cmov",
    "cx8": "cx8",
    "fxsr": "fxsr",
    "mmx": "mmx",
    "sse": "sse",
    "sse2": "sse2",
    "sse3": "pni",
    "ssse3": "ssse3",
    "sse4.1": "sse4_1",
    "sse4.2": "sse4_2",
    "sse4a": "sse4a",
    "popcnt": "popcnt",
    "sahf": "lahf_lm",
    "cx16": "cx16",
    "avx": "avx",
    "avx2": "avx2",
    "fma": "fma",
    "fma4": "fma4",
    "xop": "xop",
    "f16c": "f16c",
    "bmi": "bmi1",
    "bmi2": "bmi2",
    "lzcnt": "abm",
    "movbe": "movbe",
    "avxvnni": "avx_vnni",
    "avx512f": "avx512f",
    "avx512cd": "avx512cd",
    "avx512bw": "avx512bw",
    "avx512dq": "avx512dq",
    "avx512vl": "avx512vl",
    "avx512ifma": "avx512ifma",
    "avx512vbmi": "avx512vbmi",
    "avx512vbmi2": "avx512_vbmi2",
    "avx512vnni": "avx512_vnni",
    "avx512bitalg": "avx512_bitalg",
    "avx512vpopcntdq": "avx512_vpopcntdq",
    "avx512bf16": "avx512_bf16",
    "avx512fp16": "avx512_fp16",
    "avx512vp2intersect": "avx512_vp2intersect",
}

# LLVM target feature -> /proc/cpuinfo Features, aarch64.
_ARM64_LLVM = {
    "fp-armv8": "fp",
    "neon": "asimd",
    "fullfp16": "asimdhp",
    "fp16fml": "asimdfhm",
    "rdm": "asimdrdm",
    "dotprod": "asimddp",
    "i8mm": "i8mm",
    "bf16": "bf16",
    "sve": "sve",
    "sve2": "sve2",
    "lse": "atomics",
}

# numpy's __cpu_features__ key -> /proc/cpuinfo name (numpy probes CPUID / HWCAP itself).
_NUMPY = {
    "MMX": "mmx",
    "SSE": "sse",
    "SSE2": "sse2",
    "SSE3": "pni",
    "SSSE3": "ssse3",
    "SSE41": "sse4_1",
    "SSE42": "sse4_2",
    "POPCNT": "popcnt",
    "LAHF": "lahf_lm",
    "CX16": "cx16",
    "AVX": "avx",
    "AVX2": "avx2",
    "FMA3": "fma",
    "FMA4": "fma4",
    "XOP": "xop",
    "F16C": "f16c",
    "BMI": "bmi1",
    "BMI2": "bmi2",
    "LZCNT": "abm",
    "MOVBE": "movbe",
    "AVX512F": "avx512f",
    "AVX512CD": "avx512cd",
    "AVX512BW": "avx512bw",
    "AVX512DQ": "avx512dq",
    "AVX512VL": "avx512vl",
    "AVX512IFMA": "avx512ifma",
    "AVX512VBMI": "avx512vbmi",
    "AVX512VBMI2": "avx512_vbmi2",
    "AVX512VNNI": "avx512_vnni",
    "AVX512BITALG": "avx512_bitalg",
    "AVX512VPOPCNTDQ": "avx512_vpopcntdq",
    "AVX512BF16": "avx512_bf16",
    "AVX512FP16": "avx512_fp16",
    "ASIMD": "asimd",
    "ASIMDHP": "asimdhp",
    "ASIMDDP": "asimddp",
    "ASIMDFHM": "asimdfhm",
    "SVE": "sve",
}

# The x86-64 micro-architecture levels (the psABI's), in /proc/cpuinfo names, each on top of the one before
# (v3's OSXSAVE left out: no kernel executes XSAVE).
X86_LEVELS: dict[str, tuple[str, ...]] = {
    "x86-64": ("lm", "fpu", "cmov", "cx8", "fxsr", "mmx", "sse", "sse2"),
    "x86-64-v2": ("pni", "ssse3", "sse4_1", "sse4_2", "popcnt", "lahf_lm", "cx16"),
    "x86-64-v3": ("avx", "avx2", "fma", "f16c", "bmi1", "bmi2", "abm", "movbe"),
    "x86-64-v4": ("avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl"),
}


def from_llvm(features: Iterable[str], arch: str) -> list[str]:
    """The /proc/cpuinfo names of the LLVM target features ``features`` for ``arch`` (x86_64, aarch64), sorted;
    features no kernel uses (crypto, system, tuning hints like ``fast-lzcnt``) are left out."""
    table = {"x86_64": _X86_LLVM, "aarch64": _ARM64_LLVM}.get(machine_of(arch), {})
    return sorted({table[f.lstrip("+")] for f in features if f.lstrip("+") in table})


def _cpuinfo() -> set[str] | None:
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        key = line.split(":", 1)[0].strip()
        if key in ("flags", "Features"):
            return set(line.split(":", 1)[1].split())
    return None


def _numpy_probe() -> dict[str, bool]:
    probe: dict[str, object] = {}
    for module in ("numpy._core._multiarray_umath", "numpy.core._multiarray_umath"):  # numpy 2, numpy 1
        try:
            probe = dict(getattr(importlib.import_module(module), "__cpu_features__", {}))
            break
        except ImportError:
            continue
    return {name: bool(probe[key]) for key, name in _NUMPY.items() if key in probe}


@functools.cache
def running_features() -> tuple[frozenset[str], frozenset[str]]:
    """(features this CPU has, features whose absence is known), in /proc/cpuinfo names."""
    listed = _cpuinfo()
    probed = _numpy_probe() if platform.machine() in ("x86_64", "AMD64", "aarch64", "arm64") else {}
    have = {n for n, ok in probed.items() if ok} | ({n for n in listed if probed.get(n, True)} if listed else set())
    known = set(probed) | (listed or set())
    if listed is not None and platform.machine() in ("x86_64", "AMD64"):
        known |= {f for level in X86_LEVELS.values() for f in level} | set(_X86_LLVM.values())
    elif listed is not None and platform.machine() in ("aarch64", "arm64"):
        known |= set(_ARM64_LLVM.values())
    return frozenset(have), frozenset(known)


def host_features() -> list[str]:
    """The recordable features of the running CPU (what a build specialised to it may use), sorted."""
    machine = machine_of(platform.machine().lower())
    table = {"x86_64": _X86_LLVM, "aarch64": _ARM64_LLVM}.get(machine, {})
    return sorted(running_features()[0] & set(table.values()))


def missing_features(needed: Iterable[str]) -> list[str]:
    """The features of ``needed`` the running CPU lacks (sorted); a feature nothing here can tell about is not counted."""
    have, known = running_features()
    return sorted(f for f in set(needed) if f in known and f not in have)
