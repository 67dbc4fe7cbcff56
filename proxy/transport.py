"""The seam every proxy transport sits behind.

A transport knows how to get firmware onto one kind of device. It knows nothing of
slots, the journal or the backend (see DESIGN.md): it takes a target, an image stream
and a progress callback, and returns a result. The daemon's proxy phase and
``ferry flash`` both call it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import BinaryIO, Protocol

# progress(done, total, message): bytes (or blocks) done out of total, plus a short
# phase word such as "upload", "verify", "reset". Called from the transport's thread.
Progress = Callable[[int, int, str], None]


def no_progress(done: int, total: int, message: str) -> None:
    """A Progress that ignores everything."""


@dataclass
class Target:
    """One device behind the gateway, as config or discovery names it."""

    name: str
    transport: str  # "smp-serial", "dfu", "zigbee", "lora"
    address: str  # port path, VID:PID[,serial], node IEEE address, multicast group...
    hardware_id: str = ""  # expected image id / manufacturer+type / board name
    options: dict[str, str] = field(default_factory=dict)


@dataclass
class TargetState:
    """What a transport can read back from a device."""

    reachable: bool
    version: str = ""
    detail: dict[str, str] = field(default_factory=dict)


@dataclass
class FlashResult:
    """The outcome of one flash, as it goes into the journal and backend feedback."""

    ok: bool
    version: str = ""  # version running (or staged) after the flash
    message: str = ""  # one line for a person
    skipped: bool = False  # device already held this image
    rolled_back: bool = False  # device came back on its old image
    detail: dict[str, str] = field(default_factory=dict)


class Transport(Protocol):
    name: str

    def discover(self) -> list[Target]: ...

    def flash(self, target: Target, image: BinaryIO, *, progress: Progress) -> FlashResult: ...

    def inspect(self, target: Target) -> TargetState: ...
