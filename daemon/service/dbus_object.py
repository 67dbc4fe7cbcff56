"""ferryd's D-Bus object: org.ferry.Ferry1 at /org/ferry/Ferry1 (docs/dbus-api.md).

The interface is a thin shell over an ``Engine`` that does the work in plain blocking
functions; long work runs in a worker thread and reports back to the asyncio loop,
which owns every property change and signal. State-changing methods are authorised
per call from the caller's uid (root, or a member of group ``ferry``), in addition to
the bus policy.

Files come as descriptors the caller opened with its own rights (``InstallFd``,
``Flash``; see fdsource.py), never as paths ferryd would open as root: ``Install`` takes
a path only from root. Everything the bus shows passes through redact.py, since status,
properties and signals reach every local user.
"""

# No `from __future__ import annotations` here: dbus-next reads the D-Bus signature from
# each annotation ("s", "a{sv}", ...) at export time.

import asyncio
import contextlib
import grp
import json
import logging
import os
import pwd
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, BinaryIO, Protocol

from dbus_next import Message, MessageType, PropertyAccess, Variant
from dbus_next.aio import MessageBus
from dbus_next.errors import DBusError
from dbus_next.service import ServiceInterface, dbus_property, method, signal

from ferry.daemon.install.bundlesource import is_url
from ferry.daemon.service import dbus_api, fdsource, memory, redact
from ferry.errors import FerryError

log = logging.getLogger("ferry.dbus")

# progress(phase, done, total)
ProgressFn = Callable[[str, int, int], None]

RESULT_OK = 0
RESULT_FAILED = 1
RESULT_CANCELLED = 2


class Cancelled(FerryError):
    """The operator cancelled the install before the slot switch."""

    exit_code = 5


class Engine(Protocol):
    """What the D-Bus object needs from the rest of ferryd; tests can pass a fake."""

    def install(self, source: str, *, force: bool, progress: ProgressFn) -> str: ...

    def cancellable(self) -> bool: ...

    def mark(self, state: str, slot: str) -> tuple[str, str]: ...

    def status(self) -> dict[str, Any]: ...

    def targets(self) -> list[dict[str, Any]]: ...

    def check_target(self, name: str) -> None: ...

    def flash(self, target: str, image: BinaryIO, *,
              progress: ProgressFn) -> dict[str, Any]: ...

    def boot_slot(self) -> str: ...

    def version(self) -> str: ...


@dataclass
class Caller:
    uid: int
    allowed: bool


def caller_allowed(uid: int, group: str = dbus_api.PRIVILEGED_GROUP) -> bool:
    """Root, or a user whose primary or supplementary groups include ``group``."""
    if uid == 0:
        return True
    try:
        gid = grp.getgrnam(group).gr_gid
    except KeyError:
        return False
    try:
        user = pwd.getpwuid(uid)
    except KeyError:
        return False
    return gid in os.getgrouplist(user.pw_name, user.pw_gid)


def _unpack_options(options: dict[str, Variant]) -> dict[str, Any]:
    return {k: (v.value if isinstance(v, Variant) else v) for k, v in options.items()}


class FerryInterface(ServiceInterface):
    def __init__(self, engine: Engine, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(dbus_api.INTERFACE)
        self.engine = engine
        self.loop = loop
        self._operation = "idle"
        self._progress: tuple[int, str, int] = (0, "", 1)
        self._last_error = ""
        self._cancel = threading.Event()
        self._worker: threading.Thread | None = None
        # uid of the caller whose state-changing call is being dispatched right now
        # (set by the Authorizer around the synchronous method call); None otherwise
        self.caller_uid: int | None = None

    @property
    def operation(self) -> str:
        return self._operation

    @property
    def progress(self) -> tuple[int, str, int]:
        return self._progress

    # -- worker plumbing -----------------------------------------------------------
    def _busy(self) -> bool:
        return self._worker is not None and self._worker.is_alive()

    def _set(self, **changes: Any) -> None:
        """Runs on the loop: update properties and tell the bus."""
        out: dict[str, Any] = {}
        if "operation" in changes:
            self._operation = changes["operation"]
            out["Operation"] = self._operation
        if "progress" in changes:
            pct, msg, depth = changes["progress"]
            self._progress = (pct, redact.text(msg), depth)
            out["Progress"] = list(self._progress)
        if "last_error" in changes:
            self._last_error = redact.text(changes["last_error"])
            out["LastError"] = self._last_error
        if out:
            self.emit_properties_changed(out)

    def _from_thread(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        self.loop.call_soon_threadsafe(lambda: fn(*args, **kwargs))

    def _progress_fn(self, depth: int) -> ProgressFn:
        """Progress from a worker thread, as PropertiesChanged at most every 0.1 s.

        The slot writer reports every 512 KiB chunk; a signal for each (marshalled in
        pure Python on the loop) took the GIL from the writer's threads often enough to
        cost ferryd ~0.15 s per 256 MiB. A new phase and 100 % always go out.
        """
        last: list[Any] = [None, -1, 0.0]  # phase, percent, monotonic time

        def progress(phase: str, done: int, total: int) -> None:
            if self._cancel.is_set() and self.engine.cancellable():
                raise Cancelled("install cancelled by the operator before the slot switch")
            pct = max(0, min(int(done * 100 / total) if total else 0, 100))
            now = time.monotonic()
            if phase == last[0] and (pct == last[1] or (pct < 100 and now - last[2] < 0.1)):
                return
            last[:] = [phase, pct, now]
            self._from_thread(self._set, progress=(pct, phase, depth))
        return progress

    def _start(self, operation: str, work: Callable[[], Any],
               done: Callable[[Any], None] | None = None,
               cleanup: Callable[[], None] | None = None) -> None:
        """Run ``work`` in a worker thread; ``cleanup`` (closing a received descriptor)
        runs in the worker once ``work`` ended, however it ended."""
        self._cancel.clear()
        self._set(operation=operation, progress=(0, operation, 1), last_error="")

        def run() -> None:
            result, error, code = None, "", RESULT_OK
            try:
                result = work()
            except Cancelled as err:
                error, code = str(err), RESULT_CANCELLED
            except FerryError as err:
                error, code = str(err), RESULT_FAILED
            except Exception as err:  # a bug must still end the operation
                log.exception("%s crashed", operation)
                error, code = f"internal error: {err}", RESULT_FAILED
            finally:
                if cleanup is not None:
                    cleanup()
            self._from_thread(self._finish, code, error, result, done)
            memory.release()  # after Completed is on its way: the caller does not wait

        self._worker = threading.Thread(target=run, name=f"ferryd-{operation}", daemon=True)
        self._worker.start()

    def _finish(self, code: int, error: str, result: Any,
                done: Callable[[Any], None] | None) -> None:
        pct = 100 if code == RESULT_OK else self._progress[0]
        msg = "done" if code == RESULT_OK else ("cancelled" if code == RESULT_CANCELLED
                                                else "failed")
        self._set(operation="idle", progress=(pct, msg, 1), last_error=error)
        if done is not None and result is not None:
            done(result)
        self.Completed(code)

    def _refuse_if_busy(self) -> None:
        if self._busy():
            raise DBusError(dbus_api.ERROR_BUSY, f"busy: {self._operation}")

    @staticmethod
    def _take(fd: int | None, what: str) -> int:
        try:
            return fdsource.take(fd, what)
        except FerryError as err:
            raise DBusError(dbus_api.ERROR_INVALID_ARGS, str(err)) from err

    def _install(self, source: str, options: dict[str, Variant],
                 fd: int | None = None) -> str:
        opts = _unpack_options(options)
        force = bool(opts.get("force", False))
        progress = self._progress_fn(1)
        self._start("installing",
                    lambda: self.engine.install(source, force=force, progress=progress),
                    cleanup=None if fd is None else lambda: os.close(fd))
        return "started"

    # -- methods -------------------------------------------------------------------
    @method()
    def Install(self, source: "s", options: "a{sv}") -> "s":
        self._refuse_if_busy()
        if not is_url(source) and self.caller_uid != 0:
            # ferryd would open the path as root: only root may name one
            raise DBusError(
                dbus_api.ERROR_DENIED,
                f"Install takes a path on the gateway only from root (uid "
                f"{self.caller_uid}); run 'ferry install {source}', which opens the file "
                "with your own rights and passes it to ferryd (InstallFd)")
        return self._install(source, options)

    @method()
    def InstallFd(self, bundle: "h", options: "a{sv}") -> "s":
        self._refuse_if_busy()
        fd = self._take(bundle, "bundle")
        return self._install(fdsource.path(fd), options, fd)

    @method()
    def Cancel(self) -> "b":
        if not self._busy() or self._operation != "installing":
            return False
        if not self.engine.cancellable():
            raise DBusError(dbus_api.ERROR_NOT_ALLOWED,
                            "too late to cancel: the new slot is already activated")
        self._cancel.set()
        return True

    @method()
    async def Mark(self, state: "s", slot: "s") -> "ss":
        # Activating the other slot re-hashes it against its verified record: seconds on
        # slow eMMC, so it runs in a thread and the loop keeps answering GetStatus and
        # pinging the watchdog meanwhile.
        try:
            name, message = await self.loop.run_in_executor(
                None, lambda: self.engine.mark(state, slot))
        except FerryError as err:
            raise DBusError(dbus_api.ERROR_FAILED, str(err)) from err
        self.emit_properties_changed({"BootSlot": self.engine.boot_slot()})
        return [name, message]

    @method()
    def GetStatus(self) -> "s":
        status = self.engine.status()
        status.setdefault("operation", {
            "operation": self._operation, "progress": list(self._progress),
            "last_error": self._last_error,
        })
        return _public_json(status)

    @method()
    def ListTargets(self) -> "s":
        return _public_json(self.engine.targets())

    @method()
    def Flash(self, target: "s", image: "h") -> "s":
        self._refuse_if_busy()
        try:
            self.engine.check_target(target)  # only a configured [[target]], ever
        except FerryError as err:
            raise DBusError(dbus_api.ERROR_FAILED, str(err)) from err
        fd = self._take(image, "image")
        progress = self._progress_fn(1)

        def work() -> Any:
            with open(fdsource.path(fd), "rb") as stream:
                return self.engine.flash(target, stream, progress=progress)

        def done(result: Any) -> None:
            self.TargetChanged(target, _public_json(result))

        self._start("flashing", work, done, cleanup=lambda: os.close(fd))
        return "started"

    # -- properties ----------------------------------------------------------------
    @dbus_property(access=PropertyAccess.READ)
    def Operation(self) -> "s":
        return self._operation

    @dbus_property(access=PropertyAccess.READ)
    def Progress(self) -> "(isi)":
        return list(self._progress)

    @dbus_property(access=PropertyAccess.READ)
    def LastError(self) -> "s":
        return self._last_error

    @dbus_property(access=PropertyAccess.READ)
    def BootSlot(self) -> "s":
        return self.engine.boot_slot()

    @dbus_property(access=PropertyAccess.READ)
    def Version(self) -> "s":
        return self.engine.version()

    # -- signals -------------------------------------------------------------------
    @signal()
    def Completed(self, result: int) -> "i":
        return result

    @signal()
    def TargetChanged(self, name: str, state: str) -> "ss":
        return [name, state]


def _public_json(value: Any) -> str:
    """JSON as every local user may see it: URLs without credentials or query."""
    plain = json.loads(json.dumps(value, default=str))
    return json.dumps(redact.deep(plain), sort_keys=True)


def close_fds(msg: Message) -> None:
    """Close the descriptors that arrived with ``msg`` (dbus-next leaves that to us:
    python-dbus-next issue #162); whoever keeps one has taken its own copy."""
    for fd in msg.unix_fds:
        with contextlib.suppress(OSError):
            os.close(fd)
    msg.unix_fds = []


def fd_janitor(msg: Message) -> bool:
    """Last message handler: closes descriptors sent with any message the Authorizer did
    not take (a GetStatus with an fd attached, a signal), so a client cannot exhaust
    ferryd's descriptor table. Never handles the message itself."""
    if msg.unix_fds:
        close_fds(msg)
    return False


class Authorizer:
    """Intercepts state-changing calls, checks the caller's uid, then dispatches.

    The method runs with ``iface.caller_uid`` set (Install lets only root name a path),
    and the message's descriptors are closed afterwards, whatever happened.
    """

    def __init__(self, bus: MessageBus, group: str = dbus_api.PRIVILEGED_GROUP,
                 iface: FerryInterface | None = None) -> None:
        self.bus = bus
        self.group = group
        self.iface = iface
        self._tasks: set[asyncio.Task[None]] = set()

    def __call__(self, msg: Message) -> bool:
        if (msg.message_type != MessageType.METHOD_CALL
                or msg.path != dbus_api.OBJECT_PATH
                or msg.interface not in (dbus_api.INTERFACE, None)
                or msg.member not in dbus_api.STATE_CHANGING):
            return False
        task = asyncio.get_running_loop().create_task(self._authorize(msg))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    async def _uid(self, sender: str) -> int:
        reply = await self.bus.call(Message(
            destination="org.freedesktop.DBus", path="/org/freedesktop/DBus",
            interface="org.freedesktop.DBus", member="GetConnectionUnixUser",
            signature="s", body=[sender]))
        if reply is None or reply.message_type != MessageType.METHOD_RETURN:
            raise DBusError(dbus_api.ERROR_DENIED, "cannot determine the caller's uid")
        return int(reply.body[0])

    async def _authorize(self, msg: Message) -> None:
        try:
            await self._dispatch(msg)
        finally:
            close_fds(msg)

    async def _dispatch(self, msg: Message) -> None:
        try:
            uid = await self._uid(msg.sender)
        except DBusError as err:
            self.bus.send(err._as_message(msg))
            return
        if not caller_allowed(uid, self.group):
            log.warning("refused %s from uid %d (not root, not in group %s)",
                        msg.member, uid, self.group)
            self.bus.send(Message.new_error(
                msg, dbus_api.ERROR_DENIED,
                f"{msg.member} changes the gateway's state: run it as root or as a member "
                f"of group '{self.group}' (uid {uid} is neither)"))
            return
        log.info("%s called by uid %d", msg.member, uid)  # who changed the gateway, when
        handler = self.bus._find_message_handler(msg)  # dbus-next 0.2.3 internals
        if handler is None:
            self.bus.send(Message.new_error(msg, "org.freedesktop.DBus.Error.UnknownMethod",
                                            f"unknown method {msg.member}"))
            return
        send_reply = self.bus._send_reply(msg)
        if self.iface is not None:
            self.iface.caller_uid = uid
        try:
            with send_reply:  # turns an exception into the error reply, then re-raises it
                handler(msg, send_reply)
        except DBusError:
            pass  # the caller has its answer (busy, refused, bad argument)
        except Exception:
            log.exception("%s failed", msg.member)
        finally:
            if self.iface is not None:
                self.iface.caller_uid = None


async def export(bus: MessageBus, engine: Engine) -> FerryInterface:
    """Export the object, install the authorizer and take the bus name."""
    iface = FerryInterface(engine, asyncio.get_running_loop())
    # Test hook: the system tests let an unprivileged uid stand in for a member of group
    # ferry (FERRY_TEST_DBUS_GROUP=nogroup) without editing the host's /etc/group.
    # Only who sets ferryd's environment (root, the unit file) can use it.
    group = os.environ.get("FERRY_TEST_DBUS_GROUP") or dbus_api.PRIVILEGED_GROUP
    bus.add_message_handler(Authorizer(bus, group, iface=iface))
    bus.add_message_handler(fd_janitor)  # after the Authorizer: sees what it did not take
    bus.export(dbus_api.OBJECT_PATH, iface)
    from dbus_next.constants import RequestNameReply

    reply = await bus.request_name(dbus_api.BUS_NAME)
    if reply not in (RequestNameReply.PRIMARY_OWNER, RequestNameReply.ALREADY_OWNER):
        raise FerryError(f"cannot own {dbus_api.BUS_NAME} on the bus ({reply.name}): "
                         "is another ferryd running?")
    return iface
