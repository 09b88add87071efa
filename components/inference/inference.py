"""Inference component entry point (runs on the device under the Greengrass nucleus or edgekit's agent).

usage: inference.py MODEL_DIR [--input-source S] [--window-seconds W] [--interval-seconds I] [--topic T]
                    [--min-confidence C] [--fallback-url URL] [--fallback-model M] [--output-path P] ...

The recipe passes the component's configuration as these arguments (``{configuration:/InputSource}`` ...); the
whole loop is :class:`edgekit.edge.loop.InferenceLoop`, started by :mod:`edgekit.edge.component`: the same code a
simulated in-process device runs (``python inference.py --help`` lists every argument). Under a Greengrass nucleus (or edgekit's agent: both set
``SVCUID`` and the IPC socket) summaries go out with IPC ``PublishToIoTCore``, the component reports RUNNING or
ERRORED with ``UpdateState`` after its self-test, and follows ``MinConfidence``, ``WindowSeconds`` and
``IntervalSeconds`` while it runs. Outside one it writes the summaries to ``--output-path`` or stdout.
SIGTERM (the nucleus stopping or updating the component) summarises the open window and hands it over first.
See docs/edge-runtime.md.
"""

from __future__ import annotations

import asyncio
import os
import sys

from edgekit.edge.component import run_component

if __name__ == "__main__":
    sys.exit(asyncio.run(run_component(sys.argv[1:], thing=os.environ.get("AWS_IOT_THING_NAME", ""), ipc=bool(os.environ.get("SVCUID")))))
