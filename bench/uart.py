"""UART upload throughput of ferry's smp-serial client against the simulated MCU.

The simulator throttles its pty to baud/10 bytes/s each way (8N1) and models flash
erase/write time, so the numbers are fractions of the real line rate. SMP over serial
cannot exceed ~0.72 of it (base64 4/3 plus line markers; protocols.md §3.5). In the same
run, on an identical simulator, it times the peers: ``smpmgr upgrade`` (CLI defaults:
128-byte lines x 2 buffers, stop-and-wait; its process start-up, measured with
``smpmgr os echo``, is subtracted) and smpclient's library upload with its ``Auto``
buffer sizing (reads buf_size like ferry, but one request at a time).

    .venv/bin/python bench/uart.py [--quick] [--zephyr-defaults]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ferry.proxy.smp.client import SmpClient
from ferry.sim.mcu import McuConfig, SimMcu
from ferry.sim.mcu import image as sim_image

ROOT = Path(__file__).resolve().parent.parent


def new_sim(baud: int, **kw: object) -> SimMcu:
    old = sim_image.build((1, 0, 0, 0), b"\x11" * 2000)
    return SimMcu(McuConfig(baud=baud, boot_seconds=0.2, **kw), running=old).start()  # type: ignore[arg-type]


def ferry_upload(baud: int, data: bytes, **kw: object) -> float:
    sim = new_sim(baud, **kw)
    try:
        with SmpClient(sim.port, baud=baud, timeout=5) as client:
            client.read_params()
            start = time.monotonic()
            client.upload(data)
            seconds = time.monotonic() - start
        assert sim.device.secondary.data == data, "upload did not land intact"
        assert sim.dropped_frames == 0
        return seconds
    finally:
        sim.stop()


def smpclient_upload(baud: int, data: bytes) -> float:
    from smpclient import SMPClient
    from smpclient.transport.serial import SMPSerialTransport

    sim = new_sim(baud)

    async def go() -> float:
        async with SMPClient(SMPSerialTransport(baudrate=baud), sim.port, timeout_s=10) as c:
            start = time.monotonic()
            async for _off in c.upload(data):
                pass
            return time.monotonic() - start

    try:
        seconds = asyncio.run(go())
        assert sim.device.secondary.data == data
        return seconds
    finally:
        sim.stop()


def smpmgr_upgrade(baud: int, path: Path, data: bytes) -> float:
    smpmgr = shutil.which("smpmgr", path=str(ROOT / ".venv" / "bin")) or shutil.which("smpmgr")
    if smpmgr is None:
        sys.exit("smpmgr missing: run bash .ci/setup")
    sim = new_sim(baud)
    try:
        base = [smpmgr, "--port", sim.port, "--baudrate", str(baud), "--timeout", "10"]
        start = time.monotonic()
        subprocess.run([*base, "os", "echo", "x"], check=True, capture_output=True)
        startup = time.monotonic() - start
        start = time.monotonic()
        subprocess.run([*base, "upgrade", "--slot", "1", str(path)], check=True,
                       capture_output=True)
        seconds = time.monotonic() - start - startup
        # smpmgr returns once the reset is acknowledged; the simulated MCU, like Zephyr,
        # reboots CONFIG_MCUMGR_GRP_OS_RESET_MS later (not timed: no upload happens then)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            info = sim.device.primary.info(None)
            if info is not None and info.version_text == "2.0.0":
                return seconds
            time.sleep(0.05)
        raise SystemExit("smpmgr upgrade did not land")
    finally:
        sim.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller images (noisier)")
    parser.add_argument("--zephyr-defaults", action="store_true",
                        help="also run ferry against a Zephyr-default buffer (384 B x 4)")
    args = parser.parse_args()
    scale = 4 if args.quick else 1
    cases = [(115200, 96 * 1024 // scale), (1_000_000, 240 * 1024 // scale)]
    print(f"{'baud':>8} {'image':>8} {'client':<28} {'seconds':>8} {'B/s':>8} "
          f"{'of line':>8} {'vs smpmgr':>9}")
    with tempfile.TemporaryDirectory() as tmp:
        for baud, size in cases:
            data = sim_image.build((2, 0, 0, 0), os.urandom(size))
            path = Path(tmp) / f"img{baud}.bin"
            path.write_bytes(data)
            line = baud / 10
            rows = [("ferry (pipelined, 2 KiB)", ferry_upload(baud, data))]
            if args.zephyr_defaults:
                rows.append(("ferry (Zephyr 384 B x 4)",
                             ferry_upload(baud, data, buf_size=384, buf_count=4)))
            rows.append(("smpclient Auto (library)", smpclient_upload(baud, data)))
            mgr = smpmgr_upgrade(baud, path, data)
            rows.append(("smpmgr upgrade (CLI)", mgr))
            for name, seconds in rows:
                rate = len(data) / seconds
                print(f"{baud:>8} {len(data):>8} {name:<28} {seconds:>8.2f} {rate:>8.0f} "
                      f"{rate / line:>8.3f} {mgr / seconds:>8.2f}x", flush=True)
    print("goal: ferry >= 0.65 of line rate (SMP serial ceiling ~0.72), ahead of smpmgr")


if __name__ == "__main__":
    main()
