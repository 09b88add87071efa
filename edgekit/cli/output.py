"""Console output shared by the commands (the library itself never prints). See docs/errors.md."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from rich.console import Console
from rich.table import Table

from edgekit.manifest import Manifest
from edgekit.progress import Progress

__all__ = ["console", "err_console", "manifest_table", "progress_line"]


def _console(stderr: bool = False) -> Console:
    probe = Console(stderr=stderr)
    # Logs and pipes get wide lines rather than tables folded into 80 columns.
    return Console(stderr=stderr, highlight=False, width=None if probe.is_terminal else 200)


console = _console()
err_console = _console(stderr=True)


@contextlib.contextmanager
def progress_line(title: str) -> Iterator[Progress]:
    """A spinner with the current step on a terminal; plain lines otherwise (CI logs)."""
    if err_console.is_terminal:
        with err_console.status(title) as status:

            def update(msg: str) -> None:
                status.update(f"{title}: {msg}")

            yield update
    else:

        def plain(msg: str) -> None:
            err_console.print(f"  {msg}", soft_wrap=True)

        yield plain


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def manifest_table(manifests: list[Manifest]) -> Table:
    """One row per artifact: the chosen backend and what was measured."""
    table = Table(title="artifacts", title_justify="left")
    for col in ("artifact", "target", "platform", "backend", "size", "median ms", "p90 ms", "measured on", "max err", "top-1"):
        table.add_column(col, justify="right" if col in ("size", "median ms", "p90 ms", "max err", "top-1") else "left")
    for m in manifests:
        meas = m.measured
        gg = m.profile.greengrass
        table.add_row(
            m.name,
            m.profile.name,
            f"{gg['os']}/{gg['architecture']}",
            m.backend.name,
            f"{m.size_bytes / 1024:.1f} KiB",
            _ms(meas.latency.median_ms if meas else None),
            _ms(meas.latency.p90_ms if meas else None),
            meas.on if meas else "-",
            f"{meas.accuracy.max_abs_error:.1e}" if meas else "-",
            "-" if not meas or meas.accuracy.top1_agreement is None else f"{meas.accuracy.top1_agreement:.2f}",
        )
    return table


def candidates_table(manifest: Manifest) -> Table:
    table = Table(title=f"candidates for {manifest.name}", title_justify="left")
    for col in ("candidate", "backend", "status", "median ms", "max err", "why"):
        table.add_column(col)
    for c in manifest.candidates:
        meas = c.measured
        table.add_row(
            c.name,
            c.backend,
            c.status,
            _ms(meas.latency.median_ms if meas else None),
            f"{meas.accuracy.max_abs_error:.1e}" if meas else "-",
            c.reason,
        )
    return table
