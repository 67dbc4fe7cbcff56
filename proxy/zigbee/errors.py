"""Errors of the Zigbee transport; each says what is wrong and what to do."""

from __future__ import annotations

from ferry.errors import FerryError


class ZigbeeError(FerryError):
    """Base of every expected Zigbee transport failure."""


class OtaFileError(ZigbeeError):
    """The bytes are not a well-formed Zigbee OTA upgrade file."""


class ZclError(ZigbeeError):
    """A ZCL frame could not be encoded or decoded."""


class AdapterError(ZigbeeError):
    """The coordinator adapter (Zigbee2MQTT, ...) could not do what was asked."""
