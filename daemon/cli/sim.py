"""``ferry sim KIND ...``: run one simulated device (the far end of a wire) for testing.

Each simulator adds its own sub-command from ``ferry.daemon.cli.sim_<kind>``.
"""

from __future__ import annotations

from typing import Any

from ferry.daemon.cli.groups import register_group

SIM_MODULES = ("sim_mcu", "sim_dfu", "sim_zigbee", "sim_lora")


def register(sub: Any) -> None:
    register_group(
        sub, "sim", help="run a simulated device for testing (MCU, DFU, Zigbee, LoRa)",
        description="Run a simulated device, the far end of one of ferry's transports.",
        metavar="KIND", dest="kind", modules=SIM_MODULES)
