"""What real Zigbee2MQTT does with ferry's files, through a real mosquitto broker and
the Z2M stand-in at each modelled release (sim/zigbee/z2m_ota.py cites the sources):
forced entries must not outlive ferry's update (siblings would be offered the image,
the same version included), Z2M 2.2 fails offline with "fetch failed", the hardware
version comes from the query (2.14) or the Basic cluster (2.2), and the override
index setting needs a Z2M restart. Never skipped: .ci/deps/zigbee.apt installs
mosquitto."""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ferry.proxy.registry import get_transport
from ferry.proxy.transport import Target
from ferry.proxy.zigbee import otafile
from ferry.sim.zigbee.z2m_bridge import BridgeDevice, FakeZigbee2Mqtt

MFR, ITYPE = 0x1234, 0x0001
A, B, C = "0x00124b0000bbbb01", "0x00124b0000bbbb02", "0x00124b0000bbbb03"

Make = Callable[..., tuple[FakeZigbee2Mqtt, dict[str, str]]]


@pytest.fixture
def make_z2m(broker: int, tmp_path: Path) -> Iterator[Make]:
    made: list[FakeZigbee2Mqtt] = []

    def make(devices: list[BridgeDevice] | None = None, **kw: Any
             ) -> tuple[FakeZigbee2Mqtt, dict[str, str]]:
        data = tmp_path / f"z2m-{len(made)}"
        data.mkdir()
        devices = devices or [BridgeDevice(A, "lamp_a", MFR, ITYPE, 0x00020000),
                              BridgeDevice(B, "lamp_b", MFR, ITYPE, 0x00020000),
                              BridgeDevice(C, "lamp_c", MFR, ITYPE, 0x00010000)]
        bridge = FakeZigbee2Mqtt("127.0.0.1", broker, data, devices,
                                 update_check_interval_min=0, **kw)
        made.append(bridge)
        return bridge, {"mqtt_host": "127.0.0.1", "mqtt_port": str(broker),
                        "z2m_data_dir": str(data), "request_timeout_s": "30",
                        "update_timeout_s": "60"}

    try:
        yield make
    finally:
        for b in made:
            b.close()


def _image(version: int, hw: tuple[int, int] | None = None) -> bytes:
    hdr = otafile.OtaHeader(MFR, ITYPE, version, header_string=b"lamp fw",
                            min_hardware_version=hw[0] if hw else None,
                            max_hardware_version=hw[1] if hw else None)
    return otafile.build_simple(hdr, bytes(range(256)) * 8).serialize()


def _target(ieee: str, force: bool = False) -> Target:
    return Target(name=ieee, transport="zigbee", address=ieee, hardware_id="0x1234:0x0001",
                  options={"force": "1"} if force else {})


def _index(opts: dict[str, str]) -> list[dict[str, Any]]:
    loaded: list[dict[str, Any]] = json.loads(
        (Path(opts["z2m_data_dir"]) / "ferry-ota-index.json").read_text())
    return loaded


@pytest.mark.parametrize("version", ["2.14", "2.2"])
def test_forced_same_version_reflash_leaves_siblings_alone(make_z2m: Make, version: str
                                                           ) -> None:
    bridge, opts = make_z2m(version=version, online=True)
    transport = get_transport("zigbee", opts)
    res = transport.flash(_target(A, force=True), io.BytesIO(_image(0x00020000)),
                          progress=lambda *a: None)
    assert res.ok and not res.skipped, res.message
    assert bridge.served == [(A, 0x00020000, True)]  # A re-flashed with its own version
    # Afterwards: a sibling on the same version asks on its own, and someone presses
    # Update on it. With the entry still forced, Z2M would say "available" and flash.
    assert bridge.node_query(B) == "idle"
    res_b = transport.flash(_target(B), io.BytesIO(_image(0x00020000)), progress=lambda *a: None)
    assert res_b.skipped
    s = bridge.client  # press "Update" for B in Z2M's frontend (a plain MQTT request)
    s.publish("zigbee2mqtt/bridge/request/device/ota_update/update",
              json.dumps({"id": B, "transaction": "ui"}), qos=1).wait_for_publish(5)
    answer = bridge.wait_response(lambda b: b.get("transaction") == "ui")
    assert answer["status"] == "error"
    assert ("No image currently available" in answer["error"]  # 2.14
            or "No new image available" in answer["error"]), answer  # 2.2
    assert [x for x in bridge.served if x[0] == B] == []
    # An older sibling is still offered the image, as an ordinary upgrade.
    assert bridge.node_query(C) == "available"
    assert all("force" not in e for e in _index(opts))


def test_force_is_removed_after_failure_and_after_cancel(make_z2m: Make) -> None:
    bridge, opts = make_z2m(devices=[
        BridgeDevice(A, "lamp_a", MFR, ITYPE, 0x00020000, fail="Device didn't respond"),
        BridgeDevice(B, "lamp_b", MFR, ITYPE, 0x00020000)], step_delay_s=0.3)
    transport = get_transport("zigbee", opts)
    res = transport.flash(_target(A, force=True), io.BytesIO(_image(0x00000900)),
                          progress=lambda *a: None)
    assert not res.ok and "didn't respond" in res.message
    assert bridge.served[-1] == (A, 0x00000900, True)
    assert "force" not in _index(opts)[0]

    class Cancel(Exception):
        pass

    def cancel_mid_upload(done: int, total: int, phase: str) -> None:
        if phase == "upload" and done > 0:
            raise Cancel  # what an operator's cancel does to the flash thread

    with pytest.raises(Cancel):
        transport.flash(_target(B, force=True), io.BytesIO(_image(0x00000800)),
                        progress=cancel_mid_upload)
    assert "force" not in _index(opts)[0]
    # Z2M 2.14 was told to stop, so B is not downgraded behind ferry's back.
    aborts = [m for t, m in bridge.requests if t.endswith("/update/abort")]
    assert aborts == [{"id": B}]
    aborted = bridge.wait_response(lambda b: "was aborted" in str(b.get("error")))
    assert aborted["error"] == f"OTA update of 'lamp_b' failed (OTA for device {B} was aborted)"
    assert bridge.devices[B].file_version == 0x00020000


def test_forced_updates_of_one_type_are_serialised(make_z2m: Make) -> None:
    bridge, opts = make_z2m(step_delay_s=0.1)
    results = {}

    def flash(ieee: str, version: int) -> None:
        t = get_transport("zigbee", opts)
        results[ieee] = t.flash(_target(ieee, force=True), io.BytesIO(_image(version)),
                                progress=lambda *a: None)

    threads = [threading.Thread(target=flash, args=(A, 0x00000700)),
               threading.Thread(target=flash, args=(B, 0x00000600))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert results[A].ok and results[B].ok, (results[A].message, results[B].message)
    # each node got its own image: neither update ran on the other's forced entry
    assert sorted(bridge.served) == [(A, 0x00000700, True), (B, 0x00000600, True)]
    assert bridge.devices[C].file_version == 0x00010000
    # one ferry entry for the type, and the first image's file is gone
    assert len(_index(opts)) == 1
    files = sorted(p.name for p in (Path(opts["z2m_data_dir"]) / "ferry-ota").glob("*.ota"))
    assert len(files) == 1


def test_offline_z2m_2_2_fails_with_fetch_failed_and_ferry_says_what_to_do(
        make_z2m: Make) -> None:
    bridge, opts = make_z2m(version="2.2", online=False)
    transport = get_transport("zigbee", opts)
    res = transport.flash(_target(C), io.BytesIO(_image(0x00030000)), progress=lambda *a: None)
    assert not res.ok
    assert "fetch failed" in res.message
    assert "2.2.1" in res.message and "upgrade Zigbee2MQTT to 2.14" in res.message
    assert "raw.githubusercontent.com" in res.message
    assert bridge.devices[C].file_version == 0x00010000
    state = transport.inspect(_target(C))
    assert not state.reachable and "fetch failed" in state.detail["error"]


@pytest.mark.parametrize("version,online", [("2.14", False), ("2.2", True)])
def test_z2m_that_reaches_the_index_updates(make_z2m: Make, version: str, online: bool
                                            ) -> None:
    bridge, opts = make_z2m(version=version, online=online)
    res = get_transport("zigbee", opts).flash(_target(C), io.BytesIO(_image(0x00030000)),
                                              progress=lambda *a: None)
    assert res.ok and res.version == "0x00030000", res.message
    assert bridge.devices[C].file_version == 0x00030000


@pytest.mark.parametrize("version,gets_it", [("2.14", {A}), ("2.2", {B})])
def test_hardware_version_source_per_release(make_z2m: Make, version: str,
                                             gets_it: set[str]) -> None:
    # A reports its hardware version only in its query, B only in the Basic cluster.
    _bridge, opts = make_z2m(devices=[
        BridgeDevice(A, "lamp_a", MFR, ITYPE, 0x00010000, hw_query=2),
        BridgeDevice(B, "lamp_b", MFR, ITYPE, 0x00010000, hw_basic=2)],
        version=version, online=True)
    transport = get_transport("zigbee", opts)
    updated = set()
    for ieee in (A, B):
        res = transport.flash(_target(ieee), io.BytesIO(_image(0x00030000, hw=(1, 3))),
                              progress=lambda *a: None)
        if res.ok:
            updated.add(ieee)
        else:
            assert "hardware version" in res.message, res.message
            if version == "2.2":  # ferry knows the Basic value (database.db): a sharp hint
                assert ("matches the image's hardware range 0x0001-0x0003 against the "
                        "node's Basic-cluster hardware version, which Zigbee2MQTT does not "
                        "have") in res.message, res.message
    assert updated == gets_it


def test_devices_show_both_hardware_versions_where_z2m_exposes_them(make_z2m: Make) -> None:
    _bridge, opts = make_z2m(devices=[
        BridgeDevice(A, "lamp_a", MFR, ITYPE, 0x00010000, hw_query=3, hw_basic=1)],
        debug_logging=True)
    transport = get_transport("zigbee", opts)
    found = {t.address: t for t in transport.discover()}
    assert found[A].options["hw_basic"] == "0x0001"  # herdsman's database.db
    state = transport.inspect(_target(A))  # the query shows in Z2M's debug log
    assert state.detail["hw_query"] == "0x0003"
    # ...only while Z2M checks; ferry remembers it for a later `ferry devices`
    again = {t.address: t for t in transport.discover()}
    assert again[A].options["hw_query"] == "0x0003"
    assert again[A].options["hw_basic"] == "0x0001"


def test_override_index_setting_needs_a_z2m_restart(make_z2m: Make) -> None:
    bridge, opts = make_z2m(override_index=None)
    transport = get_transport("zigbee", opts)
    res = transport.flash(_target(C), io.BytesIO(_image(0x00030000)), progress=lambda *a: None)
    assert not res.ok and "zigbee_ota_override_index_location" in res.message
    assert "restart Zigbee2MQTT" in res.message
    bridge.set_override_index("ferry-ota-index.json")  # saved, not yet applied
    res = get_transport("zigbee", opts).flash(_target(C), io.BytesIO(_image(0x00030000)),
                                              progress=lambda *a: None)
    assert not res.ok and "No image currently available" in res.message
    assert "restart_required" in res.message
    bridge.restart()
    res = get_transport("zigbee", opts).flash(_target(C), io.BytesIO(_image(0x00030000)),
                                              progress=lambda *a: None)
    assert res.ok, res.message


def test_index_and_images_stay_readable_for_z2m(make_z2m: Make) -> None:
    _bridge, opts = make_z2m()
    data = Path(opts["z2m_data_dir"])
    (data / "ferry-ota-index.json").write_text("[]")
    (data / "ferry-ota-index.json").chmod(0o640)
    res = get_transport("zigbee", opts).flash(_target(C), io.BytesIO(_image(0x00030000)),
                                              progress=lambda *a: None)
    assert res.ok, res.message
    assert (data / "ferry-ota-index.json").stat().st_mode & 0o777 == 0o640
    staged = data / _index(opts)[0]["url"]
    assert staged.stat().st_mode & 0o777 == 0o644


def test_ferry_sim_zigbee_z2m_command_models_the_release(broker: int, tmp_path: Path) -> None:
    import subprocess
    import sys

    data = tmp_path / "z2m"
    proc = subprocess.Popen(
        [sys.executable, "-c", "import sys; from ferry.daemon.cli.main import main; "
         "sys.exit(main(sys.argv[1:]))", "sim", "zigbee", "--z2m", f"127.0.0.1:{broker}",
         "--z2m-data-dir", str(data), "--nodes", "1", "--z2m-version", "2.2"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert "Zigbee2MQTT 2.2.1 (offline)" in line, line
        opts = {"mqtt_host": "127.0.0.1", "mqtt_port": str(broker), "z2m_data_dir": str(data),
                "request_timeout_s": "30"}
        res = get_transport("zigbee", opts).flash(
            _target("sensor_0"), io.BytesIO(_image(0x00020000)), progress=lambda *a: None)
        assert not res.ok and "fetch failed" in res.message
    finally:
        proc.terminate()
        proc.wait(10)
