"""Transport names to modules, imported lazily so a gateway without USB never loads pyusb.

Each module exposes ``create(options: dict[str, Any]) -> Transport`` where ``options``
is the transport's table from the gateway config (may be empty).
"""

from __future__ import annotations

import importlib
from typing import Any

from ferry.errors import FerryError
from ferry.proxy.transport import Transport

TRANSPORTS: dict[str, str] = {
    "smp-serial": "ferry.proxy.smp.transport",
    "dfu": "ferry.proxy.dfu.transport",
    "zigbee": "ferry.proxy.zigbee.transport",
    "lora": "ferry.proxy.lora.transport",
}


class UnknownTransport(FerryError):
    pass


def get_transport(name: str, options: dict[str, Any] | None = None) -> Transport:
    try:
        module_name = TRANSPORTS[name]
    except KeyError:
        known = ", ".join(sorted(TRANSPORTS))
        raise UnknownTransport(f"unknown transport {name!r}; known: {known}") from None
    module = importlib.import_module(module_name)
    transport: Transport = module.create(options or {})
    return transport
