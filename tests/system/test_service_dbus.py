"""ferryd on a real (private) dbus-daemon: install with progress, privilege checks by
the bus policy and by ferryd itself, sd_notify READY/STATUS/WATCHDOG."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from dbus_fixtures import (
    NotifySocket,
    dbus_send_as_nobody,
    private_bus,
    running_ferryd,
)
from install_gateway import make_bundle, make_gateway, make_image

from ferry.daemon.cli import dbus_client as client


@pytest.fixture
def gateway(tmp_path: Path):
    return make_gateway(tmp_path / "gw", slot_size=4 << 20)


def test_install_over_dbus_reports_progress_and_status(gateway, tmp_path, monkeypatch):
    bundle = make_bundle(gateway, tmp_path / "v2.swu", version="2.0.0",
                         image=make_image("2.0.0", 3 << 20))
    with private_bus(with_policy=True) as address:
        monkeypatch.setenv("FERRY_BUS_ADDRESS", address)
        with running_ferryd(gateway.config_path, address,
                            FERRY_BOOT_ID_PATH=str(gateway.boot_id)):
            seen: list[tuple[int, str, int]] = []
            result, error = client.install(str(bundle), force=False,
                                           on_progress=lambda *p: seen.append(p))
            assert (result, error) == (0, "")
            phases = {msg for _, msg, _ in seen}
            assert "write" in phases, seen
            percents = [p for p, msg, _ in seen if msg == "write"]
            assert percents == sorted(percents) and percents[-1] >= 90
            status = client.get_status()
    assert gateway.reboot_flag.exists()  # the pipeline asked for the reboot
    assert status["daemon"]["Operation"] == "idle"
    assert status["bootloader"]["booted"] == "A"
    assert status["bootloader"]["primary"] == "B"  # activated, waiting for the reboot
    assert status["install"]["pending"]["state"] == "rebooting"
    assert status["install"]["pending"]["version"] == "2.0.0"
    assert status["health"]["overall"] in ("ok", "degraded", "failed")


def test_policy_refuses_unprivileged_state_change(gateway):
    with private_bus(with_policy=True) as address, \
            running_ferryd(gateway.config_path, address,
                           FERRY_BOOT_ID_PATH=str(gateway.boot_id)):
        denied = dbus_send_as_nobody(address, "Mark", "string:good", "string:booted")
        assert denied.returncode != 0
        assert "AccessDenied" in denied.stderr, denied.stderr
        # reading stays open to everyone
        allowed = dbus_send_as_nobody(address, "GetStatus")
        assert allowed.returncode == 0, allowed.stderr
        assert json.loads(allowed.stdout.split('string "', 1)[1].rsplit('"', 1)[0]
                          .replace('\\"', '"'))["compatible"] == "test-gw"


def test_ferryd_refuses_unprivileged_caller_even_without_policy(gateway):
    before = gateway.env()
    with private_bus(with_policy=False) as address, \
            running_ferryd(gateway.config_path, address,
                           FERRY_BOOT_ID_PATH=str(gateway.boot_id)):
        denied = dbus_send_as_nobody(address, "Mark", "string:bad", "string:booted")
        assert denied.returncode != 0
        assert "org.ferry.Ferry1.Error.PermissionDenied" in denied.stderr, denied.stderr
        assert "group 'ferry'" in denied.stderr
    assert gateway.env() == before  # nothing was marked


def test_sd_notify_ready_status_watchdog_and_hang(gateway, tmp_path):
    notify = NotifySocket(tmp_path)
    try:
        with private_bus(with_policy=True) as address, \
                running_ferryd(gateway.config_path, address, notify,
                               FERRY_BOOT_ID_PATH=str(gateway.boot_id),
                               WATCHDOG_USEC="400000", FERRY_TEST_HANG_AFTER="4") as proc:
            notify.wait_for("STATUS=")
            first = notify.wait_for("WATCHDOG=1")
            time.sleep(8)  # the loop hangs 4 s after start
            notify.drain()
            pings = [t for t, line in notify.messages if line == "WATCHDOG=1"]
            assert len(pings) >= 3, notify.messages
            # after the hang no more pings arrive, though the process is still alive
            assert proc.poll() is None
            assert pings[-1] < time.monotonic() - 2.5, (first, pings)
            proc.kill()  # a hung loop ignores SIGTERM; systemd would kill it too
    finally:
        notify.close()


def test_notify_is_silent_without_systemd(monkeypatch):
    from ferry.daemon.service import sdnotify as notify

    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert notify.notify("READY=1") is False
    monkeypatch.setenv("WATCHDOG_USEC", "2000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert notify.watchdog_interval() == 1.0
