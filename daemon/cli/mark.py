"""``ferry mark good|bad|active [booted|other|SLOT]``: tell the bootloader about a slot.

As ``rauc status mark-*``: *good* keeps a slot (the commit after a healthy boot), *bad*
takes it out of the boot order, *active* makes it the one to boot next. With
``--config`` it works standalone, straight on the U-Boot env (serialised with ferryd and
fw_setenv by the env lock); without, it asks ferryd over D-Bus and falls back to the
default config when ferryd is not running.

*active* or *good* on the slot that is not running passes ferry's gate
(docs/security.md, "Only a verified slot can be booted"): ferry must hold a verified
record of the slot's content, its version must be at or above ``[install]
min_version`` (there is no --force for that), and the slot is re-hashed against the
record first; a re-hash that takes longer than a second shows its progress on stderr.
Anything else is refused with the reason and what to do.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from ferry.daemon.cli import exitcodes

STATES = ("good", "bad", "active")


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "mark",
        help="mark a slot good, bad or active (booted, other or a slot name)",
        description="Mark a rootfs slot: good (keep it; the commit after a healthy boot), "
        "bad (drop it from the boot order) or active (boot it next, with fresh attempts). "
        "A slot that is not running can be made good or active only while ferry holds a "
        "verified record of what it holds, at or above [install] min_version; it is "
        "re-hashed first.",
    )
    p.add_argument("state", choices=STATES)
    p.add_argument("slot", nargs="?", default="booted",
                   help="booted (default), other, or a slot name (rootfs.1) or boot name (B)")
    p.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                   help="print the result as JSON")
    p.set_defaults(func=run)


class _HashProgress:
    """A progress bar for the slot re-hash, shown only once it has taken a second."""

    DELAY = 1.0

    def __init__(self) -> None:
        self.start = time.monotonic()
        self.bar: Any = None

    def __call__(self, done: int, total: int) -> None:
        if self.bar is None:
            if time.monotonic() - self.start < self.DELAY:
                return
            from ferry.daemon.cli.progress import ProgressBar

            self.bar = ProgressBar("checking slot", total)
        self.bar.update(done)

    def finish(self) -> None:
        if self.bar is not None:
            self.bar.finish()


def mark_standalone(config_path: str, state: str, which: str) -> tuple[str, str]:
    """Mark without ferryd; returns (slot name, message)."""
    from ferry.daemon.boot.bootloader import make_bootloader
    from ferry.daemon.boot.slots import mark
    from ferry.daemon.config import load_config

    config = load_config(config_path)
    progress = _HashProgress()
    try:
        return mark(config, make_bootloader(config), state, which, progress=progress)
    finally:
        progress.finish()


def run(args: argparse.Namespace) -> int:
    from ferry.daemon.config import DEFAULT_PATH

    if args.config:
        name, message = mark_standalone(args.config, args.state, args.slot)
    else:
        from ferry.daemon.cli import dbus_client as client

        try:
            name, message = client.mark(args.state, args.slot)
        except client.DaemonUnavailable:
            if not DEFAULT_PATH.exists():
                raise
            print("ferry: ferryd is not running; marking directly", file=sys.stderr)
            name, message = mark_standalone(str(DEFAULT_PATH), args.state, args.slot)
    if getattr(args, "json", False):
        print(json.dumps({"slot": name, "state": args.state, "message": message}))
    else:
        print(message)
    return exitcodes.OK
