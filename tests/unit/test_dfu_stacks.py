"""ferry's dfu transport against each real device stack the simulator models.

U-Boot (f_dfu + dfu.c) checks every DNLOAD's block number, the final zero-length one
included; Zephyr's usb_dfu answers from a work queue with dfuDNBUSY and a fixed poll
time and writes only ``image_1``; an STM32 ROM speaks DfuSe. Time is virtual.
"""

from __future__ import annotations

import io
import os

import pytest

from ferry.proxy.dfu.errors import DeviceErrorState
from ferry.proxy.dfu.find import DeviceAddress, find_one
from ferry.proxy.dfu.protocol import DfuDevice, block_number
from ferry.proxy.dfu.transport import create
from ferry.proxy.transport import Target
from ferry.sim.dfu.device import DNLOAD, GETSTATUS, Stall, State, Status, Timing
from ferry.sim.dfu.harness import dfuse_spec, plain_spec, setup, uboot_spec, zephyr_spec
from ferry.sim.dfu.memory import Region, Segment

# stack -> (spec, address, target options)
STACKS = {
    "generic": (plain_spec, "1209:5a01,0001", {}),
    "stm32-dfuse": (dfuse_spec, "0483:df11", {}),
    "u-boot": (uboot_spec, "0525:a4a5", {}),
    "zephyr": (zephyr_spec, "2fe3:0100,ZEPHYR0001", {"alt": "image_1"}),
}


def flash(sim, data: bytes, where: str, **options: str):
    return create(sim.host_options()).flash(
        Target(name="mcu", transport="dfu", address=where, options=dict(options)),
        io.BytesIO(data))


def written(dev, stack: str, size: int) -> bytes:
    if stack == "stm32-dfuse":
        return dev.regions[0].read(0x08000000, size)
    return dev.firmware()


@pytest.mark.parametrize("stack", list(STACKS))
@pytest.mark.parametrize("size", [1, 4096, 10 * 1024 + 17])
def test_flash_reaches_every_stack(stack, size):
    make, where, options = STACKS[stack]
    sim = setup()
    dev = sim.add(make())
    image = os.urandom(size)
    result = flash(sim, image, where, **options)
    assert result.ok, f"{stack}: {result.message}\n{dev.log}"
    assert written(dev, stack, size) == image


@pytest.mark.parametrize("stack", ["generic", "u-boot", "zephyr"])
def test_host_sleeps_what_each_stack_asks_for(stack):
    """(DfuSe is left out: like dfu-util, ferry skips some of an STM32's poll times.)"""
    make, where, options = STACKS[stack]
    sim = setup()
    dev = sim.add(make(), timing=Timing(program_ms_per_block=3, erase_ms_per_page=2,
                                        manifest_ms=40))
    result = flash(sim, os.urandom(6000), where, **options)
    assert result.ok, result.message
    assert sim.clock is not None
    polls = sum(s for s in sim.clock.slept if s != 0.05)  # 0.05: re-enumeration polling
    assert dev.poll_total_ms > 0
    assert polls == pytest.approx(dev.poll_total_ms / 1000, abs=1e-6)


# U-Boot --------------------------------------------------------------------------------
def test_block_numbers_wrap_at_65535():
    assert [block_number(n) for n in (0, 1, 65535, 65536, 65537, 131072)] == [
        0, 1, 65535, 0, 1, 0]


def test_uboot_refuses_a_final_dnload_numbered_0_and_keeps_nothing():
    """The old ferry behaviour, against the U-Boot model directly: the transfer is lost."""
    sim = setup()
    dev = sim.add(uboot_spec())
    dev.control(0x00, 9, 1, 0, b"", 0)  # SET_CONFIGURATION 1
    for block in range(3):
        dev.control(0x21, DNLOAD, block, 0, b"\x5a" * 4096, 4096)
        assert dev.control(0xA1, GETSTATUS, 0, 0, b"", 6)[4] == State.DNLOAD_IDLE
    dev.control(0x21, DNLOAD, 0, 0, b"", 0)
    reply = dev.control(0xA1, GETSTATUS, 0, 0, b"", 6)
    assert (reply[0], reply[4]) == (Status.UNKNOWN, State.ERROR)
    assert "dfu_write: Wrong sequence number! [3] [0]" in dev.log
    assert dev.firmware() == b""


def test_old_block_0_manifest_fails_on_uboot_and_the_next_number_works():
    """ferry's DfuDevice with the final block 0 (the old code) and with the right one."""
    sim = setup()
    dev = sim.add(uboot_spec())
    cand = find_one(DeviceAddress.parse("0525:a4a5"), sim.backend, None)
    assert sim.clock is not None
    dfu = DfuDevice(cand.dev, cand.interface, cand.func, sleep=sim.clock.sleep,
                    clock=sim.clock)
    dfu.ensure_idle()
    image = os.urandom(3 * 4096 + 10)
    assert dfu.download(image) == 4
    with pytest.raises(DeviceErrorState, match=r"errUNKNOWN .* after manifestation"):
        dfu.manifest(0)
    assert dev.firmware() == b""
    dfu.ensure_idle()
    assert dfu.manifest(dfu.download(image)) == State.IDLE
    assert dev.firmware() == image


def test_uboot_counts_through_the_wrap():
    """65541 one-byte blocks: wValue wraps to 0 after 65535 and U-Boot accepts it."""
    sim = setup()
    dev = sim.add(uboot_spec(transfer_size=1, alts=(Region("mcu", 0, (Segment(17, 4096),)),)))
    image = os.urandom(65536 + 5)
    result = flash(sim, image, "0525:a4a5", verify="0")
    assert result.ok, result.message
    assert dev.firmware() == image
    assert not [e for e in dev.log if "Wrong sequence" in e]


def test_uboot_counter_survives_abort_and_the_first_block_is_resent():
    """Our read-back stops early (ABORT): U-Boot then expects block N, refuses block 0 once."""
    sim = setup()
    dev = sim.add(uboot_spec())
    first = os.urandom(9000)
    assert flash(sim, first, "0525:a4a5", reset="0").ok
    second = os.urandom(5000)
    result = flash(sim, second, "0525:a4a5", reset="0")
    assert result.ok, result.message
    assert result.detail["verified"] == "yes"
    assert dev.firmware() == second
    assert [e for e in dev.log if "Wrong sequence" in e] == [
        "dfu_write: Wrong sequence number! [3] [0]"]  # 9000 B read back as 3 UPLOADs


def test_uboot_upload_is_the_whole_partition():
    sim = setup()
    dev = sim.add(uboot_spec())
    assert flash(sim, b"\x01" * 100, "0525:a4a5", reset="0", verify="0").ok
    dev.control(0x00, 9, 1, 0, b"", 0)
    out = b""
    for block in range(200):
        chunk = dev.control(0xA1, 2, block, 0, b"", 4096)  # UPLOAD
        out += chunk
        if len(chunk) < 4096:
            break
    assert len(out) == dev.regions[0].size and out[:100] == b"\x01" * 100


def test_uboot_board_resets_only_after_detach():
    sim = setup()
    dev = sim.add(uboot_spec())
    assert flash(sim, b"\x02" * 5000, "0525:a4a5").ok
    assert dev.present and dev.mode == "dfu"  # a USB reset alone: still in the dfu command
    assert "reset mode=dfu state=IDLE" in dev.log
    result = flash(sim, b"\x03" * 5000, "0525:a4a5", detach_before_reset="1")
    assert result.ok, result.message
    assert "detach: dfu command ends, board resets" in dev.log
    assert not dev.present  # the board rebooted into what it boots
    assert dev.firmware() == b"\x03" * 5000


def test_uboot_never_busy_and_reports_its_manifest_poll():
    sim = setup()
    dev = sim.add(uboot_spec(), timing=Timing(manifest_ms=25000))
    result = flash(sim, os.urandom(20000), "0525:a4a5")
    assert result.ok, result.message
    assert dev.poll_total_ms == 25000  # DFU_MANIFEST_POLL_TIMEOUT; blocks report 0


def test_uboot_board_poll_timeout_comes_every_2048th_block():
    """DFU_DEFAULT_POLL_TIMEOUT (Exynos: 300 ms) on blocks where blk % (8 MiB / 4096) == 0."""
    sim = setup()
    dev = sim.add(uboot_spec(poll_ms=300, alts=(Region("mcu", 0, (Segment(2050, 4096),)),)))
    dev.control(0x00, 9, 1, 0, b"", 0)
    polls = []
    for block in range(2050):
        dev.control(0x21, DNLOAD, block, 0, b"\0" * 4096, 4096)
        reply = dev.control(0xA1, GETSTATUS, 0, 0, b"", 6)
        assert reply[4] == State.DNLOAD_IDLE  # never dfuDNBUSY
        polls.append(reply[1] | reply[2] << 8)
    assert [n for n, ms in enumerate(polls) if ms] == [0, 2048]
    assert {polls[0], polls[2048]} == {300}


# Zephyr --------------------------------------------------------------------------------
def test_zephyr_refuses_alt_0_with_err_write_then_image_1_works():
    sim = setup()
    dev = sim.add(zephyr_spec())
    result = flash(sim, os.urandom(3000), "2fe3:0100,ZEPHYR0001")
    assert not result.ok
    assert result.message.startswith("device reported errWRITE")
    assert "This area can not be overwritten" in dev.log
    image = os.urandom(3000)
    retry = flash(sim, image, "2fe3:0100,ZEPHYR0001", alt="image_1")
    assert retry.ok, retry.message
    assert dev.firmware() == image and dev.upgrade_requested


def test_zephyr_busy_polls_and_manifests_from_dnbusy():
    sim = setup()
    sim.add(zephyr_spec(), timing=Timing(program_ms_per_block=20, erase_ms_per_page=10,
                                         manifest_ms=30))
    result = flash(sim, os.urandom(2048), "2fe3:0100,ZEPHYR0001", alt="1")
    assert result.ok, result.message
    assert sim.clock is not None
    eight = [s for s in sim.clock.slept if s == pytest.approx(0.008)]
    # slot erase (64 pages x 10 ms) + 2 blocks x 20 ms + flush 30 ms, in 8 ms steps
    assert len(eight) >= (640 + 40 + 30) // 8
    assert result.detail["verified"] == "no"  # upload is off by default


def test_zephyr_with_upload_is_verified():
    sim = setup()
    dev = sim.add(zephyr_spec(can_upload=True))
    image = os.urandom(5000)
    result = flash(sim, image, "2fe3:0100,ZEPHYR0001", alt="image_1")
    assert result.ok, result.message
    assert result.detail["verified"] == "yes"
    assert dev.firmware() == image


def test_zephyr_reboot_after_download():
    """CONFIG_USB_DFU_REBOOT: not manifestation tolerant; it reboots itself 500 ms later."""
    sim = setup()
    dev = sim.add(zephyr_spec(manifestation_tolerant=False))
    result = flash(sim, b"\x07" * 4000, "2fe3:0100,ZEPHYR0001", alt="image_1")
    assert result.ok, result.message
    assert dev.firmware() == b"\x07" * 4000
    assert sim.clock is not None
    sim.clock.sleep(0.5)
    dev.tick()
    assert dev.mode == "runtime"
    assert "reboot: MCUboot takes image_1 (test mode)" in dev.log


def test_zephyr_detach_in_dfu_mode_sticks_in_app_idle():
    """Why ferry sends DETACH before the final reset only when asked (U-Boot)."""
    sim = setup()
    dev = sim.add(zephyr_spec(start_in_runtime=False))
    dev.control(0x00, 9, 1, 0, b"", 0)
    with pytest.raises(Stall):
        dev.control(0x21, 0, 1000, 0, b"", 0)
    assert dev.state == State.APP_IDLE
    result = flash(sim, b"x" * 100, "2fe3:ffff", alt="image_1")
    assert not result.ok and "not DFU idle" in result.message
