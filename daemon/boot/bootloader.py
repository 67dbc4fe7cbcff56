"""The bootloader seam: how ferry asks U-Boot to try, keep or drop a slot.

ferry talks to U-Boot only through its environment. Two schemes are supported
(``bootloader.scheme``): RAUC's ``bootchooser`` and Mender's ``bootcount``; each is one
class over the same ``EnvStore``, so every operation is one atomic env write. The types
live in ``state`` and the shared base in ``envscheme``; they are re-exported here, since
this is the one module the other rooms import.
"""

from __future__ import annotations

import logging

from ferry.daemon.boot.envscheme import CANARY_VAR as CANARY_VAR
from ferry.daemon.boot.envscheme import EnvBootloader as EnvBootloader
from ferry.daemon.boot.state import Bootloader as Bootloader
from ferry.daemon.boot.state import BootloaderError as BootloaderError
from ferry.daemon.boot.state import BootState as BootState
from ferry.daemon.boot.state import CanaryError as CanaryError
from ferry.daemon.boot.state import SlotBootState as SlotBootState
from ferry.daemon.boot.ubootenv import EnvStore
from ferry.daemon.config import Config

log = logging.getLogger("ferry.bootloader")


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
        from ferry.daemon.boot.bootcount import BootcountBootloader

        return BootcountBootloader(config, store)
    from ferry.daemon.boot.bootchooser import BootchooserBootloader

    return BootchooserBootloader(config, store)
