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

import math
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

# Bounds on what a document may ask of the parser. sw-description is read before its
# signature is trusted (``ferry bundle inspect`` without a keyring), so a hostile one
# must end in a BadDescription, never a RecursionError, a ValueError from int() or a
# parser that holds a token list many times the size of the text. Real descriptions
# nest about six deep, carry 64-hex-digit hashes and a few hundred settings.
MAX_DEPTH = 32  # nested groups, lists and arrays
MAX_STRING = 64 * 1024  # characters of one string value (adjacent literals joined)
MAX_NUMBER_LENGTH = 64  # characters of one numeric literal
MAX_ELEMENTS = 100_000  # settings plus list/array elements in the whole document
# libconfig's integers: 64-bit signed in decimal; hex is read as unsigned 64-bit
_INT_RANGE = {10: (-(2**63), 2**63 - 1), 16: (0, 2**64 - 1)}


def _show(text: str, limit: int = 40) -> str:
    """``text`` quoted for a one-line message, cut so a hostile value cannot flood it."""
    if len(text) > limit:
        return repr(text[:limit]) + f"... ({len(text)} characters)"
    return repr(text)


def _unescape(body: str, line: int) -> str:
    if "\\" not in body:
        return body
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
            raise BadDescription(
                f"sw-description line {line}: bad escape {_show(chr(92) + nxt)} in a string"
            )
    return "".join(out)


def _integer(value: str, base: int, line: int) -> int:
    digits = value.rstrip("L")
    if len(digits) > MAX_NUMBER_LENGTH:
        raise BadDescription(
            f"sw-description line {line}: integer of {len(digits)} characters; "
            "libconfig integers have 64 bits"
        )
    number = int(digits, base)
    low, high = _INT_RANGE[base]
    if not low <= number <= high:
        raise BadDescription(
            f"sw-description line {line}: integer {_show(digits)} does not fit in 64 bits"
        )
    return number


def _check_array_item(items: list[Any], item: Any, line: int) -> None:
    """libconfig arrays ``[...]`` hold scalars of one type (its grammar refuses the rest);
    a group or list in one could not be written back either."""
    if isinstance(item, dict | list):
        raise BadDescription(
            f"sw-description line {line}: an array [...] holds only scalars; use a list (...)"
        )
    if items and type(items[0]) is not type(item):
        raise BadDescription(
            f"sw-description line {line}: an array [...] mixes "
            f"{type(items[0]).__name__} and {type(item).__name__} values"
        )


class _Parser:
    """Recursive descent over tokens made one at a time (never a list of all of them)."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.offset = 0  # where the next token starts
        self.line = 1
        self.ahead: tuple[str, str, int] | None = None
        self.depth = 0
        self.elements = 0

    def _scan(self) -> tuple[str, str, int]:
        text = self.text
        while self.offset < len(text):
            pos = self.offset
            line = self.line
            if text.startswith("@include", pos):
                raise BadDescription(f"sw-description line {line}: @include is not allowed")
            m = _TOKEN.match(text, pos)
            if m is None:
                raise BadDescription(
                    f"sw-description line {line}: unexpected {_show(text[pos : pos + 10])}"
                )
            kind = m.lastgroup or ""
            value = m.group()
            self.line += value.count("\n")
            self.offset = m.end()
            if kind not in ("ws", "comment"):
                return (kind, value, line)
        return ("eof", "", self.line)

    def peek(self) -> tuple[str, str, int]:
        if self.ahead is None:
            self.ahead = self._scan()
        return self.ahead

    def take(self) -> tuple[str, str, int]:
        tok = self.peek()
        if tok[0] != "eof":
            self.ahead = None
        return tok

    def expect(self, value: str) -> None:
        kind, got, line = self.take()
        if got != value or kind != "punct":
            raise BadDescription(
                f"sw-description line {line}: expected {value!r}, got {_show(got)}"
            )

    def count(self, line: int) -> None:
        self.elements += 1
        if self.elements > MAX_ELEMENTS:
            raise BadDescription(
                f"sw-description line {line}: more than {MAX_ELEMENTS} settings and elements"
            )

    def enter(self, line: int) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise BadDescription(
                f"sw-description line {line}: nested more than {MAX_DEPTH} levels deep"
            )

    def settings(self, end: str) -> dict[str, Any]:
        group: dict[str, Any] = {}
        while True:
            kind, value, line = self.peek()
            if (kind == "eof" and end == "eof") or (kind == "punct" and value == end):
                return group
            if kind not in ("name", "bool"):
                raise BadDescription(f"sw-description line {line}: expected a setting name")
            self.take()
            self.count(line)
            if value in group:
                raise BadDescription(
                    f"sw-description line {line}: duplicate setting {_show(value)}"
                )
            sep = self.take()
            if sep[1] not in ("=", ":") or sep[0] != "punct":
                raise BadDescription(
                    f"sw-description line {sep[2]}: expected '=' or ':' after {_show(value)}"
                )
            group[value] = self.value()
            kind, nxt, _ = self.peek()
            if kind == "punct" and nxt in (";", ","):
                self.take()

    def value(self) -> Any:
        kind, value, line = self.take()
        if kind == "string":
            parts = [_unescape(value[1:-1], line)]
            size = len(parts[0])
            while self.peek()[0] == "string" and size <= MAX_STRING:
                _, more, more_line = self.take()
                parts.append(_unescape(more[1:-1], more_line))
                size += len(parts[-1])
            if size > MAX_STRING:
                raise BadDescription(
                    f"sw-description line {line}: string longer than {MAX_STRING} characters"
                )
            return "".join(parts)
        if kind == "int":
            return _integer(value, 10, line)
        if kind == "hex":
            return _integer(value[2:], 16, line)
        if kind == "float":
            if len(value) > MAX_NUMBER_LENGTH:
                raise BadDescription(
                    f"sw-description line {line}: number of {len(value)} characters"
                )
            return float(value)
        if kind == "bool":
            return value.lower() == "true"
        if kind == "punct" and value == "{":
            self.enter(line)
            group = self.settings("}")
            self.expect("}")
            self.depth -= 1
            return group
        if kind == "punct" and value in "([":
            self.enter(line)
            close = ")" if value == "(" else "]"
            items: list[Any] = Array() if value == "[" else []
            while True:
                if self.peek()[1] == close and self.peek()[0] == "punct":
                    self.take()
                    self.depth -= 1
                    return items
                self.count(self.peek()[2])
                item = self.value()
                if close == "]":
                    _check_array_item(items, item, line)
                items.append(item)
                k, nxt, ln = self.peek()
                if k == "punct" and nxt == ",":
                    self.take()
                elif not (k == "punct" and nxt == close):
                    raise BadDescription(
                        f"sw-description line {ln}: expected ',' or {close!r}, got {_show(nxt)}"
                    )
        got = _show(value) if value else "the end"
        raise BadDescription(f"sw-description line {line}: expected a value, got {got}")


def loads(text: str) -> dict[str, Any]:
    """Parse a libconfig document into a dict; raises BadDescription on any syntax error
    and on a document past the bounds above (nesting, literal sizes, element count)."""
    parser = _Parser(text)
    root = parser.settings("eof")
    kind, value, line = parser.peek()
    if kind != "eof":
        raise BadDescription(f"sw-description line {line}: unexpected {_show(value)}")
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
        if math.isnan(value):
            raise ValueError("cannot emit NaN as libconfig")
        if math.isinf(value):  # what loads() makes of 1e999 (as C's strtod does)
            return "1e999" if value > 0 else "-1e999"
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
