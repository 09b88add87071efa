"""The simulated devices of one process download and unpack an artifact once, and each verifies it.

Real parts: mosquitto, the fleet service and its HTTP server, device agents (docs/local-fleet.md, what a simulated
device shares).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import zipfile
from pathlib import Path

from edgekit.fleet_file import FleetFile
from edgekit.sim import Simulation

APP = "com.example.Shared"
DEVICES = 8


def _build(root: Path) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("app/app.txt", b"hello " * 1000)
        zf.writestr("app/conf/x.json", b"{}")
    data = buffer.getvalue()
    recipe = {
        "RecipeFormatVersion": "2020-01-25",
        "ComponentName": APP,
        "ComponentVersion": "1.0.0",
        "ComponentPublisher": "edgekit tests",
        "Manifests": [
            {
                "Platform": {"os": "linux"},
                "Lifecycle": {"Install": "true"},
                "Artifacts": [{"URI": "s3://BUCKET_NAME/COMPONENT_NAME/COMPONENT_VERSION/app.zip", "Unarchive": "ZIP"}],
            }
        ],
    }
    (root / "recipes").mkdir(parents=True)
    (root / "recipes" / f"{APP}-1.0.0.json").write_text(json.dumps(recipe))
    (root / "artifacts" / APP / "1.0.0").mkdir(parents=True)
    (root / "artifacts" / APP / "1.0.0" / "app.zip").write_bytes(data)
    return data


def test_devices_of_one_process_download_once_each_verifies_and_a_download_fault_still_hits_its_device(
    tmp_path: Path,
) -> None:
    data = _build(tmp_path / "build")
    digest = base64.b64encode(hashlib.sha256(data).digest()).decode()
    fleet = FleetFile.model_validate(
        {
            "name": "share",
            "mode": "in_process",
            "devices": [{"prefix": "d-", "count": DEVICES, "profile": "x86_64", "groups": ["all"]}],
            "faults": [{"at": 0, "fault": "corrupt_downloads", "things": ["d-03"], "count": 10}],
        }
    )

    async def scenario() -> None:
        async with Simulation(fleet, state_dir=tmp_path / "state", tick_s=0.2) as sim:
            assert sim.http is not None
            sim.publish(tmp_path / "build")
            await asyncio.sleep(0.1)  # the fault applies at t+0
            summary = await sim.wait(
                sim.deploy({"targetArn": "thinggroup/all", "components": {APP: {"componentVersion": "1.0.0"}}}), timeout=60
            )
            # the device a download fault targets downloads alone (and fails 10 corrupted downloads); the other
            # seven share one download
            assert summary.counts == {"SUCCEEDED": DEVICES - 1, "FAILED": 1}
            share = sim.artifact_share
            assert share.downloads == 1 and share.unpacks == 1
            assert sim.http.artifacts_served == 1 + 10
            inodes = set()
            for thing, dev in sim.devices.items():
                if thing == "d-03":
                    continue
                unpacked = dev.root / "packages" / "artifacts-unarchived" / APP / "1.0.0" / "app"
                assert (unpacked / "app" / "app.txt").read_bytes() == b"hello " * 1000
                inodes.add((unpacked / "app" / "app.txt").stat().st_ino)
                assert (dev.root / "packages" / "artifacts" / APP / "1.0.0" / "app.zip").read_bytes() == data
            assert len(inodes) == 1  # hard links to the share's one unpacked copy
            # the shared copy goes bad: each device that installs it next checks it against its own recipe's Digest
            cached = share.cache_dir / hashlib.sha256(data).hexdigest()
            cached.chmod(0o600)
            cached.write_bytes(bytes([data[0] ^ 0xFF]) + data[1:])
            url = f"{sim.http.url}/v1/artifacts/{APP}/1.0.0/app.zip"
            got = [await sim.devices[t].agent.fetcher.fetch(url, digest) for t in ("d-01", "d-02")]  # type: ignore[union-attr]
            assert [p.read_bytes() for p in got] == [data, data]
            assert sim.http.artifacts_served == 1 + 10 + 1  # the first caught it and downloaded again; the second had it

    asyncio.run(asyncio.wait_for(scenario(), 120))
