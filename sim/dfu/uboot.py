"""U-Boot's USB DFU gadget (the ``dfu`` command), as its sources behave.

Written from U-Boot's drivers/usb/gadget/f_dfu.c (state machine, GETSTATUS),
drivers/usb/gadget/f_dfu.h (DFU_USB_BUFSIZ 4096), drivers/dfu/dfu.c (``dfu_write``,
``dfu_read``, ``dfu_transaction_cleanup``), include/dfu.h (buffer and poll defaults) and
common/dfu.c (``run_usb_dnl_gadget``: what DETACH and a USB reset do). What a host
meets, and what the generic model does not do:

- **Block numbers are checked.** ``dfu_write`` compares every DNLOAD's wValue, the final
  zero-length one included, with its own counter ``(i_blk_seq_num + 1) & 0xffff``; on a
  mismatch it prints "Wrong sequence number!", drops the transfer
  (``dfu_transaction_cleanup``: counter back to 0, buffer discarded) and
  ``dnload_request_complete`` puts the device in dfuERROR/errUNKNOWN. Nothing reaches
  the medium. ``dfu_read`` checks UPLOAD numbers the same way (a mismatch stalls).
- **The counter survives DFU_ABORT.** Only a completed download, a short UPLOAD reply
  or a sequence error resets it, so after an aborted download or a partial upload the
  next download's block 0 is refused once (errUNKNOWN), and then accepted.
- **No dfuDNBUSY.** The block is copied into an 8 MiB RAM buffer in the data stage;
  GETSTATUS goes straight from dfuDNLOAD-SYNC to dfuDNLOAD-IDLE. bwPollTimeout is 0
  (include/dfu.h DFU_DEFAULT_POLL_TIMEOUT) unless a board sets one (Exynos: 300 ms),
  and then only on every (buffer / 4096)-th block.
- **Manifestation tolerant, two GETSTATUS.** The zero-length DNLOAD writes the buffer
  out; the first GETSTATUS answers dfuMANIFEST with DFU_MANIFEST_POLL_TIMEOUT (boards set
  up to 25 s), the next one dfuIDLE. bmAttributes = download, upload, manifestation
  tolerant, will-detach; wDetachTimeOut 0; wTransferSize 4096; DFU mode only.
- **UPLOAD returns the whole medium** (``get_medium_size``: a raw partition's size), not
  the image: a reader must stop at the length it wants.
- **DETACH ends the dfu command.** DFU_DETACH in dfuIDLE makes ``run_usb_dnl_gadget``
  unregister the gadget and ``do_reset()`` the board (dfu-util -R sends it before its
  USB reset). A USB reset alone only re-enumerates the same DFU gadget.
"""

from __future__ import annotations

from typing import Any

from ferry.sim.dfu.device import Gone, SimDfuDevice, Stall, State, Status

BUFSIZ = 4096  # drivers/usb/gadget/f_dfu.h DFU_USB_BUFSIZ
DATA_BUF_SIZE = 8 * 1024 * 1024  # include/dfu.h CONFIG_SYS_DFU_DATA_BUF_SIZE default


class UbootDfuDevice(SimDfuDevice):
    """f_dfu + dfu.c: sequence-checked DNLOAD/UPLOAD, instant GETSTATUS, DETACH resets."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._cleanup()
        self._blk_seq_num = 0  # f_dfu->blk_seq_num: wValue of the last request

    # dfu.c: one transaction per entity, shared by download and upload ---------------
    def _cleanup(self) -> None:
        """``dfu_transaction_cleanup``: counter to 0, buffer dropped, not inited."""
        self._inited = False
        self._seq = 0
        self._read_offset = 0
        self._staging = bytearray()

    def _sequence_ok(self, what: str, block: int) -> bool:
        if not self._inited:
            self._cleanup()
            self._inited = True
        if self._seq != block:
            self.log.append(f"{what}: Wrong sequence number! [{self._seq}] [{block}]")
            return False
        self._seq = (self._seq + 1) & 0xFFFF
        return True

    def _write(self, block: int, data: bytes) -> bool:
        """``dfu_write``: False means dfuERROR/errUNKNOWN."""
        if not self._sequence_ok("dfu_write", block):
            self._cleanup()
            return False
        region = self.regions[self.alt]
        if data:
            if len(self._staging) + len(data) > region.size:
                self.log.append("dfu_write: DFU write error")  # write_medium past the end
                self._cleanup()
                return False
            self._staging += data
            self._dirty = True
            return True
        # size 0: the buffer is drained to the medium now; dfu_flush() runs after the
        # first GETSTATUS of the manifestation (dnload_request_flush, deferred).
        region.erase_all()
        region.program(region.start, bytes(self._staging))
        self.firmware_len[self.alt] = len(self._staging)
        self._dirty = False
        return True

    # requests ---------------------------------------------------------------------
    def _stalled(self) -> None:
        # f_dfu: "default: dfu_state = dfuERROR; RET_STALL"; bStatus is left alone.
        if self.mode == "dfu":
            self.state = State.ERROR

    def _dfu(self, request: int, value: int, data: bytes, length: int) -> bytes:
        if request == 0 and self.state == State.IDLE:  # DFU_DETACH, proprietary
            self.log.append("detach: dfu command ends, board resets")
            self.state = State.APP_IDLE
            self.unplug()
            return b""
        return super()._dfu(request, value, data, length)

    def _dnload(self, block: int, data: bytes, _length: int) -> bytes:
        if self.state not in (State.IDLE, State.DNLOAD_IDLE):
            raise Stall()
        if not data and self.state == State.IDLE:
            raise Stall()
        self._blk_seq_num = block
        if data:
            if self.state == State.IDLE:
                self._blocks = 0
            failing = self._data_block_faults(self._blocks)
            self._blocks += 1
        else:
            failing = None
        self.state = State.DNLOAD_SYNC if data else State.MANIFEST_SYNC
        if failing is not None or not self._write(block, bytes(data)):
            self._cleanup()  # dfu_write's error paths all end in dfu_transaction_cleanup
            self.state = State.ERROR
            self.status = Status.UNKNOWN
        return b""

    def _getstatus(self, _value: int, _data: bytes, _length: int) -> bytes:
        poll = 0
        manifesting = self.state in (State.MANIFEST_SYNC, State.MANIFEST)
        if self.state in (State.DNLOAD_SYNC, State.DNBUSY):
            self.state = State.DNLOAD_IDLE
        elif self.state == State.MANIFEST_SYNC:
            self.state = State.MANIFEST
            poll = self.timing.manifest_ms
        elif self.state == State.MANIFEST:
            self.state = State.IDLE
            self._manifested = True
            self._cleanup()  # the deferred dfu_flush() ran in between
            self.log.append(f"manifested alt {self.alt}")
        if self.spec.poll_ms and self._blk_seq_num % (DATA_BUF_SIZE // BUFSIZ) == 0:
            poll = self.spec.poll_ms
        if manifesting:
            self._blk_seq_num = 0  # set after handle_getstatus() in both states
        if self.state == State.MANIFEST:
            self.poll_total_ms += poll  # the only state in which a host has to wait
        return bytes([self.status, poll & 0xFF, (poll >> 8) & 0xFF, (poll >> 16) & 0xFF,
                      self.state, 0])

    def _upload(self, block: int, _data: bytes, length: int) -> bytes:
        if self.state == State.IDLE:
            block = 0  # state_dfu_idle: blk_seq_num = 0, whatever wValue says
        elif self.state != State.UPLOAD_IDLE:
            raise Stall()
        self.state = State.UPLOAD_IDLE
        self._blk_seq_num = block
        if not self._sequence_ok("dfu_read", block):
            raise Stall()
        region = self.regions[self.alt]
        chunk = region.read(region.start + self._read_offset,
                            max(0, min(length, region.size - self._read_offset)))
        self._read_offset += len(chunk)
        if len(chunk) < length:
            self.state = State.IDLE
            self._cleanup()
        return chunk

    def _abort(self, _value: int, _data: bytes, _length: int) -> bytes:
        if self.state not in (State.IDLE, State.DNLOAD_IDLE, State.UPLOAD_IDLE):
            raise Stall()
        self.state = State.IDLE  # and no dfu_transaction_cleanup(): the counter stays
        return b""

    def usb_reset(self) -> bool:
        with self.lock:
            if not self.present:
                raise Gone()
            self.log.append(f"reset mode={self.mode} state={self.state.name}")
            return False  # the same gadget answers again; only DETACH leaves the command

    def replug(self) -> None:
        """Power on: the board boots, and someone runs ``dfu`` again."""
        with self.lock:
            self.present = True
            self._enter("dfu")
            self._cleanup()
            self._emit("connect")
