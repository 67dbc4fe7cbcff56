"""The small CBOR subset SMP needs (RFC 8949), so the gateway carries no extra dependency.

SMP bodies are maps of ints, byte and text strings, bools and nested arrays/maps. The
decoder also accepts indefinite lengths, tags and floats, because device stacks (zcbor,
TinyCBOR) differ in which of these they emit, and a response we cannot parse would look
like a dead target.
"""

from __future__ import annotations

import struct
from typing import Any

from ferry.errors import FerryError


class CborError(FerryError):
    """A CBOR body that does not decode; the peer sent something that is not SMP."""


def _head(major: int, value: int) -> bytes:
    if value < 24:
        return bytes([(major << 5) | value])
    if value < 0x100:
        return bytes([(major << 5) | 24, value])
    if value < 0x10000:
        return bytes([(major << 5) | 25]) + value.to_bytes(2, "big")
    if value < 0x100000000:
        return bytes([(major << 5) | 26]) + value.to_bytes(4, "big")
    return bytes([(major << 5) | 27]) + value.to_bytes(8, "big")


def dumps(obj: Any) -> bytes:
    out = bytearray()
    _encode(obj, out)
    return bytes(out)


def _encode(obj: Any, out: bytearray) -> None:
    if obj is None:
        out.append(0xF6)
    elif obj is True:
        out.append(0xF5)
    elif obj is False:
        out.append(0xF4)
    elif isinstance(obj, int):
        if obj >= 0:
            out += _head(0, obj)
        else:
            out += _head(1, -1 - obj)
    elif isinstance(obj, bytes | bytearray | memoryview):
        data = bytes(obj)
        out += _head(2, len(data))
        out += data
    elif isinstance(obj, str):
        data = obj.encode("utf-8")
        out += _head(3, len(data))
        out += data
    elif isinstance(obj, list | tuple):
        out += _head(4, len(obj))
        for item in obj:
            _encode(item, out)
    elif isinstance(obj, dict):
        out += _head(5, len(obj))
        for key, value in obj.items():
            _encode(key, out)
            _encode(value, out)
    elif isinstance(obj, float):
        out.append(0xFB)
        out += struct.pack(">d", obj)
    else:
        raise TypeError(f"cannot CBOR-encode {type(obj).__name__}")


_BREAK = object()


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise CborError("CBOR body is truncated")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def arg(self, info: int) -> int | None:
        if info < 24:
            return info
        if info in (24, 25, 26, 27):
            return int.from_bytes(self.take(1 << (info - 24)), "big")
        if info == 31:
            return None  # indefinite length
        raise CborError(f"CBOR reserved additional info {info}")

    def item(self) -> Any:
        initial = self.take(1)[0]
        major, info = initial >> 5, initial & 0x1F
        if major == 7:
            return self.simple(info)
        n = self.arg(info)
        if major == 0:
            return n
        if major == 1:
            if n is None:
                raise CborError("CBOR indefinite integer")
            return -1 - n
        if major in (2, 3):
            raw = self.string(major, n)
            if major == 2:
                return raw
            try:
                return raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise CborError("CBOR text string is not UTF-8") from exc
        if major == 4:
            items: list[Any] = []
            while n is None or len(items) < n:
                value = self.item()
                if value is _BREAK:
                    if n is not None:
                        raise CborError("CBOR break inside a definite array")
                    break
                items.append(value)
            return items
        if major == 5:
            result: dict[Any, Any] = {}
            count = 0
            while n is None or count < n:
                key = self.item()
                if key is _BREAK:
                    if n is not None:
                        raise CborError("CBOR break inside a definite map")
                    break
                value = self.item()
                if value is _BREAK:
                    raise CborError("CBOR map key without value")
                if isinstance(key, list | dict):
                    raise CborError("CBOR map key is not hashable")
                result[key] = value
                count += 1
            return result
        # major 6: a tag; SMP gives tags no meaning, so keep the tagged value
        return self.item()

    def string(self, major: int, n: int | None) -> bytes:
        if n is not None:
            return self.take(n)
        parts: list[bytes] = []
        while True:
            initial = self.take(1)[0]
            if initial == 0xFF:
                return b"".join(parts)
            if initial >> 5 != major:
                raise CborError("CBOR indefinite string has a chunk of another type")
            length = self.arg(initial & 0x1F)
            if length is None:
                raise CborError("CBOR nested indefinite string")
            parts.append(self.take(length))

    def simple(self, info: int) -> Any:
        if info == 20:
            return False
        if info == 21:
            return True
        if info in (22, 23):
            return None
        if info == 25:
            return struct.unpack(">e", self.take(2))[0]
        if info == 26:
            return struct.unpack(">f", self.take(4))[0]
        if info == 27:
            return struct.unpack(">d", self.take(8))[0]
        if info == 31:
            return _BREAK
        if info < 24:
            return info
        if info == 24:
            return self.take(1)[0]
        raise CborError(f"CBOR simple value with additional info {info}")


def loads(data: bytes) -> Any:
    """Decode exactly one CBOR item; trailing bytes are an error (a mis-sized frame)."""
    reader = _Reader(bytes(data))
    value = reader.item()
    if value is _BREAK:
        raise CborError("CBOR body starts with a break")
    if reader.pos != len(reader.data):
        raise CborError(f"{len(reader.data) - reader.pos} stray bytes after the CBOR body")
    return value
