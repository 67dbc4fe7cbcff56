"""Finding DFU devices by VID:PID, serial number or bus path, and waiting for them.

A device changes identity when it enters DFU mode (new address, often a new PID), so
the DFU-mode device is matched back to the one we detached by serial number when it
has one, else by bus path (the port does not change), else by VID.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import usb.core
import usb.util

from ferry.proxy.dfu.errors import AmbiguousDevice, DeviceNotFound, DfuError
from ferry.proxy.dfu.protocol import (
    DFU_CLASS,
    DFU_SUBCLASS,
    PROTO_DFU,
    PROTO_RUNTIME,
    FunctionalDescriptor,
)


def _hex16(text: str) -> int:
    value = int(text, 16)
    if not 0 <= value <= 0xFFFF:
        raise ValueError(text)
    return value


@dataclass(frozen=True)
class DeviceAddress:
    """``VID:PID[,SERIAL]``, ``path=BUS-PORT[.PORT]`` or ``serial=SERIAL``."""

    vid: int | None = None
    pid: int | None = None
    serial: str | None = None
    path: str | None = None

    @classmethod
    def parse(cls, text: str) -> DeviceAddress:
        text = text.strip()
        try:
            if text.startswith("path="):
                return cls(path=text[5:])
            if text.startswith("serial="):
                return cls(serial=text[7:])
            ids, _, serial = text.partition(",")
            vid_text, sep, pid_text = ids.partition(":")
            if not sep:
                raise ValueError(text)
            return cls(_hex16(vid_text), _hex16(pid_text) if pid_text else None,
                       serial or None)
        except ValueError:
            raise DfuError(f"bad DFU device address {text!r}; use VID:PID[,SERIAL] "
                           "(hex), path=1-1.2 or serial=SERIAL") from None

    def __str__(self) -> str:
        if self.path:
            return f"path={self.path}"
        if self.vid is None:
            return f"serial={self.serial}"
        ids = f"{self.vid:04x}:{self.pid:04x}" if self.pid is not None else f"{self.vid:04x}:"
        return ids + (f",{self.serial}" if self.serial else "")


def bus_path(dev: Any) -> str:
    ports = getattr(dev, "port_numbers", None) or ()
    return f"{dev.bus}-{'.'.join(str(p) for p in ports)}" if ports else f"{dev.bus}-0"


def _string(dev: Any, index: int) -> str | None:
    if not index:
        return None
    try:
        return str(usb.util.get_string(dev, index))
    except (usb.core.USBError, ValueError, NotImplementedError):
        return None


@dataclass
class Candidate:
    """One device with a DFU interface, in run-time or DFU mode."""

    dev: Any
    mode: str  # "runtime" or "dfu"
    interface: int
    func: FunctionalDescriptor
    alts: dict[int, int] = field(default_factory=dict)  # alt number -> iInterface
    serial: str | None = None
    path: str = ""

    @property
    def vid(self) -> int:
        return int(self.dev.idVendor)

    @property
    def pid(self) -> int:
        return int(self.dev.idProduct)

    def alt_name(self, alt: int) -> str | None:
        return _string(self.dev, self.alts.get(alt, 0))

    def describe(self) -> str:
        serial = f" serial={self.serial}" if self.serial else ""
        return f"{self.vid:04x}:{self.pid:04x} {self.mode} path={self.path}{serial}"


def inspect_device(dev: Any) -> Candidate | None:
    """The device's DFU interface, if it has one.

    Only cached descriptors are read until a DFU interface shows up, so scanning the
    bus never opens unrelated devices (hubs, modems) or needs permissions on them.
    """
    try:
        configs = list(dev)
    except (usb.core.USBError, NotImplementedError, ValueError):
        return None
    config = next((c for c in configs if any(
        i.bInterfaceClass == DFU_CLASS and i.bInterfaceSubClass == DFU_SUBCLASS for i in c)),
        None)
    if config is None:
        return None
    found: Candidate | None = None
    blobs: list[bytes] = []
    for intf in config:
        if intf.bInterfaceClass != DFU_CLASS or intf.bInterfaceSubClass != DFU_SUBCLASS:
            continue
        if intf.bInterfaceProtocol not in (PROTO_RUNTIME, PROTO_DFU):
            continue
        blobs.append(bytes(intf.extra_descriptors or b""))
        if found is None:
            mode = "dfu" if intf.bInterfaceProtocol == PROTO_DFU else "runtime"
            found = Candidate(dev, mode, intf.bInterfaceNumber,
                              FunctionalDescriptor(0, 0, 0, 0))
        if intf.bInterfaceNumber == found.interface:
            found.alts[intf.bAlternateSetting] = intf.iInterface
    if found is None:
        return None
    blobs.append(bytes(getattr(config, "extra_descriptors", b"") or b""))
    func = FunctionalDescriptor.find(blobs)
    if func is None:
        return None
    found.func = func
    found.serial = _string(dev, dev.iSerialNumber)
    found.path = bus_path(dev)
    return found


def scan(backend: Any = None) -> list[Candidate]:
    out: list[Candidate] = []
    for dev in usb.core.find(find_all=True, backend=backend) or ():
        cand = inspect_device(dev)
        if cand is not None:
            out.append(cand)
    return out


def matches(cand: Candidate, address: DeviceAddress,
            dfu_ids: tuple[int, int] | None = None) -> bool:
    if address.path and cand.path != address.path:
        return False
    if address.serial and cand.serial != address.serial:
        return False
    if address.vid is None:
        return True
    if cand.mode == "dfu" and address.serial and cand.vid == address.vid:
        return True  # the same serial number in DFU mode (its PID often differs)
    if (cand.vid, cand.pid) == (address.vid, address.pid) or (
            address.pid is None and cand.vid == address.vid):
        return True
    return cand.mode == "dfu" and dfu_ids is not None and (cand.vid, cand.pid) == dfu_ids


def find_one(address: DeviceAddress, backend: Any = None,
             dfu_ids: tuple[int, int] | None = None) -> Candidate:
    found = [c for c in scan(backend) if matches(c, address, dfu_ids)]
    if not found:
        raise DeviceNotFound(f"no DFU device matches {address}; check the cable and "
                             "'ferry devices', or the VID:PID in the config")
    if len(found) > 1:
        listing = "; ".join(c.describe() for c in found)
        raise AmbiguousDevice(f"{len(found)} DFU devices match {address} ({listing}); "
                              "add a serial (VID:PID,SERIAL) or use path=")
    return found[0]


def same_device(before: Candidate, dfu_ids: tuple[int, int] | None
                ) -> Callable[[Candidate], bool]:
    """A predicate for the DFU-mode incarnation of ``before``."""
    def check(cand: Candidate) -> bool:
        if cand.mode != "dfu":
            return False
        if dfu_ids is not None and (cand.vid, cand.pid) != dfu_ids:
            return False
        if before.serial:
            return cand.serial == before.serial
        if before.path:
            return cand.path == before.path
        return cand.vid == before.vid
    return check


def wait_for(predicate: Callable[[Candidate], bool], backend: Any, timeout_s: float,
             what: str, *, sleep: Callable[[float], None] = time.sleep,
             clock: Callable[[], float] = time.monotonic) -> Candidate:
    deadline = clock() + timeout_s
    while True:
        found = [c for c in scan(backend) if predicate(c)]
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            raise AmbiguousDevice(f"{len(found)} devices could be {what}; unplug the others")
        if clock() >= deadline:
            raise DeviceNotFound(f"{what} did not appear within {timeout_s:.0f} s (is udevd "
                                 "running? libusb needs it to see re-enumerated devices)")
        sleep(0.05)
