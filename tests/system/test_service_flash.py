"""D-Bus Flash takes the image as a descriptor and only a configured target; ferryd
keeps no descriptor it was sent (issue #16). ferryd's real D-Bus object, Authorizer and
fd handling on a private dbus-daemon, with an engine that records what it was asked to
flash instead of driving a device."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import pytest
from dbus_fixtures import private_bus
from dbus_next import Message, MessageType
from dbus_next.aio import MessageBus

from ferry.daemon.cli import dbus_client as client
from ferry.daemon.service import dbus_api
from ferry.daemon.service.dbus_object import export
from ferry.daemon.service.operations import UnknownTarget
from ferry.errors import FerryError


class RecordingEngine:
    """Only the parts Flash and GetStatus use; flash() reads the image as a transport
    would (``image.read()``)."""

    def __init__(self) -> None:
        self.flashed: list[tuple[str, bytes]] = []
        self.started = threading.Event()
        self.hold: threading.Event | None = None  # set: flash() waits for it
        self.disconnect: Callable[[], None] = lambda: None  # drops ferryd off the bus
        self.mark_hold: threading.Event | None = None  # set: mark() waits for it
        self.marking = threading.Event()

    def check_target(self, name: str) -> None:
        if name != "sensor-mcu":
            raise UnknownTarget(f"no target named {name!r} in the config (known: sensor-mcu)")

    def flash(self, target: str, image: BinaryIO, *, progress: Any) -> dict[str, Any]:
        data = image.read()
        self.started.set()
        if self.hold is not None:
            self.hold.wait(30)
        progress("flash:sensor-mcu:upload", len(data), len(data))
        self.flashed.append((target, data))
        return {"name": target, "ok": True, "version": "1.2.3", "message": "",
                "skipped": False, "rolled_back": False}

    def cancellable(self) -> bool:
        return True

    def mark(self, state: str, slot: str) -> tuple[str, str]:
        if self.mark_hold is not None:  # a long re-hash of the slot
            self.marking.set()
            self.mark_hold.wait(30)
            return slot, f"slot {slot} marked {state}"
        raise FerryError("no slots in this test")

    def status(self) -> dict[str, Any]:
        return {}

    def boot_slot(self) -> str:
        return "A"

    def version(self) -> str:
        return "1.0.0"


@pytest.fixture
def ferryd(monkeypatch) -> Iterator[tuple[str, RecordingEngine]]:
    engine = RecordingEngine()
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    stop: list[asyncio.Event] = []

    async def serve(address: str) -> None:
        bus = await MessageBus(bus_address=address, negotiate_unix_fd=True).connect()
        engine.disconnect = lambda: loop.call_soon_threadsafe(bus.disconnect)
        await export(bus, engine)  # type: ignore[arg-type]
        stop.append(asyncio.Event())
        ready.set()
        await stop[0].wait()
        bus.disconnect()

    with private_bus(with_policy=False) as address:
        thread = threading.Thread(target=loop.run_until_complete, args=(serve(address),),
                                  daemon=True)
        thread.start()
        assert ready.wait(30)
        monkeypatch.setenv("FERRY_BUS_ADDRESS", address)
        try:
            yield address, engine
        finally:
            if engine.hold is not None:
                engine.hold.set()
            loop.call_soon_threadsafe(stop[0].set)
            thread.join(10)
            loop.close()


def _raw_call(address: str, member: str, signature: str, body: list[Any],
              fds: list[int]) -> Message:
    async def go() -> Message:
        bus = await MessageBus(bus_address=address, negotiate_unix_fd=True).connect()
        try:
            reply = await bus.call(Message(
                destination=dbus_api.BUS_NAME, path=dbus_api.OBJECT_PATH,
                interface=dbus_api.INTERFACE, member=member, signature=signature,
                body=body, unix_fds=fds))
            assert reply is not None
            return reply
        finally:
            bus.disconnect()
    return asyncio.run(go())


def _open_on(path: Path) -> int:
    """Descriptors of this process (client and ferryd's object alike) open on ``path``;
    the client closes its own, so any left are ferryd's."""
    count = 0
    for name in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{name}") == str(path):
                count += 1
        except OSError:
            continue
    return count


def test_flash_reads_the_image_from_the_callers_descriptor(ferryd, tmp_path: Path) -> None:
    _, engine = ferryd
    image = tmp_path / "app.bin"
    image.write_bytes(b"\x3d\xb8\xf3\x96" + bytes(range(256)) * 64)
    seen: list[tuple[int, str, int]] = []
    result, error = client.flash("sensor-mcu", str(image),
                                 on_progress=lambda *p: seen.append(p))
    assert (result, error) == (0, "")
    assert engine.flashed == [("sensor-mcu", image.read_bytes())]
    assert any(msg.startswith("flash:sensor-mcu") for _, msg, _ in seen)


def test_flash_refuses_a_target_not_in_the_config(ferryd, tmp_path: Path) -> None:
    _, engine = ferryd
    image = tmp_path / "app.bin"
    image.write_bytes(b"firmware")
    with pytest.raises(client.DaemonError, match="no target named 'ttyS0'"):
        client.flash("ttyS0", str(image), on_progress=lambda *p: None)
    assert engine.flashed == []


def test_flash_by_path_string_is_gone(ferryd, tmp_path: Path) -> None:
    """The old Flash(s target, s image) opened any path as root."""
    address, engine = ferryd
    secret = tmp_path / "shadow"
    secret.write_bytes(b"root:$6$secret")
    secret.chmod(0o600)
    reply = _raw_call(address, "Flash", "ss", ["sensor-mcu", str(secret)], [])
    assert reply.message_type == MessageType.ERROR
    assert reply.error_name == "org.freedesktop.DBus.Error.UnknownMethod"
    assert engine.flashed == []


@pytest.mark.parametrize("how", ["o_path", "write_only", "directory", "fifo"])
def test_descriptors_ferryd_must_not_read_are_refused(ferryd, tmp_path: Path,
                                                      how: str) -> None:
    """An O_PATH descriptor needs no read permission to get, and a write-only one no read
    permission either: re-opened by root they would read what the caller cannot."""
    address, engine = ferryd
    target = tmp_path / "file"
    target.write_bytes(b"x")
    if how == "o_path":
        fd = os.open(target, os.O_PATH)
        expect = "not open for reading"
    elif how == "write_only":
        fd = os.open(target, os.O_WRONLY)
        expect = "not open for reading"
    elif how == "directory":
        fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
        expect = "regular file, not a directory"
    else:
        os.mkfifo(tmp_path / "fifo")
        fd = os.open(tmp_path / "fifo", os.O_RDWR)
        expect = "regular file, not a pipe"
    try:
        for member, sig, body in (("Flash", "sh", ["sensor-mcu", 0]),
                                  ("InstallFd", "ha{sv}", [0, {}])):
            reply = _raw_call(address, member, sig, body, [fd])
            assert reply.message_type == MessageType.ERROR, member
            assert reply.error_name == dbus_api.ERROR_INVALID_ARGS
            assert expect in reply.body[0]
    finally:
        os.close(fd)
    assert engine.flashed == []


def test_ferryd_keeps_no_descriptor_it_was_sent(ferryd, tmp_path: Path) -> None:
    """dbus-next leaves received fds open (python-dbus-next #162): ferryd closes them
    after refused calls, successful ones, and calls that take none."""
    address, _ = ferryd
    image = tmp_path / "app.bin"
    image.write_bytes(b"firmware")
    for _ in range(5):
        fd = os.open(image, os.O_RDONLY)
        try:
            _raw_call(address, "GetStatus", "", [], [fd])  # an fd nobody asked for
            _raw_call(address, "Flash", "sh", ["nope", 0], [fd])  # refused target
            _raw_call(address, "Mark", "ss", ["good", "booted"], [fd])  # no fd argument
        finally:
            os.close(fd)
        client.flash("sensor-mcu", str(image), on_progress=lambda *p: None)
    assert _open_on(image) == 0


def test_the_client_is_told_when_ferryd_leaves_mid_operation(ferryd, tmp_path: Path) -> None:
    """A restarted ferryd cannot continue from a descriptor: the client must not wait
    for a Completed that never comes, and must say to run the command again."""
    _, engine = ferryd
    engine.hold = threading.Event()
    image = tmp_path / "app.bin"
    image.write_bytes(b"firmware")
    out: list[tuple[int, str]] = []
    caller = threading.Thread(target=lambda: out.append(client.flash(
        "sensor-mcu", str(image), on_progress=lambda *p: None)), daemon=True)
    caller.start()
    assert engine.started.wait(30)
    engine.disconnect()  # ferryd's connection drops: its name has no owner any more
    caller.join(30)
    assert out == [(client.RESULT_DAEMON_GONE, client.DAEMON_GONE)]
    assert "run 'ferry install' again" in client.DAEMON_GONE


def test_mark_runs_off_the_loop_so_status_answers_during_a_long_rehash(ferryd) -> None:
    # Mark of the other slot re-hashes it (seconds on slow eMMC); run on ferryd's loop it
    # blocked GetStatus and the watchdog pings for that long.
    address, engine = ferryd
    engine.mark_hold = threading.Event()
    result: list[Message] = []
    caller = threading.Thread(target=lambda: result.append(
        _raw_call(address, "Mark", "ss", ["active", "B"], [])), daemon=True)
    caller.start()
    assert engine.marking.wait(30)
    status = _raw_call(address, "GetStatus", "", [], [])  # answered while mark() waits
    assert status.message_type == MessageType.METHOD_RETURN
    assert not result, "Mark returned before the re-hash ended"
    engine.mark_hold.set()
    caller.join(30)
    assert result and result[0].message_type == MessageType.METHOD_RETURN
    assert result[0].body == ["B", "slot B marked active"]
