"""The Zigbee2MQTT adapter through a real mosquitto broker (Debian) on 127.0.0.1.

The far end is ferry.sim.zigbee.z2m_bridge, which follows Zigbee2MQTT's topics and
payloads; Debian's mosquitto_sub independently records what ferry published. Never
skipped: .ci/deps/zigbee.apt installs mosquitto and mosquitto-clients."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ferry.proxy.registry import get_transport
from ferry.proxy.transport import Target
from ferry.proxy.zigbee import otafile
from ferry.sim.zigbee.z2m_bridge import BridgeDevice, FakeZigbee2Mqtt

MFR, ITYPE = 0x1234, 0x0001
A, B, BAD, NOOTA = ("0x00124b0000aaaa01", "0x00124b0000aaaa02", "0x00124b0000aaaa03",
                    "0x00124b0000aaaa04")


def _tool(name: str) -> str:
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin")
    if path is None:
        pytest.fail(f"{name} missing; run bash .ci/setup (.ci/deps/zigbee.apt)")
    return path


def _unused_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def z2m(broker: int, tmp_path: Path) -> Iterator[tuple[FakeZigbee2Mqtt, dict[str, str]]]:
    data = tmp_path / "z2m-data"
    data.mkdir()
    devices = [BridgeDevice(A, "kitchen_sensor", MFR, ITYPE, 0x00010000),
               BridgeDevice(B, "hall_sensor", MFR, ITYPE, 0x00010000),
               BridgeDevice(BAD, "flaky_sensor", MFR, ITYPE, 0x00010000,
                            fail="Device didn't respond to OTA request"),
               BridgeDevice(NOOTA, "plain_bulb", MFR, 7, 1, supports_ota=False)]
    bridge = FakeZigbee2Mqtt("127.0.0.1", broker, data, devices)
    opts = {"adapter": "zigbee2mqtt", "mqtt_host": "127.0.0.1", "mqtt_port": str(broker),
            "z2m_data_dir": str(data), "request_timeout_s": "30", "update_timeout_s": "60"}
    try:
        yield bridge, opts
    finally:
        bridge.close()


@pytest.fixture
def sniffer(broker: int, tmp_path: Path) -> Iterator[Path]:
    """mosquitto_sub recording every bridge request, subscribed before the test acts."""
    out = tmp_path / "sub.txt"
    with out.open("w") as fh:
        proc = subprocess.Popen([_tool("mosquitto_sub"), "-h", "127.0.0.1", "-p", str(broker),
                                 "-t", "zigbee2mqtt/bridge/request/#", "-v"], stdout=fh)
    try:
        deadline = time.monotonic() + 20
        while "probe" not in out.read_text():
            subprocess.run([_tool("mosquitto_pub"), "-h", "127.0.0.1", "-p", str(broker),
                            "-t", "zigbee2mqtt/bridge/request/probe", "-m", "probe"],
                           check=True, timeout=10)
            time.sleep(0.2)
            if time.monotonic() > deadline:
                pytest.fail("mosquitto_sub never saw the probe message")
        yield out
    finally:
        proc.terminate()
        proc.wait(10)


def _image(version: int, mfr: int = MFR) -> bytes:
    hdr = otafile.OtaHeader(mfr, ITYPE, version, header_string=b"sensor fw")
    return otafile.build_simple(hdr, bytes(range(256)) * 20).serialize()


def _target(ieee: str, **options: str) -> Target:
    return Target(name=ieee, transport="zigbee", address=ieee, hardware_id="0x1234:0x0001",
                  options=dict(options))


def test_discover_lists_ota_nodes_with_file_version(z2m) -> None:  # type: ignore[no-untyped-def]
    _, opts = z2m
    found = {t.address: t for t in get_transport("zigbee", opts).discover()}
    assert set(found) == {A, B, BAD}  # not the coordinator, not the non-OTA bulb
    assert found[A].name == "kitchen_sensor"
    assert found[A].options["file_version"] == "0x00010000"


def test_flash_stages_index_triggers_update_and_reads_back(z2m, sniffer) -> None:  # type: ignore[no-untyped-def]
    bridge, opts = z2m
    transport = get_transport("zigbee", opts)
    raw = _image(0x00020000)
    seen: list[tuple[int, int, str]] = []
    res = transport.flash(_target(A), io.BytesIO(raw),
                          progress=lambda d, t, m: seen.append((d, t, m)))
    assert res.ok, res.message
    assert res.version == "0x00020000" and not res.skipped
    assert bridge.devices[A].file_version == 0x00020000
    assert bridge.devices[B].file_version == 0x00010000  # only the target was updated
    # Progress relayed from the device state topic, ending at the full size.
    uploads = [d for d, _, m in seen if m == "upload"]
    assert uploads == sorted(uploads) and len(set(uploads)) >= 3
    assert seen[-1] == (len(raw), len(raw), "done")
    # The override index and the staged file, as Zigbee2MQTT will read them.
    data_dir = Path(opts["z2m_data_dir"])
    index = json.loads((data_dir / "ferry-ota-index.json").read_text())
    entry = index[0]
    assert entry["manufacturerCode"] == MFR and entry["imageType"] == ITYPE
    assert entry["fileVersion"] == 0x00020000 and entry["fileSize"] == len(raw)
    assert (data_dir / entry["url"]).read_bytes() == raw
    assert "force" not in entry
    # What went over the broker, as an independent client saw it.
    lines = [ln for ln in sniffer.read_text().splitlines() if "ota_update/update" in ln]
    assert len(lines) == 1
    topic, payload = lines[0].split(" ", 1)
    assert topic == "zigbee2mqtt/bridge/request/device/ota_update/update"
    assert json.loads(payload)["id"] == A
    # inspect reads the new version back through a check request.
    state = transport.inspect(_target(A))
    assert state.reachable and state.version == "0x00020000"
    assert state.detail["update_available"] == "false"


def test_same_version_is_skipped_and_wrong_vendor_refused(z2m) -> None:  # type: ignore[no-untyped-def]
    bridge, opts = z2m
    transport = get_transport("zigbee", opts)
    res = transport.flash(_target(B), io.BytesIO(_image(0x00010000)), progress=lambda *a: None)
    assert res.ok and res.skipped and res.version == "0x00010000"
    before = len(bridge.requests)
    res = transport.flash(_target(B), io.BytesIO(_image(0x00030000, mfr=0x4321)),
                          progress=lambda *a: None)
    assert not res.ok and "manufacturer 0x4321" in res.message
    assert len(bridge.requests) == before  # refused before anything was sent
    assert bridge.devices[B].file_version == 0x00010000


def test_forced_downgrade_and_failures_are_reported(z2m) -> None:  # type: ignore[no-untyped-def]
    bridge, opts = z2m
    transport = get_transport("zigbee", opts)
    res = transport.flash(_target(B, force="1"), io.BytesIO(_image(0x00000900)),
                          progress=lambda *a: None)
    assert res.ok and res.version == "0x00000900", res.message
    assert bridge.served[-1] == (B, 0x00000900, True)  # Z2M saw the entry forced...
    index = json.loads((Path(opts["z2m_data_dir"]) / "ferry-ota-index.json").read_text())
    assert "force" not in index[0] and len(index) == 1  # ...and it no longer is
    res = transport.flash(_target(BAD), io.BytesIO(_image(0x00020000)), progress=lambda *a: None)
    assert not res.ok and "didn't respond" in res.message
    assert bridge.devices[BAD].file_version == 0x00010000
    res = transport.flash(_target("0x00124b00deadbeef"), io.BytesIO(_image(0x00020000)),
                          progress=lambda *a: None)
    assert not res.ok and "does not exist" in res.message


def test_unreachable_broker_is_a_clear_failure(tmp_path: Path) -> None:
    transport = get_transport("zigbee", {"mqtt_port": str(_unused_port()),
                                         "z2m_data_dir": str(tmp_path)})
    state = transport.inspect(_target(A))
    assert not state.reachable and "cannot reach the MQTT broker" in state.detail["error"]
    res = transport.flash(_target(A), io.BytesIO(_image(2)), progress=lambda *a: None)
    assert not res.ok and "cannot reach the MQTT broker" in res.message


def test_ferry_flash_zigbee_command(z2m, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    from ferry.daemon.cli.main import main

    bridge, opts = z2m
    img = tmp_path / "fw.ota"
    img.write_bytes(_image(0x00030000))
    rc = main(["--json", "flash", "zigbee", "hall_sensor", str(img), "--mqtt",
               f"127.0.0.1:{opts['mqtt_port']}", "--z2m-data-dir", opts["z2m_data_dir"],
               "--manufacturer", "0x1234"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0 and out["ok"] and out["version"] == "0x00030000", out
    assert bridge.devices[B].file_version == 0x00030000
    rc = main(["--json", "flash", "zigbee", "hall_sensor", str(img), "--mqtt",
               f"127.0.0.1:{opts['mqtt_port']}", "--z2m-data-dir", opts["z2m_data_dir"],
               "--image-type", "0x0002"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 1 and not out["ok"] and "image type" in out["message"]


def test_a_population_target_updates_each_node_in_turn(broker: int, tmp_path: Path) -> None:
    """``address = "*"``: every OTA node the coordinator knows, one staged image, an
    update request per node, a ``node.<ieee>`` row each. A node of another image type
    (Zigbee2MQTT has no image for it) is skipped in the whole population, but fails
    when it is named in ``devices``; a node that does not answer fails alone."""
    data = tmp_path / "z2m-data"
    data.mkdir()
    other = "0x00124b0000bbbb05"
    devices = [BridgeDevice(A, "kitchen_sensor", MFR, ITYPE, 0x00010000),
               BridgeDevice(B, "hall_sensor", MFR, ITYPE, 0x00010000),
               BridgeDevice(BAD, "flaky_sensor", MFR, ITYPE, 0x00010000,
                            fail="Device didn't respond to OTA request"),
               BridgeDevice(other, "door_lock", MFR, 9, 0x00000005),
               BridgeDevice(NOOTA, "plain_bulb", MFR, 7, 1, supports_ota=False)]
    bridge = FakeZigbee2Mqtt("127.0.0.1", broker, data, devices)
    opts = {"adapter": "zigbee2mqtt", "mqtt_host": "127.0.0.1", "mqtt_port": str(broker),
            "z2m_data_dir": str(data), "request_timeout_s": "30", "update_timeout_s": "60"}
    try:
        transport = get_transport("zigbee", opts)
        everyone = Target(name="sensors", transport="zigbee", address="*",
                          hardware_id="0x1234:0x0001")
        res = transport.flash(everyone, io.BytesIO(_image(0x00020000)),
                              progress=lambda d, t, m: None)
        assert res.detail[f"node.{A}"] == "ok" and res.detail[f"node.{B}"] == "ok"
        assert res.detail[f"node.{BAD}"].startswith("failed: ")
        assert "didn't respond" in res.detail[f"node.{BAD}"]
        assert res.detail[f"node.{other}"] == "skipped: no image for this node's type"
        assert f"node.{NOOTA}" not in res.detail  # not an OTA node: never asked
        assert not res.ok and "3 of 4 node(s)" in res.message, res.message

        listed = Target(name="sensors", transport="zigbee", address="*",
                        hardware_id="0x1234:0x0001", options={"devices": f"{A},{other}"})
        res = transport.flash(listed, io.BytesIO(_image(0x00030000)),
                              progress=lambda d, t, m: None)
        assert set(res.detail) == {f"node.{A}", f"node.{other}"}
        assert res.detail[f"node.{A}"] == "ok"
        assert res.detail[f"node.{other}"].startswith("failed: ")  # named, yet no image
        assert not res.ok
        state = transport.inspect(everyone)  # the coordinator answers for its nodes
        assert state.reachable and state.detail["nodes"] == "4", state
    finally:
        bridge.close()
