"""simulate's live view on a terminal: what is said once the fleet shows (a shard that died) goes above the view,
which stays, rather than replacing it with a start-up spinner until the next refresh."""

from __future__ import annotations

import io
import time
from pathlib import Path

import pytest


def test_a_line_said_once_the_fleet_shows_goes_above_the_live_view(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from rich.console import Console

    from edgekit.cli import fleet_cmd
    from edgekit.fleet.state import FleetState
    from edgekit.fleet.view import fleet_view
    from edgekit.sim.simulation import SimulationStatus

    out = io.StringIO()
    monkeypatch.setattr(fleet_cmd, "console", Console(file=out, force_terminal=True, width=200, color_system=None))
    with FleetState(tmp_path / "fleet.db") as state:
        view = fleet_view(state)
    status = SimulationStatus(elapsed_s=3.0, devices=2, alive=2, faults=[], broker_url="mqtt://127.0.0.1:1", view=view)
    died = "shard-1 (pid 42) died (killed by SIGKILL): its 1 device(s) are down (d-01); restarting it in 1 s"
    with fleet_cmd._watching(1.0) as (watch, say):
        say("starting mosquitto")  # start-up: the spinner says it
        time.sleep(0.4)
        watch(status)
        time.sleep(0.4)
        say(died)
        time.sleep(0.6)  # refreshes of the live view after the line
    text = out.getvalue()
    assert "starting the simulation: starting mosquitto" in text
    assert died in text and f"starting the simulation: {died}" not in text  # printed, not a spinner's text
    assert "t+3s" in text[text.index(died) + len(died) :]  # the fleet's view is drawn again below it
