"""The simulated DFU device: USB descriptors plus the DFU 1.1 / DfuSe state machine.

Both ways of reaching it (pyusb backend, usbredir server) feed it the same control
requests, so a test in either tier checks the same device. Time is the device's own:
each program/erase/manifest step is "busy" for the time it reports in bwPollTimeout,
and a GETSTATUS that arrives too early just gets dfuDNBUSY and the remaining time.
Faults are one-shot: they fire once and then the device behaves, so a test can show
that a retry after the failure works.
"""

from __future__ import annotations

import copy
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import IntEnum

from ferry.sim.dfu.memory import RIGHT_READ, RIGHT_WRITE, Region, Segment

# DFU class requests (DFU 1.1 §3)
DETACH, DNLOAD, UPLOAD, GETSTATUS, CLRSTATUS, GETSTATE, ABORT = range(7)


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


class Status(IntEnum):
    OK = 0x00
    TARGET = 0x01
    FILE = 0x02
    WRITE = 0x03
    ERASE = 0x04
    CHECK_ERASED = 0x05
    PROG = 0x06
    VERIFY = 0x07
    ADDRESS = 0x08
    NOTDONE = 0x09
    FIRMWARE = 0x0A
    VENDOR = 0x0B
    USBR = 0x0C
    POR = 0x0D
    UNKNOWN = 0x0E
    STALLEDPKT = 0x0F


class Stall(Exception):
    """The device answers this control request with a STALL handshake."""


class Gone(Exception):
    """The device is no longer on the bus."""


@dataclass
class Faults:
    """One-shot faults; block numbers count data blocks from the start of a download."""

    stall_at_block: int | None = None
    err_write_at_block: int | None = None
    err_verify: bool = False
    disconnect_at_block: int | None = None
    stuck_in_manifest: bool = False


@dataclass
class Timing:
    """Flash timing in ms, reported to the host through bwPollTimeout."""

    program_ms_per_block: int = 4
    erase_ms_per_page: int = 10
    manifest_ms: int = 20


def plain_alts() -> tuple[Region, ...]:
    return (Region("firmware", 0, (Segment(256, 1024),)),)


def dfuse_alts() -> tuple[Region, ...]:
    # A scaled-down STM32F4 layout: small pages first, then larger ones; the second alt
    # is read-only "option bytes" so a host must respect per-segment rights.
    return (
        Region("Internal Flash  ", 0x08000000,
               (Segment(4, 16 * 1024, "g"), Segment(1, 64 * 1024, "g"),
                Segment(1, 128 * 1024, "g"))),
        Region("Option Bytes  ", 0x1FFFC000, (Segment(1, 16, "a"),)),
    )


@dataclass
class DeviceSpec:
    vid: int = 0x1209
    runtime_pid: int = 0x5A01
    dfu_pid: int = 0xDF11
    bcd_device: int = 0x0100
    serial: str = "0001"
    manufacturer: str = "ferry"
    product: str = "ferry simulated DFU device"
    dfuse: bool = False
    alts: tuple[Region, ...] = field(default_factory=plain_alts)
    transfer_size: int = 1024
    can_download: bool = True
    can_upload: bool = True
    manifestation_tolerant: bool = True
    will_detach: bool = False
    detach_timeout_ms: int = 1000
    start_in_runtime: bool = True
    has_runtime: bool = True  # False: a DFU-only bootloader (e.g. an STM32 ROM)
    # Which firmware's DFU code answers (see ferry.sim.dfu.stacks): "generic" is this
    # module; "u-boot" and "zephyr" follow those projects' sources, quirks included.
    stack: str = "generic"
    poll_ms: int = 0  # a fixed bwPollTimeout, for stacks that report one (U-Boot, Zephyr)

    @property
    def attributes(self) -> int:
        return (int(self.can_download) | int(self.can_upload) << 1
                | int(self.manifestation_tolerant) << 2 | int(self.will_detach) << 3)


def _string_descriptor(text: str) -> bytes:
    raw = text.encode("utf-16-le")
    return bytes([2 + len(raw), 3]) + raw


class SimDfuDevice:
    """One device; ``generation`` changes whenever it re-enumerates (new address)."""

    def __init__(self, spec: DeviceSpec | None = None, *, faults: Faults | None = None,
                 timing: Timing | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.spec = spec or DeviceSpec()
        self.faults = faults or Faults()
        self.timing = timing or Timing()
        self.clock = clock
        self.regions = [copy.deepcopy(r) for r in self.spec.alts]
        self.firmware_len = [0] * len(self.regions)
        self.lock = threading.RLock()
        self.listeners: list[Callable[[str], None]] = []
        self.present = True
        self.generation = 0
        self.mode = "runtime" if self.spec.start_in_runtime and self.spec.has_runtime else "dfu"
        self.state = State.APP_IDLE if self.mode == "runtime" else State.IDLE
        self.status = Status.OK
        self.alt = 0
        self.configuration = 1
        self.poll_total_ms = 0  # sum of every busy time the device asked the host to wait
        self.log: list[str] = []  # notable events, for tests and the CLI
        self._manifested = False  # a manifestation completed in this DFU session
        self._manifest_done = False  # ... in the current MANIFEST-SYNC round
        self._dirty = False  # a download started and did not manifest: the app is invalid
        self._busy_ms = 0
        self._reset_session()

    # -- session state ---------------------------------------------------------------
    def _reset_session(self) -> None:
        self._busy_until = 0.0
        self._pending: Callable[[], None] | None = None
        self._blocks = 0
        self._staging = bytearray()
        self._upload_offset = 0
        self._pointer = self.regions[self.alt].start if self.regions else 0
        self._leave = False

    def _emit(self, event: str) -> None:
        self.log.append(event)
        for listener in list(self.listeners):
            listener(event)

    def _enter(self, mode: str) -> None:
        self.mode = mode
        self.state = State.APP_IDLE if mode == "runtime" else State.IDLE
        self.status = Status.OK
        self.alt = 0
        self._manifested = False
        self._reset_session()
        self.generation += 1

    # -- what the bus sees -----------------------------------------------------------
    @property
    def pid(self) -> int:
        return self.spec.runtime_pid if self.mode == "runtime" else self.spec.dfu_pid

    def interfaces(self) -> list[tuple[int, int, int, int]]:
        """(number, class, subclass, protocol) of each interface in the current mode."""
        if self.mode == "runtime":
            return [(0, 0xFF, 0, 0), (1, 0xFE, 1, 1)]
        return [(0, 0xFE, 1, 2)]

    @property
    def dfu_interface(self) -> int:
        return 1 if self.mode == "runtime" else 0

    def device_descriptor(self) -> bytes:
        return struct.pack("<BBHBBBBHHHBBBB", 18, 1, 0x0200, 0, 0, 0, 64, self.spec.vid,
                           self.pid, self.spec.bcd_device, 1, 2, 3, 1)

    def _functional(self) -> bytes:
        bcd = 0x011A if self.spec.dfuse else 0x0110
        return struct.pack("<BBBHHH", 9, 0x21, self.spec.attributes,
                           self.spec.detach_timeout_ms, self.spec.transfer_size, bcd)

    def config_descriptor(self) -> bytes:
        body = b""
        if self.mode == "runtime":
            body += struct.pack("<BBBBBBBBB", 9, 4, 0, 0, 0, 0xFF, 0, 0, 0)
            body += struct.pack("<BBBBBBBBB", 9, 4, 1, 0, 0, 0xFE, 1, 1, 4)
            body += self._functional()
            count = 2
        else:
            for alt in range(len(self.regions)):
                body += struct.pack("<BBBBBBBBB", 9, 4, 0, alt, 0, 0xFE, 1, 2, 5 + alt)
            body += self._functional()  # once, after the last alt (as STM32 ROMs do)
            count = 1
        head = struct.pack("<BBHBBBBB", 9, 2, 9 + len(body), count, 1, 0, 0x80, 50)
        return head + body

    def string(self, index: int) -> bytes | None:
        if index == 0:
            return bytes([4, 3, 0x09, 0x04])
        names = [self.spec.manufacturer, self.spec.product, self.spec.serial, "ferry app DFU"]
        if 1 <= index <= 4:
            return _string_descriptor(names[index - 1])
        alt = index - 5
        if self.mode == "dfu" and 0 <= alt < len(self.regions):
            region = self.regions[alt]
            return _string_descriptor(region.layout_string() if self.spec.dfuse else region.name)
        return None

    def firmware(self, alt: int = 0) -> bytes:
        """What a plain-DFU alt holds after its last completed manifestation."""
        return self.regions[alt].read(self.regions[alt].start, self.firmware_len[alt])

    # -- bus events --------------------------------------------------------------------
    def usb_reset(self) -> bool:
        """A USB bus reset; True when the device comes back as a different device."""
        with self.lock:
            if not self.present:
                raise Gone()
            self.log.append(f"reset mode={self.mode} state={self.state.name}")
            if self.mode == "runtime":
                if self.state == State.APP_DETACH:
                    self._enter("dfu")
                    return True
                return False
            stuck = self.state in (State.MANIFEST, State.MANIFEST_SYNC)
            if self.spec.has_runtime and (self._manifested or self._leave
                                          or self.state == State.MANIFEST_WAIT_RESET):
                self._enter("runtime")
                return True
            if stuck:
                self.faults.stuck_in_manifest = False
                self._enter("dfu")
                return True
            if self.state != State.IDLE:
                self.state = State.IDLE
                self.status = Status.OK
                self._reset_session()
            return False

    def unplug(self) -> None:
        with self.lock:
            self.present = False
            self._emit("disconnect")

    def replug(self) -> None:
        """Power the device back on: the app if it has a valid one, else the DFU mode."""
        with self.lock:
            self.present = True
            self._enter("runtime" if self.spec.has_runtime and not self._dirty else "dfu")
            self._emit("connect")

    def set_configuration(self, value: int) -> None:
        with self.lock:
            self._check_present()
            if value not in (0, 1):
                raise Stall()
            self.configuration = value

    def set_alt(self, interface: int, alt: int) -> None:
        with self.lock:
            self._check_present()
            numbers = [i[0] for i in self.interfaces()]
            if interface not in numbers:
                raise Stall()
            limit = len(self.regions) if self.mode == "dfu" else 1
            if not 0 <= alt < limit:
                raise Stall()
            if self.mode == "dfu":
                self.alt = alt
                self._pointer = self.regions[alt].start

    def _check_present(self) -> None:
        if not self.present:
            raise Gone()

    # -- control requests ------------------------------------------------------------
    def control(self, request_type: int, request: int, value: int, index: int,
                data: bytes, length: int) -> bytes:
        """One control transfer; returns the IN data (empty for OUT). Raises Stall/Gone."""
        with self.lock:
            self._check_present()
            kind = request_type & 0x60
            if kind == 0x00:
                return self._standard(request_type, request, value, index, length)
            if kind == 0x20 and request_type & 0x1F == 1 and index == self.dfu_interface:
                try:
                    out = self._dfu(request, value, data, length)
                except Stall:
                    self._stalled()
                    raise
                return out[:length]
            raise Stall()

    def _stalled(self) -> None:
        """DFU 1.1 §6.1.4: a request invalid in this state is stalled, → dfuERROR."""
        if self.mode == "dfu":
            self.state = State.ERROR
            self.status = Status.STALLEDPKT

    def _standard(self, request_type: int, request: int, value: int, index: int,
                  length: int) -> bytes:
        if request == 6 and request_type == 0x80:  # GET_DESCRIPTOR
            kind, idx = value >> 8, value & 0xFF
            desc: bytes | None = None
            if kind == 1:
                desc = self.device_descriptor()
            elif kind == 2 and idx == 0:
                desc = self.config_descriptor()
            elif kind == 3:
                desc = self.string(idx)
            if desc is None:
                raise Stall()
            return desc[:length]
        if request == 0 and request_type in (0x80, 0x81, 0x82):  # GET_STATUS
            return b"\x00\x00"[:length]
        if request == 8 and request_type == 0x80:  # GET_CONFIGURATION
            return bytes([self.configuration])[:length]
        if request == 9 and request_type == 0x00:  # SET_CONFIGURATION
            self.set_configuration(value)
            return b""
        if request == 10 and request_type == 0x81:  # GET_INTERFACE
            return bytes([self.alt if self.mode == "dfu" else 0])[:length]
        if request == 11 and request_type == 0x01:  # SET_INTERFACE
            self.set_alt(index, value)
            return b""
        raise Stall()

    def _dfu(self, request: int, value: int, data: bytes, length: int) -> bytes:
        if self.mode == "runtime":
            return self._runtime(request, value)
        handler = {DNLOAD: self._dnload, UPLOAD: self._upload, GETSTATUS: self._getstatus,
                   CLRSTATUS: self._clrstatus, GETSTATE: self._getstate, ABORT: self._abort}
        if request not in handler:
            raise Stall()
        return handler[request](value, data, length)

    def _runtime(self, request: int, value: int) -> bytes:
        if request == GETSTATUS:
            return bytes([0, 0, 0, 0, self.state, 0])
        if request == GETSTATE:
            return bytes([self.state])
        if request == DETACH:
            self.state = State.APP_DETACH
            if self.spec.will_detach:
                # The device drops off the bus and comes back in DFU mode by itself.
                self._enter("dfu")
                self._emit("replug")
            return b""
        raise Stall()

    # DNLOAD ------------------------------------------------------------------------
    def _dnload(self, block: int, data: bytes, _length: int) -> bytes:
        if not self.spec.can_download:
            raise Stall()
        if self.state not in (State.IDLE, State.DNLOAD_IDLE):
            raise Stall()
        region = self.regions[self.alt]
        if not data:
            if self.state == State.IDLE and not self.spec.dfuse:
                raise Stall()
            self.state = State.MANIFEST_SYNC
            self._manifest_done = False
            self._leave = self.spec.dfuse
            return b""
        if self.spec.dfuse and block == 0:
            self._pending = self._dfuse_command(bytes(data))
            self.state = State.DNLOAD_SYNC
            erase_pages = 1 if len(data) == 5 else sum(s.count for s in region.segments)
            self._busy_ms = self.timing.erase_ms_per_page * erase_pages if data[0] == 0x41 else 0
            return b""
        if self.spec.dfuse and block == 1:
            raise Stall()
        if self.state == State.IDLE:
            self._blocks = 0
            self._staging = bytearray()
        n = self._blocks
        self._blocks += 1
        failing = self._data_block_faults(n)
        self._dirty = True
        if failing is not None:
            self._pending = failing
        elif self.spec.dfuse:
            address = (block - 2) * self.spec.transfer_size + self._pointer
            self._pending = self._dfuse_write(region, address, bytes(data))
        else:
            self._pending = self._plain_write(region, bytes(data))
        self._busy_ms = self.timing.program_ms_per_block
        self.state = State.DNLOAD_SYNC
        return b""

    def _data_block_faults(self, n: int) -> Callable[[], None] | None:
        """The one-shot faults for data block ``n``: raise, or return a failing step."""
        if self.faults.stall_at_block == n:
            self.faults.stall_at_block = None
            self.log.append(f"fault: stall at block {n}")
            raise Stall()
        if self.faults.disconnect_at_block == n:
            self.faults.disconnect_at_block = None
            self._dirty = True
            self.log.append(f"fault: disconnect at block {n}")
            self.unplug()
            raise Gone()
        if self.faults.err_write_at_block == n:
            self.faults.err_write_at_block = None
            self.log.append(f"fault: errWRITE at block {n}")
            return self._fail(Status.WRITE)
        return None

    def _fail(self, status: Status) -> Callable[[], None]:
        def run() -> None:
            raise _Failed(status)
        return run

    def _plain_write(self, region: Region, chunk: bytes) -> Callable[[], None]:
        def run() -> None:
            if len(self._staging) + len(chunk) > region.size:
                raise _Failed(Status.ADDRESS)
            self._staging += chunk
        return run

    def _dfuse_write(self, region: Region, address: int, chunk: bytes) -> Callable[[], None]:
        def run() -> None:
            if not region.allows(address, len(chunk), RIGHT_WRITE):
                raise _Failed(Status.ADDRESS if region.page(address) is None else Status.TARGET)
            if not region.is_erased(address, len(chunk)):
                raise _Failed(Status.CHECK_ERASED)
            region.program(address, chunk)
        return run

    def _dfuse_command(self, data: bytes) -> Callable[[], None]:
        region = self.regions[self.alt]

        def run() -> None:
            if data[0] == 0x21 and len(data) == 5:
                self._pointer = struct.unpack_from("<I", data, 1)[0]
            elif data[0] == 0x41 and len(data) == 5:
                address = struct.unpack_from("<I", data, 1)[0]
                if not region.erase_page(address):
                    raise _Failed(Status.TARGET)
                self.log.append(f"erase 0x{address:08x}")
            elif data[0] == 0x41 and len(data) == 1:
                region.erase_all()
                self.log.append("mass erase")
            else:
                raise _Failed(Status.TARGET)
        return run

    # GETSTATUS ---------------------------------------------------------------------
    def _getstatus(self, _value: int, _data: bytes, _length: int) -> bytes:
        now = self.clock()
        poll = 0
        if self.state == State.DNLOAD_SYNC:
            poll = self._start_busy(now, self._busy_ms, State.DNBUSY)
            # An STM32 ROM always answers dfuDNBUSY first, even for a zero-time command
            # (dfu-util insists on it); a plain device may skip straight to DNLOAD-IDLE.
            if poll == 0 and not self.spec.dfuse:
                self._finish_download_step()
        elif self.state == State.DNBUSY:
            if now >= self._busy_until:
                self._finish_download_step()
            else:
                poll = _ms_left(self._busy_until, now)
        elif self.state == State.MANIFEST_SYNC:
            if self._manifest_done:  # tolerant device after manifestation
                self.state = State.IDLE
            else:
                poll = self._start_busy(now, self.timing.manifest_ms, State.MANIFEST)
                if poll == 0:
                    self._finish_manifest()
        elif self.state == State.MANIFEST:
            if self.faults.stuck_in_manifest:
                poll = max(self.timing.manifest_ms, 1)
                self.poll_total_ms += poll
            elif now >= self._busy_until:
                self._finish_manifest()
            else:
                poll = _ms_left(self._busy_until, now)
        return bytes([self.status, poll & 0xFF, (poll >> 8) & 0xFF, (poll >> 16) & 0xFF,
                      self.state, 0])

    def _start_busy(self, now: float, ms: int, busy_state: State) -> int:
        self.state = busy_state
        self._busy_until = now + ms / 1000.0
        self.poll_total_ms += ms
        return ms

    def _finish_download_step(self) -> None:
        pending, self._pending = self._pending, None
        try:
            if pending is not None:
                pending()
        except _Failed as failed:
            self.state = State.ERROR
            self.status = failed.status
            self.log.append(f"error {failed.status.name}")
            return
        self.state = State.DNLOAD_IDLE

    def _finish_manifest(self) -> None:
        if self.faults.err_verify:
            self.faults.err_verify = False
            self.state = State.ERROR
            self.status = Status.VERIFY
            self.log.append("error VERIFY")
            return
        if not self.spec.dfuse:
            region = self.regions[self.alt]
            region.erase_all()
            region.program(region.start, bytes(self._staging))
            self.firmware_len[self.alt] = len(self._staging)
        self._dirty = False
        self._manifested = True
        self._manifest_done = True
        self.log.append(f"manifested alt {self.alt}")
        if self._leave or not self.spec.manifestation_tolerant:
            self.state = State.MANIFEST_WAIT_RESET
        else:
            self.state = State.MANIFEST_SYNC

    # other requests ------------------------------------------------------------------
    def _upload(self, block: int, _data: bytes, length: int) -> bytes:
        if not self.spec.can_upload or self.state not in (State.IDLE, State.UPLOAD_IDLE):
            raise Stall()
        region = self.regions[self.alt]
        if self.spec.dfuse:
            if block == 0:
                self.state = State.UPLOAD_IDLE
                return bytes([0x00, 0x21, 0x41, 0x92])
            if block == 1:
                raise Stall()
            address = (block - 2) * length + self._pointer
            if not region.allows(address, length, RIGHT_READ):
                raise Stall()
            self.state = State.UPLOAD_IDLE
            return region.read(address, length)
        if self.state == State.IDLE:
            self._upload_offset = 0
        total = self.firmware_len[self.alt]
        chunk = region.read(region.start + self._upload_offset,
                            max(0, min(length, total - self._upload_offset)))
        self._upload_offset += len(chunk)
        self.state = State.UPLOAD_IDLE if len(chunk) == length else State.IDLE
        return chunk

    def _clrstatus(self, _value: int, _data: bytes, _length: int) -> bytes:
        if self.state != State.ERROR:
            raise Stall()
        self.state = State.IDLE
        self.status = Status.OK
        self._pending = None
        return b""

    def _getstate(self, _value: int, _data: bytes, _length: int) -> bytes:
        return bytes([self.state])

    def _abort(self, _value: int, _data: bytes, _length: int) -> bytes:
        if self.state not in (State.IDLE, State.DNLOAD_SYNC, State.DNLOAD_IDLE,
                              State.MANIFEST_SYNC, State.UPLOAD_IDLE):
            raise Stall()
        self.state = State.IDLE
        self._pending = None
        self._upload_offset = 0
        return b""


class _Failed(Exception):
    def __init__(self, status: Status) -> None:
        super().__init__(status.name)
        self.status = status


def _ms_left(until: float, now: float) -> int:
    return max(1, int((until - now) * 1000 + 0.999))
