"""The bootloader seam: how ferry asks U-Boot to try, keep or drop a slot.

ferry talks to U-Boot only through its environment. Two schemes are supported
(``bootloader.scheme``): RAUC's ``bootchooser`` and Mender's ``bootcount``; each is one
class over the same ``EnvStore``, so every operation is one atomic env write.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Protocol

from ferry.daemon.config import Config
from ferry.daemon.slots import booted_slot
from ferry.daemon.ubootenv import EnvStore
from ferry.errors import FerryError

log = logging.getLogger("ferry.bootloader")

CANARY_VAR = "ferry_saveenv_canary"


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


class EnvBootloader:
    """What both schemes share: the env store, the config, the running slot, the canary."""

    scheme = ""

    def __init__(self, config: Config, store: EnvStore) -> None:
        self.config = config
        self.store = store
        self.attempts = config.bootloader.attempts

    def booted(self) -> str:
        return booted_slot(self.config).bootname

    # The scheme classes implement these; declared here so every EnvBootloader is a
    # Bootloader to the type checker.
    def activate(self, bootname: str) -> None:
        raise NotImplementedError

    def mark_good(self, bootname: str) -> None:
        raise NotImplementedError

    def mark_bad(self, bootname: str) -> None:
        raise NotImplementedError

    def state(self) -> BootState:
        raise NotImplementedError

    def _booted_or_none(self) -> str | None:
        try:
            return self.booted()
        except FerryError:
            return None

    def _known(self, bootname: str) -> None:
        if bootname not in [s.bootname for s in self.config.slots]:
            raise BootloaderError(f"no slot with boot name {bootname!r} in the config")

    def check_canary(self) -> None:
        """Raise unless U-Boot has saved the canary and ferry reads it back."""
        if not self.config.bootloader.canary:
            return
        if self.store.read().get(CANARY_VAR) != "1":
            raise CanaryError(
                f"{CANARY_VAR}=1 is not in the env ferry reads: U-Boot has not run ferry's "
                "boot script yet, or fw_env.config does not point at the env U-Boot uses "
                "(device, offset, size, one or two copies); refusing to activate a slot"
            )

    def canary_ok(self) -> bool:
        return self.store.read().get(CANARY_VAR) == "1"


def warn_if_single_copy(store: EnvStore) -> bool:
    """Log the start-up warning for a single-copy env; True if it was logged."""
    if store.layout.redundant:
        return False
    log.warning(
        "the U-Boot env has a single copy (one line in fw_env.config): a power cut while "
        "ferry or U-Boot writes it leaves a bad CRC and U-Boot boots its default env; "
        "use a redundant env (CONFIG_SYS_REDUNDAND_ENVIRONMENT)"
    )
    return True


def make_store(config: Config) -> EnvStore:
    bl = config.bootloader
    return EnvStore.from_config(bl.fw_env_config, flags=bl.flags, lock_file=bl.lock_file)


def make_bootloader(config: Config, *, warn: bool = True) -> EnvBootloader:
    """The configured scheme over the configured env; warns once on a single-copy env."""
    store = make_store(config)
    if warn:
        warn_if_single_copy(store)
    if config.bootloader.scheme == "bootcount":
        from ferry.daemon.bootcount import BootcountBootloader

        return BootcountBootloader(config, store)
    from ferry.daemon.bootchooser import BootchooserBootloader

    return BootchooserBootloader(config, store)
