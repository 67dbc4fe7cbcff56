"""`ferry devices --discover` lists the Zigbee nodes Zigbee2MQTT knows, with their file
version, through a real mosquitto broker (the Z2M end is ferry.sim's stand-in)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))

from install_gateway import make_gateway

from ferry.daemon.cli.main import main
from ferry.sim.zigbee.z2m_bridge import BridgeDevice, FakeZigbee2Mqtt


def test_devices_discover_lists_zigbee_nodes_with_versions(broker: int, tmp_path: Path,
                                                           capsys) -> None:
    data = tmp_path / "z2m-data"
    data.mkdir()
    bridge = FakeZigbee2Mqtt("127.0.0.1", broker, data, [
        BridgeDevice("0x00124b0000aaaa01", "kitchen_sensor", 0x1234, 1, 0x00010002,
                     hw_basic=2),
        BridgeDevice("0x00124b0000aaaa02", "hall_sensor", 0x1234, 1, 0x00010000),
    ])
    try:
        gw = make_gateway(tmp_path / "gw", extra=f"""
[[target]]
name = "sensors"
transport = "zigbee"
address = "kitchen_sensor"

[target.options]
mqtt_host = "127.0.0.1"
mqtt_port = "{broker}"
z2m_data_dir = "{data}"
request_timeout_s = "20"
""")
        assert main(["--config", str(gw.config_path), "devices", "--discover", "--json"]) == 0
    finally:
        bridge.close()
    rows = json.loads(capsys.readouterr().out)
    by_address = {r["address"]: r for r in rows if r["last_result"] == "discovered"}
    assert set(by_address) >= {"0x00124b0000aaaa01", "0x00124b0000aaaa02"}, rows
    versions = {a: r["version"] for a, r in by_address.items()}
    assert versions["0x00124b0000aaaa01"] != versions["0x00124b0000aaaa02"]
    assert all(v for v in versions.values())
    # the Basic-cluster hardware version, from herdsman's database.db (what Z2M 2.2
    # matches an image's hardware range against)
    assert by_address["0x00124b0000aaaa01"]["hw_basic"] == "0x0002"
    assert "hw_basic" not in by_address["0x00124b0000aaaa02"]
