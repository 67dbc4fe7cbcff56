"""What the bootloader seam speaks: the ``Bootloader`` protocol, boot state, its errors.

Split from ``bootloader`` so that ``slots`` (which takes a Bootloader) and the two schemes
can use these types without importing the factory that imports them back.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from ferry.errors import FerryError


class BootloaderError(FerryError):
    """A boot choice cannot be made or read."""


class CanaryError(BootloaderError):
    """U-Boot's saveenv canary is missing: ferry may not see what U-Boot writes."""


@dataclass(frozen=True)
class SlotBootState:
    bootname: str
    booted: bool
    primary: bool  # the slot the next boot picks
    good: bool  # False: marked bad, out of attempts, or rolled back from
    attempts_left: int | None  # None where the scheme keeps no counter for the slot

    @property
    def words(self) -> list[str]:
        out = ["booted"] if self.booted else []
        if self.primary:
            out.append("primary")
        out.append("good" if self.good else "bad")
        return out


@dataclass(frozen=True)
class BootState:
    scheme: str
    booted: str | None
    primary: str | None
    pending: bool  # a slot is being tried and not yet marked good
    slots: tuple[SlotBootState, ...]
    canary: bool
    redundant: bool

    def slot(self, bootname: str) -> SlotBootState:
        for s in self.slots:
            if s.bootname == bootname:
                return s
        raise BootloaderError(f"no slot with boot name {bootname!r}")


class Bootloader(Protocol):
    def booted(self) -> str: ...  # boot name of the running slot
    def activate(self, bootname: str) -> None: ...  # try it on next boot (one env write)
    def mark_good(self, bootname: str) -> None: ...
    def mark_bad(self, bootname: str) -> None: ...
    def state(self) -> BootState: ...
