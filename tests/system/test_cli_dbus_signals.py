"""The CLI's own D-Bus client on a real dbus-daemon, against a forger.

Any local peer may send a signal straight to the CLI's unique name: the match rules
that filter broadcasts by sender do not apply to it. The client must take Progress and
Completed from ferryd's connection only. The stand-in service is dbus-next (an
implementation we did not write), so this also runs our client against it.
"""

# No `from __future__ import annotations`: dbus-next reads the D-Bus signatures from the
# annotations of the stand-in service.

import asyncio
import threading
import time

from dbus_fixtures import private_bus
from dbus_next import Message, MessageType, Variant
from dbus_next.aio import MessageBus
from dbus_next.service import PropertyAccess, ServiceInterface, dbus_property, method, signal

from ferry.daemon.cli import dbus_client as client
from ferry.daemon.service import dbus_api


class StandIn(ServiceInterface):
    """Answers Install, reports 50 %, and completes with 0 after ``delay``."""

    def __init__(self, delay: float) -> None:
        super().__init__(dbus_api.INTERFACE)
        self.delay = delay

    @method()
    def Install(self, source: "s", options: "a{sv}") -> "s":
        loop = asyncio.get_running_loop()
        loop.call_later(self.delay / 2, self.emit_properties_changed,
                        {"Progress": [50, "writing slot", 1]})
        loop.call_later(self.delay, self.Completed, 0)
        return "started"

    @dbus_property(access=PropertyAccess.READ)
    def Progress(self) -> "(isi)":
        return [0, "", 1]

    @dbus_property(access=PropertyAccess.READ)
    def LastError(self) -> "s":
        return ""

    @signal()
    def Completed(self, result: int) -> "i":
        return result


async def forge(bus: MessageBus, stop: asyncio.Event, owner: str) -> int:
    """Send a forged Progress and Completed(1) to every other connection, until stopped."""
    sent = 0
    while not stop.is_set():
        reply = await bus.call(Message(destination="org.freedesktop.DBus",
                                       path="/org/freedesktop/DBus",
                                       interface="org.freedesktop.DBus", member="ListNames"))
        for name in reply.body[0]:
            if not name.startswith(":") or name in (bus.unique_name, owner):
                continue
            await bus.send(Message(
                destination=name, path=dbus_api.OBJECT_PATH, interface=dbus_api.INTERFACE,
                member="Completed", message_type=MessageType.SIGNAL, signature="i",
                body=[1]))
            await bus.send(Message(
                destination=name, path=dbus_api.OBJECT_PATH,
                interface="org.freedesktop.DBus.Properties", member="PropertiesChanged",
                message_type=MessageType.SIGNAL, signature="sa{sv}as",
                body=[dbus_api.INTERFACE, {"Progress": Variant("(isi)", [99, "forged", 1])},
                      []]))
            sent += 1
        await asyncio.sleep(0.05)
    return sent


def test_follow_takes_signals_only_from_ferryd(monkeypatch):
    with private_bus(with_policy=False) as address:
        monkeypatch.setenv("FERRY_BUS_ADDRESS", address)
        loop = asyncio.new_event_loop()
        ready = threading.Event()
        state: dict = {}

        async def serve() -> None:
            service = await MessageBus(bus_address=address).connect()
            service.export(dbus_api.OBJECT_PATH, StandIn(delay=1.5))
            await service.request_name(dbus_api.BUS_NAME)
            forger = await MessageBus(bus_address=address).connect()
            state["stop"] = asyncio.Event()
            ready.set()
            state["sent"] = await forge(forger, state["stop"], service.unique_name)

        thread = threading.Thread(target=lambda: loop.run_until_complete(serve()), daemon=True)
        thread.start()
        assert ready.wait(10)
        seen: list[tuple[int, str, int]] = []
        t0 = time.monotonic()
        result, error = client.install("http://127.0.0.1:9/gw.swu", force=False,
                                       on_progress=lambda *p: seen.append(p))
        waited = time.monotonic() - t0
        loop.call_soon_threadsafe(state["stop"].set)
        thread.join(10)
        assert (result, error) == (0, "")
        assert seen == [(50, "writing slot", 1)]
        assert waited >= 1.4  # it waited for the stand-in's Completed, not the forger's
        assert state["sent"] >= 5  # and the forger did reach it, many times
