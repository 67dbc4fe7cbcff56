"""The one object every install step is handed: config, journal, bootloader, reboot, progress.

It lives apart from the pipeline so that ``bootcheck`` and ``proxyphase``, which the
pipeline calls, can take a Context without importing the pipeline back (no cycle), and so
tests can swap any part of it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import cast

from ferry.daemon.boot.bootloader import Bootloader
from ferry.daemon.config import Config
from ferry.daemon.journal import Journal

# progress(phase, done, total): phase is "download", "write", "stage", "activate", ...
ProgressFn = Callable[[str, int, int], None]


@dataclass
class Context:
    """Everything a pipeline step touches, so tests can swap any part."""

    config: Config
    journal: Journal
    bootloader: Bootloader
    reboot: Callable[[], None]
    progress: ProgressFn | None = None
    boot_id: Callable[[], str] | None = None

    def report(self, phase: str, done: int, total: int) -> None:
        if self.progress is not None:
            self.progress(phase, done, total)


def current_boot_id() -> str:
    """The kernel's id of this boot; FERRY_BOOT_ID_PATH lets tests and the simulator
    stand in a file for /proc, since they "reboot" without a kernel."""
    path = os.environ.get("FERRY_BOOT_ID_PATH", "/proc/sys/kernel/random/boot_id")
    try:
        return Path(path).read_text().strip()
    except OSError:
        return ""


def make_context(config: Config, *, progress: ProgressFn | None = None,
                 journal: Journal | None = None) -> Context:
    from ferry.daemon.boot.bootloader import make_bootloader
    from ferry.daemon.install.reboot import reboot

    def do_reboot() -> None:
        reboot(config.install.reboot_command)

    return Context(
        config=config,
        journal=journal or Journal.open(config.gateway.data_dir),
        bootloader=cast(Bootloader, make_bootloader(config)),
        reboot=do_reboot,
        progress=progress,
        boot_id=current_boot_id,
    )


