"""``ferry sim mcu``: a simulated MCU (SMP server + MCUboot two-slot model) on a pty."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from typing import Any


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "mcu",
        help="simulated MCU speaking SMP over a pty (target for 'ferry flash smp-serial')",
        description="Create a pty and run a simulated MCU on it: an SMP server with an "
        "MCUboot-like two-slot flash, throttled to the baud rate. Prints the port path.",
    )
    parser.add_argument("--port", metavar="PATH",
                        help="also make PATH a symlink to the pty (e.g. /tmp/ttyMCU)")
    parser.add_argument("--baud", type=int, default=115200,
                        help="line rate to simulate; 0 = unthrottled (default 115200)")
    parser.add_argument("--buf-size", type=int, default=2048, help="advertised MCUmgr buffer")
    parser.add_argument("--buf-count", type=int, default=4, help="advertised buffer count")
    parser.add_argument("--image", metavar="FILE", help="MCUboot image running at start "
                        "(default: a generated unsigned 1.0.0)")
    parser.add_argument("--key", metavar="PEM", help="public key the boot check verifies")
    parser.add_argument("--fails-to-boot", action="store_true",
                        help="new images crash before confirming, so MCUboot reverts them")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ferry.sim.mcu import McuConfig, SimMcu

    config = McuConfig(baud=args.baud or None, buf_size=args.buf_size,
                       buf_count=args.buf_count, fails_to_boot=args.fails_to_boot)
    if args.key:
        with open(args.key, "rb") as f:
            config.public_key_pem = f.read()
    running = None
    if args.image:
        with open(args.image, "rb") as f:
            running = f.read()
    sim = SimMcu(config, running=running, link=args.port).start()
    print(sim.port, flush=True)
    if args.port:
        print(f"simulated MCU on {os.path.realpath(args.port)} (also {args.port}); "
              "Ctrl-C to stop", file=sys.stderr, flush=True)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    try:
        done.wait()
    except KeyboardInterrupt:
        pass
    finally:
        sim.stop()
    return 0
