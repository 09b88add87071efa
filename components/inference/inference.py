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
  --fallback-url     an Open Inference Protocol server (KServe v2 / Triton), or sagemaker://<endpoint>, asked when the local model fails or
  --fallback-model   is less confident than --min-confidence ("" = no fallback); behind a circuit breaker.
  --min-confidence   A reading nobody answers goes to the spool under <topic>/unanswered.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

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


def _answer(
    model: edgekit.runtime.LoadedModel, feeds: dict[str, np.ndarray], fallback: Any, min_confidence: float, spool: Any, topic: str
) -> tuple[int | None, str]:
    """(top class or None, who answered): the local model, else the cloud fallback, else nobody (spooled)."""
    from edgekit.edge.errors import EdgeError
    from edgekit.edge.runner import confidence_of
    from edgekit.errors import EdgekitError

    top = None
    error = ""
    try:
        top = confidence_of(model.predict(feeds)[-1])
    except EdgekitError as exc:
        error = str(exc)
    if fallback is None or (not error and (top is None or top[1] >= min_confidence)):
        return (top[0] if top else None), ("local" if not error else "none")
    try:
        cloud = confidence_of(fallback.infer(feeds)[-1])
        return (cloud[0] if cloud else None), "cloud"
    except EdgeError as exc:
        if not error:
            return (top[0] if top else None), "local"  # the cloud is away: the local answer stands
        if spool is not None:
            buf = io.BytesIO()
            np.savez(buf, **feeds)
            spool.put(f"{topic}/unanswered", buf.getvalue())
        print(f"edgekit inference: unanswered ({error}; fallback: {exc})", file=sys.stderr, flush=True)
        return None, "none"


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
    parser.add_argument("--fallback-url", default="")
    parser.add_argument("--fallback-model", default="")
    parser.add_argument("--min-confidence", type=float, default=0.0)
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
    fallback = None
    if args.fallback_url:
        from edgekit.edge.fallback import make_fallback

        fallback = make_fallback(args.fallback_url, args.fallback_model or model.manifest.name)
    answered_by = {"local": 0, "cloud": 0, "none": 0}
    rng = np.random.default_rng(0)
    counts: dict[int, int] = {}
    started = time.monotonic()
    done = 0
    try:
        while limit == 0 or done < limit:
            t0 = time.perf_counter()
            feeds = _inputs(model, source, rng)
            top, by = _answer(model, feeds, fallback, args.min_confidence, spool, args.topic)
            ms = (time.perf_counter() - t0) * 1e3
            answered_by[by] += 1
            if top is not None:
                counts[top] = counts.get(top, 0) + 1
            done += 1
            if time.monotonic() - started >= window or (limit and done >= limit):
                line = json.dumps(
                    {
                        "thing": thing,
                        "window_end": round(time.time(), 3),  # with "thing": the key to de-duplicate on
                        "window_s": round(time.monotonic() - started, 3),
                        "inferences": sum(answered_by.values()),
                        "answered_by": dict(answered_by),
                        "top1_counts": {str(k): v for k, v in sorted(counts.items())},
                        "last_latency_ms": round(ms, 3),
                    }
                )
                out.write(line + "\n")
                out.flush()
                if spool is not None:
                    spool.put(args.topic, line.encode())
                counts.clear()
                answered_by = dict.fromkeys(answered_by, 0)
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
