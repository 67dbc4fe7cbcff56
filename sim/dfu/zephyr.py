"""Zephyr's USB DFU class (the legacy device stack), as its source behaves.

Written from Zephyr's subsys/usb/device/class/dfu/usb_dfu.c and its Kconfig
(subsys/usb/device/class/dfu/Kconfig). The DFU class runs inside the application; "DFU
mode" is a second set of descriptors the same firmware switches to, and the image goes
to MCUboot's slot1 (``image_1``), which MCUboot swaps in at the next boot. What a host
meets, and where it differs from U-Boot and from the generic model:

- **Status polling.** bwPollTimeout is a constant, CONFIG_USB_DFU_DEFAULT_POLLTIMEOUT
  (8 ms), in every GETSTATUS. A DNLOAD goes straight to dfuDNBUSY (there is no
  dfuDNLOAD-SYNC) and a work queue writes the block; GETSTATUS only reports the state,
  so the host keeps polling every 8 ms until the work item sets dfuDNLOAD-IDLE. The first
  block of a download erases the whole slot first (``boot_erase_img_bank``), unless the
  flash driver erases progressively.
- **Manifestation.** The zero-length DNLOAD is also work-queue job (dfuDNBUSY): it
  flushes the last page and calls ``boot_request_upgrade``, then the state is
  dfuMANIFEST-SYNC. The next GETSTATUS answers dfuIDLE (manifestation tolerant, the
  default) or, with CONFIG_USB_DFU_REBOOT, dfuMANIFEST-WAIT-RESET and the device reboots
  by itself 500 ms later, coming back as the application. No dfuMANIFEST state at all.
- **Block numbers of DNLOAD are not checked**; UPLOAD's are (block_nr must equal
  wValue, else dfuERROR/errUNKNOWN), and wLength 0 is refused.
- **Alt settings.** ``image_0`` is slot0 (the running image), ``image_1`` slot1. With a
  slot1 partition a DNLOAD on alt 0 is refused with errWRITE ("This area can not be
  overwritten"): a host must select ``image_1``. Until a SET_INTERFACE arrives the
  download area is slot1.
- **Upload** is off by default (CONFIG_USB_DFU_ENABLE_UPLOAD; bitCanUpload 0, UPLOAD
  gives errSTALLEDPKT). When on, it reads the whole slot, and a request that reaches the
  slot's end gets an empty reply rather than the last short chunk.
- **Detach.** CONFIG_USB_DFU_WILL_DETACH defaults to y (wDetachTimeOut 100 ms): the
  device detaches and re-attaches in DFU mode by itself. DFU_DETACH in DFU mode is
  refused and sets appIDLE; every DNLOAD/UPLOAD/ABORT/CLRSTATUS is then refused until the
  device is reset or re-enumerated. A USB reset in DFU mode changes nothing.
- ABORT and CLRSTATUS are accepted in every DFU state and return to dfuIDLE.
"""

from __future__ import annotations

from typing import Any

from ferry.sim.dfu.device import DETACH, Gone, SimDfuDevice, Stall, State, Status

DOWNLOAD_ALT = 1  # DOWNLOAD_FLASH_AREA_ID: slot1 when the board has one
REBOOT_DELAY_S = 0.5  # reboot_schedule(): K_MSEC(500)


class ZephyrDfuDevice(SimDfuDevice):
    """usb_dfu.c: DNBUSY work queue, constant poll, slot1 only, self-reboot option."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._area = DOWNLOAD_ALT if len(self.regions) > DOWNLOAD_ALT else 0
        self._block_nr = 0
        self._bytes_sent = 0
        self._reboot_at: float | None = None
        self.upgrade_requested = False  # boot_request_upgrade() was called

    def _enter(self, mode: str) -> None:
        super()._enter(mode)
        self._area = DOWNLOAD_ALT if len(self.regions) > DOWNLOAD_ALT else 0  # dfu_data init

    # time ------------------------------------------------------------------------
    def tick(self) -> None:
        """Run what the firmware does on its own: the scheduled reboot."""
        with self.lock:
            if self._reboot_at is not None and self.clock() >= self._reboot_at:
                self._reboot_at = None
                self.log.append("reboot: MCUboot takes image_1 (test mode)")
                self._enter("runtime")
                self._emit("replug")

    def control(self, request_type: int, request: int, value: int, index: int,
                data: bytes, length: int) -> bytes:
        self.tick()
        return super().control(request_type, request, value, index, data, length)

    def usb_reset(self) -> bool:
        self.tick()
        with self.lock:
            if not self.present:
                raise Gone()
            self.log.append(f"reset mode={self.mode} state={self.state.name}")
            if self.mode == "runtime" and self.state == State.APP_DETACH \
                    and not self.spec.will_detach:
                self._enter("dfu")  # dfu_status_cb(USB_DC_RESET) → dfu_enter_idle()
                return True
            return False

    # requests --------------------------------------------------------------------
    def _stalled(self) -> None:
        pass  # every -EINVAL path sets state and status itself

    def set_alt(self, interface: int, alt: int) -> None:
        super().set_alt(interface, alt)
        if self.mode == "dfu":
            self._area = alt  # dfu_custom_handle_req(SET_INTERFACE)

    def _app_state(self) -> bool:
        """``dfu_check_app_state``: requests other than GETSTATUS/GETSTATE are refused."""
        if self.state in (State.APP_IDLE, State.APP_DETACH):
            self.state = State.APP_IDLE
            return True
        return False

    def _dfu(self, request: int, value: int, data: bytes, length: int) -> bytes:
        if self.mode == "dfu" and request == DETACH:
            self.state = State.APP_IDLE
            self.log.append("DETACH in DFU mode: refused, state appIDLE")
            raise Stall()
        return super()._dfu(request, value, data, length)

    def _reset_counters(self) -> None:
        self._block_nr = 0
        self._bytes_sent = 0
        self._staging = bytearray()

    def _dnload(self, _block: int, data: bytes, _length: int) -> bytes:
        if self._app_state():
            raise Stall()
        region = self.regions[self._area]
        if self.state == State.IDLE:
            self._reset_counters()
            if self._area != (DOWNLOAD_ALT if len(self.regions) > DOWNLOAD_ALT else 0):
                self.status = Status.WRITE
                self.state = State.ERROR
                self.log.append("This area can not be overwritten")
                return b""
            busy = self.timing.erase_ms_per_page * sum(s.count for s in region.segments)
            region.erase_all()
        elif self.state == State.DNLOAD_IDLE:
            busy = 0
        else:
            self.state = State.ERROR
            self.status = Status.UNKNOWN
            self._reset_counters()
            raise Stall()
        self.state = State.DNBUSY
        chunk = bytes(data)
        if chunk:
            self._dirty = True
            busy += self.timing.program_ms_per_block
            self._pending = self._work_write(region, chunk)
        else:
            busy += self.timing.manifest_ms
            self._pending = self._work_flush()
        self._busy_until = self.clock() + busy / 1000.0
        return b""

    def _work_write(self, region: Any, chunk: bytes) -> Any:
        def run() -> None:
            if len(self._staging) + len(chunk) > region.size:
                self.state, self.status = State.ERROR, Status.WRITE  # flash write error
                return
            region.program(region.start + len(self._staging), chunk)
            self._staging += chunk
            self.state = State.DNLOAD_IDLE
        return run

    def _work_flush(self) -> Any:
        def run() -> None:
            self.firmware_len[self._area] = len(self._staging)
            self._dirty = False
            self._reset_counters()
            self.upgrade_requested = True
            self.log.append(f"manifested alt {self._area}; boot_request_upgrade")
            self.state = State.MANIFEST_SYNC
        return run

    def _getstatus(self, _value: int, _data: bytes, _length: int) -> bytes:
        if self.state == State.DNBUSY and self._pending is not None \
                and self.clock() >= self._busy_until:
            pending, self._pending = self._pending, None
            pending()  # the work item has run
        if self.state == State.MANIFEST_SYNC:
            self._manifested = True
            if self.spec.manifestation_tolerant:
                self.state = State.IDLE
            else:  # CONFIG_USB_DFU_REBOOT
                self.state = State.MANIFEST_WAIT_RESET
                self._reboot_at = self.clock() + REBOOT_DELAY_S
        poll = self.spec.poll_ms
        if self.state in (State.DNBUSY, State.MANIFEST_SYNC):
            self.poll_total_ms += poll  # what the host must wait; IDLE replies carry it too
        return bytes([self.status, poll & 0xFF, (poll >> 8) & 0xFF, 0, self.state, 0])

    def _upload(self, block: int, _data: bytes, length: int) -> bytes:
        if not self.spec.can_upload:
            self.status, self.state = Status.STALLEDPKT, State.ERROR
            raise Stall()
        if self._app_state():
            raise Stall()
        if self.state == State.IDLE:
            self._reset_counters()
        elif self.state != State.UPLOAD_IDLE:
            self.state, self.status = State.ERROR, Status.UNKNOWN
            self._reset_counters()
            raise Stall()
        if not length or block != self._block_nr:
            self.log.append(f"DFU_UPLOAD block {block}, expected {self._block_nr}")
            self.state, self.status = State.ERROR, Status.UNKNOWN
            raise Stall()
        region = self.regions[self._area]
        size = min(length, region.size - self._bytes_sent, self.spec.transfer_size)
        chunk = region.read(region.start + self._bytes_sent, size)
        self._bytes_sent += size
        self._block_nr = (self._block_nr + 1) & 0xFFFF
        if self._bytes_sent == region.size and size < length:
            self.state = State.IDLE
            return b""  # *data_len = 0: the last short chunk is not sent
        self.state = State.UPLOAD_IDLE
        return chunk

    def _abort(self, _value: int, _data: bytes, _length: int) -> bytes:
        if self._app_state():
            raise Stall()
        self._reset_counters()
        self._pending = None
        self.state, self.status = State.IDLE, Status.OK
        return b""

    def _clrstatus(self, _value: int, _data: bytes, _length: int) -> bytes:
        if self._app_state():
            raise Stall()
        self.state, self.status = State.IDLE, Status.OK
        return b""

    def firmware(self, alt: int = DOWNLOAD_ALT) -> bytes:
        """What slot1 (``image_1``) holds after the last completed download."""
        alt = alt if alt < len(self.regions) else 0
        return super().firmware(alt)
