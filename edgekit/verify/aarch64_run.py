"""Runs *inside* the emulated aarch64 Python: numpy and tvm_ffi only, no edgekit.

usage: python aarch64_run.py MODEL_SO INPUTS_NPZ OUTPUT_NPZ INPUT_NAMES(comma-separated)

INPUTS_NPZ holds ``<i>/in/<name>`` arrays (an artifact's selftest.npz); OUTPUT_NPZ
receives ``<i>/out/<k>`` for every sample i and output position k. See docs/artifact.md.
"""

import ctypes
import os
import platform
import sys

import numpy as np


def aligned(arr):
    arr = np.ascontiguousarray(arr)
    buf = np.empty(arr.nbytes + 64, dtype=np.uint8)
    off = (-buf.ctypes.data) % 64
    out = buf[off : off + arr.nbytes].view(arr.dtype).reshape(arr.shape)
    out[...] = arr
    return out


def main():
    lib, inputs, output, names = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4].split(",")
    if platform.machine() != "aarch64":
        sys.exit(f"expected to run on aarch64, got {platform.machine()}")
    ctypes.CDLL(os.environ["EDGEKIT_TVM_RUNTIME"], ctypes.RTLD_GLOBAL)
    import tvm_ffi

    vm = tvm_ffi.load_module(os.path.abspath(lib))["vm_load_executable"]()
    vm["vm_initialization"](1, 0, 2, 1, 0, 2)
    main_fn = vm["main"]
    results = {}
    with np.load(inputs) as data:
        samples = sorted({int(k.split("/", 1)[0]) for k in data.files})
        for i in samples:
            args = [tvm_ffi.from_dlpack(aligned(data[f"{i}/in/{n}"])) for n in names]
            out = main_fn(*args)
            items = [out] if hasattr(out, "__dlpack__") else list(out)
            for k, t in enumerate(items):
                results[f"{i}/out/{k}"] = np.array(np.from_dlpack(t), copy=True)
    np.savez(output, **results)
    print(f"ran {len(samples)} samples on {platform.machine()}")


if __name__ == "__main__":
    main()
