"""An SMP client over a serial port: request/response by sequence number, pipelined upload.

Blocking and single-threaded on purpose: the transport runs in the proxy phase's worker
thread, and one thread per port keeps ordering obvious. Pipelining needs no threads: we
write up to ``window`` upload requests, then read responses as they come, matching them
by sequence number. The device's flash write of chunk N then overlaps the line time of
chunks N+1.., which is what brings a UART upload near the ~72 % ceiling of SMP framing.
"""

from __future__ import annotations

import contextlib
import hashlib
import random
import termios
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import serial

from ferry.errors import FerryError
from ferry.proxy.smp import cbor, framing
from ferry.proxy.smp.header import ECHO, IMAGE_STATE, IMAGE_UPLOAD, PARAMS, RESET, Op
from ferry.proxy.smp.smp import Packet, SmpError, build, check, parse

DEFAULT_BUF_SIZE = 384  # Zephyr's CONFIG_MCUMGR_TRANSPORT_NETBUF_SIZE default
DEFAULT_BUF_COUNT = 1


class LinkError(FerryError):
    """The serial port failed or vanished (unplugged adapter, closed pty)."""


class TargetTimeout(FerryError):
    """The target stopped answering."""


class UploadError(FerryError):
    """The target rejected or failed the image upload."""


@dataclass(frozen=True)
class Params:
    buf_size: int
    buf_count: int
    advertised: bool  # False when the target lacks OS/6 and we assumed defaults


@dataclass(frozen=True)
class SlotState:
    image: int
    slot: int
    version: str
    hash: bytes
    bootable: bool = False
    pending: bool = False
    confirmed: bool = False
    active: bool = False
    permanent: bool = False

    @classmethod
    def from_cbor(cls, entry: dict[str, Any]) -> SlotState:
        raw_hash = entry.get("hash", b"")
        return cls(
            image=int(entry.get("image", 0)),
            slot=int(entry.get("slot", 0)),
            version=str(entry.get("version", "")),
            hash=bytes(raw_hash) if isinstance(raw_hash, bytes | bytearray) else b"",
            bootable=bool(entry.get("bootable", False)),
            pending=bool(entry.get("pending", False)),
            confirmed=bool(entry.get("confirmed", False)),
            active=bool(entry.get("active", False)),
            permanent=bool(entry.get("permanent", False)),
        )


UploadProgress = Callable[[int, int], None]


class SmpClient:
    """One open serial port to one SMP server."""

    def __init__(self, port: str, *, baud: int = 115200, timeout: float = 5.0,
                 line_limit: int = framing.LINE_LIMIT, smp_version: int = 1) -> None:
        self.port = port
        self.baud = baud
        self.timeout = timeout
        self.line_limit = line_limit
        self.smp_version = smp_version
        self._ser: serial.Serial | None = None
        self._decoder = framing.Decoder()
        # A random first sequence number: a client that reopens the port (polling a
        # rebooting target) must not take a late answer to the previous client's request,
        # which had the same number, for the answer to its own.
        self._seq = random.randrange(256)
        self._early: dict[int, Packet] = {}  # responses that arrived before we asked
        self.params: Params | None = None

    # -- port --------------------------------------------------------------------------
    def open(self) -> None:
        try:
            self._ser = serial.Serial(self.port, self.baud, timeout=0.05,
                                      write_timeout=max(self.timeout, 1.0))
            self._ser.reset_input_buffer()
        except (serial.SerialException, OSError, termios.error) as exc:
            # termios.error (not an OSError): the port vanished between open and flush,
            # as a USB CDC-ACM port does when its MCU resets
            self.close()
            raise LinkError(f"cannot open serial port {self.port}: {exc}") from exc
        self._decoder = framing.Decoder()
        self._early.clear()

    def close(self) -> None:
        if self._ser is not None:
            with contextlib.suppress(serial.SerialException, OSError, termios.error):
                self._ser.close()
            self._ser = None

    def __enter__(self) -> SmpClient:
        if self._ser is None:
            self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _port(self) -> serial.Serial:
        if self._ser is None:
            raise LinkError(f"serial port {self.port} is not open")
        return self._ser

    def line_seconds(self, nbytes: int) -> float:
        """How long ``nbytes`` take on the wire at 8N1 (pty links are faster)."""
        return nbytes * 10 / max(self.baud, 1)

    # -- packets -------------------------------------------------------------------------
    def send(self, op: Op, cmd: tuple[int, int], body: dict[str, Any]) -> int:
        seq = self._seq
        self._seq = (self._seq + 1) & 0xFF
        self._early.pop(seq, None)
        packet = build(op, cmd[0], cmd[1], seq, body, version=self.smp_version)
        try:
            self._port().write(framing.encode(packet, self.line_limit))
        except serial.SerialTimeoutException as exc:
            raise TargetTimeout(f"{self.port}: target does not take data (write timed out); "
                                "check the cable and that the MCU runs its SMP server") from exc
        except (serial.SerialException, OSError) as exc:
            raise LinkError(f"serial port {self.port} failed while writing: {exc}; "
                            "is the adapter still plugged in?") from exc
        return seq

    def receive(self, seqs: set[int], deadline: float) -> Packet | None:
        """The next response for one of ``seqs``, or None at the deadline.

        One read may carry several responses; those not asked for yet wait in
        ``_early`` for the next call, so pipelined responses are never lost.
        """
        port = self._port()
        while True:
            for seq in list(self._early):
                if seq in seqs:
                    return self._early.pop(seq)
            try:
                data = port.read(max(1, port.in_waiting))
            except (serial.SerialException, OSError) as exc:
                raise LinkError(f"serial port {self.port} failed while reading: {exc}; "
                                "is the adapter still plugged in?") from exc
            for raw in self._decoder.feed(data):
                try:
                    packet = parse(raw)
                except (cbor.CborError, ValueError) as exc:
                    self._decoder.errors.append(f"bad SMP packet: {exc}")
                    continue
                if packet.header.op not in (Op.READ_RSP, Op.WRITE_RSP):
                    continue  # a request from the far side or an echo of ours: not for us
                self._early[packet.header.seq] = packet
                if len(self._early) > 64:
                    self._early.pop(next(iter(self._early)))
            if not any(seq in seqs for seq in self._early) and time.monotonic() >= deadline:
                return None

    def _why(self) -> str:
        if self._decoder.errors:
            return f" (last framing problem: {self._decoder.errors[-1]})"
        return ""

    def request(self, op: Op, cmd: tuple[int, int], body: dict[str, Any], what: str, *,
                timeout: float | None = None, retries: int = 2) -> dict[str, Any]:
        """Send and wait; resend on timeout (SMP reads and state writes are idempotent)."""
        wait = timeout if timeout is not None else self.timeout
        for _attempt in range(retries + 1):
            seq = self.send(op, cmd, body)
            packet = self.receive({seq}, time.monotonic() + wait)
            if packet is not None:
                if (packet.header.group, packet.header.command) != (cmd[0], cmd[1]):
                    continue
                return check(packet, what)
        raise TargetTimeout(f"{self.port}: no answer to {what} after {retries + 1} tries of "
                            f"{wait:.1f} s{self._why()}; is the MCU running its SMP server?")

    # -- commands ------------------------------------------------------------------------
    def echo(self, text: str = "ferry", *, timeout: float | None = None,
             retries: int = 2) -> str:
        body = self.request(Op.WRITE, ECHO, {"d": text}, "echo", timeout=timeout,
                            retries=retries)
        return str(body.get("r", ""))

    def read_params(self) -> Params:
        """``buf_size``/``buf_count``, or Zephyr's defaults for a target without them.

        Without ``CONFIG_MCUMGR_GRP_OS_MCUMGR_PARAMS`` the command has no handler and the
        target answers ``MGMT_ERR_ENOTSUP`` (``smp_handle_single_payload``); the defaults
        (384-byte buffer, one in flight) fit any Zephyr build.
        """
        try:
            body = self.request(Op.READ, PARAMS, {}, "MCUmgr params", retries=1)
            params = Params(int(body["buf_size"]), max(1, int(body["buf_count"])), True)
        except (SmpError, KeyError, TypeError, ValueError):
            params = Params(DEFAULT_BUF_SIZE, DEFAULT_BUF_COUNT, False)
        self.params = params
        return params

    def image_state(self, *, timeout: float | None = None, retries: int = 2
                    ) -> list[SlotState]:
        body = self.request(Op.READ, IMAGE_STATE, {}, "image state read", timeout=timeout,
                            retries=retries)
        return [SlotState.from_cbor(e) for e in body.get("images", []) if isinstance(e, dict)]

    def set_state(self, image_hash: bytes | None, confirm: bool) -> list[SlotState]:
        req: dict[str, Any] = {"confirm": confirm}
        if image_hash is not None:
            req["hash"] = image_hash
        what = "image confirm" if confirm else "image test"
        body = self.request(Op.WRITE, IMAGE_STATE, req, what)
        return [SlotState.from_cbor(e) for e in body.get("images", []) if isinstance(e, dict)]

    def reset(self) -> bool:
        """Ask for a reset once; True when the target acknowledged it.

        Never resent: a second request could land on the freshly booted test image and
        reset it too, which makes MCUboot revert it. A target that resets (or whose USB
        port vanishes) before its answer arrives is fine; an SMP error is not (a reset
        hook refused it).
        """
        try:
            self.request(Op.WRITE, RESET, {}, "reset", retries=0)
        except (TargetTimeout, LinkError):
            return False
        return True

    # -- upload --------------------------------------------------------------------------
    def chunk_size(self, total: int, first: bool, image: int = 0) -> int:
        """Data bytes per request so the decoded frame fits the target's buffer."""
        params = self.params or Params(DEFAULT_BUF_SIZE, DEFAULT_BUF_COUNT, False)
        probe: dict[str, Any] = {"off": total, "data": b""}
        if first:
            probe = {"image": image, "len": total, "off": 0, "sha": bytes(32), "data": b""}
        overhead = len(cbor.dumps(probe)) + 4  # bstr length head grows to 3 (+ slack)
        room = params.buf_size - 4 - 8 - overhead  # len + CRC share the buffer; 8-byte header
        room -= room % 4
        if room < 32:
            raise UploadError(f"{self.port}: target buffer of {params.buf_size} bytes is too "
                              "small for an upload chunk")
        return room

    def upload(self, data: bytes, *, image: int = 0, window: int | None = None,
               progress: UploadProgress | None = None, retries: int = 3) -> int:
        """Upload ``data``; return the offset the device started from (>0 means resumed).

        Every response carries the offset the device expects next. When it differs from
        ours (lost chunk, resumed session, device restarted the session at 0) we let the
        in-flight requests drain and continue from what the device says.
        """
        total = len(data)
        sha = hashlib.sha256(data).digest()
        params = self.params or self.read_params()
        if window is None:
            window = max(1, params.buf_count - 1)  # one buffer stays free for the response
        window = max(1, min(window, params.buf_count))
        first_n = self.chunk_size(total, True, image)
        next_n = self.chunk_size(total, False, image)
        inflight: dict[int, tuple[int, int]] = {}  # seq -> (offset, end)
        next_off = 0
        acked = 0
        resumed_from = -1
        misses = 0

        def wait_for(seconds_of_line: float) -> float:
            return time.monotonic() + self.timeout + seconds_of_line * 2

        while acked < total:
            while len(inflight) < window and next_off < total:
                if next_off == 0:
                    chunk = data[:first_n]
                    body: dict[str, Any] = {"image": image, "len": total, "off": 0,
                                            "sha": sha, "data": chunk}
                else:
                    chunk = data[next_off : next_off + next_n]
                    body = {"off": next_off, "data": chunk}
                seq = self.send(Op.WRITE, IMAGE_UPLOAD, body)
                inflight[seq] = (next_off, next_off + len(chunk))
                next_off += len(chunk)
                if next_off == len(chunk) and resumed_from < 0:
                    break  # first chunk alone: the device may answer "resume at X"
            line = self.line_seconds(framing.wire_size(params.buf_size) * (len(inflight) + 1))
            first_wait = 4 * self.timeout if any(o == 0 for o, _ in inflight.values()) else 0
            packet = self.receive(set(inflight), wait_for(line) + first_wait)
            if packet is None:
                misses += 1
                if misses > retries:
                    raise TargetTimeout(
                        f"{self.port}: target stopped answering during upload at "
                        f"{acked}/{total} bytes{self._why()}; run the flash again to resume")
                inflight.clear()
                next_off = acked  # the device will correct us if it got further
                continue
            off_chunk, end = inflight.pop(packet.header.seq)
            body_rsp = check(packet, "image upload")
            dev_off = body_rsp.get("off")
            if not isinstance(dev_off, int) or dev_off < 0 or dev_off > total:
                raise UploadError(f"{self.port}: target reported upload offset {dev_off!r} "
                                  f"for an image of {total} bytes")
            if resumed_from < 0:
                resumed_from = dev_off if off_chunk == 0 and dev_off != end else 0
            if dev_off == end:
                misses = 0
                acked = max(acked, end)
            else:
                # Out of step: drain what is in flight, then continue where the device is.
                dev_off = self._drain(inflight, dev_off, wait_for(line))
                inflight.clear()
                acked = dev_off
                next_off = dev_off
            if progress is not None:
                progress(acked, total)
            if acked >= total and body_rsp.get("match") is False:
                raise UploadError(f"{self.port}: target says the uploaded image does not match "
                                  "its sha256; the transfer was corrupted, run the flash again")
        return max(resumed_from, 0)

    def _drain(self, inflight: dict[int, tuple[int, int]], dev_off: int, deadline: float) -> int:
        while inflight:
            packet = self.receive(set(inflight), deadline)
            if packet is None:
                break
            inflight.pop(packet.header.seq, None)
            try:
                off = check(packet, "image upload").get("off")
            except SmpError:
                continue
            if isinstance(off, int):
                dev_off = off
        return dev_off
