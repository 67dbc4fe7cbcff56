"""Health checks and reboot over D-Bus against a private dbus-daemon (the real bus
daemon) carrying a stand-in for systemd's and logind's objects."""

import asyncio
import re
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


def _unit_path(name: str) -> str:
    return "/org/freedesktop/systemd1/unit/" + name.replace(".", "_2e").replace("-", "_2d")


def _now(steps: list[str]) -> str:
    """The next of a scripted sequence of states; the last one stays."""
    return steps.pop(0) if len(steps) > 1 else steps[0]


class Manager(ServiceInterface):
    """systemd1's Manager as the health check reads it (org.freedesktop.systemd1(5)):
    SystemState stays "starting" while any job is queued, NFailedUnits counts units in
    ActiveState "failed", ListUnitsFiltered(["failed"]) names them."""

    def __init__(self, state: dict[str, Any]) -> None:
        super().__init__("org.freedesktop.systemd1.Manager")
        self.state = state

    @dbus_property(access=PropertyAccess.READ)
    def SystemState(self) -> "s":  # type: ignore[name-defined]  # noqa: F821
        return _now(self.state["system"])

    def _failed(self) -> list[str]:
        return sorted(n for n, u in self.state["objects"].items() if u.current() == "failed")

    @dbus_property(access=PropertyAccess.READ)
    def NFailedUnits(self) -> "u":  # type: ignore[name-defined]  # noqa: F821
        return len(self._failed())

    @method()
    def ListUnitsFiltered(self, states: "as") -> "a(ssssssouso)":  # type: ignore[valid-type]  # noqa: F722, F821
        return [[n, "", "loaded", "failed", "failed", "", _unit_path(n), 0, "", "/"]
                for n in self._failed() if "failed" in states]

    @method()
    def LoadUnit(self, name: "s") -> "o":  # type: ignore[name-defined]  # noqa: F821
        return _unit_path(name)


class Unit(ServiceInterface):
    def __init__(self, active: str | list[str], job: int) -> None:
        super().__init__("org.freedesktop.systemd1.Unit")
        self.steps = [active] if isinstance(active, str) else list(active)
        self.job = job
        self.seen = self.steps[0]

    def current(self) -> str:
        return self.seen

    @dbus_property(access=PropertyAccess.READ)
    def ActiveState(self) -> "s":  # type: ignore[name-defined]  # noqa: F821
        self.seen = _now(self.steps)
        return self.seen

    @dbus_property(access=PropertyAccess.READ)
    def Job(self) -> "(uo)":  # type: ignore[name-defined]  # noqa: F821
        if self.seen == "active":
            return [0, "/"]
        return [self.job, f"/org/freedesktop/systemd1/job/{self.job}"] if self.job else [0, "/"]


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
    state: dict[str, Any] = {"system": ["running"], "units": {}, "jobs": {}, "objects": {},
                             "reboots": []}
    loop = asyncio.new_event_loop()
    ready = threading.Event()

    async def serve() -> None:
        b = await MessageBus(bus_address=address).connect()
        state["bus"] = b
        b.export("/org/freedesktop/systemd1", Manager(state))
        for name, active in state["units"].items():
            unit = Unit(active, state["jobs"].get(name, 0))
            state["objects"][name] = unit
            b.export(_unit_path(name), unit)
        await b.request_name("org.freedesktop.systemd1")
        b.export("/org/freedesktop/login1", Login(state["reboots"]))
        await b.request_name("org.freedesktop.login1")
        ready.set()

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(serve())
        loop.run_forever()

    def start() -> None:
        threading.Thread(target=run, daemon=True).start()
        assert ready.wait(30), "the stand-in systemd did not come up"

    state["start"] = start
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


def test_degraded_system_fails_at_once_naming_the_failed_units(bus: dict[str, Any]) -> None:
    bus["system"] = ["degraded"]
    bus["units"] = {"modem.service": "failed"}
    bus["start"]()
    res = run_health(HealthConfig(window_seconds=30), poll=0.05)
    assert not res.ok and "degraded" in res.reason and "modem.service" in res.reason


def test_starting_with_the_health_units_own_job_queued_passes(bus: dict[str, Any]) -> None:
    """What real systemd shows ferry-health.service (docs/box.md): its own start job
    keeps SystemState "starting" until the check ends. The old check waited for
    "running" here and failed when the window ran out ("system is starting")."""
    bus["system"] = ["starting"]
    bus["units"] = {"ferry-health.service": "activating", "boot-complete.target": "inactive",
                    "app.service": "active"}
    bus["jobs"] = {"ferry-health.service": 311, "boot-complete.target": 312}
    bus["start"]()
    res = run_health(HealthConfig(window_seconds=30, required_units=("app.service",)),
                     poll=0.05)
    assert res.ok, res.reason


def test_failed_unit_fails_at_once_while_the_system_is_starting(bus: dict[str, Any]) -> None:
    bus["system"] = ["starting"]
    bus["units"] = {"ferry-health.service": "activating", "modem.service": "failed"}
    bus["jobs"] = {"ferry-health.service": 311}
    bus["start"]()
    res = run_health(HealthConfig(window_seconds=30), poll=0.05)
    assert not res.ok
    assert res.reason == "1 unit(s) failed while the system is starting: modem.service"


def test_maintenance_fails_at_once(bus: dict[str, Any]) -> None:
    bus["system"] = ["maintenance"]
    bus["start"]()
    res = run_health(HealthConfig(window_seconds=30), poll=0.05)
    assert not res.ok and "maintenance" in res.reason and "ran out" not in res.reason


def test_required_unit_still_starting_is_waited_for(bus: dict[str, Any]) -> None:
    bus["system"] = ["starting"]
    bus["units"] = {"app.service": ["activating", "activating", "active"]}
    bus["jobs"] = {"app.service": 77}
    bus["start"]()
    res = run_health(HealthConfig(window_seconds=30, required_units=("app.service",)),
                     poll=0.05)
    assert res.ok, res.reason


def test_required_unit_not_active_fails_when_the_window_ends(bus: dict[str, Any]) -> None:
    bus["system"] = ["starting"]
    bus["units"] = {"app.service": "inactive"}
    bus["start"]()
    res = run_health(HealthConfig(window_seconds=0.3, required_units=("app.service",)),
                     poll=0.05)
    assert not res.ok
    assert "ran out" in res.reason
    assert "required unit app.service is inactive and no job will start it" in res.reason


def test_required_unit_with_a_queued_job_fails_when_the_window_ends(
        bus: dict[str, Any]) -> None:
    bus["system"] = ["starting"]
    bus["units"] = {"app.service": "activating"}
    bus["jobs"] = {"app.service": 77}
    bus["start"]()
    res = run_health(HealthConfig(window_seconds=0.3, required_units=("app.service",)),
                     poll=0.05)
    assert not res.ok and "app.service is activating (start job queued)" in res.reason


def test_failed_required_unit_fails_naming_it(bus: dict[str, Any]) -> None:
    bus["system"] = ["running"]
    bus["units"] = {"app.service": "failed"}
    bus["start"]()
    res = run_health(HealthConfig(window_seconds=30, required_units=("app.service",)),
                     poll=0.05)
    assert not res.ok and "app.service" in res.reason and "ran out" not in res.reason


def test_health_unit_has_a_start_timeout_beyond_the_default_window() -> None:
    """A oneshot has no start timeout unless given one (systemd.service(5)); a hung
    check must end before boot-complete.target waits forever, but after the check's own
    window so its reason is what the journal shows."""
    unit = (Path(__file__).resolve().parents[2] / "systemd" / "ferry-health.service")
    text = unit.read_text()
    m = re.search(r"^TimeoutStartSec=(\d+)s$", text, re.M)
    assert m, "ferry-health.service has no TimeoutStartSec="
    assert int(m.group(1)) > HealthConfig().window_seconds
    assert "DefaultDependencies=no" not in text  # stops with shutdown.target


def test_reboot_asks_logind(bus: dict[str, Any]) -> None:
    bus["start"]()
    reboot((), bus_address=bus["address"])
    assert bus["reboots"] == [False]


def test_reboot_command_failure_is_clear(tmp_path: Path) -> None:
    with pytest.raises(RebootError, match="exited 3"):
        reboot(["sh", "-c", "echo no power button >&2; exit 3"])
