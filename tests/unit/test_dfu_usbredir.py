"""The usbredir device server, driven by a minimal usb-guest written from the protocol doc.

QEMU is the real peer (tests/system/test_dfu_qemu.py); this checks the framing, the
announcement and the re-enumeration on reset without booting anything.
"""

from __future__ import annotations

import socket
import struct

import pytest

from ferry.sim.dfu.device import SimDfuDevice
from ferry.sim.dfu.harness import uboot_spec
from ferry.sim.dfu.stacks import build
from ferry.sim.dfu.usbredir import UsbredirServer


class Guest:
    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.next_id = 1

    def recv_exact(self, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            assert chunk, "server closed the connection"
            buf += chunk
        return buf

    def recv(self, ids64: bool = True) -> tuple[int, int, bytes]:
        if ids64:
            kind, length, pid = struct.unpack("<IIQ", self.recv_exact(16))
        else:
            kind, length, pid = struct.unpack("<III", self.recv_exact(12))
        return kind, pid, self.recv_exact(length)

    def send(self, kind: int, payload: bytes, *, hello: bool = False) -> int:
        pid = self.next_id
        self.next_id += 1
        fmt = "<III" if hello else "<IIQ"
        self.sock.sendall(struct.pack(fmt, kind, len(payload), pid) + payload)
        return pid

    def control(self, rtype: int, request: int, value: int, index: int, length: int,
                data: bytes = b"") -> tuple[int, bytes]:
        pid = self.send(100, struct.pack("<BBBBHHH", 0x80 if rtype & 0x80 else 0, request,
                                         rtype, 0, value, index, length) + data)
        kind, rid, payload = self.recv()
        assert (kind, rid) == (100, pid)
        return payload[3], payload[10:]


@pytest.fixture
def served():
    device = SimDfuDevice()
    server = UsbredirServer(device).start()
    guest = Guest(server.port)
    yield device, server, guest
    guest.sock.close()
    server.stop()


def test_hello_announcement_and_enumeration(served):
    device, server, guest = served
    kind, _pid, data = guest.recv(ids64=False)
    assert kind == 0 and struct.unpack_from("<I", data, 64)[0] == 0x72
    guest.send(0, b"qemu usb-redir guest test".ljust(64, b"\0") + struct.pack("<I", 0xFF),
               hello=True)
    kinds = []
    for _ in range(3):
        kind, _pid, data = guest.recv()
        kinds.append(kind)
        if kind == 4:  # interface_info: the app's vendor interface and the DFU run-time one
            assert struct.unpack_from("<I", data)[0] == 2
            assert (data[4 + 32 + 1], data[4 + 64 + 1], data[4 + 96 + 1]) == (0xFE, 1, 1)
        if kind == 1:
            assert struct.unpack("<BBBBHHH", data)[4:6] == (0x1209, 0x5A01)
    assert kinds == [5, 4, 1]  # ep_info, interface_info, device_connect
    status, desc = guest.control(0x80, 6, 0x0100, 0, 64)
    assert status == 0 and len(desc) == 18 and desc[8:12] == bytes([0x09, 0x12, 0x01, 0x5A])
    # GETSTATUS on the DFU interface, then DETACH and a bus reset: DFU mode, same connection
    status, reply = guest.control(0xA1, 3, 0, 1, 6)
    assert status == 0 and reply[4] == 0  # appIDLE
    status, _ = guest.control(0x21, 0, 1000, 1, 0)
    assert status == 0
    guest.send(3, b"")
    kind, _pid, _data = guest.recv()
    assert kind == 5
    kind, _pid, data = guest.recv()
    assert kind == 4 and data[4 + 96] == 2  # DFU mode interface protocol
    status, desc = guest.control(0x80, 6, 0x0100, 0, 64)
    assert desc[10:12] == bytes([0x11, 0xDF])
    # an invalid request in DFU mode is a STALL, and the device enters dfuERROR
    status, _ = guest.control(0x21, 0, 0, 0, 0)  # DETACH is not valid in DFU mode
    assert status == 4
    status, reply = guest.control(0xA1, 3, 0, 0, 6)
    assert reply[4] == 10 and reply[0] == 0x0F
    assert device.mode == "dfu"
    assert any("hello from 'qemu usb-redir guest test'" in t for t in server.trace)


def test_uboot_stack_over_usbredir_checks_the_final_block_number():
    device = build(uboot_spec())
    server = UsbredirServer(device).start()
    guest = Guest(server.port)
    try:
        guest.recv(ids64=False)
        guest.send(0, b"qemu usb-redir guest test".ljust(64, b"\0") + struct.pack("<I", 0xFF),
                   hello=True)
        for _ in range(3):
            guest.recv()
        image = bytes(range(256)) * 20  # 5120 bytes: blocks 0 and 1, then the end as 2
        for attempt, last in (("old", 0), ("new", 2)):
            for block, offset in enumerate((0, 4096)):
                chunk = image[offset:offset + 4096]
                assert guest.control(0x21, 1, block, 0, len(chunk), chunk)[0] == 0
                assert guest.control(0xA1, 3, 0, 0, 6)[1][4] == 5  # dfuDNLOAD-IDLE
            assert guest.control(0x21, 1, last, 0, 0)[0] == 0
            reply = guest.control(0xA1, 3, 0, 0, 6)[1]
            if attempt == "old":
                assert (reply[0], reply[4]) == (0x0E, 10)  # errUNKNOWN, dfuERROR
                assert guest.control(0x21, 4, 0, 0, 0)[0] == 0  # CLRSTATUS
                assert device.firmware() == b""
            else:
                assert reply[4] == 7  # dfuMANIFEST
                assert guest.control(0xA1, 3, 0, 0, 6)[1][4] == 2  # dfuIDLE
        assert device.firmware() == image
        assert "dfu_write: Wrong sequence number! [2] [0]" in device.log
    finally:
        guest.sock.close()
        server.stop()


def test_simulator_never_loads_ferry_proxy():
    # The far end of the wire must not share the host's code (DESIGN.md, "sim").
    import subprocess
    import sys

    code = ("import sys, ferry.sim.dfu.device, ferry.sim.dfu.pyusb_backend, "
            "ferry.sim.dfu.usbredir, ferry.sim.dfu.harness, ferry.sim.dfu.stacks, "
            "ferry.sim.dfu.uboot, ferry.sim.dfu.zephyr; "
            "print(sorted(m for m in sys.modules if m.startswith('ferry.proxy')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60).stdout.strip()
    assert out == "[]"
