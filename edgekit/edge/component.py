"""The inference component's entry: its command line, and its main (load, self-test, report, run the loop).

``components/inference/inference.py`` (what the recipe runs, under the nucleus or edgekit's agent) calls
:func:`run_component`; a simulated in-process device (``edgekit.sim.inference``) takes the same command line with
:func:`parse_args` and runs the same :class:`~edgekit.edge.loop.InferenceLoop`. See docs/edge-runtime.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from edgekit.edge.errors import EdgeError
from edgekit.edge.loop import InferenceLoop, LoopOptions
from edgekit.edge.uplink import Uplink
from edgekit.errors import EdgekitError
from edgekit.manifest import tensors_only

__all__ = ["CHECKPOINT_ENV", "STAND_IN_ENV", "argument_parser", "parse_args", "run_component"]

CHECKPOINT_ENV = "EDGEKIT_CHECKPOINT_DIR"
"""Set by a fleet harness (emulated devices) that counts what a component produced from outside its process."""
STAND_IN_ENV = "EDGEKIT_STAND_IN"
"""``1`` in a component's environment: its process stands in for a device of another platform (edgekit's simulator
sets it for its subprocess devices; a real device never has it), so the artifact's host twin runs."""


def argument_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="inference.py", description="edgekit inference component (docs/edge-runtime.md)")
    p.add_argument("model_dir", type=Path)
    p.add_argument("--input-source", dest="source", default="synthetic", help="synthetic[:k=v,...], file:<path>, mqtt:<topic>")
    p.add_argument("--window-seconds", dest="window_s", type=float, default=10.0, help="one summary per window (0: per reading)")
    p.add_argument(
        "--interval-seconds", dest="interval_s", type=float, default=0.1, help="between readings (0: as fast as it goes)"
    )
    p.add_argument("--max-inferences", dest="max_readings", type=int, default=0, help="stop after N readings (0: never)")
    p.add_argument("--topic", default="", help="IoT Core topic of the summaries (unanswered readings: <topic>/unanswered)")
    p.add_argument("--component", default="", help="the component's name (in its summaries)")
    p.add_argument("--output-path", default="", help="also append each summary to this JSON-lines file")
    p.add_argument("--min-confidence", type=float, default=0.0, help="below this top-class probability the cloud is asked")
    p.add_argument("--fallback-url", default="", help="an Open Inference Protocol server (KServe v2); '' = none")
    p.add_argument("--fallback-model", default="", help="the model's name there ('' = the artifact's name)")
    p.add_argument("--fallback-timeout-seconds", dest="fallback_timeout_s", type=float, default=2.0)
    p.add_argument("--tick-seconds", dest="tick_s", type=float, default=0.0,
                   help="wake at most this often and take the readings due (0: for each reading)")  # fmt: skip
    p.add_argument("--health-interval-seconds", dest="health_interval_s", type=float, default=5.0,
                   help="a failing local model is tried again after this long")  # fmt: skip
    p.add_argument("--checkpoint-dir", default=os.environ.get(CHECKPOINT_ENV, ""),
                   help=f"after each window, write where the loop stands here as JSON (default: ${CHECKPOINT_ENV})")  # fmt: skip
    return p


@functools.cache
def _parser() -> argparse.ArgumentParser:
    """One parser for every :func:`parse_args` of this process (a simulator's shard starts thousands of components:
    building the parser was most of a start's own work). Parsing leaves it as it was."""
    parser = argument_parser()
    parser.exit_on_error = False
    return parser


def parse_args(argv: Sequence[str]) -> tuple[Path, LoopOptions]:
    """(model folder, options) from the component's command line; bad values raise :class:`EdgeError`."""
    # the environment's default as of this call (argparse fills in only what the namespace lacks)
    given = argparse.Namespace(checkpoint_dir=os.environ.get(CHECKPOINT_ENV, ""))
    try:
        ns = _parser().parse_args(list(argv), namespace=given)
    except (argparse.ArgumentError, SystemExit) as exc:
        raise EdgeError(f"inference component arguments {list(argv)}: {exc}") from None
    values = vars(ns)
    model_dir = values.pop("model_dir")
    options = LoopOptions(**values)
    if not 0.0 <= options.min_confidence <= 1.0:
        raise EdgeError(f"--min-confidence {options.min_confidence}: must be within [0, 1]")
    return model_dir, options


async def run_component(argv: Sequence[str], *, thing: str = "", component: str = "", ipc: bool = True) -> int:
    """The packaged component's main: load the artifact, self-test, report over IPC, run the loop until SIGTERM."""
    import platform
    import signal

    import edgekit

    try:
        model_dir, options = parse_args(argv)
        # set by edgekit's simulator only: this process stands in for a device of another platform
        model = edgekit.load(model_dir, stand_in=os.environ.get(STAND_IN_ENV) == "1")
        tensors_only(model.manifest, "the inference component", "its input sources make tensors")
    except EdgekitError as exc:
        print(f"edgekit inference: {exc}", file=sys.stderr, flush=True)
        return 2
    uplink: Uplink | None = None
    if ipc:
        from edgekit.edge.uplink import GreengrassUplink

        uplink = GreengrassUplink()
    check = model.selftest()
    print(
        f"edgekit inference: loaded {model} on {platform.machine()}; self-test {'passed' if check.passed else 'FAILED'} (max abs error {check.max_abs_error:.3g})",
        flush=True,
    )
    if uplink is not None:
        await uplink.report("RUNNING" if check.passed else "ERRORED")
    if not check.passed:
        return 1
    loop = InferenceLoop(model, options, uplink=uplink, thing=thing, component=component)
    running = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            running.add_signal_handler(sig, loop.stop)
    try:
        final = await loop.run()
    finally:
        if uplink is not None:
            with contextlib.suppress(Exception):
                await uplink.close()
    print(
        f"edgekit inference: {final.readings} readings in {final.window} windows; {final.windows_sent} messages handed over, "
        f"{final.unsent} not",
        flush=True,
    )
    return 0
