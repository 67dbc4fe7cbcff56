"""The simulated device as a usbredir "usb-host", for QEMU's ``usb-redir`` device.

QEMU (the usb-guest) connects to our TCP port, both sides say hello, we announce the
device (ep_info, interface_info, device_connect) and then answer its control packets
from the model. A real kernel in the guest enumerates the device through xHCI, so
dfu-util and libusb there meet the same state machine the pyusb backend tests use.
Re-enumeration after DFU_DETACH + USB reset happens on the same connection: new
ep_info/interface_info and the DFU-mode descriptors (the guest kernel sees "device
firmware changed"), as protocols.md and test-recipes.md §2 describe.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading

from ferry.sim.dfu.device import Gone, SimDfuDevice, Stall

HELLO, CONNECT, DISCONNECT, RESET, INTERFACE_INFO, EP_INFO = 0, 1, 2, 3, 4, 5
SET_CONFIG, GET_CONFIG, CONFIG_STATUS, SET_ALT, GET_ALT, ALT_STATUS = 6, 7, 8, 9, 10, 11
CONTROL = 100
CAP_CONNECT_VERSION, CAP_EP_MAX_PACKET, CAP_64BIT_IDS, CAP_32BIT_BULK = 1, 4, 5, 6
OUR_CAPS = (1 << CAP_CONNECT_VERSION) | (1 << CAP_EP_MAX_PACKET) | (1 << CAP_64BIT_IDS) \
    | (1 << CAP_32BIT_BULK)  # 0x72: what QEMU needs to attach a device to xHCI
ST_SUCCESS, ST_INVAL, ST_IOERROR, ST_STALL = 0, 2, 3, 4
SPEED_FULL = 1


class UsbredirServer:
    """Serves one simulated device to one usb-redir client at a time."""

    def __init__(self, device: SimDfuDevice, host: str = "127.0.0.1", port: int = 0) -> None:
        self.device = device
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind((host, port))
        self.listener.listen(1)
        self.port: int = self.listener.getsockname()[1]
        self.conn: socket.socket | None = None
        self.send_lock = threading.Lock()
        self.ids64 = False
        self.peer_caps = 0
        self.peer_version = ""
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._serve, name="usbredir-dfu", daemon=True)
        self.trace: list[str] = []
        device.listeners.append(self._on_device_event)

    def start(self) -> UsbredirServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        with contextlib.suppress(OSError):
            self.listener.close()
        if self.conn is not None:
            with contextlib.suppress(OSError):
                self.conn.shutdown(socket.SHUT_RDWR)
        self.thread.join(timeout=5)
        with contextlib.suppress(ValueError):
            self.device.listeners.remove(self._on_device_event)

    # wire ----------------------------------------------------------------------------
    def _send(self, kind: int, payload: bytes, packet_id: int = 0, *,
              hello: bool = False) -> None:
        if hello or not self.ids64:
            head = struct.pack("<III", kind, len(payload), packet_id & 0xFFFFFFFF)
        else:
            head = struct.pack("<IIQ", kind, len(payload), packet_id)
        conn = self.conn
        if conn is None:
            return
        with self.send_lock:
            conn.sendall(head + payload)

    def _recv_exact(self, n: int) -> bytes:
        assert self.conn is not None
        buf = bytearray()
        while len(buf) < n:
            chunk = self.conn.recv(n - len(buf))
            if not chunk:
                raise ConnectionError("usb-redir peer closed the connection")
            buf += chunk
        return bytes(buf)

    def _recv(self, *, hello: bool = False) -> tuple[int, int, bytes]:
        if hello or not self.ids64:
            kind, length, packet_id = struct.unpack("<III", self._recv_exact(12))
        else:
            kind, length, packet_id = struct.unpack("<IIQ", self._recv_exact(16))
        return kind, packet_id, self._recv_exact(length)

    # announcements ---------------------------------------------------------------------
    def _ep_info(self) -> bytes:
        types = [255] * 32
        types[0] = types[16] = 0  # EP0 OUT and IN: control
        maxp = [0] * 32
        maxp[0] = maxp[16] = 64
        return bytes(types) + bytes(32) + bytes(32) + struct.pack("<32H", *maxp)

    def _interface_info(self) -> bytes:
        intfs = self.device.interfaces()
        cols = [bytearray(32) for _ in range(4)]
        for i, (number, cls, sub, proto) in enumerate(intfs):
            cols[0][i], cols[1][i], cols[2][i], cols[3][i] = number, cls, sub, proto
        return struct.pack("<I", len(intfs)) + b"".join(bytes(c) for c in cols)

    def _announce_interfaces(self) -> None:
        self._send(EP_INFO, self._ep_info())
        self._send(INTERFACE_INFO, self._interface_info())

    def _connect(self) -> None:
        self._announce_interfaces()
        dev = self.device
        self._send(CONNECT, struct.pack("<BBBBHHH", SPEED_FULL, 0, 0, 0, dev.spec.vid, dev.pid,
                                        dev.spec.bcd_device))
        self.trace.append(f"connect {dev.spec.vid:04x}:{dev.pid:04x}")

    def _on_device_event(self, event: str) -> None:
        if self.conn is None:
            return
        if event == "disconnect":
            self._send(DISCONNECT, b"")
            self.trace.append("disconnect")
        elif event == "connect":
            self._connect()
        elif event == "replug":  # bitWillDetach: off the bus and back in DFU mode
            self._send(DISCONNECT, b"")
            timer = threading.Timer(0.5, self._connect)
            timer.daemon = True
            timer.start()

    # serving ---------------------------------------------------------------------------
    def _serve(self) -> None:
        self.listener.settimeout(0.2)  # so stop() is noticed while waiting for QEMU
        while not self.stopping.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(None)
            self.conn = conn
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            try:
                self._session()
            except (ConnectionError, OSError) as err:
                self.trace.append(f"connection ended: {err}")
            finally:
                self.conn = None
                with contextlib.suppress(OSError):
                    conn.close()

    def _session(self) -> None:
        self.ids64 = False
        version = b"ferry sim dfu".ljust(64, b"\0")
        self._send(HELLO, version + struct.pack("<I", OUR_CAPS), hello=True)
        kind, _pid, data = self._recv(hello=True)
        if kind != HELLO:
            raise ConnectionError(f"expected hello, got packet type {kind}")
        self.peer_version = data[:64].split(b"\0", 1)[0].decode(errors="replace")
        self.peer_caps = struct.unpack_from("<I", data, 64)[0] if len(data) >= 68 else 0
        self.ids64 = bool(self.peer_caps & OUR_CAPS & (1 << CAP_64BIT_IDS))
        self.trace.append(f"hello from {self.peer_version!r} caps=0x{self.peer_caps:x}")
        with self.device.lock:
            present = self.device.present
        if present:
            self._connect()
        while True:
            kind, packet_id, data = self._recv()
            self._handle(kind, packet_id, data)

    def _handle(self, kind: int, packet_id: int, data: bytes) -> None:
        dev = self.device
        if kind == RESET:
            before = dev.generation
            try:
                dev.usb_reset()
            except Gone:
                return
            self.trace.append(f"reset -> {dev.mode}")
            if dev.generation != before:
                self._announce_interfaces()
        elif kind in (SET_CONFIG, GET_CONFIG):
            status = ST_SUCCESS
            if kind == SET_CONFIG:
                try:
                    dev.set_configuration(data[0])
                    self._announce_interfaces()
                except (Stall, Gone):
                    status = ST_STALL
            self._send(CONFIG_STATUS, bytes([status, dev.configuration]), packet_id)
        elif kind in (SET_ALT, GET_ALT):
            status = ST_SUCCESS
            interface = data[0]
            if kind == SET_ALT:
                try:
                    dev.set_alt(interface, data[1])
                    self._announce_interfaces()
                except (Stall, Gone):
                    status = ST_STALL
            alt = dev.alt if dev.mode == "dfu" else 0
            self._send(ALT_STATUS, bytes([status, interface, alt]), packet_id)
        elif kind == CONTROL:
            self._control(packet_id, data)
        # Everything else (filters, disconnect acks, cancel, iso/bulk/interrupt streams)
        # does not apply to a control-only device whose answers are synchronous.

    def _control(self, packet_id: int, data: bytes) -> None:
        endpoint, request, rtype, _status, value, index, length = struct.unpack_from(
            "<BBBBHHH", data)
        payload = data[10:]
        status = ST_SUCCESS
        reply = b""
        try:
            if rtype & 0x80:
                reply = self.device.control(rtype, request, value, index, b"", length)
            else:
                self.device.control(rtype, request, value, index, payload, len(payload))
        except Stall:
            status = ST_STALL
        except Gone:
            if not self.device.present:
                return  # device_disconnect already went out; no reply to a vanished device
            status = ST_IOERROR
        out_len = len(reply) if rtype & 0x80 else (len(payload) if status == ST_SUCCESS else 0)
        head = struct.pack("<BBBBHHH", endpoint, request, rtype, status, value, index, out_len)
        self._send(CONTROL, head + reply, packet_id)
