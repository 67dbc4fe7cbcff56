"""Mender-style bootcount: ``upgrade_available``, ``bootcount``, ``bootlimit``,
``altbootcmd`` and a boot-partition variable (``bootloader.boot_part_var``).

U-Boot itself (``CONFIG_BOOTCOUNT_LIMIT`` + ``CONFIG_BOOTCOUNT_ENV``) counts boots while
``upgrade_available=1`` and runs ``altbootcmd`` once ``bootcount > bootlimit``; the boot
script (yocto-layer/.../boot-bootcount.cmd) then switches back to ``ferry_prev_part``,
records the failed slot in ``ferry_failed_part`` and clears ``upgrade_available``.

- activate (another slot): boot part = it, prev part = the running slot,
  ``upgrade_available=1``, ``bootcount=0``, ``bootlimit = attempts``: one write, as
  Mender's ArtifactInstall does with ``fw_setenv -s``;
- mark good: ``upgrade_available=0``, ``bootcount=0`` (Mender's commit);
- mark bad: back to the previous slot and remember the bad one.
"""

from __future__ import annotations

from collections.abc import Mapping

from ferry.daemon.boot.envscheme import CANARY_VAR, EnvBootloader
from ferry.daemon.boot.state import BootloaderError, BootState, SlotBootState
from ferry.daemon.config import Config, SlotConfig

PREV_VAR = "ferry_prev_part"
FAILED_VAR = "ferry_failed_part"


def bootpart(slot: SlotConfig) -> str:
    return slot.bootpart if slot.bootpart is not None else slot.bootname


def _int(env: Mapping[str, str], name: str) -> int:
    try:
        return int(env.get(name, "0") or "0", 10)
    except ValueError:
        return 0


def default_env(config: Config) -> dict[str, str]:
    first = config.slots[0] if config.slots else None
    env = {"upgrade_available": "0", "bootcount": "0",
           "bootlimit": str(config.bootloader.attempts)}
    if first is not None:
        env[config.bootloader.boot_part_var] = bootpart(first)
    return env


class BootcountBootloader(EnvBootloader):
    scheme = "bootcount"

    @property
    def part_var(self) -> str:
        return self.config.bootloader.boot_part_var

    def _bp(self, bootname: str) -> str:
        self._known(bootname)
        return bootpart(self.config.slot(bootname))

    def _slot_of_part(self, part: str | None) -> str | None:
        for s in self.config.slots:
            if bootpart(s) == part:
                return s.bootname
        return None

    def _other_part(self, part: str) -> str:
        for s in self.config.slots:
            if bootpart(s) != part:
                return bootpart(s)
        raise BootloaderError("the config has no second [[slot]]; an A/B update needs two")

    def activate(self, bootname: str) -> None:
        target = self._bp(bootname)
        self.check_canary()
        booted = self.booted()
        running = self._bp(booted)
        var = self.part_var
        limit = str(self.attempts)

        def apply(env: dict[str, str]) -> None:
            env[var] = target
            env["bootcount"] = "0"
            if env.get(FAILED_VAR) == target:
                del env[FAILED_VAR]
            if target == running:
                env["upgrade_available"] = "0"
            else:
                env[PREV_VAR] = running
                env["upgrade_available"] = "1"
                env["bootlimit"] = limit

        self.store.modify(apply)

    def mark_good(self, bootname: str) -> None:
        target = self._bp(bootname)
        var = self.part_var

        def apply(env: dict[str, str]) -> None:
            if env.get(var) == target:
                env["upgrade_available"] = "0"
                env["bootcount"] = "0"
            if env.get(FAILED_VAR) == target:
                del env[FAILED_VAR]

        self.store.modify(apply)

    def mark_bad(self, bootname: str) -> None:
        target = self._bp(bootname)
        var = self.part_var
        other = self._other_part(target)

        def apply(env: dict[str, str]) -> None:
            if env.get(var) == target:
                prev = env.get(PREV_VAR)
                env[var] = prev if prev and prev != target else other
                env["upgrade_available"] = "0"
                env["bootcount"] = "0"
            env[FAILED_VAR] = target

        self.store.modify(apply)

    def state(self) -> BootState:
        env = self.store.read()
        booted = self._booted_or_none()
        primary = self._slot_of_part(env.get(self.part_var))
        pending = env.get("upgrade_available") == "1"
        failed = self._slot_of_part(env.get(FAILED_VAR))
        left = max(0, _int(env, "bootlimit") - _int(env, "bootcount"))
        slots = tuple(
            SlotBootState(
                bootname=s.bootname,
                booted=s.bootname == booted,
                primary=s.bootname == primary,
                good=s.bootname != failed,
                attempts_left=left if pending and s.bootname == primary else None,
            )
            for s in self.config.slots
        )
        return BootState(
            scheme=self.scheme, booted=booted, primary=primary, pending=pending,
            slots=slots, canary=env.get(CANARY_VAR) == "1",
            redundant=self.store.layout.redundant,
        )
