"""``ferry flash TRANSPORT ...``: one firmware image to one device, without a bundle.

Each transport adds its own sub-command from ``ferry.daemon.cli.flash_<transport>``.
"""

from __future__ import annotations

from typing import Any

from ferry.daemon.cli.groups import register_group

TRANSPORT_MODULES = ("flash_smp", "flash_dfu", "flash_zigbee", "flash_lora")


def register(sub: Any) -> None:
    register_group(
        sub, "flash", help="flash one image to one device (field use, no bundle needed)",
        description="Flash one firmware image to one device behind the gateway.",
        metavar="TRANSPORT", dest="transport", modules=TRANSPORT_MODULES)
