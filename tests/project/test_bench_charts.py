"""The benchmarks' charts are real PNG pictures of the figures they are given."""

from __future__ import annotations

from pathlib import Path

from bench.charts import latency_per_model, rollout_progress, series_over_time

PNG = b"\x89PNG\r\n\x1a\n"


def test_each_chart_is_a_png(tmp_path: Path) -> None:
    paths = [
        latency_per_model(
            {"MLP": {"ONNX Runtime": 0.008, "TVM tuned": 0.007, "int8": 0.010}, "CNN": {"ONNX Runtime": 0.09}}, tmp_path / "a.png"
        ),
        rollout_progress([0.0, 0.6, 1.2, 30.0], [0.1, 0.7, 1.3, 30.2], 100, tmp_path / "b.png"),
        series_over_time(
            {"readings": [(0, 0), (1, 100), (2, 200)], "uplink": [(0, 0), (2, 2)]},
            tmp_path / "c.png",
            "messages",
            shade=(0.5, 1.5),
        ),
    ]
    for path in paths:
        data = path.read_bytes()
        assert data.startswith(PNG) and len(data) > 5_000  # a drawn picture, not an empty canvas
