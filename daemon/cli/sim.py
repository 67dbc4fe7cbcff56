"""``ferry sim KIND ...``: run one simulated device (the far end of a wire) for testing.

Each simulator adds its own sub-command from ``ferry.daemon.cli.sim_<kind>``.
"""

from __future__ import annotations

import argparse
import importlib
from typing import Any

SIM_MODULES = ("sim_mcu", "sim_dfu", "sim_zigbee", "sim_lora")


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "sim",
        help="run a simulated device for testing (MCU, DFU, Zigbee, LoRa)",
        description="Run a simulated device, the far end of one of ferry's transports.",
    )
    ssub = parser.add_subparsers(dest="kind", metavar="KIND")
    for name in SIM_MODULES:
        try:
            module = importlib.import_module(f"ferry.daemon.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"ferry.daemon.cli.{name}":
                continue
            raise
        module.register(ssub)

    def show_help(_args: argparse.Namespace) -> int:
        parser.print_help()
        return 2

    parser.set_defaults(func=show_help)
