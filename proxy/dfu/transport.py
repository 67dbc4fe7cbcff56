"""The ``dfu`` transport: one firmware file onto one USB DFU / DfuSe device.

Order of a flash, and why:
1. read and check the whole file first (CRC, DfuSe structure): an MCU image is small,
   and a damaged file must fail before the device leaves its application;
2. find the device; a run-time device gets DFU_DETACH and, unless it detaches itself
   (bitWillDetach), a USB reset; then we wait for its DFU-mode incarnation;
3. check the suffix VID/PID and, for DfuSe, that every element fits the memory map,
   still before anything is erased;
4. download (plain: DNLOAD blocks + manifestation; DfuSe: erase + program), read back
   with UPLOAD when the device can, then leave/reset so the new firmware runs.
On any failure the device is brought back to dfuIDLE (CLRSTATUS/ABORT, or a USB reset
when it hangs in manifestation), so a retry starts clean.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import usb.core
import usb.util

from ferry.proxy.dfu.dfuse import DfuseDevice, MemoryLayout
from ferry.proxy.dfu.errors import (
    DeviceGone,
    DeviceNotFound,
    DfuError,
    ImageTooLarge,
    Unsupported,
    WrongDevice,
)
from ferry.proxy.dfu.files import FirmwareImage, load_image
from ferry.proxy.dfu.find import (
    Candidate,
    DeviceAddress,
    find_one,
    same_device,
    scan,
    wait_for,
)
from ferry.proxy.dfu.protocol import DfuDevice, State, translate
from ferry.proxy.transport import FlashResult, Progress, Target, TargetState, no_progress

MAX_IMAGE = 64 * 1024 * 1024


class VerifyFailed(DfuError):
    pass


def _ids(text: str) -> tuple[int, int]:
    addr = DeviceAddress.parse(text)
    if addr.vid is None or addr.pid is None:
        raise DfuError(f"bad dfu_id {text!r}; use VID:PID (hex)")
    return addr.vid, addr.pid


def _bool(value: Any) -> bool:
    return value if isinstance(value, bool) else str(value).lower() in ("1", "true", "yes")


@dataclass
class DfuOptions:
    """Transport options (config ``[[target]] options`` or ``create()``), all optional."""

    backend: Any = None  # a pyusb backend; None = libusb
    alt: str = "0"  # alt setting number or name
    dfu_id: tuple[int, int] | None = None  # VID:PID of the DFU-mode device, if it differs
    address: int | None = None  # DfuSe: where a raw image goes (default: region start)
    format: str = ""  # force "raw", "dfu" or "dfuse"
    verify: bool = True
    reset: bool = True
    detach_before_reset: bool = False  # U-Boot: DFU_DETACH, then the reset reboots the board
    reenumerate_timeout_s: float = 10.0
    manifest_timeout_s: float = 30.0
    busy_timeout_s: float = 60.0
    sleep: Callable[[float], None] = time.sleep
    clock: Callable[[], float] = time.monotonic
    extra: dict[str, Any] = field(default_factory=dict)

    def merged(self, overrides: dict[str, Any]) -> DfuOptions:
        out = DfuOptions(**{k: getattr(self, k) for k in self.__dataclass_fields__})
        for key, value in overrides.items():
            if key == "alt":
                out.alt = str(value)
            elif key == "dfu_id":
                out.dfu_id = _ids(str(value))
            elif key == "address":
                out.address = int(str(value), 0)
            elif key in ("format", "spec_format"):
                out.format = "" if value in ("dfu", "") and key == "spec_format" else str(value)
            elif key in ("verify", "reset", "detach_before_reset"):
                setattr(out, key, _bool(value))
            elif key in ("reenumerate_timeout_s", "manifest_timeout_s", "busy_timeout_s"):
                setattr(out, key, float(value))
            elif key in ("backend", "sleep", "clock"):
                setattr(out, key, value)
            else:
                out.extra[key] = value
        return out


class DfuTransport:
    name = "dfu"

    def __init__(self, options: DfuOptions) -> None:
        self.options = options

    # Transport protocol ------------------------------------------------------------------
    def discover(self) -> list[Target]:
        targets = []
        for cand in scan(self.options.backend):
            address = f"{cand.vid:04x}:{cand.pid:04x}" + (f",{cand.serial}" if cand.serial else "")
            targets.append(Target(name=f"dfu-{cand.path}", transport="dfu", address=address,
                                  options={"mode": cand.mode, "path": cand.path}))
        return targets

    def inspect(self, target: Target) -> TargetState:
        opts = self.options.merged(target.options)
        try:
            cand = find_one(self._address(target), opts.backend, opts.dfu_id)
        except DfuError as err:
            return TargetState(reachable=False, detail={"error": str(err)})
        return TargetState(reachable=True, detail={
            "mode": cand.mode, "vid": f"{cand.vid:04x}", "pid": f"{cand.pid:04x}",
            "serial": cand.serial or "", "path": cand.path,
            "bcd_device": f"{int(cand.dev.bcdDevice):04x}",
            "dfuse": "yes" if cand.func.dfuse else "no"})

    def flash(self, target: Target, image: BinaryIO, *,
              progress: Progress = no_progress) -> FlashResult:
        try:
            return self.flash_or_raise(target, image, progress=progress)
        except DfuError as err:
            return FlashResult(ok=False, message=str(err), detail={"error": type(err).__name__})

    # the work ------------------------------------------------------------------------------
    @staticmethod
    def _address(target: Target) -> DeviceAddress:
        if target.options.get("path"):
            return DeviceAddress(path=target.options["path"])
        return DeviceAddress.parse(target.address)

    def flash_or_raise(self, target: Target, image: BinaryIO, *,
                       progress: Progress = no_progress) -> FlashResult:
        opts = self.options.merged({k: v for k, v in target.options.items()
                                    if k not in ("path", "mode")})
        data = image.read(MAX_IMAGE + 1)
        if len(data) > MAX_IMAGE:
            raise ImageTooLarge(f"image is larger than {MAX_IMAGE // (1024 * 1024)} MiB; "
                                "no DFU target has that much flash")
        fw = load_image(data, opts.format)
        cand = find_one(self._address(target), opts.backend, opts.dfu_id)
        runtime_ids = (cand.vid, cand.pid)
        if fw.suffix is not None:
            ok = fw.suffix.matches(cand.vid, cand.pid) or (
                opts.dfu_id is not None and fw.suffix.matches(*opts.dfu_id))
            # A run-time device usually changes only its PID in DFU mode, so with no
            # dfu_id configured a PID mismatch is checked again after the detach.
            vid_differs = fw.suffix.id_vendor not in (0xFFFF, cand.vid)
            if not ok and (cand.mode == "dfu" or opts.dfu_id is not None or vid_differs):
                fw.suffix.check_ids(cand.vid, cand.pid)
        if cand.mode == "runtime":
            progress(0, fw.size, "detach")
            cand = self._detach(cand, opts)
        if fw.suffix is not None and not fw.suffix.matches(cand.vid, cand.pid) \
                and not fw.suffix.matches(*runtime_ids):
            fw.suffix.check_ids(cand.vid, cand.pid)
        if not cand.func.can_download:
            raise Unsupported(f"{cand.describe()} does not accept downloads (bitCanDnload=0)")
        session = _Session(cand, opts)
        try:
            verified = session.run(fw, progress)
        except DfuError:
            session.leave_retryable()
            raise
        finally:
            usb.util.dispose_resources(cand.dev)
        where = cand.describe()
        return FlashResult(ok=True, version=target.options.get("spec_version", ""),
                           message=f"flashed {fw.size} bytes ({fw.kind}) to {where}"
                           + (", verified by upload" if verified else ""),
                           detail={"bytes": str(fw.size), "format": fw.kind,
                                   "verified": "yes" if verified else "no",
                                   "device": where})

    def _detach(self, cand: Candidate, opts: DfuOptions) -> Candidate:
        dfu = DfuDevice(cand.dev, cand.interface, cand.func, sleep=opts.sleep, clock=opts.clock)
        wtimeout = min(cand.func.detach_timeout_ms or 1000, 1000)
        try:
            dfu.detach(wtimeout)
        except DeviceGone:
            if not cand.func.will_detach:
                raise
        if not cand.func.will_detach:
            # libusb reports the re-enumerated device as gone: expected.
            with contextlib.suppress(usb.core.USBError):
                cand.dev.reset()
        usb.util.dispose_resources(cand.dev)
        return wait_for(same_device(cand, opts.dfu_id), opts.backend,
                        opts.reenumerate_timeout_s, f"{cand.describe()} in DFU mode",
                        sleep=opts.sleep, clock=opts.clock)


class _Session:
    """One DFU-mode device, from alt selection to the final reset."""

    def __init__(self, cand: Candidate, opts: DfuOptions) -> None:
        self.cand = cand
        self.opts = opts
        self.dfu = DfuDevice(cand.dev, cand.interface, cand.func, sleep=opts.sleep,
                             clock=opts.clock, busy_timeout_s=opts.busy_timeout_s)

    def _alt_number(self, wanted: str) -> int:
        if wanted.isdigit():
            alt = int(wanted)
            if alt not in self.cand.alts:
                raise DfuError(f"{self.cand.describe()} has no alt setting {alt} "
                               f"(it has {sorted(self.cand.alts)})")
            return alt
        for alt in self.cand.alts:
            if self.cand.alt_name(alt) == wanted:
                return alt
        raise DfuError(f"{self.cand.describe()} has no alt setting named {wanted!r}")

    def select(self, alt: int) -> None:
        try:
            self.cand.dev.set_interface_altsetting(interface=self.cand.interface,
                                                   alternate_setting=alt)
        except usb.core.USBError as err:
            raise translate(err, f"SET_INTERFACE alt {alt}") from None
        self.dfu.ensure_idle()

    def layout(self, alt: int) -> MemoryLayout:
        name = self.cand.alt_name(alt)
        if name is None:
            raise DfuError(f"could not read the memory map of alt {alt}")
        return MemoryLayout.parse(name)

    def run(self, fw: FirmwareImage, progress: Progress) -> bool:
        if fw.kind == "dfuse":
            return self._dfuse_file(fw, progress)
        alt = self._alt_number(self.opts.alt)
        self.select(alt)
        if self.cand.func.dfuse:
            layout = self.layout(alt)
            address = self.opts.address if self.opts.address is not None else layout.start
            dfuse = DfuseDevice(self.dfu, layout)
            dfuse.check(address, len(fw.payload))
            dfuse.write(address, fw.payload, progress)
            verified = self._dfuse_verify(dfuse, address, fw.payload, progress)
            self._leave(dfuse, address)
            return verified
        last = self.dfu.download(fw.payload, progress)
        progress(len(fw.payload), len(fw.payload), "manifest")
        state = self.dfu.manifest(last, timeout_s=self.opts.manifest_timeout_s)
        verified = False
        if state == State.IDLE and self.cand.func.can_upload and self.opts.verify:
            back = self.dfu.read_back(len(fw.payload), progress)
            _compare(back, fw.payload, 0)
            verified = True
        if state == State.IDLE and self.opts.detach_before_reset and self.opts.reset:
            self._detach_in_dfu_mode()
        self._reset(progress, len(fw.payload))
        return verified

    def _detach_in_dfu_mode(self) -> None:
        """DFU_DETACH from dfuIDLE, as ``dfu-util -R`` sends it before its USB reset.

        U-Boot's f_dfu takes it as "leave the dfu command"; only then does the USB reset
        reset the board (common/dfu.c). Other stacks may stall it (DFU 1.1 allows DETACH
        only in appIDLE), which is harmless here because the reset follows at once.
        """
        with contextlib.suppress(DfuError):
            self.dfu.detach(1000)

    def _dfuse_file(self, fw: FirmwareImage, progress: Progress) -> bool:
        if not self.cand.func.dfuse:
            raise Unsupported(f"{self.cand.describe()} is not a DfuSe device (bcdDFU "
                              f"0x{self.cand.func.bcd_dfu:04x}); a DfuSe file needs one")
        # Check every element of every target before erasing anything.
        plans = []
        for target in fw.targets:
            alt = self._alt_number(str(target.alt))
            layout = self.layout(alt)
            for element in target.elements:
                layout.pages(element.address, len(element.data), 6)
            plans.append((alt, layout, target))
        total = fw.size
        done = 0
        verified = bool(plans)
        dfuse: DfuseDevice | None = None
        first: int | None = None

        def sub(base: int) -> Progress:
            return lambda d, _t, m: progress(base + d if m != "erase" else base, total, m)

        for alt, layout, target in plans:
            self.select(alt)
            dfuse = DfuseDevice(self.dfu, layout)
            for element in target.elements:
                first = element.address if first is None else first
                dfuse.write(element.address, element.data, sub(done))
                verified &= self._dfuse_verify(dfuse, element.address, element.data, sub(done))
                done += len(element.data)
        if dfuse is not None:
            self._leave(dfuse, first)
        return verified

    def _dfuse_verify(self, dfuse: DfuseDevice, address: int, data: bytes,
                      progress: Progress) -> bool:
        if not (self.cand.func.can_upload and self.opts.verify):
            return False
        _compare(dfuse.read(address, len(data), progress), data, address)
        return True

    def _leave(self, dfuse: DfuseDevice, address: int | None) -> None:
        if self.opts.reset:
            dfuse.leave(address)
            self._reset(no_progress, 0)

    def _reset(self, progress: Progress, total: int) -> None:
        if not self.opts.reset:
            return
        progress(total, total, "reset")
        # A device that re-enumerates into its application looks "gone" to libusb.
        with contextlib.suppress(usb.core.USBError):
            self.cand.dev.reset()

    def leave_retryable(self) -> None:
        """After a failure: dfuIDLE if the device answers, else a USB reset."""
        try:
            self.dfu.recover()
            if self.dfu.get_state() == State.IDLE:
                return
        except DfuError:
            pass
        with contextlib.suppress(usb.core.USBError):
            self.cand.dev.reset()


def _compare(back: bytes, expected: bytes, base: int) -> None:
    if back[:len(expected)] == expected:
        return
    if len(back) < len(expected):
        raise VerifyFailed(f"read back only {len(back)} of {len(expected)} bytes; "
                           "the device did not keep the whole image")
    offset = next(i for i, (a, b) in enumerate(zip(back, expected, strict=False)) if a != b)
    raise VerifyFailed(f"read-back differs at 0x{base + offset:08x}: the flash did not take; "
                       "retry, and replace the device if it keeps failing")


def create(options: dict[str, Any]) -> DfuTransport:
    return DfuTransport(DfuOptions().merged(options))


__all__ = ["DeviceNotFound", "DfuOptions", "DfuTransport", "WrongDevice", "create"]
