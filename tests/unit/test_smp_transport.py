"""The smp-serial transport against the simulated MCU (unthrottled pty)."""

from __future__ import annotations

import hashlib
import io
import time
from pathlib import Path

import pytest
from smp_helpers import NEW, OLD, flash, mcu_image, running_sim, running_version, target

from ferry.proxy import mcuboot
from ferry.proxy.registry import get_transport
from ferry.proxy.smp.client import SmpClient
from ferry.proxy.smp.header import IMAGE_UPLOAD, Op
from ferry.proxy.smp.transport import RefusedImage


def test_flash_tests_then_confirms() -> None:
    with running_sim() as sim:
        seen: list[str] = []
        transport = get_transport("smp-serial", {})
        result = transport.flash(target(sim), io.BytesIO(NEW),
                                 progress=lambda d, t, m: seen.append(m))
        assert result.ok and not result.rolled_back and not result.skipped
        assert result.version == "1.1.0"
        assert running_version(sim) == "1.1.0"
        assert sim.device.primary.image_ok  # confirmed after it booted in test mode
        assert "boot: swap test" in sim.device.log
        assert seen.index("test") < seen.index("reset") < seen.index("confirm")
        state = transport.inspect(target(sim))
        assert state.reachable and state.version == "1.1.0"
        assert state.detail["confirmed"] == "true"
        assert state.detail["staged_version"] == "1.0.0"


def test_same_image_is_skipped_by_hash() -> None:
    with running_sim() as sim:
        assert flash(sim).ok
        frames = sim.frames_in
        again = flash(sim)
        assert again.ok and again.skipped
        assert sim.frames_in - frames < 5  # no upload happened


def test_test_only_leaves_image_unconfirmed_and_reset_reverts() -> None:
    with running_sim() as sim:
        result = flash(sim, test_only="1")
        assert result.ok and "test mode" in result.message
        assert running_version(sim) == "1.1.0" and not sim.device.primary.image_ok
        boots = sim.device.boots
        with SmpClient(sim.port, timeout=2) as c:
            c.reset()
        deadline = time.monotonic() + 20
        while sim.device.boots == boots and time.monotonic() < deadline:
            time.sleep(0.02)
        with sim.device.lock:
            assert running_version(sim) == "1.0.0"
        assert sim.device.log[-1] == "boot: revert"


def test_rollback_is_detected_and_old_image_keeps_running() -> None:
    with running_sim(fails_to_boot=True) as sim:
        result = flash(sim)
        assert not result.ok and result.rolled_back
        assert "rolled back" in result.message and result.version == "1.0.0"
        assert running_version(sim) == "1.0.0" and sim.device.primary.image_ok


def test_downgrade_refused_unless_forced() -> None:
    older = mcu_image((0, 9, 0, 0), 2000)
    with running_sim() as sim:
        with pytest.raises(RefusedImage, match="older"):
            flash(sim, older)
        assert running_version(sim) == "1.0.0"
        result = flash(sim, older, force="1")
        assert result.ok and running_version(sim) == "0.9.0"


def test_image_for_another_target_is_refused() -> None:
    with running_sim() as sim:
        t = target(sim, spec_image_id="board-b")
        t.hardware_id = "board-a"
        with pytest.raises(RefusedImage, match="board-a"):
            get_transport("smp-serial").flash(t, io.BytesIO(NEW), progress=lambda *a: None)
        with pytest.raises(RefusedImage, match="declares version"):
            flash(sim, spec_version="2.0.0")
        with pytest.raises(RefusedImage, match="MCUboot"):
            flash(sim, spec_format="dfu")
        assert sim.frames_in == 0  # refused before a byte went out


def test_corrupt_image_never_leaves_the_gateway() -> None:
    bad = bytearray(NEW)
    bad[1000] ^= 0x40
    with running_sim() as sim:
        with pytest.raises(mcuboot.ImageError, match="corrupt"):
            flash(sim, bytes(bad))
        assert sim.frames_in == 0


def test_pipelined_upload_stays_within_buffer_count() -> None:
    with running_sim(buf_count=3) as sim:
        with SmpClient(sim.port, timeout=2) as c:
            params = c.read_params()
            assert (params.buf_size, params.buf_count) == (512, 3)
            assert c.upload(NEW) == 0
        assert sim.dropped_frames == 0
        assert sim.device.secondary.data == NEW
    # a client that ignores the advertised count overruns the device: the sim drops frames
    with running_sim(buf_count=2, baud=1_000_000, erase_ms_per_sector=500) as sim, \
            SmpClient(sim.port, baud=1_000_000, timeout=2) as c:
        sha = hashlib.sha256(NEW).digest()
        c.send(Op.WRITE, IMAGE_UPLOAD, {"image": 0, "len": len(NEW), "off": 0, "sha": sha,
                                        "data": NEW[:256]})
        for off in range(256, 2048, 256):
            c.send(Op.WRITE, IMAGE_UPLOAD, {"off": off, "data": NEW[off : off + 256]})
        deadline = time.monotonic() + 20
        while sim.frames_in < 8 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert sim.frames_in == 8 and sim.dropped_frames > 0


def test_discover_probes_configured_ports(tmp_path: Path) -> None:
    with running_sim(tmp_path) as sim:
        found = get_transport("smp-serial", {"ports": f"{sim.port},{tmp_path}/nothing"}).discover()
        assert [t.address for t in found] == [sim.port]
    assert OLD != NEW
