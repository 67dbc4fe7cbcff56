"""Bad input and misbehaving devices: each gives a clear error, and a retry then works."""

from __future__ import annotations

import io
import os

from ferry.proxy.dfu.files import add_suffix
from ferry.proxy.dfu.transport import create
from ferry.proxy.transport import Target
from ferry.sim.dfu.device import Faults, State
from ferry.sim.dfu.harness import dfuse_spec, setup

ADDRESS = "1209:5a01,0001"  # also finds the device once it sits in DFU mode (same serial)


def flash(sim, data: bytes, where: str = ADDRESS, **options: str):
    t = Target(name="mcu", transport="dfu", address=where, options=dict(options))
    return create(sim.host_options()).flash(t, io.BytesIO(data))


def test_stall_mid_download_then_retry():
    sim = setup()
    dev = sim.add(faults=Faults(stall_at_block=3))
    image = os.urandom(8 * 1024)
    result = flash(sim, image)
    assert not result.ok
    assert result.message == "device stalled DNLOAD block 3"
    assert result.detail["error"] == "Stalled"
    assert dev.mode == "dfu" and dev.state == State.IDLE  # CLRSTATUS cleared errSTALLEDPKT
    retry = flash(sim, image)
    assert retry.ok, retry.message
    assert dev.firmware() == image


def test_device_disappears_mid_download_then_retry():
    sim = setup()
    dev = sim.add(faults=Faults(disconnect_at_block=2))
    image = os.urandom(6 * 1024)
    result = flash(sim, image)
    assert not result.ok
    assert "device disappeared during DNLOAD block 2" in result.message
    assert result.detail["error"] == "DeviceGone"
    dev.replug()  # power comes back: the app is invalid, so the device stays in DFU mode
    assert dev.mode == "dfu"
    retry = flash(sim, image)
    assert retry.ok, retry.message
    assert dev.firmware() == image


def test_wrong_vid_pid_in_suffix_is_refused_before_detach():
    sim = setup()
    dev = sim.add()
    result = flash(sim, add_suffix(b"\x00" * 1000, 0x0483, 0xDF11))
    assert not result.ok
    assert "image is for 0483:df11" in result.message and "device is 1209:5a01" in result.message
    assert dev.mode == "runtime" and dev.generation == 0  # never left its application
    retry = flash(sim, add_suffix(b"\x00" * 1000, 0x1209, 0xDF11))
    assert retry.ok, retry.message


def test_damaged_suffix_is_refused_before_the_device_is_touched():
    sim = setup()
    dev = sim.add()
    data = bytearray(add_suffix(b"\x00" * 100, 0x1209, 0xDF11))
    data[0] = 1
    result = flash(sim, bytes(data))
    assert not result.ok and "CRC" in result.message
    assert dev.mode == "runtime" and dev.log == []


def test_dfuse_image_larger_than_the_region_is_refused_before_erasing():
    sim = setup()
    dev = sim.add(dfuse_spec())
    too_big = os.urandom(dev.regions[0].size + 1)
    result = flash(sim, too_big, "0483:df11")
    assert not result.ok
    assert "does not fit memory 'Internal Flash'" in result.message
    assert result.detail["error"] == "ImageTooLarge"
    assert not [e for e in dev.log if "erase" in e]
    retry = flash(sim, too_big[:1000], "0483:df11")
    assert retry.ok, retry.message


def test_plain_image_larger_than_the_memory_gets_err_address_then_retry():
    sim = setup()
    dev = sim.add()
    result = flash(sim, os.urandom(dev.regions[0].size + 1024))
    assert not result.ok
    assert "errADDRESS" in result.message
    assert dev.state == State.IDLE
    retry = flash(sim, b"\x01" * 2048)
    assert retry.ok, retry.message
    assert dev.firmware() == b"\x01" * 2048


def test_err_write_then_retry():
    sim = setup()
    dev = sim.add(faults=Faults(err_write_at_block=1))
    result = flash(sim, os.urandom(4096))
    assert not result.ok
    assert result.message.startswith("device reported errWRITE")
    assert "after DNLOAD block 1" in result.message
    assert dev.state == State.IDLE
    image = os.urandom(4096)
    assert flash(sim, image).ok
    assert dev.firmware() == image


def test_err_verify_in_manifestation_then_retry():
    sim = setup()
    dev = sim.add(faults=Faults(err_verify=True))
    result = flash(sim, os.urandom(2048))
    assert not result.ok
    assert "errVERIFY" in result.message and "manifestation" in result.message
    image = os.urandom(2048)
    assert flash(sim, image).ok
    assert dev.firmware() == image


def test_device_that_never_leaves_manifestation_is_reset_then_retry():
    sim = setup()
    dev = sim.add(faults=Faults(stuck_in_manifest=True))
    result = flash(sim, os.urandom(2048), manifest_timeout_s="5")
    assert not result.ok
    assert "still MANIFEST after manifestation" in result.message
    assert dev.mode == "dfu" and dev.state == State.IDLE  # the USB reset got it out
    image = os.urandom(2048)
    assert flash(sim, image).ok
    assert dev.firmware() == image


def test_device_left_in_error_state_by_someone_else_is_cleared():
    sim = setup()
    dev = sim.add()
    dev.usb_reset()  # appIDLE: nothing happens
    dev._enter("dfu")
    dev.state, dev.status = State.ERROR, dev.status.__class__.PROG
    image = os.urandom(1500)
    result = flash(sim, image)
    assert result.ok, result.message
    assert dev.firmware() == image


def test_device_lost_after_detach_is_reported(monkeypatch):
    sim = setup()
    dev = sim.add()

    def reset_and_vanish() -> bool:
        dev.unplug()
        return True

    monkeypatch.setattr(dev, "usb_reset", reset_and_vanish)
    result = flash(sim, b"\x00" * 100)
    assert not result.ok
    assert "in DFU mode did not appear within 10 s" in result.message
    assert "udevd" in result.message


def test_read_back_mismatch_is_a_verify_failure(monkeypatch):
    sim = setup()
    dev = sim.add()
    manifest = dev._finish_manifest

    def corrupt() -> None:
        manifest()
        dev.regions[0].data[100] ^= 0xFF  # a bit that did not take

    monkeypatch.setattr(dev, "_finish_manifest", corrupt)
    result = flash(sim, os.urandom(4096))
    assert not result.ok
    assert result.message.startswith("read-back differs at 0x00000064")
    assert result.detail["error"] == "VerifyFailed"
