"""RAUC-style bootchooser: ``BOOT_ORDER`` and ``BOOT_<x>_LEFT``.

The boot script (yocto-layer/.../boot-bootchooser.cmd) takes the first slot in
``BOOT_ORDER`` with attempts left, decrements its counter, saves the env and boots it.
The operations are RAUC's (docs/reference.rst, "Bootloader Interaction"):

- activate: move to the front of ``BOOT_ORDER``, ``LEFT = attempts``;
- mark good: ``LEFT = attempts`` (and back into ``BOOT_ORDER`` if it was dropped);
- mark bad: ``LEFT = 0`` and drop from ``BOOT_ORDER``.
"""

from __future__ import annotations

from collections.abc import Mapping

from ferry.daemon.boot.envscheme import CANARY_VAR, EnvBootloader
from ferry.daemon.boot.state import BootState, SlotBootState
from ferry.daemon.config import Config

# What the boot script assumes when a variable is missing.
SCRIPT_DEFAULT_ATTEMPTS = 3


def left_var(bootname: str) -> str:
    return f"BOOT_{bootname}_LEFT"


def _left(env: Mapping[str, str], bootname: str) -> int:
    raw = env.get(left_var(bootname))
    if raw is None or raw == "":
        return SCRIPT_DEFAULT_ATTEMPTS
    try:
        # setexpr writes hex; counters stay below 10, where hex and decimal agree.
        return int(raw, 16)
    except ValueError:
        return 0


def _order(env: Mapping[str, str], config: Config) -> list[str]:
    raw = env.get("BOOT_ORDER")
    if raw is None or not raw.strip():
        return [s.bootname for s in config.slots]
    return raw.split()


def default_env(config: Config) -> dict[str, str]:
    """Boot variables for a fresh gateway: every slot in order, full attempts."""
    env = {"BOOT_ORDER": " ".join(s.bootname for s in config.slots)}
    for s in config.slots:
        env[left_var(s.bootname)] = str(config.bootloader.attempts)
    return env


def choose(env: Mapping[str, str], config: Config) -> str | None:
    """The slot the boot script picks next, or None (it then resets all counters)."""
    for name in _order(env, config):
        if _left(env, name) > 0:
            return name
    return None


class BootchooserBootloader(EnvBootloader):
    scheme = "bootchooser"

    def activate(self, bootname: str) -> None:
        self._known(bootname)
        self.check_canary()
        attempts = str(self.attempts)
        config = self.config

        def apply(env: dict[str, str]) -> None:
            order = _order(env, config)
            env["BOOT_ORDER"] = " ".join([bootname, *[o for o in order if o != bootname]])
            env[left_var(bootname)] = attempts

        self.store.modify(apply)

    def mark_good(self, bootname: str) -> None:
        self._known(bootname)
        attempts = str(self.attempts)
        config = self.config

        def apply(env: dict[str, str]) -> None:
            order = _order(env, config)
            if bootname not in order:
                env["BOOT_ORDER"] = " ".join([*order, bootname])
            env[left_var(bootname)] = attempts

        self.store.modify(apply)

    def mark_bad(self, bootname: str) -> None:
        self._known(bootname)
        config = self.config

        def apply(env: dict[str, str]) -> None:
            order = _order(env, config)
            env["BOOT_ORDER"] = " ".join(o for o in order if o != bootname)
            env[left_var(bootname)] = "0"

        self.store.modify(apply)

    def state(self) -> BootState:
        env = self.store.read()
        booted = self._booted_or_none()
        primary = choose(env, self.config)
        order = _order(env, self.config)
        slots = []
        for s in self.config.slots:
            left = _left(env, s.bootname)
            slots.append(SlotBootState(
                bootname=s.bootname,
                booted=s.bootname == booted,
                primary=s.bootname == primary,
                good=left > 0 and s.bootname in order,
                attempts_left=left,
            ))
        pending = primary is not None and (
            primary != booted or _left(env, primary) < self.attempts
        )
        return BootState(
            scheme=self.scheme, booted=booted, primary=primary, pending=pending,
            slots=tuple(slots), canary=env.get(CANARY_VAR) == "1",
            redundant=self.store.layout.redundant,
        )
