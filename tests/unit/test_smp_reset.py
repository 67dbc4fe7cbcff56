"""What happens after ``reset``, against a simulated MCU that behaves as Zephyr's mcumgr:
the old image keeps answering until CONFIG_MCUMGR_GRP_OS_RESET_MS fires, a USB CDC-ACM
port vanishes and comes back, servers answer errors in SMP v1 or v2 form, and some have
no MCUmgr params. No test depends on how fast the machine is: the simulator holds its
reset until ferry has seen the old image answer (``hold_reset_requests``)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from smp_helpers import NEW, flash, mcu_image, running_sim, running_version, target

from ferry.errors import FerryError
from ferry.proxy.registry import get_transport
from ferry.proxy.smp.client import SlotState, SmpClient
from ferry.proxy.smp.reboot import NotReset, ResetTimeout, Verdict, classify
from ferry.proxy.smp.transport import Settings


@pytest.mark.parametrize("reenumerate", [False, True], ids=["uart", "usb-cdc"])
@pytest.mark.parametrize("smp_v2", [True, False], ids=["v2", "v1"])
@pytest.mark.parametrize("params", [True, False], ids=["params", "no-params"])
@pytest.mark.parametrize(("delay", "held"), [(0.0, 0), (0.25, 0), (0.25, 3)],
                         ids=["reset-at-once", "delay-250ms", "old-image-answers-3"])
def test_flash_confirms_whatever_the_reset_looks_like(tmp_path: Path, reenumerate: bool,
                                                      smp_v2: bool, params: bool,
                                                      delay: float, held: int) -> None:
    with running_sim(tmp_path, reenumerate=reenumerate, reenumerate_seconds=0.3,
                     smp_v2=smp_v2, supports_params=params, reset_delay=delay) as sim:
        sim.device.faults.hold_reset_requests = held
        result = flash(sim, reset_delay="0.05")
        why = f"{result.message} {result.detail} {sim.device.log}"
        assert result.ok, why
        assert result.message.endswith("confirmed") and not result.rolled_back, why
        assert running_version(sim) == "1.1.0" and sim.device.primary.image_ok
        assert sim.resets_scheduled == 1, why  # reset sent once, never repeated
        assert sim.reenumerations == (1 if reenumerate else 0), why
        if held:
            # the old image answered with the new one pending: "not reset yet", and ferry
            # neither called that a rollback nor confirmed anything on the old image
            assert int(result.detail["old_image_answers"]) >= held
            assert sim.served_while_resetting >= held


@pytest.mark.parametrize("reenumerate", [False, True], ids=["uart", "usb-cdc"])
@pytest.mark.parametrize("smp_v2", [True, False], ids=["v2", "v1"])
def test_rollback_is_reported_only_after_the_reset(tmp_path: Path, reenumerate: bool,
                                                   smp_v2: bool) -> None:
    with running_sim(tmp_path, reenumerate=reenumerate, reenumerate_seconds=0.3,
                     smp_v2=smp_v2, fails_to_boot=True) as sim:
        sim.device.faults.hold_reset_requests = 2
        result = flash(sim, reset_delay="0")
        assert not result.ok and result.rolled_back
        assert "rolled back" in result.message and result.version == "1.0.0"
        assert int(result.detail["old_image_answers"]) >= 2
        assert "boot: revert" in sim.device.log or "app: crashed before confirming; " \
            "watchdog reset" in sim.device.log
        assert running_version(sim) == "1.0.0" and sim.device.primary.image_ok


def test_image_mcuboot_refuses_at_boot_is_reported_as_refused() -> None:
    non_bootable = mcu_image((1, 2, 0, 0), 4000, seed=5, flags=0x10)  # IMAGE_F_NON_BOOTABLE
    with running_sim() as sim:
        result = flash(sim, non_bootable)
        assert not result.ok and result.rolled_back
        assert "refused" in result.message and "1.2.0" in result.message
        assert any("secondary image invalid" in line for line in sim.device.log)
        assert running_version(sim) == "1.0.0"


def test_target_that_never_resets_is_not_called_rolled_back() -> None:
    with running_sim() as sim:
        sim.device.faults.ignore_reset = True
        with pytest.raises(NotReset, match="did not reset") as err:
            flash(sim, boot_timeout="1")
        assert "\n" not in str(err.value)
        # nothing lost: old image runs, new one pending; the next try completes the job
        assert running_version(sim) == "1.0.0" and sim.device.secondary.magic
        sim.device.faults.ignore_reset = False
        result = flash(sim)
        assert result.ok and running_version(sim) == "1.1.0"


@pytest.mark.parametrize("reenumerate", [False, True], ids=["uart", "usb-cdc"])
def test_target_that_does_not_come_back_is_its_own_failure(tmp_path: Path,
                                                           reenumerate: bool) -> None:
    with running_sim(tmp_path, reenumerate=reenumerate) as sim:
        sim.device.faults.stuck_in_bootloader = True
        with pytest.raises(ResetTimeout, match="did not come back") as err:
            flash(sim, boot_timeout="3", reset_delay="0")  # the sim resets after 0.25 s
        assert not isinstance(err.value, NotReset)
        if reenumerate:
            assert "vanished" in str(err.value)
        assert sim.resets_scheduled == 1  # not resent: it could reset the new image


@pytest.mark.parametrize(("value", "expected"), [("0.5", 0.5), ("250ms", 0.25), ("2s", 2.0),
                                                  (1, 1.0)])
def test_reset_delay_option(value: object, expected: float) -> None:
    assert Settings.from_options({"reset_delay": value}).reset_delay == expected


@pytest.mark.parametrize("value", ["soon", "-1"])
def test_bad_reset_delay_is_a_clear_error(value: str) -> None:
    with running_sim() as sim:
        with pytest.raises(FerryError, match="reset_delay") as err:
            get_transport("smp-serial", {}).flash(
                target(sim, reset_delay=value), io.BytesIO(NEW), progress=lambda *a: None)
        assert "\n" not in str(err.value)
        assert sim.frames_in == 0


def test_second_reset_restarts_the_timer_and_old_image_answers_meanwhile() -> None:
    with running_sim(reset_delay=3600) as sim, SmpClient(sim.port, timeout=2) as c:
        boots = sim.device.boots
        assert c.reset() and c.reset()
        assert c.echo("still here") == "still here"  # the old image, during the delay
        assert sim.resets_scheduled == 2 and sim.device.boots == boots
        assert sim.served_while_resetting >= 2


def slot(n: int, h: bytes, **flags: bool) -> SlotState:
    return SlotState(image=0, slot=n, version=f"v{n}", hash=h, **flags)


@pytest.mark.parametrize(("slots", "verdict"), [
    ([slot(0, b"old", active=True, confirmed=True), slot(1, b"new", pending=True)],
     Verdict.NOT_RESET),
    ([slot(0, b"new", active=True), slot(1, b"old", confirmed=True)], Verdict.BOOTED),
    ([slot(0, b"old", active=True, confirmed=True), slot(1, b"new")], Verdict.ROLLED_BACK),
    ([slot(0, b"old", active=True, confirmed=True)], Verdict.REFUSED),
    ([slot(0, b"other", active=True, confirmed=True)], Verdict.REFUSED),
    ([], Verdict.UNEXPECTED),
    # direct-XIP: the new image runs from slot 1
    ([slot(0, b"old"), slot(1, b"new", active=True)], Verdict.BOOTED),
    # a server that sends no flags at all: slot 0 is taken as running
    ([slot(0, b"new"), slot(1, b"old")], Verdict.BOOTED),
])
def test_verdict_table(slots: list[SlotState], verdict: Verdict) -> None:
    assert classify(slots, 0, b"new") is verdict
