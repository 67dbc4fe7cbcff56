"""SMP packets: a header plus a CBOR map, and the error shapes of SMP v1 and v2
(see ``errors`` for both shapes and where they come from in Zephyr)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ferry.errors import FerryError
from ferry.proxy.smp import cbor, errors
from ferry.proxy.smp.header import HEADER, Header, Op


class SmpError(FerryError):
    """The target answered with an SMP error code."""

    def __init__(self, message: str, rc: int, group: int | None = None) -> None:
        """``group`` is set for an SMP v2 group error, None for a v1 ``MGMT_ERR`` code."""
        super().__init__(message)
        self.rc = rc
        self.group = group


@dataclass(frozen=True)
class Packet:
    header: Header
    body: dict[str, Any]


def build(op: Op, group: int, command: int, seq: int, body: dict[str, Any],
          version: int = 1) -> bytes:
    payload = cbor.dumps(body)
    header = Header(op=op, length=len(payload), group=group, seq=seq & 0xFF,
                    command=command, version=version)
    return header.pack() + payload


def parse(data: bytes) -> Packet:
    header = Header.unpack(data)
    payload = data[HEADER.size :]
    if len(payload) != header.length:
        raise cbor.CborError(f"SMP header says {header.length} body bytes, frame has "
                             f"{len(payload)}")
    body = cbor.loads(payload) if payload else {}
    if not isinstance(body, dict):
        raise cbor.CborError("SMP body is not a CBOR map")
    return Packet(header, body)


def check(packet: Packet, what: str) -> dict[str, Any]:
    """The body of a successful response, or SmpError naming the code.

    SMP v2 puts a group error in ``err: {group, rc}`` beside (or instead of) the normal
    fields; v1, and generic failures in v2, use a top-level ``rc`` (0 = success, which
    servers built with ``CONFIG_MCUMGR_SMP_LEGACY_RC_BEHAVIOUR`` send on success too).
    """
    body = packet.body
    err = body.get("err")
    if isinstance(err, dict):
        rc = err.get("rc", 0)
        group = err.get("group", packet.header.group)
        if isinstance(rc, int) and rc != 0:
            group = group if isinstance(group, int) else packet.header.group
            raise SmpError(f"{what}: target answered {errors.describe_v2(group, rc)}", rc,
                           group)
    rc = body.get("rc", 0)
    if isinstance(rc, int) and rc != 0:
        rsn = body.get("rsn")
        text = errors.describe_v1(rc, rsn if isinstance(rsn, str) else "")
        raise SmpError(f"{what}: target answered {text}", rc)
    return body
