"""`ferry flash smp-serial` and `ferry sim mcu` as a field technician runs them."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from smp_helpers import NEW, mcu_image, running_sim, running_version

from ferry.daemon.cli.main import main


def test_flash_prints_progress_and_a_clear_final_line(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    image = tmp_path / "app.signed.bin"
    image.write_bytes(NEW)
    with running_sim() as sim:
        rc = main(["flash", "smp-serial", sim.port, str(image), "--timeout", "2"])
        err = capsys.readouterr().err
        assert rc == 0
        assert "upload [" in err and "B/s" in err and "ETA" in err
        assert err.rstrip().splitlines()[-1] == "done: " + sim.port + " runs 1.1.0, confirmed"
        assert running_version(sim) == "1.1.0"


def test_refused_downgrade_exits_nonzero_with_reason(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    image = tmp_path / "old.bin"
    image.write_bytes(mcu_image((0, 5, 0, 0), 2000))
    with running_sim() as sim:
        rc = main(["flash", "smp-serial", sim.port, str(image), "--timeout", "2"])
        assert rc == 1
        err = capsys.readouterr().err
        assert "older" in err and "--force" in err
        assert running_version(sim) == "1.0.0"


@pytest.mark.parametrize("quirks", [[], ["--usb", "0.3", "--smp-v1", "--no-params",
                                          "--reset-delay", "0.5"]],
                         ids=["zephyr-defaults", "usb-v1-no-params"])
def test_sim_mcu_command_serves_a_port(tmp_path: Path, quirks: list[str]) -> None:
    link = tmp_path / "ttyMCU"
    proc = subprocess.Popen([sys.executable, "-m", "ferry.daemon.cli.main", "sim", "mcu",
                             "--baud", "0", "--port", str(link), *quirks],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == str(link)
        image = tmp_path / "app.bin"
        image.write_bytes(NEW)
        out = subprocess.run([sys.executable, "-m", "ferry.daemon.cli.main", "flash",
                              "smp-serial", str(link), str(image), "--test-only",
                              "--reset-delay", "100ms", "--boot-timeout", "30"],
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        assert "test mode" in out.stderr.splitlines()[-1]
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    deadline = time.monotonic() + 5
    while link.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not link.exists()  # the port goes away with the simulator


def test_sim_mcu_usb_needs_a_port(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sim", "mcu", "--usb"]) == 2
    assert "--port" in capsys.readouterr().err
