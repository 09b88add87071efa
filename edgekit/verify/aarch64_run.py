"""Runs *inside* the emulated aarch64 Python: numpy and tvm_ffi or onnxruntime only, no edgekit.

usage: python aarch64_run.py MODEL INPUTS_NPZ OUTPUT_NPZ INPUT_NAMES(comma-separated)
MODEL is a TVM library (``.so``) or an ONNX file (``.onnx``, run with ONNX Runtime's CPU provider, as on the device).

INPUTS_NPZ holds ``<i>/in/<name>`` arrays (an artifact's selftest.npz); OUTPUT_NPZ
receives ``<i>/out/<k>`` for every sample i and output position k. See docs/artifact.md.
"""

import ctypes
import os
import platform
import sys

import numpy as np


def aligned(arr):
    shape = np.shape(arr)  # ascontiguousarray makes a 0-d array 1-d, and TVM checks the rank
    arr = np.ascontiguousarray(arr)
    buf = np.empty(arr.nbytes + 64, dtype=np.uint8)
    off = (-buf.ctypes.data) % 64
    out = buf[off : off + arr.nbytes].view(arr.dtype).reshape(shape)
    out[...] = arr
    return out


def tvm_model(lib):
    ctypes.CDLL(os.environ["EDGEKIT_TVM_RUNTIME"], ctypes.RTLD_GLOBAL)
    import tvm_ffi

    vm = tvm_ffi.load_module(os.path.abspath(lib))["vm_load_executable"]()
    vm["vm_initialization"](1, 0, 2, 1, 0, 2)
    main_fn = vm["main"]

    def run(arrays):
        out = main_fn(*[tvm_ffi.from_dlpack(aligned(a)) for a in arrays])
        items = [out] if hasattr(out, "__dlpack__") else list(out)
        return [np.array(np.from_dlpack(t), copy=True) for t in items]

    return run


def onnxruntime_model(path, names):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # as edgekit's runner: already optimised
    opts.intra_op_num_threads = 1
    session = ort.InferenceSession(path, sess_options=opts, providers=["CPUExecutionProvider"])
    return lambda arrays: session.run(None, dict(zip(names, arrays, strict=True)))


def main():
    model, inputs, output, names = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4].split(",")
    if platform.machine() != "aarch64":
        sys.exit(f"expected to run on aarch64, got {platform.machine()}")
    run = onnxruntime_model(model, names) if model.endswith(".onnx") else tvm_model(model)
    results = {}
    with np.load(inputs) as data:
        samples = sorted({int(k.split("/", 1)[0]) for k in data.files})
        for i in samples:
            for k, t in enumerate(run([data[f"{i}/in/{n}"] for n in names])):
                results[f"{i}/out/{k}"] = np.asarray(t)
    np.savez(output, **results)
    print(f"ran {len(samples)} samples on {platform.machine()}")


if __name__ == "__main__":
    main()
