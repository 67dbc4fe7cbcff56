"""After the reboot: did the new slot come up, and is it healthy? Commit or roll back.

Called by :func:`ferry.daemon.install.pipeline.run` whenever the pending deployment is past
"rebooting" in a new boot. The decision is recorded before it is acted on:

- booted the old slot instead of the new one: U-Boot's attempt counter fell back (the
  new system never came up far enough). Record that with the reason, done.
- booted the new slot: run the health checks within the configured window.
  Pass: mark good (commit), then the proxy phase flashes the staged target images.
  Fail: record why, mark the new slot bad and reboot into the old one; the next start
  finds "rolling-back" and a boot on the old slot, and closes the deployment.
"""

from __future__ import annotations

import logging
import subprocess
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ferry.daemon.config import HealthConfig
from ferry.errors import FerryError

if TYPE_CHECKING:
    from ferry.daemon.install.context import Context

log = logging.getLogger(__name__)


class HealthCheckFailed(FerryError):
    pass


@dataclass(frozen=True)
class HealthResult:
    ok: bool
    reason: str


# One probe answers (done, ok, why): done=False means "not settled yet, ask again".
Probe = Callable[[], tuple[bool, bool, str]]


def systemd_probe(required_units: Sequence[str], bus_address: str | None = None) -> Probe:
    """The boot judged the way systemd-boot-check-no-failures does, plus required units.

    Both callers run inside the boot transaction: ferry-health.service is ordered
    Before=boot-complete.target, and ferryd's own resume starts during boot. While any
    start job is queued, and the health check's own job is one, systemd reports
    SystemState "starting", so waiting for "running" can never end (the box: "health
    window of 300 s ran out: system is starting"). So the answer comes from what has
    already happened: any failed unit (NFailedUnits, named by ListUnitsFiltered) fails
    at once, as does a system in maintenance or stopping; each required unit must be
    ActiveState "active", and one that is still starting or has a start job queued is
    waited for within the window.
    """

    def probe() -> tuple[bool, bool, str]:
        import asyncio  # only on this path: its import costs a CLI ~30 ms

        return asyncio.run(_systemd_state(list(required_units), bus_address))

    return probe


# SystemState values that fail at once: a failed unit (degraded), the rescue or
# emergency target (maintenance), a shutdown under way, or no manager at all.
FAILED_SYSTEM_STATES = ("degraded", "maintenance", "stopping", "offline", "unknown")
MANAGER = "org.freedesktop.systemd1.Manager"
ROOT = "/org/freedesktop/systemd1"


async def _systemd_state(units: list[str], bus_address: str | None) -> tuple[bool, bool, str]:
    from dbus_next import BusType, Message, MessageType, Variant
    from dbus_next.aio import MessageBus

    try:
        bus = await (MessageBus(bus_address=bus_address).connect() if bus_address
                     else MessageBus(bus_type=BusType.SYSTEM).connect())
    except Exception as exc:
        return False, False, f"system bus not reachable: {exc}"

    async def call(path: str, iface: str, member: str, signature: str,
                   body: list[object]) -> list[object] | None:
        reply = await bus.call(Message(
            destination="org.freedesktop.systemd1", path=path, interface=iface,
            member=member, signature=signature, body=body))
        if reply is None or reply.message_type == MessageType.ERROR:
            return None
        return list(reply.body)

    async def prop(path: str, iface: str, name: str) -> object | None:
        body = await call(path, "org.freedesktop.DBus.Properties", "Get", "ss", [iface, name])
        if body is None:
            return None
        value = body[0]
        return value.value if isinstance(value, Variant) else value

    try:
        state = await prop(ROOT, MANAGER, "SystemState")
        if state is None:
            return False, False, "systemd does not answer on the bus"
        if state in FAILED_SYSTEM_STATES:
            return True, False, f"systemd reports the system {state}" + await _failed(call)
        n_failed = await prop(ROOT, MANAGER, "NFailedUnits")
        if isinstance(n_failed, int) and n_failed > 0:
            return True, False, (f"{n_failed} unit(s) failed while the system is {state}"
                                 + await _failed(call))
        for unit in units:
            loaded = await call(ROOT, MANAGER, "LoadUnit", "s", [unit])
            if loaded is None:
                return True, False, f"required unit {unit} is unknown to systemd"
            path = str(loaded[0])
            active = await prop(path, "org.freedesktop.systemd1.Unit", "ActiveState")
            if active == "active":
                continue
            if active == "failed":
                return True, False, f"required unit {unit} is failed"
            job = await prop(path, "org.freedesktop.systemd1.Unit", "Job")
            queued = isinstance(job, list | tuple) and len(job) == 2 and job[0] != 0
            return False, False, (f"required unit {unit} is {active}"
                                  + (" (start job queued)" if queued else
                                     " and no job will start it"))
        return True, True, (f"no failed units, required units active (system {state})"
                            if units else f"no failed units (system {state})")
    finally:
        bus.disconnect()


async def _failed(call: Callable[..., Awaitable[list[object] | None]]) -> str:
    """': a.service, b.mount' from ListUnitsFiltered(["failed"]), or '' if it cannot tell."""
    body = await call(ROOT, MANAGER, "ListUnitsFiltered", "as", [["failed"]])
    rows = body[0] if body else None
    if not isinstance(rows, list):
        return ""
    names = sorted(str(row[0]) for row in rows)
    return (": " + ", ".join(names)) if names else ""


def command_probe(argv: Sequence[str], timeout: float) -> Probe:
    def probe() -> tuple[bool, bool, str]:
        try:
            proc = subprocess.run(list(argv), capture_output=True, text=True,
                                  timeout=max(timeout, 1.0))
        except FileNotFoundError:
            return True, False, f"check {argv[0]} not found"
        except subprocess.TimeoutExpired:
            return False, False, f"check {' '.join(argv)} timed out"
        if proc.returncode == 0:
            return True, True, "ok"
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or [""]
        return False, False, f"check {' '.join(argv)} exited {proc.returncode} {tail[0]}".strip()

    return probe


def run_health(cfg: HealthConfig, *, use_systemd: bool = True, poll: float = 1.0,
               clock: Callable[[], float] = time.monotonic,
               sleep: Callable[[float], None] = time.sleep) -> HealthResult:
    """All probes must pass within ``window_seconds``; a definite failure ends early."""
    deadline = clock() + cfg.window_seconds
    probes: list[Probe] = []
    if use_systemd:
        probes.append(systemd_probe(cfg.required_units))
    for argv in cfg.checks:
        probes.append(command_probe(argv, cfg.window_seconds))
    pending = list(probes)
    last = "no checks configured"
    while True:
        still: list[Probe] = []
        for p in pending:
            done, ok, why = p()
            if done and not ok:
                return HealthResult(False, why)
            if not ok:
                still.append(p)
                last = why
        if not still:
            return HealthResult(True, "all health checks passed")
        pending = still
        if clock() >= deadline:
            return HealthResult(False, f"health window of {cfg.window_seconds:g} s ran out: "
                                       f"{last}")
        sleep(min(poll, max(deadline - clock(), 0.0)))


def after_boot(ctx: Context, dep_id: int, *, use_systemd: bool | None = None) -> None:
    from ferry.daemon.install.proxyphase import run as proxy_run

    j = ctx.journal
    dep = j.get(dep_id)
    bl = ctx.bootloader
    if use_systemd is None:
        use_systemd = ctx.config.health.system_state or bool(ctx.config.health.required_units)

    if dep.state == "rolling-back":
        booted = bl.booted()
        if booted == dep.from_slot:
            bl.mark_good(booted)  # the old system is up again: keep its attempts full
            j.end_step(dep_id, "rollback", detail=f"running {booted} again")
            j.finish(dep_id, "rolled-back", dep.error or "health check failed")
            return
        # the rollback reboot did not happen yet: repeat it
        _rollback(ctx, dep_id, dep.error or "health check failed")
        return

    if dep.state in ("rebooting", "checking"):
        booted = bl.booted()
        if booted != dep.to_slot:
            reason = (f"booted slot {booted}, expected {dep.to_slot}: U-Boot fell back to the "
                      "old slot (the new one did not come up within its boot attempts)")
            j.begin_step(dep_id, "boot", detail=reason)
            bl.mark_bad(dep.to_slot or "")
            bl.mark_good(booted)
            j.end_step(dep_id, "boot", "failed", reason)
            j.finish(dep_id, "rolled-back", reason)
            return
        if dep.state == "rebooting":
            j.begin_step(dep_id, "boot", detail=f"booted {booted}")
            j.end_step(dep_id, "boot", state="checking")
        j.begin_step(dep_id, "health", state="checking")
        result = run_health(ctx.config.health, use_systemd=use_systemd)
        if not result.ok:
            j.end_step(dep_id, "health", "failed", result.reason)
            j.update(dep_id, error=f"health check failed: {result.reason}")
            _rollback(ctx, dep_id, result.reason)
            return
        j.end_step(dep_id, "health", detail=result.reason)
        j.begin_step(dep_id, "commit", detail=dep.to_slot)
        bl.mark_good(dep.to_slot or "")
        j.end_step(dep_id, "commit", state="committed")
        dep = j.get(dep_id)

    if dep.state in ("committed", "proxy"):
        proxy_run(ctx, dep_id)


def _rollback(ctx: Context, dep_id: int, reason: str) -> None:
    j = ctx.journal
    dep = j.get(dep_id)
    j.begin_step(dep_id, "rollback", state="rolling-back", detail=reason)
    ctx.bootloader.mark_bad(dep.to_slot or "")
    j.update(dep_id, boot_id=ctx.boot_id() if ctx.boot_id else "")
    ctx.reboot()

