"""The seam every proxy transport sits behind.

A transport knows how to get firmware onto one kind of device. It knows nothing of
slots, the journal or the backend (see DESIGN.md): it takes a target, an image stream
and a progress callback, and returns a result. The daemon's proxy phase and
``ferry flash`` both call it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Protocol

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
    # Set when the flash stopped at "booted, not confirmed" (the target option
    # ``defer_confirm``): the image runs on trial and the caller decides, after a health
    # check, between ``Confirming.confirm`` and ``Confirming.revert``.
    trial: Trial | None = None


class Transport(Protocol):
    name: str

    def discover(self) -> list[Target]: ...

    def flash(self, target: Target, image: BinaryIO, *, progress: Progress) -> FlashResult: ...

    def inspect(self, target: Target) -> TargetState: ...


# -- optional capability: boot on trial, confirm only after the target reports healthy ----
#
# MCUboot boots a new image in test mode and reverts it at the next reset unless it is
# confirmed (docs/transport-smp.md), so the caller can hold the confirm back until the
# target's application has shown it works. Only ``smp-serial`` has this capability:
# USB DFU has no second slot to fall back to, and a Zigbee OTA or LoRa FUOTA node
# decides on its own whether it activates the new image; none of them can be told
# "run it, but keep the old one until I say so".

DEFER_CONFIRM = "defer_confirm"  # target option: stop at "booted, not confirmed"


@dataclass(frozen=True)
class Trial:
    """An image that booted on trial: what health, confirm and revert check against.

    Hashes are the target's own image hashes (MCUboot: the SHA256 TLV), in hex, so a
    journal can keep a Trial as plain JSON and a resumed daemon can decide from it.
    """

    hash: str
    version: str
    previous_hash: str = ""
    previous_version: str = ""
    note: str = ""  # the transport's remark for the final message (e.g. who checked what)

    def as_dict(self) -> dict[str, str]:
        return {"hash": self.hash, "version": self.version,
                "previous_hash": self.previous_hash, "previous_version": self.previous_version,
                "note": self.note}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Trial:
        return cls(str(data.get("hash", "")), str(data.get("version", "")),
                   str(data.get("previous_hash", "")), str(data.get("previous_version", "")),
                   str(data.get("note", "")))


@dataclass(frozen=True)
class HealthReport:
    """The outcome of one health window: healthy, or why not (one line for a person)."""

    healthy: bool
    reason: str
    attempts: int = 1
    final: bool = False  # no point asking again (the trial image no longer runs)
    # the trial image no longer runs because the target reset and its bootloader brought
    # the previous image back: nobody judged the image (a power cut does this too)
    reverted: bool = False


class Confirming(Protocol):
    """A transport that can leave an image booted on trial (option ``defer_confirm``).

    ``health`` checks the trial image within the target's health window, retrying;
    ``confirm`` makes it permanent and reads that back; ``revert`` resets the target
    so the bootloader brings the previous image back, and reads that back. Each is safe
    to repeat: a daemon that died between two of them calls the next one again.
    """

    def health(self, target: Target, trial: Trial, *, progress: Progress) -> HealthReport: ...

    def confirm(self, target: Target, trial: Trial) -> FlashResult: ...

    def revert(self, target: Target, trial: Trial, reason: str) -> FlashResult: ...


def confirming(transport: object) -> Confirming | None:
    """The transport as a Confirming one, or None when it lacks the capability."""
    if all(callable(getattr(transport, op, None)) for op in ("health", "confirm", "revert")):
        return transport  # type: ignore[return-value]
    return None
