"""The CLI's side of org.ferry.Ferry1: calls, properties and a followed install.

Every call maps D-Bus failures to FerryErrors with the CLI's exit codes, so a field
technician sees "ferryd is not running" or "permission denied" with what to do, not a
D-Bus error name.

Local files go to ferryd as open descriptors (``InstallFd``, ``Flash``), opened here
with the caller's own rights: ferryd runs as root and must not read for a member of
group ``ferry`` what that user could not read (docs/security.md).
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Callable
from contextlib import suppress
from typing import Any

from ferry.daemon.cli import exitcodes
from ferry.daemon.cli.dbusconn import (
    BUS,
    BUS_PATH,
    BusError,
    CallError,
    Connection,
    system_bus_address,
)
from ferry.daemon.cli.dbuswire import SIGNAL, Message, Variant, WireError
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


def _address() -> str:
    """FERRY_BUS_ADDRESS (tests, the demo) wins over the system bus."""
    return os.environ.get("FERRY_BUS_ADDRESS") or system_bus_address()


def connect() -> Connection:
    try:
        return Connection(_address())
    except (OSError, BusError, WireError, CallError) as err:
        # BusError: also a bus that refuses fd passing
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


def call(bus: Connection, member: str, signature: str = "", body: list[Any] | None = None,
         interface: str = dbus_api.INTERFACE, unix_fds: list[int] | None = None, *,
         destination: str = dbus_api.BUS_NAME, path: str = dbus_api.OBJECT_PATH
         ) -> list[Any]:
    """A call to ferryd (or, given ``destination``, to the bus), its errors mapped.

    ``unix_fds``: descriptors sent with the call; an ``h`` in ``body`` is an index into
    this list."""
    try:
        return bus.call(destination, path, interface, member, signature, body, unix_fds)
    except CallError as err:
        _raise(err.name, err.text)
        raise  # not reached: _raise always raises
    except (OSError, BusError, WireError) as err:
        raise DaemonError(f"D-Bus connection failed during {member}: {err}") from err


def properties(bus: Connection) -> dict[str, Any]:
    body = call(bus, "GetAll", "s", [dbus_api.INTERFACE],
                interface="org.freedesktop.DBus.Properties")
    return {k: v.value for k, v in body[0].items()}


def run(fn: Callable[[Connection], Any]) -> Any:
    """Connect, run ``fn(bus)``, disconnect; for one-shot CLI commands."""
    bus = connect()
    try:
        return fn(bus)
    finally:
        bus.close()


def get_status() -> dict[str, Any]:
    def go(bus: Connection) -> dict[str, Any]:
        (text,) = call(bus, "GetStatus")
        status: dict[str, Any] = json.loads(text)
        status["daemon"] = properties(bus)
        return status
    result: dict[str, Any] = run(go)
    return result


def list_targets() -> list[dict[str, Any]]:
    def go(bus: Connection) -> list[dict[str, Any]]:
        (text,) = call(bus, "ListTargets")
        result: list[dict[str, Any]] = json.loads(text)
        return result
    targets: list[dict[str, Any]] = run(go)
    return targets


def mark(state: str, slot: str) -> tuple[str, str]:
    def go(bus: Connection) -> tuple[str, str]:
        name, message = call(bus, "Mark", "ss", [state, slot])
        return str(name), str(message)
    result: tuple[str, str] = run(go)
    return result


def cancel() -> bool:
    def go(bus: Connection) -> bool:
        (ok,) = call(bus, "Cancel")
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
    def go(bus: Connection) -> tuple[int, str]:
        done: list[int] = []
        # Signals count only from ferryd's own connection. The match rules below filter
        # broadcasts by sender at the bus, but any local peer may send a signal straight
        # to our unique name (the system bus's default policy allows signals), and a
        # forged Completed would end the follow with a result ferryd never gave. The bus
        # writes each message's sender itself, so this check cannot be forged.
        (owner,) = call(bus, "GetNameOwner", "s", [dbus_api.BUS_NAME], interface=BUS,
                        destination=BUS, path=BUS_PATH)

        def handler(msg: Message) -> None:
            body = msg.body or []
            if (msg.member == "NameOwnerChanged" and msg.sender == BUS and body
                    and body[0] == dbus_api.BUS_NAME and not body[2] and not done):
                done.append(RESULT_DAEMON_GONE)
                return
            if msg.type != SIGNAL or msg.path != dbus_api.OBJECT_PATH or msg.sender != owner:
                return
            if msg.member == "PropertiesChanged" and body and body[0] == dbus_api.INTERFACE:
                changed = body[1]
                if "Progress" in changed:
                    pct, text, depth = changed["Progress"].value
                    on_progress(int(pct), str(text), int(depth))
            elif msg.member == "Completed" and not done:
                done.append(int(body[0]))

        bus.add_handler(handler)
        rule = f"type='signal',sender='{dbus_api.BUS_NAME}',path='{dbus_api.OBJECT_PATH}'"
        gone = (f"type='signal',sender='{BUS}',member='NameOwnerChanged',"
                f"arg0='{dbus_api.BUS_NAME}'")
        for match in (rule, gone):
            try:
                bus.add_match(match)
            except (CallError, OSError, BusError, WireError) as err:
                raise DaemonError(f"cannot follow ferryd's signals: {err}") from err
        try:
            call(bus, method, signature, body, unix_fds=unix_fds)
        except DaemonError:
            # ferryd can leave the bus between taking the call and answering it (a crash,
            # a restart): the bus then answers NoReply, and NameOwnerChanged, which the
            # handler above turns into RESULT_DAEMON_GONE, follows within moments.
            with suppress(OSError, BusError, WireError):
                bus.wait(lambda: bool(done), timeout=2.0)
            if done != [RESULT_DAEMON_GONE]:
                raise
        try:
            bus.wait(lambda: bool(done))
        except (OSError, BusError, WireError) as err:
            raise DaemonError(f"lost the D-Bus connection while following ferryd: {err}; "
                              "see 'ferry status'") from err
        result = done[0]
        if result == RESULT_DAEMON_GONE:
            return result, DAEMON_GONE
        props = properties(bus)
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
