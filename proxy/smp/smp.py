"""SMP packets: a header plus a CBOR map, and the error shapes of SMP v1 and v2."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ferry.errors import FerryError
from ferry.proxy.smp import cbor
from ferry.proxy.smp.header import HEADER, MGMT_ERR, Header, Op


class SmpError(FerryError):
    """The target answered with an SMP error code."""

    def __init__(self, message: str, rc: int, group: int | None = None) -> None:
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
    """The body of a successful response, or SmpError naming the code."""
    body = packet.body
    err = body.get("err")
    if isinstance(err, dict) and err.get("rc", 0):
        rc = int(err["rc"])
        group = int(err.get("group", packet.header.group))
        raise SmpError(f"{what}: target answered error {rc} in group {group}", rc, group)
    rc = body.get("rc", 0)
    if isinstance(rc, int) and rc != 0:
        name = MGMT_ERR.get(rc, "unknown")
        rsn = body.get("rsn")
        extra = f" ({rsn})" if isinstance(rsn, str) and rsn else ""
        raise SmpError(f"{what}: target answered {name} (rc {rc}){extra}", rc)
    return body
