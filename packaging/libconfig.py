"""The part of libconfig syntax that sw-description uses, parsed and emitted without a C
library, so a build host and the gateway need nothing beyond Python.

Mapping: a group ``{ name = value; ... }`` is a ``dict`` (insertion-ordered), a list
``( v, ... )`` is a ``list``, an array ``[ v, ... ]`` is an :class:`Array` (a ``list``
subclass, so the emitter can write it back as ``[...]``), strings are ``str``, integers
``int`` (decimal or ``0x`` hex, optional ``L``/``LL`` suffix), floats ``float`` and
``true``/``false`` ``bool``. Comments ``#``, ``//`` and ``/* */`` are skipped; adjacent
string literals are joined, as libconfig does. ``@include`` is refused (SWUpdate refuses it
too).
"""

from __future__ import annotations

import re
from typing import Any

from ferry.packaging.errors import BadDescription


class Array(list[Any]):
    """A libconfig array ``[...]`` (scalars of one type), as opposed to a list ``(...)``."""


_NAME = re.compile(r"[A-Za-z*][-A-Za-z0-9_*]*")
_TOKEN = re.compile(
    r"""
    (?P<ws>\s+)
  | (?P<comment>\#[^\n]*|//[^\n]*|/\*.*?\*/)
  | (?P<string>"(?:[^"\\]|\\.)*")
  | (?P<float>[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)|[-+]?(?:\d+\.\d*|\.\d+))
  | (?P<hex>0[xX][0-9A-Fa-f]+(?:LL|L)?)
  | (?P<int>[-+]?\d+(?:LL|L)?)
  | (?P<bool>(?i:true|false)(?![-A-Za-z0-9_*]))
  | (?P<name>[A-Za-z*][-A-Za-z0-9_*]*)
  | (?P<punct>[=:;,{}()\[\]])
    """,
    re.VERBOSE | re.DOTALL,
)
_ESCAPES = {"\\": "\\", '"': '"', "n": "\n", "r": "\r", "t": "\t", "f": "\f"}


def _unescape(body: str, line: int) -> str:
    out: list[str] = []
    i = 0
    while i < len(body):
        c = body[i]
        if c != "\\":
            out.append(c)
            i += 1
            continue
        nxt = body[i + 1]
        if nxt in _ESCAPES:
            out.append(_ESCAPES[nxt])
            i += 2
        elif nxt == "x" and re.fullmatch(r"[0-9A-Fa-f]{2}", body[i + 2 : i + 4]):
            out.append(chr(int(body[i + 2 : i + 4], 16)))
            i += 4
        else:
            raise BadDescription(f"sw-description line {line}: bad escape \\{nxt} in a string")
    return "".join(out)


class _Parser:
    def __init__(self, text: str) -> None:
        self.tokens: list[tuple[str, str, int]] = []
        pos = 0
        line = 1
        while pos < len(text):
            m = _TOKEN.match(text, pos)
            if m is None:
                raise BadDescription(
                    f"sw-description line {line}: unexpected {text[pos : pos + 10]!r}"
                )
            kind = m.lastgroup or ""
            value = m.group()
            if text.startswith("@include", pos):
                raise BadDescription(f"sw-description line {line}: @include is not allowed")
            if kind not in ("ws", "comment"):
                self.tokens.append((kind, value, line))
            line += value.count("\n")
            pos = m.end()
        self.pos = 0

    def peek(self) -> tuple[str, str, int]:
        if self.pos < len(self.tokens):
            return self.tokens[self.pos]
        last = self.tokens[-1][2] if self.tokens else 1
        return ("eof", "", last)

    def take(self) -> tuple[str, str, int]:
        tok = self.peek()
        self.pos += 1
        return tok

    def expect(self, value: str) -> None:
        kind, got, line = self.take()
        if got != value or kind != "punct":
            raise BadDescription(f"sw-description line {line}: expected {value!r}, got {got!r}")

    def settings(self, end: str) -> dict[str, Any]:
        group: dict[str, Any] = {}
        while True:
            kind, value, line = self.peek()
            if (kind == "eof" and end == "eof") or (kind == "punct" and value == end):
                return group
            if kind not in ("name", "bool"):
                raise BadDescription(f"sw-description line {line}: expected a setting name")
            self.take()
            if value in group:
                raise BadDescription(f"sw-description line {line}: duplicate setting {value!r}")
            sep = self.take()
            if sep[1] not in ("=", ":") or sep[0] != "punct":
                raise BadDescription(
                    f"sw-description line {sep[2]}: expected '=' or ':' after {value!r}"
                )
            group[value] = self.value()
            kind, nxt, _ = self.peek()
            if kind == "punct" and nxt in (";", ","):
                self.take()

    def value(self) -> Any:
        kind, value, line = self.take()
        if kind == "string":
            parts = [_unescape(value[1:-1], line)]
            while self.peek()[0] == "string":
                _, more, more_line = self.take()
                parts.append(_unescape(more[1:-1], more_line))
            return "".join(parts)
        if kind == "int":
            return int(value.rstrip("L"), 10)
        if kind == "hex":
            return int(value.rstrip("L"), 16)
        if kind == "float":
            return float(value)
        if kind == "bool":
            return value.lower() == "true"
        if kind == "punct" and value == "{":
            group = self.settings("}")
            self.expect("}")
            return group
        if kind == "punct" and value in "([":
            close = ")" if value == "(" else "]"
            items: list[Any] = Array() if value == "[" else []
            while True:
                if self.peek()[1] == close and self.peek()[0] == "punct":
                    self.take()
                    return items
                items.append(self.value())
                k, nxt, ln = self.peek()
                if k == "punct" and nxt == ",":
                    self.take()
                elif not (k == "punct" and nxt == close):
                    raise BadDescription(
                        f"sw-description line {ln}: expected ',' or {close!r}, got {nxt!r}"
                    )
        raise BadDescription(f"sw-description line {line}: expected a value, got {value!r}")


def loads(text: str) -> dict[str, Any]:
    """Parse a libconfig document into a dict; raises BadDescription on any syntax error."""
    parser = _Parser(text)
    root = parser.settings("eof")
    kind, value, line = parser.peek()
    if kind != "eof":
        raise BadDescription(f"sw-description line {line}: unexpected {value!r}")
    return root


def _quote(text: str) -> str:
    out = ['"']
    for c in text:
        if c in ('"', "\\"):
            out.append("\\" + c)
        elif c == "\n":
            out.append("\\n")
        elif c == "\t":
            out.append("\\t")
        elif c == "\r":
            out.append("\\r")
        elif ord(c) < 0x20 or ord(c) == 0x7F:
            out.append(f"\\x{ord(c):02x}")
        else:
            out.append(c)
    out.append('"')
    return "".join(out)


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        # libconfig ints are 32-bit unless suffixed: SWUpdate's libconfig needs the L.
        return f"{value}L" if not -(2**31) <= value < 2**31 else str(value)
    if isinstance(value, float):
        text = repr(value)
        return text if ("." in text or "e" in text) else text + ".0"
    if isinstance(value, str):
        return _quote(text=value)
    raise TypeError(f"cannot emit {type(value).__name__} as libconfig")


def _emit_value(value: Any, indent: int) -> str:
    pad = "\t" * indent
    if isinstance(value, dict):
        if not value:
            return "{ }"
        body = "".join(_emit_setting(k, v, indent + 1) for k, v in value.items())
        return "{\n" + body + pad + "}"
    if isinstance(value, Array):
        return "[" + ", ".join(_scalar(v) for v in value) + "]"
    if isinstance(value, list | tuple):
        if not value:
            return "( )"
        inner = ",\n".join("\t" * (indent + 1) + _emit_value(v, indent + 1) for v in value)
        return "(\n" + inner + "\n" + pad + ")"
    return _scalar(value)


def _emit_setting(name: str, value: Any, indent: int) -> str:
    if not _NAME.fullmatch(name):
        raise ValueError(f"{name!r} is not a valid libconfig setting name")
    return "\t" * indent + f"{name} = {_emit_value(value, indent)};\n"


def dumps(doc: dict[str, Any]) -> str:
    """Emit a dict as libconfig text that :func:`loads` and libconfig itself read back."""
    return "".join(_emit_setting(k, v, 0) for k, v in doc.items())
