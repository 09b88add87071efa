"""Pictures of the benchmarks (matplotlib, Agg: PNG files, no display needed). See docs/benchmarks.md.

Each bench writes its charts into ``--charts DIR`` (default ``build/bench``) beside its tables.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["latency_per_model", "rollout_progress", "series_over_time"]


def _pyplot() -> Any:  # matplotlib.pyplot, imported on first use
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def latency_per_model(rows: Mapping[str, Mapping[str, float]], path: Path, reference: str = "ONNX Runtime") -> Path:
    """One panel per model: latency per candidate (ms), with the ``reference`` candidate's as a dashed line."""
    plt = _pyplot()
    models = list(rows)
    fig, axes = plt.subplots(1, len(models), figsize=(4 * len(models), 3.2), squeeze=False)
    for ax, model in zip(axes[0], models, strict=True):
        names = [n for n, v in rows[model].items() if v is not None]
        values = [rows[model][n] for n in names]
        colours = ["#3a7bd5" if n != reference else "#1d232b" for n in names]
        ax.barh(names, values, color=colours)
        if reference in rows[model] and rows[model][reference] is not None:
            ax.axvline(rows[model][reference], color="#1d232b", linestyle="--", linewidth=1)
        ax.set_title(model, fontsize=10)
        ax.set_xlabel("ms per call (median)")
        ax.invert_yaxis()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def rollout_progress(released_s: Sequence[float], started_s: Sequence[float], rate_per_min: float, path: Path) -> Path:
    """Devices released by the service and jobs started on devices over time, beside the configured rate."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 3.4))
    for label, times in (("released by the service", sorted(released_s)), ("started on devices", sorted(started_s))):
        if times:
            ax.step(times, range(1, len(times) + 1), where="post", label=label)
    end = max([*released_s, *started_s, 1.0])
    ax.plot([0, end], [0, rate_per_min * end / 60.0], linestyle="--", color="#888", label=f"{rate_per_min:g}/min")
    ax.set_xlabel("seconds since the deployment")
    ax.set_ylabel("devices")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def series_over_time(
    series: Mapping[str, Sequence[tuple[float, float]]], path: Path, ylabel: str, shade: tuple[float, float] | None = None
) -> Path:
    """Lines of (t, value) per name; ``shade`` marks an interval (e.g. a broker outage)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 3.4))
    for name, points in series.items():
        if points:
            xs, ys = zip(*points, strict=True)
            ax.plot(xs, ys, label=name)
    if shade is not None:
        ax.axvspan(*shade, color="#d73a49", alpha=0.12, label="outage")
    ax.set_xlabel("seconds")
    ax.set_ylabel(ylabel)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
