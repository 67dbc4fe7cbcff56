"""Errors of the LoRa transport; each says what is wrong and what to do."""

from __future__ import annotations

from ferry.errors import FerryError


class LoraError(FerryError):
    """A LoRa FUOTA step failed."""


class FrameError(LoraError):
    """A node sent an application-layer frame we cannot parse."""


class ImageTooLarge(LoraError):
    """The image needs more fragments than one TS004 session can number."""


class NetworkServerError(LoraError):
    """The network server (ChirpStack) refused or could not be reached."""
