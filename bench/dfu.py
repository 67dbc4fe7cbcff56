"""Host overhead of the dfu transport: flash 256 KiB into the pyusb-backend simulation.

ratio = wall time of the flash / sum of the poll timeouts the device asked for. The
device's flash timing is real (wall-clock), so the ratio is what the host adds on top of
the device's own speed: USB request handling, Python, sleep overshoot. Aim: <= 1.1.
Run: .venv/bin/python bench/dfu.py [--kib 256] [--rounds 3]
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import time

from ferry.proxy.dfu.transport import create
from ferry.proxy.transport import Target
from ferry.sim.dfu.device import Timing
from ferry.sim.dfu.harness import plain_spec, setup

LIMIT = 1.1


def one_round(size: int, timing: Timing, transfer_size: int) -> tuple[float, float]:
    sim = setup(fake_time=False)
    dev = sim.add(plain_spec(start_in_runtime=False, has_runtime=False,
                             transfer_size=transfer_size), timing=timing)
    image = os.urandom(size)
    transport = create({**sim.host_options(), "verify": False, "reset": False})
    start = time.perf_counter()
    result = transport.flash(Target("bench", "dfu", "1209:df11"), io.BytesIO(image))
    wall = time.perf_counter() - start
    if not result.ok or dev.firmware() != image:
        raise SystemExit(f"bench flash failed: {result.message}")
    return wall, dev.poll_total_ms / 1000.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--kib", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    # STM32-like: 2 KiB per DNLOAD, programmed at ~4 ms/KiB (16 us per 32-bit word).
    parser.add_argument("--transfer-size", type=int, default=2048, help="wTransferSize")
    parser.add_argument("--program-ms", type=int, default=8, help="device busy time per block")
    args = parser.parse_args()
    timing = Timing(program_ms_per_block=args.program_ms, erase_ms_per_page=0, manifest_ms=20)
    ratios = []
    for n in range(args.rounds):
        wall, polls = one_round(args.kib * 1024, timing, args.transfer_size)
        ratios.append(wall / polls)
        print(f"round {n + 1}: {args.kib} KiB in {wall:.3f} s wall, device poll timeouts "
              f"{polls:.3f} s, ratio {wall / polls:.3f}")
    median = statistics.median(ratios)
    verdict = "OK" if median <= LIMIT else "OVER"
    print(f"dfu host overhead: median ratio {median:.3f} (limit {LIMIT}) {verdict}")
    return 0 if median <= LIMIT else 1


if __name__ == "__main__":
    raise SystemExit(main())
