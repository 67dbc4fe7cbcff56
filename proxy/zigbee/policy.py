"""What a Zigbee image may go to, shared by both adapters (Zigbee2MQTT and zigpy).

The image's manufacturer code and image type must match what the target expects
(bundle selector or ``hardware_id`` "MFR:TYPE"); the target address ``*`` names a
population rather than one node.
"""

from __future__ import annotations

from ferry.proxy.transport import Target
from ferry.proxy.zigbee.errors import AdapterError
from ferry.proxy.zigbee.otafile import OtaHeader


def version_str(v: int | None) -> str:
    return "" if v is None else f"0x{v:08X}"


def hw_str(v: int | None) -> str:
    return "" if v is None else f"0x{v:04X}"


def _int(text: str | None) -> int | None:
    if text is None or str(text).strip() == "":
        return None
    try:
        return int(str(text), 0)
    except ValueError:
        raise AdapterError(f"{text!r} is not a number (use decimal or 0x hex)") from None


def expected_ids(target: Target) -> tuple[int | None, int | None]:
    """(manufacturer code, image type) the target accepts, from the bundle's selector
    (``spec_manufacturer``/``spec_image_type``) or ``hardware_id`` "0x1234:0x0001"."""
    mfr = _int(target.options.get("spec_manufacturer"))
    itype = _int(target.options.get("spec_image_type"))
    if target.hardware_id and ":" in target.hardware_id:
        hw_mfr, hw_type = target.hardware_id.split(":", 1)
        mfr = mfr if mfr is not None else _int(hw_mfr)
        itype = itype if itype is not None else _int(hw_type)
    return mfr, itype


def policy_problem(header: OtaHeader, target: Target) -> str:
    mfr, itype = expected_ids(target)
    if mfr is not None and mfr != header.manufacturer_code:
        return (f"image is for manufacturer 0x{header.manufacturer_code:04X}, "
                f"{target.name} takes 0x{mfr:04X}; wrong image for this node")
    if itype is not None and itype != header.image_type:
        return (f"image type 0x{header.image_type:04X} does not match {target.name}'s "
                f"0x{itype:04X}; wrong image for this node")
    return ""


POPULATION = "*"  # a target address: every node of the coordinator (or its ``devices``)
