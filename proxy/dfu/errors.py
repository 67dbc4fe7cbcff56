"""What can go wrong while flashing over DFU, each with a message a technician can act on."""

from __future__ import annotations

from ferry.errors import FerryError


class DfuError(FerryError):
    """Any expected DFU failure."""


class DeviceNotFound(DfuError):
    pass


class AmbiguousDevice(DfuError):
    pass


class DeviceGone(DfuError):
    """The device vanished from the bus (unplugged, crashed, or re-enumerated unexpectedly)."""


class Stalled(DfuError):
    """The device refused a request with a USB STALL."""


class DeviceErrorState(DfuError):
    """The device reported dfuERROR (errWRITE, errVERIFY, ...)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class DfuTimeout(DfuError):
    pass


class BadImage(DfuError):
    """The image file is malformed (bad suffix CRC, truncated DfuSe container, ...)."""


class WrongDevice(DfuError):
    """The image's DFU suffix names another VID/PID than the target."""


class ImageTooLarge(DfuError):
    """The image does not fit the target's memory region."""


class Unsupported(DfuError):
    """The device cannot do what was asked (no download capability, no DfuSe, ...)."""
