"""Health checks and reboot over D-Bus against a private dbus-daemon (the real bus
daemon) carrying a stand-in for systemd's and logind's objects."""

import asyncio
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from dbus_next.aio import MessageBus
from dbus_next.service import PropertyAccess, ServiceInterface, dbus_property, method

from ferry.daemon.config import HealthConfig
from ferry.daemon.install.bootcheck import run_health
from ferry.daemon.install.reboot import RebootError, reboot

BUS_CONF = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:path={sock}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
</busconfig>
"""


class Manager(ServiceInterface):
    def __init__(self, state: dict[str, Any]) -> None:
        super().__init__("org.freedesktop.systemd1.Manager")
        self.state = state

    @dbus_property(access=PropertyAccess.READ)
    def SystemState(self) -> "s":  # type: ignore[name-defined]  # noqa: F821
        steps: list[str] = self.state["system"]
        return steps.pop(0) if len(steps) > 1 else steps[0]

    @method()
    def LoadUnit(self, name: "s") -> "o":  # type: ignore[name-defined]  # noqa: F821
        return "/org/freedesktop/systemd1/unit/" + name.replace(".", "_2e").replace("-", "_2d")


class Unit(ServiceInterface):
    def __init__(self, active: str) -> None:
        super().__init__("org.freedesktop.systemd1.Unit")
        self.active = active

    @dbus_property(access=PropertyAccess.READ)
    def ActiveState(self) -> "s":  # type: ignore[name-defined]  # noqa: F821
        return self.active


class Login(ServiceInterface):
    def __init__(self, calls: list[bool]) -> None:
        super().__init__("org.freedesktop.login1.Manager")
        self.calls = calls

    @method()
    def Reboot(self, interactive: "b"):  # type: ignore[name-defined, no-untyped-def]  # noqa: F821
        self.calls.append(interactive)


@pytest.fixture
def bus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    daemon = shutil.which("dbus-daemon")
    if daemon is None:
        pytest.fail("dbus-daemon missing; run bash .ci/setup")
    sock = tmp_path / "bus"
    conf = tmp_path / "bus.conf"
    conf.write_text(BUS_CONF.format(sock=sock))
    proc = subprocess.Popen([daemon, f"--config-file={conf}", "--nofork", "--print-address"],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    address = proc.stdout.readline().strip()
    state: dict[str, Any] = {"system": ["running"], "units": {}, "reboots": []}
    loop = asyncio.new_event_loop()
    ready = threading.Event()

    async def serve() -> None:
        b = await MessageBus(bus_address=address).connect()
        state["bus"] = b
        b.export("/org/freedesktop/systemd1", Manager(state))
        for name, active in state["units"].items():
            path = "/org/freedesktop/systemd1/unit/" + name.replace(".", "_2e").replace(
                "-", "_2d")
            b.export(path, Unit(active))
        await b.request_name("org.freedesktop.systemd1")
        b.export("/org/freedesktop/login1", Login(state["reboots"]))
        await b.request_name("org.freedesktop.login1")
        ready.set()

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(serve())
        loop.run_forever()

    state["start"] = lambda: (threading.Thread(target=run, daemon=True).start(),
                              ready.wait(30))
    state["address"] = address
    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", address)
    try:
        yield state
    finally:
        if "bus" in state:
            loop.call_soon_threadsafe(state["bus"].disconnect)
        loop.call_soon_threadsafe(loop.stop)
        proc.terminate()
        proc.wait(timeout=30)


def test_running_system_with_active_units_passes(bus: dict[str, Any]) -> None:
    bus["units"] = {"app.service": "active", "net-online.target": "active"}
    bus["start"]()
    cfg = HealthConfig(window_seconds=10, required_units=("app.service", "net-online.target"),
                       checks=(("true",),))
    res = run_health(cfg, poll=0.05)
    assert res.ok, res.reason


def test_degraded_system_fails_at_once(bus: dict[str, Any]) -> None:
    bus["system"] = ["degraded"]
    bus["start"]()
    res = run_health(HealthConfig(window_seconds=30), poll=0.05)
    assert not res.ok and "degraded" in res.reason


def test_starting_system_is_waited_for(bus: dict[str, Any]) -> None:
    bus["system"] = ["starting", "starting", "running"]
    bus["start"]()
    res = run_health(HealthConfig(window_seconds=30), poll=0.05)
    assert res.ok, res.reason


def test_failed_unit_fails_when_the_window_ends(bus: dict[str, Any]) -> None:
    bus["units"] = {"app.service": "failed"}
    bus["start"]()
    res = run_health(HealthConfig(window_seconds=0.3, required_units=("app.service",)),
                     poll=0.05)
    assert not res.ok and "app.service is failed" in res.reason


def test_reboot_asks_logind(bus: dict[str, Any]) -> None:
    bus["start"]()
    reboot((), bus_address=bus["address"])
    assert bus["reboots"] == [False]


def test_reboot_command_failure_is_clear(tmp_path: Path) -> None:
    with pytest.raises(RebootError, match="exited 3"):
        reboot(["sh", "-c", "echo no power button >&2; exit 3"])
