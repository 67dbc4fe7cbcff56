"""A blocking D-Bus connection for the CLI: connect, authenticate, call, read signals.

The CLI asks one thing and waits for the answer (or, for an install, for the signals
that end it), so a plain socket in one thread does what an event loop did, without
importing one (dbuswire.py says what that cost). ferryd keeps dbus-next.

From the D-Bus Specification: "Server Addresses" (``unix:path=``, ``unix:abstract=``;
the system bus at /var/run/dbus/system_bus_socket unless DBUS_SYSTEM_BUS_ADDRESS says
otherwise), "Authentication Protocol" (EXTERNAL with our uid, NEGOTIATE_UNIX_FD, BEGIN)
and "Message Bus Specification" (Hello first, AddMatch for signals). Descriptors go in
SCM_RIGHTS with the first byte of their message, as dbus-daemon expects.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote_to_bytes  # pathlib has imported it already

from ferry.daemon.cli import dbuswire as wire

SYSTEM_BUS = "unix:path=/var/run/dbus/system_bus_socket"
BUS = "org.freedesktop.DBus"
BUS_PATH = "/org/freedesktop/DBus"
CONNECT_TIMEOUT = 10.0


class BusError(Exception):
    """The bus cannot be reached or spoke something else than D-Bus."""


class CallError(Exception):
    """An ERROR reply: its name and first string."""

    def __init__(self, name: str, text: str) -> None:
        super().__init__(f"{name}: {text}")
        self.name, self.text = name, text


def system_bus_address() -> str:
    return os.environ.get("DBUS_SYSTEM_BUS_ADDRESS") or SYSTEM_BUS


def _socket_path(address: str) -> str:
    """The first unix address of a D-Bus address list, as a connect() argument."""
    for entry in address.split(";"):
        transport, _, params = entry.partition(":")
        if transport != "unix":
            continue
        kv = dict(p.split("=", 1) for p in params.split(",") if "=" in p)
        if "path" in kv:
            return _unescape(kv["path"])
        if "abstract" in kv:
            return "\0" + _unescape(kv["abstract"])
    raise BusError(f"no unix:path= or unix:abstract= in bus address {address!r}")


def _unescape(value: str) -> str:
    """D-Bus address values escape bytes as %XX, as URLs do."""
    return unquote_to_bytes(value).decode()


class Connection:
    def __init__(self, address: str) -> None:
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        self._buf = bytearray()
        self._serial = 0
        self._handlers: list[Callable[[wire.Message], None]] = []
        try:
            self._sock.settimeout(CONNECT_TIMEOUT)
            self._sock.connect(_socket_path(address))
            self._authenticate()
            self._sock.settimeout(None)
            (self.unique_name,) = self.call(BUS, BUS_PATH, BUS, "Hello")
        except BaseException:
            self._sock.close()
            raise

    # -- authentication ---------------------------------------------------------

    def _line(self) -> str:
        while b"\r\n" not in self._buf:
            data = self._sock.recv(4096)
            if not data:
                raise BusError("the bus closed the connection during authentication")
            self._buf.extend(data)
            if len(self._buf) > 16384:
                raise BusError("the bus sent an over-long authentication line")
        line, _, rest = bytes(self._buf).partition(b"\r\n")
        self._buf = bytearray(rest)
        return line.decode("ascii", "replace")

    def _authenticate(self) -> None:
        uid = str(os.geteuid()).encode().hex()
        self._sock.sendall(b"\0AUTH EXTERNAL " + uid.encode() + b"\r\n")
        reply = self._line()
        if not reply.startswith("OK "):
            raise BusError(f"the bus refused EXTERNAL authentication ({reply})")
        self._sock.sendall(b"NEGOTIATE_UNIX_FD\r\n")
        reply = self._line()
        if reply != "AGREE_UNIX_FD":
            raise BusError(f"the bus does not pass file descriptors ({reply})")
        self._sock.sendall(b"BEGIN\r\n")

    # -- messages ---------------------------------------------------------------

    def send(self, msg: wire.Message, fds: list[int] | None = None) -> int:
        self._serial += 1
        msg.serial = self._serial
        msg.unix_fds = len(fds or [])
        data = wire.marshal(msg)
        if fds:
            data = data[socket.send_fds(self._sock, [data], fds):]
        self._sock.sendall(data)
        return self._serial

    def receive(self, timeout: float | None = None) -> wire.Message:
        """The next message; descriptors that come with one are closed (the CLI takes none)."""
        self._sock.settimeout(timeout)
        try:
            while True:
                if len(self._buf) >= 16:
                    total = wire.message_length(bytes(self._buf[:16]))
                    if len(self._buf) >= total:
                        data = bytes(self._buf[:total])
                        del self._buf[:total]
                        return wire.unmarshal(data)
                data, fds, _flags, _addr = socket.recv_fds(self._sock, 65536, 16)
                for fd in fds:
                    os.close(fd)
                if not data:
                    raise BusError("the bus closed the connection")
                self._buf.extend(data)
        finally:
            self._sock.settimeout(None)

    def add_handler(self, handler: Callable[[wire.Message], None]) -> None:
        """``handler`` sees every signal that arrives while a call or wait() reads."""
        self._handlers.append(handler)

    def _dispatch(self, msg: wire.Message) -> None:
        if msg.type == wire.SIGNAL:
            for h in self._handlers:
                h(msg)

    def call(self, destination: str, path: str, interface: str, member: str,
             signature: str = "", body: list[Any] | None = None,
             fds: list[int] | None = None) -> list[Any]:
        """The reply's body; an ERROR reply raises CallError."""
        serial = self.send(wire.Message(
            type=wire.METHOD_CALL, destination=destination, path=path, interface=interface,
            member=member, signature=signature, body=body or []), fds)
        while True:
            msg = self.receive()
            if msg.reply_serial == serial and msg.type in (wire.METHOD_RETURN, wire.ERROR):
                if msg.type == wire.ERROR:
                    first = msg.body[0] if msg.body and isinstance(msg.body[0], str) else ""
                    raise CallError(msg.error_name or "", first)
                return list(msg.body or [])
            self._dispatch(msg)

    def wait(self, until: Callable[[], bool], timeout: float | None = None) -> bool:
        """Read signals until ``until()`` holds; False if ``timeout`` ran out first."""
        while not until():
            try:
                msg = self.receive(timeout)
            except TimeoutError:
                return False
            self._dispatch(msg)
        return True

    def add_match(self, rule: str) -> None:
        self.call(BUS, BUS_PATH, BUS, "AddMatch", "s", [rule])

    def close(self) -> None:
        self._sock.close()
