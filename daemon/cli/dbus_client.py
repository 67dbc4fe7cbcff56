"""The CLI's side of org.ferry.Ferry1: calls, properties and a followed install.

Every call maps D-Bus failures to FerryErrors with the CLI's exit codes, so a field
technician sees "ferryd is not running" or "permission denied" with what to do, not a
D-Bus error name.

Local files go to ferryd as open descriptors (``InstallFd``, ``Flash``), opened here
with the caller's own rights: ferryd runs as root and must not read for a member of
group ``ferry`` what that user could not read (docs/security.md).
"""

from __future__ import annotations

import asyncio
import json
import os
import stat
from collections.abc import Callable
from typing import Any

from dbus_next import BusType, Message, MessageType, Variant
from dbus_next.aio import MessageBus
from dbus_next.errors import AuthError, DBusError

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
            return await MessageBus(bus_address=address, negotiate_unix_fd=True).connect()
        return await MessageBus(bus_type=BusType.SYSTEM, negotiate_unix_fd=True).connect()
    except (OSError, DBusError, ValueError, AuthError) as err:
        # AuthError: also a bus that refuses fd passing (not a UNIX socket)
        raise DaemonUnavailable(f"cannot reach the D-Bus system bus ({err}); "
                                f"{STANDALONE_HINT}") from err


def _raise(err_name: str, text: str) -> None:
    if err_name == "org.freedesktop.DBus.Error.AccessDenied":
        # The bus's own refusal ("Rejected send message, 2 matched rules; ..." with the
        # whole rule dump, as seen on the box): say which rule and what to do instead.
        raise PermissionDenied(
            "permission denied by the D-Bus policy (org.ferry.Ferry1.conf): only root and "
            "members of group ferry may change ferry's state; ask an administrator to add "
            "you to group ferry")
    if err_name == dbus_api.ERROR_DENIED:
        raise PermissionDenied(f"permission denied: {text}")
    if err_name in ("org.freedesktop.DBus.Error.ServiceUnknown",
                    "org.freedesktop.DBus.Error.NameHasNoOwner"):
        raise DaemonUnavailable(f"ferryd is not running (nobody owns {dbus_api.BUS_NAME}); "
                                f"start it with 'systemctl start ferryd', or: {STANDALONE_HINT}")
    raise DaemonError(text or err_name)


async def call(bus: MessageBus, member: str, signature: str = "", body: list[Any] | None = None,
               interface: str = dbus_api.INTERFACE, unix_fds: list[int] | None = None
               ) -> list[Any]:
    """``unix_fds``: descriptors sent with the call; an ``h`` in ``body`` is an index
    into this list (dbus-next's low-level form)."""
    reply = await bus.call(Message(
        destination=dbus_api.BUS_NAME, path=dbus_api.OBJECT_PATH, interface=interface,
        member=member, signature=signature, body=body or [], unix_fds=unix_fds or []))
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


# follow()'s result when ferryd left the bus before Completed
RESULT_DAEMON_GONE = -1
DAEMON_GONE = ("ferryd stopped before the operation ended; see 'ferry status'. A bundle "
               "passed from a local file cannot be resumed by the restarted ferryd: if the "
               "install did not reach the slot switch, run 'ferry install' again")


def open_for_ferryd(path: str, what: str) -> int:
    """``path`` opened read-only with *our* rights, for passing to ferryd."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise DaemonError(f"{what} {path} not found") from None
    except PermissionError:
        raise PermissionDenied(f"cannot read {what} {path}: permission denied (ferry "
                               "reads it with your own rights, not ferryd's)") from None
    except OSError as err:
        raise DaemonError(f"cannot open {what} {path}: {err.strerror}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise DaemonError(f"{what} {path} is not a regular file; give the file itself")
    return fd


def follow(method: str, signature: str, body: list[Any],
           on_progress: ProgressCallback, unix_fds: list[int] | None = None
           ) -> tuple[int, str]:
    """Start Install or Flash and follow Progress until Completed; (result, LastError).

    Ctrl-C stops following, not the operation (it runs on in ferryd). If ferryd leaves
    the bus first (a crash, a restart) the result is RESULT_DAEMON_GONE."""
    async def go(bus: MessageBus) -> tuple[int, str]:
        done: asyncio.Future[int] = asyncio.get_running_loop().create_future()

        def handler(msg: Message) -> bool:
            if (msg.message_type == MessageType.SIGNAL and msg.member == "NameOwnerChanged"
                    and msg.body and msg.body[0] == dbus_api.BUS_NAME and not msg.body[2]
                    and not done.done()):
                done.set_result(RESULT_DAEMON_GONE)
                return False
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
        owner = ("type='signal',sender='org.freedesktop.DBus',member='NameOwnerChanged',"
                 f"arg0='{dbus_api.BUS_NAME}'")
        for match in (rule, owner):
            await bus.call(Message(destination="org.freedesktop.DBus",
                                   path="/org/freedesktop/DBus",
                                   interface="org.freedesktop.DBus", member="AddMatch",
                                   signature="s", body=[match]))
        try:
            await call(bus, method, signature, body, unix_fds=unix_fds)
        except DaemonError:
            # ferryd can leave the bus between taking the call and answering it (a crash,
            # a restart): the bus then answers NoReply, and NameOwnerChanged, which the
            # handler above turns into RESULT_DAEMON_GONE, follows within moments.
            try:
                gone = await asyncio.wait_for(asyncio.shield(done), 2.0)
            except TimeoutError:
                gone = None
            if gone != RESULT_DAEMON_GONE:
                raise
        result = await done
        if result == RESULT_DAEMON_GONE:
            return result, DAEMON_GONE
        props = await properties(bus)
        return result, str(props.get("LastError", ""))

    outcome: tuple[int, str] = run(go)
    return outcome


def install(source: str, *, force: bool, on_progress: ProgressCallback) -> tuple[int, str]:
    """An http(s) URL goes as a string (Install); a local file as a descriptor we opened
    (InstallFd), so ferryd reads only what the caller can read."""
    options = {"force": Variant("b", force)}
    if "://" in source[:16]:
        return follow("Install", "sa{sv}", [source, options], on_progress)
    fd = open_for_ferryd(source, "bundle")
    try:
        return follow("InstallFd", "ha{sv}", [0, options], on_progress, unix_fds=[fd])
    finally:
        os.close(fd)


def flash(target: str, image: str, *, on_progress: ProgressCallback) -> tuple[int, str]:
    """Flash a local image file (opened here, passed as a descriptor) to a configured
    target through ferryd."""
    fd = open_for_ferryd(image, "image")
    try:
        return follow("Flash", "sh", [target, 0], on_progress, unix_fds=[fd])
    finally:
        os.close(fd)
