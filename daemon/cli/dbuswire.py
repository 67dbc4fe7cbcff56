"""The D-Bus wire format, for the CLI's small blocking client (dbusconn.py).

Why a second marshaller when ferryd has dbus-next: ``import dbus_next`` imports its
asyncio and GLib front ends from the package's ``__init__``, so every ``ferry status``
or ``ferry install`` paid for asyncio (with ssl) before saying a word: 0.05 s of CPU in
a 0.07 s client, the largest fixed cost of an install through ferryd on a small image
(issue 22, bench/install.py "client s"). The CLI only calls methods and reads signals,
and what it needs of the format fits here.

Written from the D-Bus Specification, "Message Protocol" (marshaling, alignment, header
fields), and checked byte for byte against dbus-next's own marshaller in
tests/unit/test_dbuswire.py; the CLI's system tests run it against dbus-daemon and
ferryd.
"""

from __future__ import annotations

import struct
from typing import Any

# message types
METHOD_CALL, METHOD_RETURN, ERROR, SIGNAL = 1, 2, 3, 4
FLAG_NO_REPLY_EXPECTED = 0x1

# header field codes and their types
PATH, INTERFACE, MEMBER, ERROR_NAME, REPLY_SERIAL, DESTINATION, SENDER, SIGNATURE, \
    UNIX_FDS = range(1, 10)
_FIELD_TYPE = {PATH: "o", INTERFACE: "s", MEMBER: "s", ERROR_NAME: "s", REPLY_SERIAL: "u",
               DESTINATION: "s", SENDER: "s", SIGNATURE: "g", UNIX_FDS: "u"}

_FIXED = {"y": "B", "b": "I", "n": "h", "q": "H", "i": "i", "u": "I", "x": "q", "t": "Q",
          "d": "d", "h": "I"}
_ALIGN = {"y": 1, "b": 4, "n": 2, "q": 2, "i": 4, "u": 4, "x": 8, "t": 8, "d": 8, "h": 4,
          "s": 4, "o": 4, "g": 1, "v": 1, "a": 4, "(": 8, "{": 8}
MAX_MESSAGE = 128 << 20  # the specification's limit


class WireError(ValueError):
    """Bytes that are not a D-Bus message, or a value that does not fit its signature."""


# Plain classes, not dataclasses: ``import dataclasses`` brings ``inspect``, 5 ms of a
# CLI call that is otherwise 30 ms.
class Variant:
    __slots__ = ("signature", "value")

    def __init__(self, signature: str, value: Any) -> None:
        self.signature, self.value = signature, value

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Variant) and (self.signature, self.value) == (
            other.signature, other.value)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Variant({self.signature!r}, {self.value!r})"


class Message:
    def __init__(self, type: int, serial: int = 0, flags: int = 0, path: str | None = None,
                 interface: str | None = None, member: str | None = None,
                 error_name: str | None = None, reply_serial: int | None = None,
                 destination: str | None = None, sender: str | None = None,
                 signature: str = "", body: list[Any] | None = None,
                 unix_fds: int = 0) -> None:
        self.type, self.serial, self.flags = type, serial, flags
        self.path, self.interface, self.member = path, interface, member
        self.error_name, self.reply_serial = error_name, reply_serial
        self.destination, self.sender = destination, sender
        self.signature, self.body, self.unix_fds = signature, body, unix_fds

    def __repr__(self) -> str:
        return f"Message({self.type}, {self.member or self.error_name}, {self.signature!r})"


def split_signature(sig: str) -> list[str]:
    """The complete types of a signature, in order ("sa{sv}" -> ["s", "a{sv}"])."""
    out, i = [], 0
    while i < len(sig):
        j = _type_end(sig, i)
        out.append(sig[i:j])
        i = j
    return out


def _type_end(sig: str, i: int) -> int:
    if i >= len(sig):
        raise WireError(f"signature {sig!r} ends inside a type")
    c = sig[i]
    if c == "a":
        return _type_end(sig, i + 1)
    if c in "({":
        close = ")" if c == "(" else "}"
        j = i + 1
        while j < len(sig) and sig[j] != close:
            j = _type_end(sig, j)
        if j >= len(sig) or j == i + 1:
            raise WireError(f"signature {sig!r}: unclosed or empty {c}")
        return j + 1
    if c in _FIXED or c in "sogv":
        return i + 1
    raise WireError(f"signature {sig!r}: unknown type code {c!r}")


# -- marshalling (little-endian) ----------------------------------------------------

def _pad(buf: bytearray, n: int) -> None:
    buf.extend(b"\0" * (-len(buf) % n))


def _put(buf: bytearray, t: str, v: Any) -> None:
    c = t[0]
    if c in _FIXED:
        _pad(buf, _ALIGN[c])
        buf.extend(struct.pack("<" + _FIXED[c], int(bool(v)) if c == "b" else v))
    elif c in "so":
        data = str(v).encode()
        _pad(buf, 4)
        buf.extend(struct.pack("<I", len(data)) + data + b"\0")
    elif c == "g":
        data = str(v).encode()
        buf.extend(bytes([len(data)]) + data + b"\0")
    elif c == "v":
        if not isinstance(v, Variant):
            raise WireError(f"a 'v' needs a Variant, got {type(v).__name__}")
        _put(buf, "g", v.signature)
        (inner,) = split_signature(v.signature)
        _put(buf, inner, v.value)
    elif c == "a":
        elem = t[1:]
        _pad(buf, 4)
        at = len(buf)
        buf.extend(b"\0\0\0\0")
        _pad(buf, _ALIGN[elem[0]])
        start = len(buf)
        if elem[0] == "{":
            key, val = split_signature(elem[1:-1])
            for k, x in dict(v).items():
                _pad(buf, 8)
                _put(buf, key, k)
                _put(buf, val, x)
        else:
            for x in v:
                _put(buf, elem, x)
        struct.pack_into("<I", buf, at, len(buf) - start)
    elif c == "(":
        _pad(buf, 8)
        fields = split_signature(t[1:-1])
        if len(fields) != len(v):
            raise WireError(f"struct {t} needs {len(fields)} fields, got {len(v)}")
        for ft, x in zip(fields, v, strict=True):
            _put(buf, ft, x)
    else:
        raise WireError(f"cannot marshal type {t!r}")


def marshal_body(signature: str, body: list[Any]) -> bytes:
    types = split_signature(signature)
    if len(types) != len(body):
        raise WireError(f"signature {signature!r} has {len(types)} values, body {len(body)}")
    buf = bytearray()
    for t, v in zip(types, body, strict=True):
        _put(buf, t, v)
    return bytes(buf)


def marshal(msg: Message) -> bytes:
    body = marshal_body(msg.signature, msg.body or [])
    fields: list[tuple[int, Variant]] = []
    for code, value in ((PATH, msg.path), (INTERFACE, msg.interface), (MEMBER, msg.member),
                        (ERROR_NAME, msg.error_name), (REPLY_SERIAL, msg.reply_serial),
                        (DESTINATION, msg.destination), (SENDER, msg.sender),
                        (SIGNATURE, msg.signature or None),
                        (UNIX_FDS, msg.unix_fds or None)):
        if value is not None:
            fields.append((code, Variant(_FIELD_TYPE[code], value)))
    head = bytearray(b"l" + bytes([msg.type, msg.flags, 1]))
    head.extend(struct.pack("<II", len(body), msg.serial))
    _put(head, "a(yv)", fields)
    _pad(head, 8)
    return bytes(head) + body


# -- unmarshalling (either byte order) ----------------------------------------------

class _Reader:
    def __init__(self, data: bytes, order: str, pos: int = 0) -> None:
        self.data, self.order, self.pos = data, order, pos

    def _align(self, n: int) -> None:
        self.pos += -self.pos % n

    def _unpack(self, fmt: str) -> Any:
        size = struct.calcsize(fmt)
        if self.pos + size > len(self.data):
            raise WireError("message ends inside a value")
        (v,) = struct.unpack_from(self.order + fmt, self.data, self.pos)
        self.pos += size
        return v

    def _bytes(self, n: int) -> str:
        end = self.pos + n
        if end + 1 > len(self.data) or self.data[end] != 0:
            raise WireError("string without its terminating NUL")
        text = self.data[self.pos:end].decode("utf-8")
        self.pos = end + 1
        return text

    def get(self, t: str) -> Any:
        c = t[0]
        if c in _FIXED:
            self._align(_ALIGN[c])
            v = self._unpack(_FIXED[c])
            return bool(v) if c == "b" else v
        if c in "so":
            self._align(4)
            return self._bytes(self._unpack("I"))
        if c == "g":
            return self._bytes(self._unpack("B"))
        if c == "v":
            sig = self.get("g")
            (inner,) = split_signature(sig)
            return Variant(sig, self.get(inner))
        if c == "a":
            self._align(4)
            length = self._unpack("I")
            elem = t[1:]
            self._align(_ALIGN[elem[0]])
            end = self.pos + length
            if end > len(self.data):
                raise WireError("array runs past the message")
            if elem[0] == "{":
                key, val = split_signature(elem[1:-1])
                out: dict[Any, Any] = {}
                while self.pos < end:
                    self._align(8)
                    k = self.get(key)
                    out[k] = self.get(val)
                return out
            items = []
            while self.pos < end:
                items.append(self.get(elem))
            return items
        if c == "(":
            self._align(8)
            return [self.get(ft) for ft in split_signature(t[1:-1])]
        raise WireError(f"cannot unmarshal type {t!r}")


def _byte_order(mark: int) -> str:
    order = {ord("l"): "<", ord("B"): ">"}.get(mark)
    if order is None:
        raise WireError(f"bad byte-order mark {mark:#x}")
    return order


def message_length(head: bytes) -> int:
    """The whole message's length from its first 16 bytes."""
    if len(head) < 16:
        raise WireError("need 16 bytes")
    order = _byte_order(head[0])
    body_len, _serial, fields_len = struct.unpack_from(order + "III", head, 4)
    header = 16 + fields_len
    total = header + (-header % 8) + body_len
    if total > MAX_MESSAGE:
        raise WireError(f"message of {total} bytes is over the limit")
    return int(total)


def unmarshal(data: bytes) -> Message:
    order = _byte_order(data[0])
    mtype, flags, version = data[1], data[2], data[3]
    if version != 1:
        raise WireError(f"protocol version {version}, expected 1")
    r = _Reader(data, order, 4)
    r.get("u")  # body length: message_length() already framed it
    serial = r.get("u")
    msg = Message(type=mtype, flags=flags, serial=serial)
    names = {PATH: "path", INTERFACE: "interface", MEMBER: "member", ERROR_NAME: "error_name",
             REPLY_SERIAL: "reply_serial", DESTINATION: "destination", SENDER: "sender",
             SIGNATURE: "signature", UNIX_FDS: "unix_fds"}
    for code, var in r.get("a(yv)"):
        if code in names:  # unknown fields are ignored, as the specification says
            setattr(msg, names[code], var.value)
    r._align(8)
    body = []
    for t in split_signature(msg.signature):
        body.append(r.get(t))
    msg.body = body
    return msg
