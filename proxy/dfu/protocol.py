"""DFU 1.1 class requests and the GETSTATUS-driven state machine, over one pyusb device.

The host never guesses how long the device needs: after every DNLOAD it asks GETSTATUS
and sleeps exactly the bwPollTimeout the device reports, which is also what keeps the
transfer close to the device's own flash speed (bench/dfu.py measures the overhead).
Every USB error is turned into a :mod:`ferry.proxy.dfu.errors` class here, so the layers
above reason about stalls, vanished devices and error states, never about errno.
"""

from __future__ import annotations

import contextlib
import errno
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

import usb.core

from ferry.proxy.dfu.errors import DeviceErrorState, DeviceGone, DfuError, DfuTimeout, Stalled
from ferry.proxy.transport import Progress, no_progress

DETACH, DNLOAD, UPLOAD, GETSTATUS, CLRSTATUS, GETSTATE, ABORT = range(7)
OUT = 0x21  # class request, interface recipient, host to device
IN = 0xA1

DFU_CLASS, DFU_SUBCLASS, PROTO_RUNTIME, PROTO_DFU = 0xFE, 0x01, 0x01, 0x02
BCD_DFUSE = 0x011A
ERR_UNKNOWN = 0x0E


class State(IntEnum):
    APP_IDLE = 0
    APP_DETACH = 1
    IDLE = 2
    DNLOAD_SYNC = 3
    DNBUSY = 4
    DNLOAD_IDLE = 5
    MANIFEST_SYNC = 6
    MANIFEST = 7
    MANIFEST_WAIT_RESET = 8
    UPLOAD_IDLE = 9
    ERROR = 10


STATUS_TEXT = {
    0x00: "OK", 0x01: "errTARGET (file not for this device)", 0x02: "errFILE (vendor check failed)",
    0x03: "errWRITE (cannot write memory)", 0x04: "errERASE (memory erase failed)",
    0x05: "errCHECK_ERASED (erase check failed)", 0x06: "errPROG (program memory failed)",
    0x07: "errVERIFY (programmed memory failed verification)",
    0x08: "errADDRESS (address out of range: image larger than the memory?)",
    0x09: "errNOTDONE (download ended too early)", 0x0A: "errFIRMWARE (firmware corrupt)",
    0x0B: "errVENDOR", 0x0C: "errUSBR (unexpected USB reset)",
    0x0D: "errPOR (unexpected power on reset)",
    0x0E: "errUNKNOWN", 0x0F: "errSTALLEDPKT (device stalled an unexpected request)",
}


def status_text(code: int) -> str:
    return STATUS_TEXT.get(code, f"status 0x{code:02x}")


def block_number(index: int) -> int:
    """wValue of the ``index``-th DNLOAD of a download (0-based), as it goes on the wire.

    DFU 1.1 §6.1.1: wBlockNum "increments each time a block is transferred, wrapping to
    zero from 65,535". The zero-length DNLOAD that ends the download is a block like any
    other, so after N data blocks it carries ``block_number(N)``, not 0: U-Boot's
    ``dfu_write()`` (drivers/dfu/dfu.c) compares every wValue, the final one included,
    with its own ``(i_blk_seq_num + 1) & 0xffff`` counter and drops the whole transfer on
    a mismatch ("Wrong sequence number!"); dfu-util sends the same numbers (dfu_load.c).
    """
    return index & 0xFFFF


@dataclass(frozen=True)
class FunctionalDescriptor:
    attributes: int
    detach_timeout_ms: int
    transfer_size: int
    bcd_dfu: int

    @property
    def can_download(self) -> bool:
        return bool(self.attributes & 1)

    @property
    def can_upload(self) -> bool:
        return bool(self.attributes & 2)

    @property
    def manifestation_tolerant(self) -> bool:
        return bool(self.attributes & 4)

    @property
    def will_detach(self) -> bool:
        return bool(self.attributes & 8)

    @property
    def dfuse(self) -> bool:
        return self.bcd_dfu == BCD_DFUSE

    @classmethod
    def find(cls, blobs: list[bytes]) -> FunctionalDescriptor | None:
        """The first DFU functional descriptor (type 0x21) in a list of extra-descriptor blobs."""
        for blob in blobs:
            pos = 0
            while pos + 2 <= len(blob):
                length, kind = blob[pos], blob[pos + 1]
                if length < 2:
                    break
                if kind == 0x21 and length >= 7 and pos + 7 <= len(blob):
                    attrs, detach, xfer = struct.unpack_from("<BHH", blob, pos + 2)
                    bcd = struct.unpack_from("<H", blob, pos + 7)[0] if length >= 9 else 0x0100
                    return cls(attrs, detach, xfer, bcd)
                pos += length
        return None


@dataclass(frozen=True)
class DfuStatus:
    status: int
    poll_ms: int
    state: State
    string_index: int

    @classmethod
    def parse(cls, raw: bytes) -> DfuStatus:
        if len(raw) < 6:
            raise DfuError(f"device sent a {len(raw)}-byte GETSTATUS reply; DFU needs 6 bytes")
        try:
            state = State(raw[4])
        except ValueError:
            raise DfuError(f"device reported unknown DFU state {raw[4]}") from None
        return cls(raw[0], raw[1] | raw[2] << 8 | raw[3] << 16, state, raw[5])


def translate(err: usb.core.USBError, what: str) -> DfuError:
    """One pyusb error as the DFU error it means."""
    code = getattr(err, "errno", None)
    if code == errno.EPIPE:
        return Stalled(f"device stalled {what}")
    if code in (errno.ENODEV, errno.ENOENT, errno.ESHUTDOWN) or isinstance(
            err, usb.core.NoBackendError):
        return DeviceGone(f"device disappeared during {what}; check the cable and power, "
                          "then retry")
    if isinstance(err, usb.core.USBTimeoutError) or code == errno.ETIMEDOUT:
        return DfuTimeout(f"device did not answer {what} in time")
    return DfuError(f"USB error during {what}: {err}")


class DfuDevice:
    """DFU requests to one interface of an open pyusb device."""

    def __init__(self, dev: Any, interface: int, func: FunctionalDescriptor, *,
                 sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic,
                 usb_timeout_ms: int = 5000, busy_timeout_s: float = 60.0) -> None:
        self.dev = dev
        self.interface = interface
        self.func = func
        self.sleep = sleep
        self.clock = clock
        self.usb_timeout_ms = usb_timeout_ms
        self.busy_timeout_s = busy_timeout_s

    # single requests ---------------------------------------------------------------------
    def _out(self, request: int, value: int, data: bytes | None, what: str) -> None:
        try:
            self.dev.ctrl_transfer(OUT, request, value, self.interface, data,
                                   timeout=self.usb_timeout_ms)
        except usb.core.USBError as err:
            raise translate(err, what) from None

    def _in(self, request: int, value: int, length: int, what: str) -> bytes:
        try:
            reply = self.dev.ctrl_transfer(IN, request, value, self.interface, length,
                                           timeout=self.usb_timeout_ms)
        except usb.core.USBError as err:
            raise translate(err, what) from None
        return bytes(reply)

    def detach(self, timeout_ms: int) -> None:
        self._out(DETACH, timeout_ms, None, "DFU_DETACH")

    def dnload(self, block: int, data: bytes) -> None:
        self._out(DNLOAD, block & 0xFFFF, data or None, f"DNLOAD block {block}")

    def upload(self, block: int, length: int) -> bytes:
        return self._in(UPLOAD, block & 0xFFFF, length, f"UPLOAD block {block}")

    def get_status(self) -> DfuStatus:
        return DfuStatus.parse(self._in(GETSTATUS, 0, 6, "GETSTATUS"))

    def get_state(self) -> State:
        raw = self._in(GETSTATE, 0, 1, "GETSTATE")
        if len(raw) != 1:
            raise DfuError("device sent an empty GETSTATE reply")
        return State(raw[0])

    def clear_status(self) -> None:
        self._out(CLRSTATUS, 0, None, "CLRSTATUS")

    def abort(self) -> None:
        self._out(ABORT, 0, None, "ABORT")

    # the state machine ---------------------------------------------------------------------
    def wait_ready(self, what: str, *, timeout_s: float | None = None,
                   busy: tuple[State, ...] = (State.DNLOAD_SYNC, State.DNBUSY)) -> DfuStatus:
        """Poll GETSTATUS, sleeping what the device asks, until it leaves ``busy``."""
        deadline = self.clock() + (timeout_s if timeout_s is not None else self.busy_timeout_s)
        while True:
            st = self.get_status()
            if st.state == State.ERROR or st.status != 0:
                raise DeviceErrorState(
                    f"device reported {status_text(st.status)} in state {st.state.name} "
                    f"after {what}", st.status)
            if st.state not in busy:
                return st
            if self.clock() >= deadline:
                raise DfuTimeout(f"device still {st.state.name} after {what}; gave up after "
                                 f"{timeout_s or self.busy_timeout_s:.0f} s")
            self.sleep(st.poll_ms / 1000.0)

    def ensure_idle(self) -> DfuStatus:
        """Bring the device to dfuIDLE from whatever a previous session left (as dfu-util)."""
        for _ in range(4):
            st = self.get_status()
            if st.state == State.IDLE and st.status == 0:
                return st
            if st.state == State.ERROR or st.status != 0:
                self.clear_status()
            elif st.state in (State.DNLOAD_IDLE, State.UPLOAD_IDLE, State.DNLOAD_SYNC,
                              State.MANIFEST_SYNC):
                self.abort()
            elif st.state in (State.DNBUSY, State.MANIFEST):
                self.sleep(max(st.poll_ms, 10) / 1000.0)
            else:
                raise DfuError(f"device is in state {st.state.name}, not DFU idle; "
                               "reset or power-cycle it and retry")
        raise DfuError("device did not return to dfuIDLE after CLRSTATUS/ABORT; "
                       "power-cycle it and retry")

    def recover(self) -> None:
        """Best effort after a failure: leave the device idle so the next attempt works."""
        with contextlib.suppress(DfuError):
            self.ensure_idle()

    def download(self, data: bytes, progress: Progress = no_progress) -> int:
        """The plain DFU 1.1 download loop, without the final zero-length block.

        Returns the block number the final zero-length DNLOAD must carry.
        """
        size = self.func.transfer_size
        total = len(data)
        count = 0
        for count, offset in enumerate(range(0, total, size), start=1):
            chunk = data[offset:offset + size]
            if count == 1:
                self._first_block(chunk)
            else:
                self.dnload(block_number(count - 1), chunk)
                self.wait_ready(f"DNLOAD block {block_number(count - 1)}")
            progress(offset + len(chunk), total, "download")
        return block_number(count)

    def _first_block(self, chunk: bytes) -> None:
        """Block 0, sent a second time when the device's block counter was stale.

        U-Boot keeps its counter (``dfu->i_blk_seq_num``) across a DFU_ABORT, so after an
        aborted download or a partial UPLOAD (our read-back stops at the image's length)
        it expects block N, not 0, and answers errUNKNOWN. That same error path resets
        the counter (``dfu_transaction_cleanup``), so block 0 then goes through; nothing
        was written, so sending it again is safe.
        """
        try:
            self.dnload(0, chunk)
            self.wait_ready("DNLOAD block 0")
        except DeviceErrorState as err:
            if err.status != ERR_UNKNOWN:
                raise
            self.clear_status()
            self.dnload(0, chunk)
            self.wait_ready("DNLOAD block 0")

    def manifest(self, block: int, *, timeout_s: float = 30.0) -> State:
        """Zero-length DNLOAD numbered ``block``, then wait; returns dfuIDLE or WAIT-RESET.

        A device that is not manifestation tolerant may drop off the bus while it
        manifests; that is success, not an error, so it is reported as WAIT_RESET.
        dfuDNBUSY counts as busy too: Zephyr's usb_dfu answers the zero-length DNLOAD
        with dfuDNBUSY while its work queue flushes the last page, and only then
        enters dfuMANIFEST-SYNC.
        """
        self.dnload(block, b"")
        try:
            st = self.wait_ready("manifestation", timeout_s=timeout_s,
                                 busy=(State.DNLOAD_SYNC, State.DNBUSY,
                                       State.MANIFEST_SYNC, State.MANIFEST))
        except (DeviceGone, Stalled):
            if self.func.manifestation_tolerant:
                raise
            return State.MANIFEST_WAIT_RESET
        if st.state not in (State.IDLE, State.MANIFEST_WAIT_RESET):
            raise DfuError(f"device ended manifestation in state {st.state.name}")
        return st.state

    def read_back(self, length: int, progress: Progress = no_progress) -> bytes:
        """UPLOAD until ``length`` bytes or a short reply, then back to dfuIDLE."""
        size = self.func.transfer_size
        out = bytearray()
        block = 0
        while len(out) < length:
            chunk = self.upload(block, size)
            out += chunk
            block += 1
            progress(min(len(out), length), length, "verify")
            if len(chunk) < size:
                break
        st = self.get_status()
        if st.state == State.UPLOAD_IDLE:
            self.abort()
        return bytes(out)
