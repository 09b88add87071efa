"""TVM runner that needs only the 3 MB TVM runtime (``libtvm_runtime.so`` + ``tvm_ffi``), not the compiler.

This is the path a device runs — what DLR was for SageMaker Neo. See docs/compile.md (the runtime a device needs).
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import platform
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.deps import require
from edgekit.errors import ArtifactError, MissingDependencyError, last_line
from edgekit.machines import elf_machine
from edgekit.manifest import TensorSpec
from edgekit.runtime.backend_runner import Runner

__all__ = ["TvmRunner", "find_runtime_library", "tvm_thread_count", "tvm_thread_environment"]

_THREAD_VARIABLES = ("TVM_NUM_THREADS", "OMP_NUM_THREADS")  # what TVM's pool reads its thread count from, in order
_ALIGN = 64  # TVM kernels assume 64-byte aligned buffers (AVX-512 aligned loads)
_loaded_lock = threading.Lock()
_loaded: str | None = None


_DLPACK_NUMPY = frozenset(
    ["bool", "float16", "float32", "float64", "complex64", "complex128"]
    + [f"{s}int{b}" for s in ("", "u") for b in (8, 16, 32, 64)]
)  # what numpy's DLPack takes
_RETYPED = ("bfloat16", "float8")  # what crosses as unsigned integers of its width instead


def find_runtime_library(*, host_only: bool = False) -> Path:
    """``libtvm_runtime.so``: ``$EDGEKIT_TVM_RUNTIME`` (the runtime component's, on a device), else the installed
    TVM package's. ``host_only`` (a process standing in for a device of another platform): a library given for
    another machine (the device's) is passed over for this host's."""
    env = os.environ.get("EDGEKIT_TVM_RUNTIME")
    if env:
        path = Path(env)
        if not path.is_file():
            raise MissingDependencyError("tvm", "tvm", f"EDGEKIT_TVM_RUNTIME={env} does not exist; running TVM artifacts")
        machine = elf_machine(path) if host_only else None
        if machine is None or machine == platform.machine():
            return path
    spec = importlib.util.find_spec("tvm")
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependencyError("tvm", "tvm", "running a TVM artifact")
    for loc in spec.submodule_search_locations:
        lib = Path(loc) / "lib" / "libtvm_runtime.so"
        if lib.is_file():
            return lib
    raise MissingDependencyError("tvm", "tvm", "running a TVM artifact (libtvm_runtime.so not found in the package)")


def physical_cores(sysfs: Path = Path("/sys/devices/system/cpu")) -> int | None:
    """The physical cores this process may run on — hyper-threads of one core counted once, from each allowed CPU's
    ``topology`` (package, core) in sysfs: ONNX Runtime's rule for its default threads. None where sysfs doesn't say."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except AttributeError:  # no sched_getaffinity (macOS)
        return None
    cores: set[tuple[str, str]] = set()
    for cpu in cpus:
        topology = sysfs / f"cpu{cpu}" / "topology"
        try:
            cores.add(((topology / "physical_package_id").read_text().strip(), (topology / "core_id").read_text().strip()))
        except OSError:
            return None
    return len(cores) or None


def tvm_thread_count() -> int:
    """The threads TVM's pool runs kernels with in this process (and in the processes it starts):
    ``$TVM_NUM_THREADS``, else ``$OMP_NUM_THREADS``, else one per physical core this process may use
    (:func:`physical_cores`) — never more than the CPUs.

    TVM's own default halves the CPUs on x86_64, assuming two hyper-threads a core; a VM whose vCPUs are cores of
    their own (this 2-vCPU build host: 2 cores × 1 thread) then runs one thread on two cores — the tuned trained CNN
    57.8 µs a call at 1 thread, 46.5 µs at 2. Counting the cores themselves keeps TVM's intent (one thread a core)
    where it holds and fixes it where it doesn't; TVM's rule stays the fallback where sysfs gives no topology."""
    cpus = os.cpu_count() or 1
    for name in _THREAD_VARIABLES:
        value = os.environ.get(name, "").strip()
        if value:
            try:
                return max(1, min(int(value), cpus))
            except ValueError:
                return 1  # TVM's atoi reads a non-number as 0, then runs 1 thread
    cores = physical_cores()
    if cores is not None:
        return max(1, min(cores, cpus))
    return max(1, cpus // 2 if platform.machine() in ("x86_64", "AMD64") else cpus)


def tvm_thread_environment() -> None:
    """Set TVM's thread count and placement in the environment, before anything TVM runs (the processes it starts,
    MetaSchedule's runners among them, inherit both).

    The count: with neither ``$TVM_NUM_THREADS`` nor ``$OMP_NUM_THREADS`` set, TVM works its default out again at
    every parallel loop a kernel starts — ``std::thread::hardware_concurrency()``, which reads
    ``/sys/devices/system/cpu/online``: measured, 10 file reads per call of the tuned trained CNN, its 57.8 µs call
    taking 121 µs. edgekit sets ``TVM_NUM_THREADS`` once, to one thread per physical core (:func:`tvm_thread_count`).

    The placement: TVM pins its workers — and the thread that calls it, for good — to cores (core 0 when it runs one
    thread, as on a 2-CPU x86 host): the whole calling thread then stays on that core, and so do threads it starts
    later (ONNX Runtime's). edgekit leaves placement to the OS, as ONNX Runtime does; ``TVM_BIND_THREADS=1`` lets TVM
    pin."""
    os.environ.setdefault("TVM_BIND_THREADS", "0")
    if not any(os.environ.get(name, "").strip() for name in _THREAD_VARIABLES):
        os.environ["TVM_NUM_THREADS"] = str(tvm_thread_count())


def _load_runtime(host_only: bool = False) -> None:
    global _loaded
    with _loaded_lock:
        if _loaded is None:
            tvm_thread_environment()
            # tvm_ffi first: it loads libtvm_ffi.so, which libtvm_runtime.so links against.
            require("tvm_ffi", "running a TVM artifact")
            lib = find_runtime_library(host_only=host_only)
            ctypes.CDLL(str(lib), mode=ctypes.RTLD_GLOBAL)
            _loaded = str(lib)


def _aligned_copy(arr: np.ndarray) -> np.ndarray:
    shape = np.shape(arr)  # ascontiguousarray makes a 0-d array 1-d, and TVM checks the rank
    arr = np.ascontiguousarray(arr)
    buf = np.empty(arr.nbytes + _ALIGN, dtype=np.uint8)
    offset = (-buf.ctypes.data) % _ALIGN
    out = buf[offset : offset + arr.nbytes].view(arr.dtype).reshape(shape)
    out[...] = arr
    return out


class TvmRunner(Runner):
    backend = "tvm"

    def __init__(
        self, entry: Path, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec], *, host_only: bool = False
    ) -> None:
        super().__init__(entry, inputs, outputs)
        self._ffi = require("tvm_ffi", "running a TVM artifact")
        _load_runtime(host_only)
        try:
            module = self._ffi.load_module(str(entry.resolve()))
            self._vm = module["vm_load_executable"]()
            # (device type, id, allocator) for the device and for the host: CPU, 0, pooled.
            self._vm["vm_initialization"](1, 0, 2, 1, 0, 2)
            self._main = self._vm["main"]
        except Exception as exc:
            raise ArtifactError(
                f"{entry}: the TVM runtime cannot load this library ({last_line(exc, first=True)}); "
                f"it may be built for another architecture or another TVM version"
            ) from exc
        self._order = [s.name for s in self.inputs]
        self._lock = threading.Lock()  # the aligned input buffers and their TVM views are reused between calls
        self._one_byte = _aligned_copy(np.zeros(1, dtype=np.uint8))  # what an empty input's view stands on
        # Per input: an aligned buffer and the TVM tensor viewing it, made once. A call copies the input into the
        # buffer and passes the same view: no DLPack exchange, no alignment check, no new object per call.
        self._staged: dict[str, tuple[np.ndarray, Any]] = {}
        self._slots: list[tuple[str, np.ndarray, Any]] = []  # the same, in input order: what a call walks
        for spec in self.inputs:
            self._stage(spec.name, _aligned_copy(np.zeros(spec.shape, dtype=spec.dtype)))
        # Outputs numpy's DLPack takes as they are (by the manifest's dtypes) skip the per-call dtype query.
        self._plain = all(s.dtype in _DLPACK_NUMPY for s in self.outputs)
        self._one_out = len(self.outputs) == 1

    def _stage(self, name: str, buf: np.ndarray) -> tuple[np.ndarray, Any]:
        staged = self._staged[name] = (buf, self._tensor(buf))
        self._slots = [(n, *self._staged[n]) for n in self._order if n in self._staged]
        return staged

    def _run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        with self._lock:
            args = []
            for name, buf, tensor in self._slots:
                feed = feeds[name]
                if buf.shape != feed.shape:  # a dynamic dimension at another size: a buffer (and view) of that size
                    buf, tensor = self._stage(name, _aligned_copy(np.zeros(feed.shape, dtype=buf.dtype)))
                buf[...] = feed
                args.append(tensor)
            out: Any = self._main(*args)
            if self._plain and self._one_out and hasattr(out, "__dlpack__"):
                return [np.from_dlpack(out).copy()]  # the usual case: one tensor out
            items = [out] if hasattr(out, "__dlpack__") else list(out)
            if self._plain and len(items) == len(self.outputs):
                return [np.from_dlpack(t).copy() for t in items]
            return [self._array(t) for t in items]

    # numpy's DLPack carries integers, floats and complex only: bfloat16 and the float8 types (ml_dtypes, which
    # ONNX's numpy helpers use) cross as unsigned integers of their width, retyped by a TVM view on the other side.

    def _tensor(self, arr: np.ndarray) -> Any:
        if arr.size == 0:  # numpy exports an empty array with all-zero strides, which TVM refuses as not compact
            return self._view(self._ffi.from_dlpack(self._one_byte), arr.shape, str(arr.dtype))
        if not arr.dtype.name.startswith(_RETYPED):
            return self._ffi.from_dlpack(arr)
        bits = self._ffi.from_dlpack(arr.view(f"uint{8 * arr.dtype.itemsize}"))
        return self._view(bits, arr.shape, str(arr.dtype))

    def _array(self, tensor: Any) -> np.ndarray:
        name = str(tensor.dtype)
        if name in _DLPACK_NUMPY or not name.startswith(_RETYPED):
            return np.array(np.from_dlpack(tensor), copy=True)
        dtype = np.dtype(name)  # bfloat16, float8: known to numpy once ml_dtypes is imported (ONNX imports it)
        bits = self._view(tensor, tuple(tensor.shape), f"uint{8 * dtype.itemsize}")
        return np.array(np.from_dlpack(bits), copy=True).view(dtype)

    def _view(self, tensor: Any, shape: tuple[int, ...], dtype: str) -> Any:
        view = self._ffi.get_global_func("runtime.TVMTensorCreateView")
        return view(tensor, self._ffi.Shape(shape), self._ffi.dtype(dtype), 0)
