"""The serial line of the simulated MCU: a pty pair, throttled to the line rate.

ptys move data at hundreds of MB/s whatever baud is set (test-recipes §3.5), so both
directions are paced here to baud/10 bytes per second (8N1) with no burst credit: a
byte "arrives" no earlier than the previous one plus its bit time. Received frames take
one of ``buf_count`` buffers (one stays reserved for building the response, as in
Zephyr's shared netbuf pool); a frame that finds none free is dropped, as a real UART
driver without flow control would drop it.

A reset is what Zephyr's ``os_mgmt_reset`` (``subsys/mgmt/mcumgr/grp/os_mgmt/src/
os_mgmt.c``) does: the answer goes out at once, a ``k_timer`` of
``CONFIG_MCUMGR_GRP_OS_RESET_MS`` (``McuConfig.reset_delay``, 250 ms by default) starts,
and until it fires the old image keeps serving every request (a second reset request
restarts the timer, as ``k_timer_start`` does). Then the line goes quiet while MCUboot
runs (``boot_seconds``). With ``reenumerate`` the port behaves as a USB CDC-ACM one:
the pty is closed and its path (the ``link`` symlink, standing for
``/dev/serial/by-id/...``) removed, and a new pty appears under the same link
``reenumerate_seconds`` later, as the host re-enumerates the device.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import queue
import random
import select
import struct
import termios
import threading
import time
import tty
from pathlib import Path

from ferry.sim.mcu import wire
from ferry.sim.mcu.device import McuConfig, McuDevice, decode_body, encode_body


class _Pacer:
    def __init__(self, baud: int | None) -> None:
        self.rate = baud / 10 if baud else None
        self.t = 0.0

    def wait(self, n: int, back_to_back: bool = False) -> None:
        """Sleep until ``n`` more bytes have crossed the line.

        ``back_to_back``: these bytes were already queued behind the previous ones, so
        the line was busy all along even if this thread ran late (GIL, loaded CPU).
        """
        if self.rate is None:
            return
        now = time.monotonic()
        self.t = (self.t if back_to_back else max(self.t, now)) + n / self.rate
        if self.t > now:
            time.sleep(self.t - now)

    @property
    def chunk(self) -> int:
        return 4096 if self.rate is None else max(16, int(self.rate * 0.004))


class SimMcu:
    """Run a McuDevice on a fresh pty; ``port`` is the path a client opens."""

    def __init__(self, config: McuConfig | None = None, *, running: bytes | None = None,
                 device: McuDevice | None = None, link: str | Path | None = None) -> None:
        self.device = device or McuDevice(config, running=running)
        self.config = self.device.config
        self.link = Path(link) if link else None
        self._master = -1
        self._slave = -1
        self._slave_name = ""
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._requests: queue.Queue[bytes | None] = queue.Queue()
        self._held = 0
        self._held_lock = threading.Lock()
        self._tx: queue.Queue[bytes | None] = queue.Queue()
        self._tx_idle = threading.Event()
        self._tx_idle.set()
        self._booting = threading.Event()
        self._shutdown = threading.Event()
        self._reset_lock = threading.Lock()
        self._reset_timer: threading.Timer | None = None
        self._served_since_reset = 0
        self.resets_scheduled = 0  # reset requests answered
        self.served_while_resetting = 0  # requests the old image answered after a reset
        self.reenumerations = 0
        self.dropped_frames = 0
        self.frames_in = 0
        self.rx_bytes = 0

    @property
    def port(self) -> str:
        return str(self.link) if self.link else self._slave_name

    @property
    def capacity(self) -> int:
        return max(1, self.config.buf_count - 1)

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> SimMcu:
        if not self.device.primary.data:
            from ferry.sim.mcu import image

            self.device.primary.data = image.build((1, 0, 0, 0), os.urandom(1024))
            self.device.primary.magic = self.device.primary.image_ok = True
        if self.config.reenumerate and self.link is None:
            raise ValueError("a re-enumerating port needs a link path that can follow it")
        self.device.boot()
        self._shutdown.clear()
        self._open_pty()
        self._start_threads()
        return self

    def stop(self) -> None:
        self._shutdown.set()
        with self._reset_lock:
            if self._reset_timer is not None:
                self._reset_timer.cancel()
                self._reset_timer = None
        self._halt_threads()
        self._close_pty()

    def __enter__(self) -> SimMcu:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def power_cycle(self) -> None:
        """The supply the MCU shares with the gateway goes and comes back (a power cut):
        a reset requested or an upload in progress is lost with the RAM, and MCUboot
        runs again on what the flash holds. The UART stays (a board's pins do not
        re-enumerate), so a client's port stays valid. MCUboot treats a power-on as any
        other reset (``boot_go`` in boot/bootutil/src/loader.c): an image left on trial
        is reverted (``McuDevice.boot``)."""
        with self._reset_lock:
            if self._reset_timer is not None:
                self._reset_timer.cancel()
                self._reset_timer = None
        with self.device.lock:
            self.device.upload = None
            self.device.log.append("power cut")
            self.device.boot()

    def unplug(self) -> None:
        """The USB-serial adapter disappears: the port closes and its path vanishes."""
        self._halt_threads()
        self._close_pty()

    def replug(self) -> None:
        """The adapter comes back (a new pty; the link path, if any, follows it)."""
        if self._shutdown.is_set():
            return
        self._open_pty()
        self._start_threads()

    def _start_threads(self) -> None:
        self._requests = queue.Queue()
        self._tx = queue.Queue()
        self._tx_idle.set()
        with self._held_lock:
            self._held = 0
        self._stop.clear()
        self._threads = [
            threading.Thread(target=self._rx_loop, name="sim-mcu-rx", daemon=True),
            threading.Thread(target=self._worker, name="sim-mcu-cpu", daemon=True),
            threading.Thread(target=self._tx_loop, name="sim-mcu-tx", daemon=True),
        ]
        for t in self._threads:
            t.start()

    def _halt_threads(self) -> None:
        self._stop.set()
        self._requests.put(None)
        self._tx.put(None)
        for t in self._threads:
            if t is not threading.current_thread():
                t.join(timeout=5)
        self._threads = []

    def _open_pty(self) -> None:
        self._master, self._slave = os.openpty()
        tty.setraw(self._slave)
        self._slave_name = os.ttyname(self._slave)
        if self.link:
            with contextlib.suppress(FileNotFoundError):
                self.link.unlink()
            self.link.symlink_to(self._slave_name)

    def _close_pty(self) -> None:
        if self.link:
            with contextlib.suppress(FileNotFoundError):
                self.link.unlink()
        for fd in (self._master, self._slave):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._master = self._slave = -1

    # -- threads ---------------------------------------------------------------------------
    def _rx_loop(self) -> None:
        pacer = _Pacer(self.config.baud)
        asm = wire.LineAssembler(self.config.buf_size)
        master = self._master
        backlog = False
        while not self._stop.is_set():
            try:
                ready, _, _ = select.select([master], [], [], 0.05)
                if not ready:
                    backlog = False
                    continue
                data = os.read(master, pacer.chunk)
                left = struct.unpack("i", fcntl.ioctl(master, termios.FIONREAD, b"\0" * 4))[0]
            except OSError:
                if self._stop.wait(0.05):
                    return
                continue  # EIO while no client holds the slave open
            if not data:
                continue
            pacer.wait(len(data), back_to_back=backlog)
            backlog = left > 0
            self.rx_bytes += len(data)
            if self._booting.is_set() or time.monotonic() < self.device.silent_until:
                asm.pending, asm.frame = b"", None
                continue
            for packet in asm.push(data):
                self.frames_in += 1
                with self._held_lock:
                    if self._held >= self.capacity:
                        self.dropped_frames += 1
                        continue
                    self._held += 1
                self._requests.put(packet)

    def _worker(self) -> None:
        while True:
            packet = self._requests.get()
            if packet is None or self._stop.is_set():
                return
            try:
                self._serve(packet)
            finally:
                with self._held_lock:
                    self._held -= 1

    def _serve(self, packet: bytes) -> None:
        dev = self.device
        if len(packet) < 8 or time.monotonic() < dev.silent_until:
            return
        op, group, seq, cmd = packet[0] & 7, int.from_bytes(packet[4:6], "big"), packet[6], \
            packet[7]
        version = (packet[0] >> 3) & 3
        length = int.from_bytes(packet[2:4], "big")
        if op not in (0, 2) or length != len(packet) - 8:
            return
        try:
            body = decode_body(packet[8:])
        except Exception:
            body = None
        with dev.lock:
            rsp, reset = dev.handle(op, group, cmd, body, version)
            if self._reset_timer is not None:
                self._served_since_reset += 1
                self.served_while_resetting += 1
            f = dev.faults
            up = dev.upload
            if (f.silent_from_offset is not None and group == 1 and cmd == 1 and up is not None
                    and up.off >= f.silent_from_offset):
                dev.silent_until = time.monotonic() + f.silent_seconds
                f.silent_from_offset = None
                return
        if self._booting.is_set():
            return  # the MCU reset while it worked on this: the answer never leaves
        payload = encode_body(rsp)
        # smp_make_rsp_hdr answers with the request's version (at most 2); servers older
        # than Zephyr 3.3 know no version field and answer 0
        version = min(version, 2) if self.config.smp_v2 else 0
        head = bytes([(version << 3) | (op + 1), 0]) + len(payload).to_bytes(2, "big") \
            + group.to_bytes(2, "big") + bytes([seq, cmd])
        corrupt = f.bad_crc > 0
        f.bad_crc = max(0, f.bad_crc - 1)
        frame = wire.frame_lines(head + payload, corrupt_crc=corrupt)
        if f.cut and not corrupt:
            f.cut -= 1
            frame = frame[: len(frame) // 2] + b"\n"
        if f.garbage:
            frame = b"[00:00:01.%03d] <inf> app: tick\r\n" % random.randrange(1000) + frame
        self._send(frame)
        if reset:
            self._schedule_reset()

    def _schedule_reset(self) -> None:
        """``os_mgmt_reset``: (re)start the reset timer; the old image keeps serving."""
        self.resets_scheduled += 1
        if self.device.faults.ignore_reset:
            self.device.log.append("reset: answered, but the application never resets")
            return
        with self._reset_lock:
            if self._reset_timer is not None:
                self._reset_timer.cancel()
            self._served_since_reset = 0
            self._arm(self.config.reset_delay)

    def _arm(self, delay: float) -> None:
        self._reset_timer = threading.Timer(delay, self._reset_fire)
        self._reset_timer.daemon = True
        self._reset_timer.start()

    def _reset_fire(self) -> None:
        with self._reset_lock:
            if self._shutdown.is_set():
                return
            if self._served_since_reset < self.device.faults.hold_reset_requests:
                self._arm(0.01)  # a longer CONFIG_MCUMGR_GRP_OS_RESET_MS than assumed
                return
            self._reset_timer = None
        self._tx_flush()
        self._reboot()

    def _reboot(self) -> None:
        self._booting.set()
        cfg = self.config
        if cfg.reenumerate:
            self.unplug()  # USB detaches with the MCU: /dev/ttyACMx goes away
            self.reenumerations += 1
        self.device.log.append("reset")
        if self.device.faults.stuck_in_bootloader:
            self.device.log.append("boot: stuck in the bootloader, never answers again")
            return
        if self._shutdown.wait(cfg.boot_seconds):
            return
        with self.device.lock:
            self.device.upload = None
            self.device.boot()
            banner = self.device.banner()
        if cfg.reenumerate:
            if self._shutdown.wait(cfg.reenumerate_seconds):
                return
            self._booting.clear()
            self.replug()
            if banner:
                self._send(banner)
            return
        # drop requests that arrived during the reset (RAM is gone)
        while True:
            try:
                item = self._requests.get_nowait()
            except queue.Empty:
                break
            if item is None:
                self._requests.put(None)
                break
            with self._held_lock:
                self._held -= 1
        self._booting.clear()
        if banner:
            self._send(banner)

    def _send(self, data: bytes) -> None:
        self._tx_idle.clear()
        self._tx.put(data)

    def _tx_flush(self) -> None:
        while not self._tx.empty() and not self._stop.is_set():
            time.sleep(0.005)
        self._tx_idle.wait(timeout=5)

    def _tx_loop(self) -> None:
        pacer = _Pacer(self.config.baud)
        master = self._master
        while True:
            data = self._tx.get()
            if data is None:
                return
            for i in range(0, len(data), pacer.chunk):
                piece = data[i : i + pacer.chunk]
                pacer.wait(len(piece), back_to_back=i > 0)
                if self._stop.is_set():
                    return
                try:
                    os.write(master, piece)
                except OSError:
                    break
            if self._tx.empty():
                self._tx_idle.set()

