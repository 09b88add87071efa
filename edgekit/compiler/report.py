"""A self-contained HTML page of what a compile measured: every candidate's latency, accuracy, size and fate.

``edgekit compile ... --report report.html``. One file, inline CSS and SVG, nothing fetched. See docs/compile.md.
"""

from __future__ import annotations

import html
import os
import uuid
from pathlib import Path

from edgekit.compiler.evaluation import percent
from edgekit.manifest import Accuracy, CandidateReport, Manifest

__all__ = ["render_report", "write_report"]

_COLOURS = {"chosen": "#2ea043", "rejected": "#d29922", "skipped": "#8b949e", "failed": "#d73a49"}


def _latency_chart(candidates: list[CandidateReport]) -> str:
    """Horizontal bars: median (solid) to p90 (light) per measured candidate, with ONNX Runtime's median as a line."""
    measured = [c for c in candidates if c.measured is not None]
    if not measured:
        return "<p>No candidate was measured.</p>"
    top = max(c.measured.latency.p90_ms for c in measured if c.measured) * 1.1 or 1.0
    width, row, left = 640, 28, 170
    scale = (width - left - 70) / top
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{row * len(measured) + 30}" role="img">']
    for i, c in enumerate(measured):
        assert c.measured is not None
        y = 10 + i * row
        med, p90 = c.measured.latency.median_ms, c.measured.latency.p90_ms
        colour = _COLOURS.get(c.status, "#888")
        parts += [
            f'<text x="{left - 8}" y="{y + 15}" text-anchor="end">{html.escape(c.name)}</text>',
            f'<rect x="{left}" y="{y + 3}" width="{p90 * scale:.1f}" height="16" fill="{colour}" opacity="0.35"/>',
            f'<rect x="{left}" y="{y + 3}" width="{med * scale:.1f}" height="16" fill="{colour}"/>',
            f'<text x="{left + p90 * scale + 6:.1f}" y="{y + 15}">{med:.3f} ms (p90 {p90:.3f})</text>',
        ]
    ort = next((c for c in measured if c.backend == "onnxruntime" and not c.passes), None)
    if ort is not None and ort.measured is not None:
        x = left + ort.measured.latency.median_ms * scale
        parts.append(
            f'<line x1="{x:.1f}" y1="4" x2="{x:.1f}" y2="{row * len(measured) + 14}" stroke="#1d232b" stroke-dasharray="4 3"/>'
        )
        parts.append(
            f'<text x="{x + 4:.1f}" y="{row * len(measured) + 26}" font-size="11">ONNX Runtime {ort.measured.latency.median_ms:.3f} ms</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def _accuracy(accuracy: Accuracy) -> str:
    """Against the samples' truth beside the source's, when there is one; agreement with the source always."""
    agree = f"agrees {percent(accuracy.top1_agreement)}" if accuracy.top1_agreement is not None else ""
    if accuracy.top1_accuracy is not None and accuracy.source_top1_accuracy is not None:
        own = f"top-1 <b>{percent(accuracy.top1_accuracy)}</b> (source {percent(accuracy.source_top1_accuracy)})"
    elif accuracy.expected_error is not None and accuracy.source_expected_error is not None:
        own = f"error <b>{accuracy.expected_error:.3g}</b> (source {accuracy.source_expected_error:.3g})"
    else:
        return agree or "-"
    return own + (f"; {agree}" if agree else "")


def _rows(candidates: list[CandidateReport]) -> str:
    out = []
    for c in candidates:
        m = c.measured
        cells = [
            html.escape(c.name),
            html.escape(c.backend),
            f'<span style="color:{_COLOURS.get(c.status, "#888")}">{c.status}</span>',
            f"{m.latency.median_ms:.3f} / {m.latency.p90_ms:.3f} ({m.latency.runs} runs, {m.on})" if m else "-",
            f"{m.accuracy.max_abs_error:.2e}" if m else "-",
            _accuracy(m.accuracy) if m else "-",
            f"{c.size_bytes / 1024:,.0f} KiB" if c.size_bytes is not None else "-",
            f"{c.compile_seconds:.2f} s" if c.compile_seconds is not None else "-",
            html.escape(c.reason or ""),
        ]
        out.append("<tr>" + "".join(f"<td>{v}</td>" for v in cells) + "</tr>")
    return "".join(out)


def _budget(manifest: Manifest) -> str:
    """The chosen candidate's budget in words, on what it was judged, and the warning when that set is too small."""
    chosen = next((c for c in manifest.candidates if c.status == "chosen"), None)
    parts = []
    if chosen is not None and chosen.budget:
        samples = manifest.samples
        on = f" ({samples.evaluation} evaluation samples with {samples.truth})" if samples and samples.truth else ""
        parts.append(f"<p>Accuracy budget: <b>{html.escape(chosen.budget)}</b>{html.escape(on)}.</p>")
    if manifest.samples is not None and manifest.samples.warning:
        parts.append(f'<p style="color:{_COLOURS["rejected"]}">Warning: {html.escape(manifest.samples.warning)}</p>')
    return "\n".join(parts)


def render_report(manifest: Manifest) -> str:
    """The page for ``manifest`` (a string of HTML)."""
    m = manifest
    chosen = f"{m.backend.name} ({m.name})"
    latency = (
        f"{m.measured.latency.median_ms:.3f} ms median on {m.measured.on} ({html.escape(m.measured.host)})"
        if m.measured
        else "not measured"
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>edgekit compile report: {html.escape(m.name)}</title>
<style>
body {{ font: 14px/1.45 system-ui, sans-serif; margin: 2em; color: #1d232b; }}
table {{ border-collapse: collapse; margin: 1em 0; }} td, th {{ border: 1px solid #dde; padding: .25em .6em; text-align: left; }}
svg text {{ font: 12px system-ui, sans-serif; }} .dim {{ color: #778; }}
</style></head><body>
<h1>{html.escape(m.name)}</h1>
<p>{html.escape(m.source.path)} ({m.source.format}, {html.escape(m.source.framework)}) for <b>{html.escape(m.profile.name)}</b>
with pipeline <b>{html.escape(str(m.pipeline.get("name")))}</b>; chosen: <b>{html.escape(chosen)}</b>, {latency};
{m.size_bytes / 1024:,.0f} KiB; compiled in {m.compile_seconds:.1f} s by edgekit {html.escape(m.edgekit_version)}.</p>
<h2>Latency per candidate</h2>
<p class="dim">Bars: median (solid) and 90th percentile (light) of {m.measured.latency.runs if m.measured else 0} timed calls,
candidates timed in interleaved rounds; the dashed line is ONNX Runtime's median.</p>
{_latency_chart(m.candidates)}
<h2>Candidates</h2>
<table><tr><th>candidate</th><th>backend</th><th>status</th><th>latency ms median / p90</th><th>max abs error</th>
<th>accuracy</th><th>size</th><th>compile</th><th>reason</th></tr>{_rows(m.candidates)}</table>
{_budget(m)}
<p class="dim">Accuracy budget as configured: {html.escape(str(m.pipeline.get("accuracy")))}; cache key {m.cache_key[:16]}…</p>
</body></html>
"""


def write_report(manifest: Manifest, path: str | Path) -> Path:
    """Write :func:`render_report` to ``path`` atomically."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}")
    tmp.write_text(render_report(manifest), encoding="utf-8")
    os.replace(tmp, target)
    return target
