"""Bad input and broken links: each gives a clear error or recovers by resuming, and the
MCU keeps running its old image until the new one is confirmed."""

from __future__ import annotations

import io
import threading
import time
from pathlib import Path

import pytest
from smp_helpers import NEW, flash, running_sim, running_version, target

from ferry.proxy.registry import get_transport
from ferry.proxy.smp.client import LinkError, SmpClient, TargetTimeout
from ferry.proxy.smp.smp import SmpError


def test_target_stops_answering_then_flash_resumes_where_it_stopped() -> None:
    with running_sim() as sim:
        sim.device.faults.silent_from_offset = 8000
        sim.device.faults.silent_seconds = 3600
        with pytest.raises(TargetTimeout, match=r"no answer|stopped answering"):
            flash(sim, timeout="0.3", retries="1", boot_timeout="1")
        assert running_version(sim) == "1.0.0"
        reached = sim.device.upload.off  # type: ignore[union-attr]
        assert reached >= 8000
        sim.device.silent_until = 0  # the MCU answers again
        result = flash(sim)
        assert result.ok and int(result.detail["resumed_at"]) == reached
        assert running_version(sim) == "1.1.0"


def test_short_silence_is_ridden_out() -> None:
    with running_sim() as sim:
        sim.device.faults.silent_from_offset = 5000
        sim.device.faults.silent_seconds = 1.0
        result = flash(sim, timeout="0.3")
        assert result.ok and running_version(sim) == "1.1.0"


def test_console_garbage_between_frames() -> None:
    with running_sim() as sim:
        sim.device.faults.garbage = True
        assert flash(sim).ok


def test_wrong_crc_and_cut_frames_are_resent() -> None:
    with running_sim() as sim:
        sim.device.faults.bad_crc = 2
        sim.device.faults.cut = 2
        result = flash(sim, timeout="0.3")
        assert result.ok and running_version(sim) == "1.1.0"
        assert sim.device.faults.bad_crc == 0 and sim.device.faults.cut == 0


def test_crc_errors_that_never_stop_name_the_cause() -> None:
    with running_sim() as sim:
        sim.device.faults.bad_crc = 10**6
        with pytest.raises(TargetTimeout, match="CRC"):
            flash(sim, timeout="0.2", retries="0")
        assert running_version(sim) == "1.0.0"


def test_smp_error_code_is_reported() -> None:
    with running_sim() as sim:
        sim.device.faults.error_rc[(1, 1)] = 6
        with pytest.raises(SmpError, match="EBADSTATE"):
            flash(sim)
        assert running_version(sim) == "1.0.0"


def test_mcu_resets_mid_upload_and_upload_restarts() -> None:
    with running_sim() as sim:
        fired = []

        def progress(done: int, total: int, msg: str) -> None:
            if msg == "upload" and done > 6000 and not fired:
                fired.append(done)
                sim.device.upload = None  # RAM lost: the session is gone

        result = get_transport("smp-serial").flash(target(sim), io.BytesIO(NEW),
                                                   progress=progress)
        assert fired and result.ok and running_version(sim) == "1.1.0"


def test_port_disappears_and_comes_back(tmp_path: Path) -> None:
    with running_sim(tmp_path) as sim:
        fired = []

        def progress(done: int, total: int, msg: str) -> None:
            if msg == "upload" and done > 6000 and not fired:
                fired.append(done)
                sim.unplug()
                threading.Timer(0.5, sim.replug).start()

        result = get_transport("smp-serial").flash(target(sim), io.BytesIO(NEW),
                                                   progress=progress)
        assert fired and result.ok
        assert int(result.detail["resumed_at"]) >= fired[0]
        assert running_version(sim) == "1.1.0"


def test_port_disappears_for_good(tmp_path: Path) -> None:
    with running_sim(tmp_path) as sim:
        def progress(done: int, total: int, msg: str) -> None:
            if msg == "upload" and done > 6000 and Path(sim.port).exists():
                sim.unplug()

        start = time.monotonic()
        with pytest.raises(LinkError, match=r"did not come back|cannot open|failed"):
            get_transport("smp-serial").flash(
                target(sim, boot_timeout="1", retries="1"), io.BytesIO(NEW),
                progress=progress)
        assert time.monotonic() - start < 30
        assert running_version(sim) == "1.0.0"


def test_port_vanishing_between_open_and_flush_is_a_link_error(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A USB CDC-ACM port that goes away as the MCU resets can fail pyserial's flush with
    termios.error, which is no OSError; it must read as a LinkError so the wait goes on."""
    import termios

    import serial

    def vanished(self: serial.Serial) -> None:
        raise termios.error(5, "Input/output error")

    with running_sim() as sim:
        monkeypatch.setattr(serial.Serial, "reset_input_buffer", vanished)
        with pytest.raises(LinkError, match="Input/output error"):
            SmpClient(sim.port).open()
