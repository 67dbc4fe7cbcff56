"""``ferry flash TRANSPORT ...``: one firmware image to one device, without a bundle.

Each transport adds its own sub-command from ``ferry.daemon.cli.flash_<transport>``.
"""

from __future__ import annotations

import argparse
import importlib
from typing import Any

TRANSPORT_MODULES = ("flash_smp", "flash_dfu", "flash_zigbee", "flash_lora")


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "flash",
        help="flash one image to one device (field use, no bundle needed)",
        description="Flash one firmware image to one device behind the gateway.",
    )
    tsub = parser.add_subparsers(dest="transport", metavar="TRANSPORT")
    for name in TRANSPORT_MODULES:
        try:
            module = importlib.import_module(f"ferry.daemon.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"ferry.daemon.cli.{name}":
                continue
            raise
        module.register(tsub)

    def show_help(_args: argparse.Namespace) -> int:
        parser.print_help()
        return 2

    parser.set_defaults(func=show_help)
