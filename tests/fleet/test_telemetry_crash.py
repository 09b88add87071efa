"""Acknowledged means committed: the fleet service killed with SIGKILL while devices send telemetry loses no window
the broker acknowledged, and stores none twice (bench/telemetry_crash.py measures it over 10 kills)."""

from __future__ import annotations

import asyncio

import pytest
from helpers import requires

from bench.telemetry_crash import measure


@pytest.mark.slow
@requires("mosquitto")
def test_kill_9_of_the_fleet_service_loses_no_acknowledged_window() -> None:
    figures = asyncio.run(measure(kills=3, period=1.0))
    print(figures.line())
    assert figures.acknowledged > 0
    assert figures.lost == 0, figures.line()
    assert figures.stored_twice == 0, figures.line()
    assert figures.stored == figures.acknowledged, figures.line()
