"""Inference component entry point (runs on the device under the Greengrass nucleus).

usage: inference.py MODEL_DIR [--input-source S] [--window-seconds W] [--output-path P]
                    [--max-inferences N] [--interval-seconds I]

The recipe passes the component's configuration (``{configuration:/InputSource}`` ...):
  --input-source     "synthetic" (random inputs of the model's shapes) or "file:<path.npy|.npz>"
  --window-seconds   aggregate predictions over windows of this many seconds
  --output-path      JSON-lines file for the aggregates ("" = stdout)
  --max-inferences   stop after this many inferences ("0" = run until stopped)
  --interval-seconds pause between inferences
  --spool-path       also put each window's summary into this edgekit.edge spool ("" = don't); the device's
                     edgekit agent sends it over MQTT whenever it is online (like Greengrass stream manager:
                     the component needs no MQTT connection or credentials of its own)
  --topic            the MQTT topic for the summaries
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

import edgekit


def _inputs(model: edgekit.runtime.LoadedModel, source: str, rng: np.random.Generator) -> dict[str, np.ndarray]:
    specs = model.manifest.inputs
    if source.startswith("file:"):
        path = Path(source[5:])
        if path.suffix == ".npz":
            with np.load(path) as data:
                return {s.name: data[s.name] for s in specs}
        return {specs[0].name: np.load(path)}
    return {s.name: rng.standard_normal(s.shape).astype(s.dtype) for s in specs}


def main() -> int:
    parser = argparse.ArgumentParser(description="edgekit inference component")
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("--input-source", default="synthetic")
    parser.add_argument("--window-seconds", type=float, default=10.0)
    parser.add_argument("--output-path", default="")
    parser.add_argument("--max-inferences", type=int, default=0)
    parser.add_argument("--interval-seconds", type=float, default=0.1)
    parser.add_argument("--spool-path", default="")
    parser.add_argument("--topic", default="")
    args = parser.parse_args()
    model = edgekit.load(args.model_dir)
    check = model.selftest()
    print(
        f"edgekit inference: loaded {model}; self-test {'passed' if check.passed else 'FAILED'} "
        f"(max abs error {check.max_abs_error:.3g})",
        flush=True,
    )
    if not check.passed:
        return 1
    source, window, limit, pause, out_path = (
        args.input_source,
        args.window_seconds,
        args.max_inferences,
        args.interval_seconds,
        args.output_path,
    )
    out = open(out_path, "a") if out_path else sys.stdout  # noqa: SIM115
    spool = None
    if args.spool_path:
        from edgekit.edge.spool import Spool

        if not args.topic:
            parser.error("--spool-path needs --topic")
        spool = Spool(args.spool_path, on_full="overwrite_oldest")
    thing = os.environ.get("AWS_IOT_THING_NAME", "")
    rng = np.random.default_rng(0)
    counts: dict[int, int] = {}
    started = time.monotonic()
    done = 0
    try:
        while limit == 0 or done < limit:
            t0 = time.perf_counter()
            outputs = model.predict(_inputs(model, source, rng))
            ms = (time.perf_counter() - t0) * 1e3
            top = int(np.argmax(outputs[-1].reshape(-1)))
            counts[top] = counts.get(top, 0) + 1
            done += 1
            if time.monotonic() - started >= window or (limit and done >= limit):
                line = json.dumps(
                    {
                        "thing": thing,
                        "window_end": round(time.time(), 3),  # with "thing": the key to de-duplicate on
                        "window_s": round(time.monotonic() - started, 3),
                        "inferences": sum(counts.values()),
                        "top1_counts": {str(k): v for k, v in sorted(counts.items())},
                        "last_latency_ms": round(ms, 3),
                    }
                )
                out.write(line + "\n")
                out.flush()
                if spool is not None:
                    spool.put(args.topic, line.encode())
                counts.clear()
                started = time.monotonic()
            time.sleep(pause)
    finally:
        if out is not sys.stdout:
            out.close()
        if spool is not None:
            spool.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
