"""What both env schemes share: the env store, the config, the running slot, the canary.

``bootchooser`` and ``bootcount`` subclass :class:`EnvBootloader`; the factory in
``bootloader`` picks one. Kept apart from the factory so the schemes never import it.
"""

from __future__ import annotations

from ferry.daemon.boot.slots import booted_slot
from ferry.daemon.boot.state import BootloaderError, BootState, CanaryError
from ferry.daemon.boot.ubootenv import EnvStore
from ferry.daemon.config import Config
from ferry.errors import FerryError

CANARY_VAR = "ferry_saveenv_canary"


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
