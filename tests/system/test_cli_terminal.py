"""What a technician sees: `ferry install` and `ferry status` in a real 80-column
terminal (tmux), against a running ferryd, including a target whose update failed."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest
from dbus_fixtures import VENV_BIN, private_bus, running_ferryd
from install_gateway import make_bundle, make_gateway, make_image

from ferry.daemon.journal import Journal

TARGET = """
[[target]]
name = "sensor-mcu"
transport = "smp-serial"
address = "/dev/ttyUSB3"
baud = 115200
"""


class Tmux:
    def __init__(self, tmp: Path, env: dict[str, str]) -> None:
        tmux = shutil.which("tmux")
        if tmux is None:
            pytest.fail("tmux missing: run 'bash .ci/setup' (Debian package tmux)")
        self.cmd = [tmux, "-S", str(tmp / "tmux.sock")]
        env_args = [a for k, v in env.items() for a in ("-e", f"{k}={v}")]
        subprocess.run([*self.cmd, "new-session", "-d", "-s", "tech", "-x", "80", "-y", "40",
                        *env_args, "bash --norc --noprofile"], check=True)

    def type(self, line: str) -> None:
        subprocess.run([*self.cmd, "send-keys", "-t", "tech", line, "Enter"], check=True)

    def screen(self) -> str:
        return subprocess.run([*self.cmd, "capture-pane", "-p", "-t", "tech"],
                              capture_output=True, text=True, check=True).stdout

    def wait_for(self, text: str, timeout: float = 120) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            screen = self.screen()
            if text in screen:
                return screen
            time.sleep(0.3)
        raise AssertionError(f"{text!r} never appeared; screen:\n{self.screen()}")

    def close(self) -> None:
        subprocess.run([*self.cmd, "kill-server"], capture_output=True)


def test_install_and_status_at_80_columns(tmp_path: Path) -> None:
    gw = make_gateway(tmp_path / "gw", slot_size=4 << 20, extra=TARGET)
    # a previous deployment whose MCU update failed
    journal = Journal.open(gw.data_dir)
    dep = journal.create("usb://old.swu", origin="cli")
    journal.set_target(dep, "sensor-mcu", transport="smp-serial", state="failed",
                       message="no SMP answer from /dev/ttyUSB3 after 3 tries; "
                               "old firmware 1.0.0 still runs")
    journal.finish(dep, "failure", "1 of 1 targets failed: sensor-mcu")
    journal.close()
    bundle = make_bundle(gw, tmp_path / "gw-2.0.0.swu", version="2.0.0",
                         image=make_image("2.0.0", 3 << 20))
    with private_bus(with_policy=True) as address, \
            running_ferryd(gw.config_path, address, FERRY_BOOT_ID_PATH=str(gw.boot_id)):
        term = Tmux(tmp_path, {"FERRY_BUS_ADDRESS": address,
                               "PATH": f"{VENV_BIN}:/usr/bin:/bin", "TERM": "xterm"})
        try:
            term.type(f"ferry install {bundle}")
            screen = term.wait_for("ferry: installed")
            assert "writing slot [####################] 100.0%" in screen, screen
            assert "asking for the reboot" in screen
            term.type("clear; ferry status")
            screen = term.wait_for("sensor-mcu")
            time.sleep(0.5)
            screen = term.screen()
        finally:
            term.close()
    (tmp_path / "screen.txt").write_text(screen)  # what the technician saw, for debugging
    lines = screen.splitlines()
    assert all(len(line) <= 80 for line in lines)
    assert "\x1b" not in screen
    text = "\n".join(lines)
    assert "rootfs.0" in text and "rootfs.1" in text
    assert "install: #2 2.0.0 (A->B, from dbus) rebooting" in text, text
    assert "failure" in text.lower() and "sensor-mcu" in text
    assert "no SMP answer" in text, text


def test_cli_says_ferryd_is_not_running(tmp_path: Path) -> None:
    with private_bus(with_policy=True) as address:
        out = subprocess.run([str(VENV_BIN / "ferry"), "cancel"], capture_output=True,
                             text=True, env={"FERRY_BUS_ADDRESS": address, "PATH": "/usr/bin"})
    assert out.returncode == 3
    assert "ferryd is not running" in out.stderr
    assert "--config" in out.stderr
