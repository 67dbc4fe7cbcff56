"""The dfu transport against the simulated device through its pyusb backend.

Time is virtual (FakeClock): the device's flash timings are realistic, the tests take
no wall time, and the host's sleeps can be compared with what the device asked for.
"""

from __future__ import annotations

import io
import os

import pytest

from ferry.proxy.dfu.errors import AmbiguousDevice, DeviceNotFound
from ferry.proxy.dfu.files import DfuseTarget, Element, add_suffix, write_dfuse
from ferry.proxy.dfu.transport import DfuTransport, create
from ferry.proxy.registry import get_transport
from ferry.proxy.transport import Target
from ferry.sim.dfu.harness import dfuse_spec, plain_spec, setup


def target(where: str = "1209:5a01", **options: str) -> Target:
    return Target(name="mcu", transport="dfu", address=where, options=dict(options))


def flash(sim, data: bytes, where: str = "1209:5a01", **options: str):
    events: list[tuple[int, int, str]] = []
    result = create(sim.host_options()).flash(
        target(where, **options), io.BytesIO(data),
        progress=lambda d, t, m: events.append((d, t, m)))
    return result, events


def test_registry_builds_the_dfu_transport():
    sim = setup()
    transport = get_transport("dfu", sim.host_options())
    assert isinstance(transport, DfuTransport) and transport.name == "dfu"


def test_runtime_detach_download_verify_reset():
    sim = setup()
    dev = sim.add()
    image = os.urandom(10 * 1024 + 17)
    result, events = flash(sim, image)
    assert result.ok, result.message
    assert result.detail["verified"] == "yes"
    assert dev.firmware() == image
    assert dev.mode == "runtime"  # the final reset started the new application
    assert "reset mode=runtime state=APP_DETACH" in dev.log  # detach + USB reset
    phases = [m for _d, _t, m in events]
    assert phases[0] == "detach" and "download" in phases and "verify" in phases
    assert phases[-1] == "reset"
    assert max(d for d, _t, m in events if m == "download") == len(image)


def test_host_sleeps_exactly_the_poll_timeouts_the_device_asks_for():
    sim = setup()
    dev = sim.add()
    result, _ = flash(sim, os.urandom(8 * 1024))
    assert result.ok
    assert sim.clock is not None
    device_asked = dev.poll_total_ms / 1000
    polls = [s for s in sim.clock.slept if s != 0.05]  # 0.05: re-enumeration polling
    assert device_asked > 0
    assert sum(polls) == pytest.approx(device_asked, abs=1e-6)


def test_device_that_detaches_itself_gets_no_usb_reset():
    sim = setup()
    dev = sim.add(plain_spec(will_detach=True))
    result, _ = flash(sim, b"\xa5" * 3000)
    assert result.ok, result.message
    assert "replug" in dev.log
    assert "reset mode=runtime state=APP_DETACH" not in dev.log
    assert dev.firmware() == b"\xa5" * 3000


def test_manifestation_intolerant_device_is_reset_without_upload():
    sim = setup()
    dev = sim.add(plain_spec(manifestation_tolerant=False))
    result, _ = flash(sim, b"\x11" * 5000)
    assert result.ok, result.message
    assert result.detail["verified"] == "no"
    assert "reset mode=dfu state=MANIFEST_WAIT_RESET" in dev.log
    assert dev.mode == "runtime" and dev.firmware() == b"\x11" * 5000


def test_dfu_only_device_and_suffix_file():
    sim = setup()
    dev = sim.add(plain_spec(start_in_runtime=False, has_runtime=False))
    image = os.urandom(4096)
    result, _ = flash(sim, add_suffix(image, 0x1209, 0xDF11), "1209:df11")
    assert result.ok, result.message
    assert result.detail["format"] == "dfu"
    assert dev.firmware() == image  # the suffix is not sent


def test_find_by_serial_and_by_path_among_twins():
    sim = setup()
    first = sim.add(plain_spec(serial="A1"))
    second = sim.add(plain_spec(serial="B2"))
    with pytest.raises(AmbiguousDevice, match="2 DFU devices"):
        create(sim.host_options()).flash_or_raise(target(), io.BytesIO(b"x"))
    result, _ = flash(sim, b"second", "1209:5a01,B2")
    assert result.ok and second.firmware() == b"second" and first.firmware() == b""
    result, _ = flash(sim, b"first", "ignored:0", path="1-1")
    assert result.ok, result.message
    assert first.firmware() == b"first"


def test_missing_device_is_reported():
    sim = setup()
    with pytest.raises(DeviceNotFound, match="no DFU device matches 1209:5a01"):
        create(sim.host_options()).flash_or_raise(target(), io.BytesIO(b"x"))
    assert not create(sim.host_options()).inspect(target()).reachable


def test_dfu_id_option_for_a_different_dfu_mode_vid_pid():
    sim = setup()
    dev = sim.add(plain_spec(serial="", dfu_pid=0xDF12))
    result, _ = flash(sim, b"abc" * 100, dfu_id="1209:df12")
    assert result.ok, result.message
    assert dev.firmware() == b"abc" * 100


def test_discover_and_inspect():
    sim = setup()
    sim.add()
    transport = create(sim.host_options())
    found = transport.discover()
    assert [(t.address, t.options["mode"]) for t in found] == [("1209:5a01,0001", "runtime")]
    state = transport.inspect(found[0])
    assert state.reachable and state.detail["mode"] == "runtime"
    assert state.detail["dfuse"] == "no"


def test_dfuse_raw_image_erases_programs_verifies_and_leaves():
    sim = setup()
    dev = sim.add(dfuse_spec())
    image = os.urandom(40 * 1024)  # spans three 16 KiB pages
    result, _ = flash(sim, image, "0483:df11")
    assert result.ok, result.message
    assert result.detail["verified"] == "yes"
    assert dev.regions[0].read(0x08000000, len(image)) == image
    assert [e for e in dev.log if e.startswith("erase")] == [
        "erase 0x08000000", "erase 0x08004000", "erase 0x08008000"]


def test_dfuse_raw_image_at_an_address():
    sim = setup()
    dev = sim.add(dfuse_spec())
    result, _ = flash(sim, b"\x42" * 100, "0483:df11", address="0x08010010")
    assert result.ok, result.message
    assert dev.regions[0].read(0x08010010, 100) == b"\x42" * 100
    assert "erase 0x08010000" in dev.log


def test_dfuse_file_with_several_elements():
    sim = setup()
    dev = sim.add(dfuse_spec())
    a, b = os.urandom(5000), os.urandom(300)
    data = write_dfuse([DfuseTarget(0, "Internal Flash", (Element(0x08000000, a),
                                                          Element(0x08010000, b)))],
                       0x0483, 0xDF11)
    result, _ = flash(sim, data, "0483:df11")
    assert result.ok, result.message
    assert result.detail["format"] == "dfuse"
    assert dev.regions[0].read(0x08000000, len(a)) == a
    assert dev.regions[0].read(0x08010000, len(b)) == b


def test_dfuse_file_on_a_plain_device_is_refused():
    sim = setup()
    sim.add()
    data = write_dfuse([DfuseTarget(0, "", (Element(0x08000000, b"x"),))], 0x1209, 0xDF11)
    result, _ = flash(sim, data)
    assert not result.ok and "not a DfuSe device" in result.message
