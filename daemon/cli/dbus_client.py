"""The CLI's side of org.ferry.Ferry1: calls, properties and a followed install.

Every call maps D-Bus failures to FerryErrors with the CLI's exit codes, so a field
technician sees "ferryd is not running" or "permission denied" with what to do, not a
D-Bus error name.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable
from typing import Any

from dbus_next import BusType, Message, MessageType, Variant
from dbus_next.aio import MessageBus
from dbus_next.errors import DBusError

from ferry.daemon.cli import exitcodes
from ferry.daemon.service import dbus_api
from ferry.errors import FerryError

STANDALONE_HINT = ("without ferryd, 'ferry --config /etc/ferry/ferry.toml status' and "
                   "'... mark good|bad|active' still work, and 'ferry install' runs the "
                   "install in the foreground")


class DaemonUnavailable(FerryError):
    exit_code = exitcodes.NOT_RUNNING


class PermissionDenied(FerryError):
    exit_code = exitcodes.DENIED


class DaemonError(FerryError):
    exit_code = exitcodes.FAILED


def _address() -> str | None:
    """FERRY_BUS_ADDRESS (tests, the demo) wins over the system bus."""
    return os.environ.get("FERRY_BUS_ADDRESS") or None


async def connect() -> MessageBus:
    try:
        address = _address()
        if address:
            return await MessageBus(bus_address=address).connect()
        return await MessageBus(bus_type=BusType.SYSTEM).connect()
    except (OSError, DBusError, ValueError) as err:
        raise DaemonUnavailable(f"cannot reach the D-Bus system bus ({err}); "
                                f"{STANDALONE_HINT}") from err


def _raise(err_name: str, text: str) -> None:
    if err_name in (dbus_api.ERROR_DENIED, "org.freedesktop.DBus.Error.AccessDenied"):
        raise PermissionDenied(f"permission denied: {text}")
    if err_name in ("org.freedesktop.DBus.Error.ServiceUnknown",
                    "org.freedesktop.DBus.Error.NameHasNoOwner"):
        raise DaemonUnavailable(f"ferryd is not running (nobody owns {dbus_api.BUS_NAME}); "
                                f"start it with 'systemctl start ferryd', or: {STANDALONE_HINT}")
    raise DaemonError(text or err_name)


async def call(bus: MessageBus, member: str, signature: str = "", body: list[Any] | None = None,
               interface: str = dbus_api.INTERFACE) -> list[Any]:
    reply = await bus.call(Message(
        destination=dbus_api.BUS_NAME, path=dbus_api.OBJECT_PATH, interface=interface,
        member=member, signature=signature, body=body or []))
    if reply is None:
        raise DaemonError(f"no reply to {member}")
    if reply.message_type == MessageType.ERROR:
        _raise(reply.error_name or "", str(reply.body[0]) if reply.body else "")
    return list(reply.body)


async def properties(bus: MessageBus) -> dict[str, Any]:
    body = await call(bus, "GetAll", "s", [dbus_api.INTERFACE],
                      interface="org.freedesktop.DBus.Properties")
    return {k: v.value for k, v in body[0].items()}


def run(coro_fn: Callable[[MessageBus], Any]) -> Any:
    """Connect, run ``coro_fn(bus)``, disconnect; for one-shot CLI commands."""
    async def main() -> Any:
        bus = await connect()
        try:
            return await coro_fn(bus)
        finally:
            bus.disconnect()
    return asyncio.run(main())


def get_status() -> dict[str, Any]:
    async def go(bus: MessageBus) -> dict[str, Any]:
        (text,) = await call(bus, "GetStatus")
        status: dict[str, Any] = json.loads(text)
        status["daemon"] = await properties(bus)
        return status
    result: dict[str, Any] = run(go)
    return result


def list_targets() -> list[dict[str, Any]]:
    async def go(bus: MessageBus) -> list[dict[str, Any]]:
        (text,) = await call(bus, "ListTargets")
        result: list[dict[str, Any]] = json.loads(text)
        return result
    targets: list[dict[str, Any]] = run(go)
    return targets


def mark(state: str, slot: str) -> tuple[str, str]:
    async def go(bus: MessageBus) -> tuple[str, str]:
        name, message = await call(bus, "Mark", "ss", [state, slot])
        return str(name), str(message)
    result: tuple[str, str] = run(go)
    return result


def cancel() -> bool:
    async def go(bus: MessageBus) -> bool:
        (ok,) = await call(bus, "Cancel")
        return bool(ok)
    result: bool = run(go)
    return result


# progress(percent, message, depth)
ProgressCallback = Callable[[int, str, int], None]


def follow(method: str, signature: str, body: list[Any],
           on_progress: ProgressCallback) -> tuple[int, str]:
    """Start Install or Flash and follow Progress until Completed; (result, LastError).

    Ctrl-C stops following, not the operation (it runs on in ferryd)."""
    async def go(bus: MessageBus) -> tuple[int, str]:
        done: asyncio.Future[int] = asyncio.get_running_loop().create_future()

        def handler(msg: Message) -> bool:
            if msg.message_type != MessageType.SIGNAL or msg.path != dbus_api.OBJECT_PATH:
                return False
            if msg.member == "PropertiesChanged" and msg.body[0] == dbus_api.INTERFACE:
                changed = msg.body[1]
                if "Progress" in changed:
                    pct, text, depth = changed["Progress"].value
                    on_progress(int(pct), str(text), int(depth))
            elif msg.member == "Completed" and not done.done():
                done.set_result(int(msg.body[0]))
            return False

        bus.add_message_handler(handler)
        rule = f"type='signal',sender='{dbus_api.BUS_NAME}',path='{dbus_api.OBJECT_PATH}'"
        await bus.call(Message(destination="org.freedesktop.DBus", path="/org/freedesktop/DBus",
                               interface="org.freedesktop.DBus", member="AddMatch",
                               signature="s", body=[rule]))
        await call(bus, method, signature, body)
        result = await done
        props = await properties(bus)
        return result, str(props.get("LastError", ""))

    outcome: tuple[int, str] = run(go)
    return outcome


def install(source: str, *, force: bool, on_progress: ProgressCallback) -> tuple[int, str]:
    return follow("Install", "sa{sv}", [source, {"force": Variant("b", force)}], on_progress)


def flash(target: str, image: str, *, on_progress: ProgressCallback) -> tuple[int, str]:
    return follow("Flash", "ss", [target, image], on_progress)
