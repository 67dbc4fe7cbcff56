"""Asking the system to reboot: logind or systemd over D-Bus, or a configured command.

logind first (it honours inhibitors and is what ``systemctl reboot`` uses), then
systemd1's manager; a configured argv replaces both, for tests, the simulator and
systems without systemd. The journal already says "rebooting" when this runs, so a
reboot that never happens is repeated on the next start.
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence

from ferry.errors import FerryError


class RebootError(FerryError):
    pass


def reboot(command: Sequence[str] = (), *, bus_address: str | None = None) -> None:
    if command:
        try:
            proc = subprocess.run(list(command), capture_output=True, text=True, timeout=120)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise RebootError(f"reboot command {command[0]} failed: {exc}") from exc
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or [""]
            raise RebootError(
                f"reboot command {' '.join(command)} exited {proc.returncode}: {tail[0]}")
        return
    import asyncio  # only on this path: its import costs a CLI ~30 ms

    asyncio.run(_reboot_dbus(bus_address))


async def _reboot_dbus(bus_address: str | None) -> None:
    from dbus_next import BusType, Message, MessageType
    from dbus_next.aio import MessageBus

    try:
        bus = await (MessageBus(bus_address=bus_address).connect() if bus_address
                     else MessageBus(bus_type=BusType.SYSTEM).connect())
    except Exception as exc:
        raise RebootError(f"cannot reach the system bus to reboot: {exc}") from exc
    attempts: tuple[tuple[str, str, str, str, str, list[bool]], ...] = (
        ("org.freedesktop.login1", "/org/freedesktop/login1",
         "org.freedesktop.login1.Manager", "Reboot", "b", [False]),
        ("org.freedesktop.systemd1", "/org/freedesktop/systemd1",
         "org.freedesktop.systemd1.Manager", "Reboot", "", []),
    )
    errors = []
    try:
        for dest, path, iface, member, sig, body in attempts:
            reply = await bus.call(Message(destination=dest, path=path, interface=iface,
                                           member=member, signature=sig, body=body))
            if reply is not None and reply.message_type != MessageType.ERROR:
                return
            errors.append(f"{dest}: {reply.error_name if reply else 'no reply'}")
    finally:
        bus.disconnect()
    raise RebootError("reboot refused: " + "; ".join(errors))
