"""``ferryd``: the gateway's update daemon.

It resumes whatever a reboot or crash interrupted (the after-boot health check, a
half-done install), then serves org.ferry.Ferry1 on the system bus and tells systemd
it is ready. The watchdog ping comes from the asyncio loop itself, so a hung loop stops
the pings and systemd restarts ferryd; the journal makes that restart safe.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from ferry import __version__
from ferry.daemon.config import STATE_UMASK
from ferry.daemon.service import logsetup
from ferry.daemon.service import sdnotify as notify
from ferry.errors import FerryError

if TYPE_CHECKING:  # heavy imports stay out of `ferryd --check-health`
    from dbus_next.aio import MessageBus

    from ferry.daemon.config import Config
    from ferry.daemon.service.dbus_object import FerryInterface
    from ferry.daemon.service.operations import GatewayEngine

log = logging.getLogger("ferryd")


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="ferryd", description="ferry's update daemon")
    p.add_argument("--version", action="version", version=f"ferryd {__version__}")
    p.add_argument("--config", default=None, help="default /etc/ferry/ferry.toml")
    p.add_argument("--bus", default="system",
                   help="'system' (default), 'session', or a D-Bus address (tests)")
    p.add_argument("--check-health", action="store_true",
                   help="run the configured health checks once and exit 0 (healthy) or 1; "
                        "used by ferry-health.service before boot-complete.target")
    p.add_argument("--no-resume", action="store_true",
                   help="do not continue an interrupted deployment at start-up")
    p.add_argument("-v", "--verbose", action="store_true")
    return p.parse_args(argv)


def _load(path: str | None) -> Config:
    from ferry.daemon.config import DEFAULT_PATH, load_config

    return load_config(path or DEFAULT_PATH)


def check_health(config_path: str | None) -> int:
    from ferry.daemon.install.bootcheck import run_health

    config = _load(config_path)
    result = run_health(config.health)
    print(f"ferryd: health {'ok' if result.ok else 'FAILED'}: {result.reason}")
    return 0 if result.ok else 1


async def _bus(which: str) -> MessageBus:
    from dbus_next import BusType
    from dbus_next.aio import MessageBus

    # fd passing: bundles and images arrive as descriptors the caller opened (InstallFd,
    # Flash), never as paths ferryd would open as root
    if which == "system":
        return await MessageBus(bus_type=BusType.SYSTEM, negotiate_unix_fd=True).connect()
    if which == "session":
        return await MessageBus(bus_type=BusType.SESSION, negotiate_unix_fd=True).connect()
    return await MessageBus(bus_address=which, negotiate_unix_fd=True).connect()


def _resume(engine: GatewayEngine) -> None:
    from ferry.daemon.install.pipeline import resume
    from ferry.daemon.service.fdsource import UNRESUMABLE, fail_unresumable

    failed = fail_unresumable(engine.ctx)
    if failed is not None:
        log.error("deployment %d failed: %s", failed, UNRESUMABLE,
                  extra={"deployment_id": failed, "phase": "failed"})
    try:
        dep = resume(engine.ctx)
    except FerryError as err:
        log.error("resuming the interrupted deployment failed: %s", err)
        return
    if dep is not None:
        log.info("deployment %d: %s (%s)", dep.id, dep.state, dep.result or "pending",
                 extra={"deployment_id": dep.id, "phase": dep.state})


async def _watchdog(iface: FerryInterface, interval: float | None) -> None:
    last_status = ""
    hang_after = float(os.environ.get("FERRY_TEST_HANG_AFTER", "0") or 0)
    started = time.monotonic()
    while True:
        op = iface.operation
        pct, msg, _ = iface.progress
        status = f"{op}" if op == "idle" else f"{op} {pct}% {msg}"
        if status != last_status:
            notify.notify(f"STATUS={status}")
            last_status = status
        if interval is not None:
            notify.notify("WATCHDOG=1")
        if hang_after and time.monotonic() - started >= hang_after:
            # test hook: block the loop the way a real bug would
            log.warning("FERRY_TEST_HANG_AFTER: hanging the main loop")
            time.sleep(3600)
        await asyncio.sleep(min(interval or 1.0, 1.0))


async def serve(args: argparse.Namespace) -> int:
    from ferry.daemon.service.dbus_object import export
    from ferry.daemon.service.operations import GatewayEngine

    config = _load(args.config)
    engine = GatewayEngine(config)
    backend_stop = threading.Event()
    from ferry.daemon.backend.pipeline_adapter import resume_then_poll

    def resume() -> None:
        if not args.no_resume:
            _resume(engine)
            # the booted slot's chunk index, for the next delta install, at idle priority
            from ferry.daemon.install.deltaindexer import schedule

            schedule(config, engine.ctx.bootloader)

    # one thread finishes what a reboot interrupted, then polls the DDI server when
    # [backend] url is set, so the two never work on the same deployment at once
    threading.Thread(target=resume_then_poll, args=(resume, config, engine.ctx, backend_stop),
                     name="ferryd-backend", daemon=True).start()
    bus = await _bus(args.bus)
    iface = await export(bus, engine)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    notify.notify("READY=1")
    log.info("ferryd %s ready on the %s bus", __version__, args.bus)
    # What start-up imported lives as long as ferryd: out of the cyclic collector's
    # sight, so the collection after each operation (memory.release) does not walk it
    # again (bench/install.py: 16 % of ferryd's GIL-holding samples went there).
    gc.freeze()
    dog = asyncio.create_task(_watchdog(iface, notify.watchdog_interval()))
    await stop.wait()
    backend_stop.set()
    notify.notify("STOPPING=1")
    dog.cancel()
    bus.disconnect()
    return 0


# The same as UMask= in ferryd.service, so a start outside systemd (tests, a
# technician's foreground run) is no looser.
UMASK = STATE_UMASK


def main(argv: Sequence[str] | None = None) -> int:
    os.umask(UMASK)
    args = _parse(argv)
    logsetup.setup(logging.DEBUG if args.verbose else logging.INFO)
    try:
        if args.check_health:
            return check_health(args.config)
        return asyncio.run(serve(args))
    except FerryError as err:
        print(f"ferryd: {err}", file=sys.stderr)
        return err.exit_code


if __name__ == "__main__":
    sys.exit(main())
