"""Zigbee nodes' results through the proxy phase, the real Zigbee transport, Debian's
mosquitto on 127.0.0.1 and the Zigbee2MQTT stand-in (ferry.sim.zigbee.z2m_bridge):
each node (a ``[[target]]`` addressed by its IEEE address) shows its own result in
combined health, configData and the DDI feedback, and its ``node.<address>`` detail
key does not duplicate it as a node row. Never skipped: .ci/deps/zigbee.apt installs
mosquitto."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path
from typing import Any, BinaryIO

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
from install_gateway import make_gateway

from ferry.daemon.backend import health as health_mod
from ferry.daemon.backend.pipeline_adapter import PipelineGateway
from ferry.daemon.install.pipeline import make_context
from ferry.daemon.install.proxyphase import run
from ferry.daemon.journal import Journal
from ferry.proxy.registry import get_transport
from ferry.proxy.transport import FlashResult, Progress, Target
from ferry.proxy.zigbee import otafile
from ferry.sim.zigbee.z2m_bridge import BridgeDevice, FakeZigbee2Mqtt

MFR, ITYPE = 0x1234, 0x0001
A, B, BAD = "0x00124b0000aaaa01", "0x00124b0000aaaa02", "0x00124b0000aaaa03"


def test_zigbee_node_results_reach_health_and_feedback(
        broker: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = tmp_path / "z2m-data"
    data.mkdir()
    bridge = FakeZigbee2Mqtt("127.0.0.1", broker, data, [
        BridgeDevice(A, "kitchen_sensor", MFR, ITYPE, 0x00010000),
        BridgeDevice(B, "hall_sensor", MFR, ITYPE, 0x00020000),  # already current
        BridgeDevice(BAD, "flaky_sensor", MFR, ITYPE, 0x00010000,
                     fail="Device didn't respond to OTA request")])
    try:
        opts = (f'mqtt_host = "127.0.0.1"\nmqtt_port = "{broker}"\n'
                f'z2m_data_dir = "{data}"\nrequest_timeout_s = "30"\n'
                'update_timeout_s = "60"\n')
        extra = "".join(
            f'\n[[target]]\nname = "{name}"\ntransport = "zigbee"\naddress = "{ieee}"\n'
            f'image_id = "0x1234:0x0001"\n\n[target.options]\n{opts}'
            for name, ieee in (("kitchen", A), ("hall", B), ("flaky", BAD)))
        gw = make_gateway(tmp_path / "gw", extra=extra)
        monkeypatch.setenv("FERRY_BOOT_ID_PATH", str(gw.boot_id))
        hdr = otafile.OtaHeader(MFR, ITYPE, 0x00020000, header_string=b"sensor fw")
        raw = otafile.build_simple(hdr, bytes(range(256)) * 8).serialize()
        path = gw.data_dir / "staging" / "1-sensor.ota"
        path.parent.mkdir(parents=True)
        path.write_bytes(raw)
        image = {"filename": "sensor.ota", "path": str(path), "size": len(raw),
                 "sha256": hashlib.sha256(raw).hexdigest(), "transport": "zigbee",
                 "name": "sensor-fw", "format": "zigbee-ota", "version": "0x00020000",
                 "selector": {"image_id": "0x1234:0x0001"}}
        j = Journal.open(gw.data_dir)
        dep = j.create("zb.swu", origin="ddi", external_id="9")
        j.set_info(dep, staged=[image])
        j.update(dep, state="committed")
        results: dict[str, FlashResult] = {}

        class Recording:
            def __init__(self, inner: Any) -> None:
                self.inner = inner

            def flash(self, target: Target, f: BinaryIO, *, progress: Progress
                      ) -> FlashResult:
                res: FlashResult = self.inner.flash(target, f, progress=progress)
                results[target.address] = res
                return res

        # one transfer at a time: the three nodes share one Zigbee2MQTT and its index
        run(make_context(gw.config, journal=j), dep, max_parallel=1,
            factory=lambda n, o: Recording(get_transport(n, o)))
    finally:
        bridge.close()

    assert results[A].detail[f"node.{A}"] == "ok"
    assert results[B].detail[f"node.{B}"] == "skipped"
    assert results[BAD].detail[f"node.{BAD}"].startswith("failed: ")
    assert "Device didn't respond" in results[BAD].detail[f"node.{BAD}"]
    assert j.nodes(dep) == []  # each target is its own only node: no duplicate rows
    states = {t.name: t.state for t in j.targets(dep)}
    assert states == {"kitchen": "ok", "hall": "skipped", "flaky": "failed"}

    h = health_mod.collect(gw.config, journal=j, system=("running", ()), uptime_s=1)
    cd = health_mod.to_config_data(h)
    assert (cd["target.kitchen.address"], cd["target.kitchen.result"],
            cd["target.kitchen.version"]) == (A, "success", "0x00020000")
    assert cd["target.hall.result"] == "skipped"
    assert cd["target.flaky.result"] == "failure" and cd["target.flaky.address"] == BAD
    assert "target flaky: last flash failure" in h.reasons

    lines = [t.line() for t in PipelineGateway(gw.config, journal=j).outcome(
        j.get(dep)).targets]
    assert "target kitchen: ok version 0x00020000 (kitchen now runs 0x00020000)" in lines
    assert any(ln.startswith("target flaky: FAILED") and "didn't respond" in ln
               for ln in lines)
    assert any(ln.startswith("target hall: skipped") for ln in lines)
