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
    parser.add_argument("--enc-key", metavar="FILE",
                        help="the bootloader's decryption key for encrypted images (imgtool "
                        "keygen PEM: ecdsa-p256, x25519, rsa-2048; or a raw 16/32-byte "
                        "AES-KW key); without it, encrypted images are refused at boot")
    parser.add_argument("--fails-to-boot", action="store_true",
                        help="new images crash before confirming, so MCUboot reverts them")
    parser.add_argument("--app-unhealthy", action="store_true",
                        help="new images boot and answer SMP, but the application's own "
                        "check fails: its health group (64, command 0) answers an error")
    parser.add_argument("--reset-delay", type=float, default=0.25, metavar="S",
                        help="seconds the old image keeps answering after a reset request "
                        "(Zephyr's CONFIG_MCUMGR_GRP_OS_RESET_MS; default 0.25)")
    parser.add_argument("--usb", type=float, nargs="?", const=1.0, default=None,
                        metavar="S", help="behave as a USB CDC-ACM port: at reset the port "
                        "vanishes and comes back S seconds later (default 1; needs --port)")
    parser.add_argument("--smp-v1", action="store_true",
                        help="answer errors in SMP v1 form only, as mcumgr before Zephyr 3.3")
    parser.add_argument("--no-params", action="store_true",
                        help="no MCUmgr params command (answers MGMT_ERR_ENOTSUP)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ferry.sim.mcu import McuConfig, SimMcu

    if args.usb is not None and not args.port:
        print("ferry sim mcu: --usb needs --port PATH (the name that follows the device)",
              file=sys.stderr)
        return 2
    config = McuConfig(baud=args.baud or None, buf_size=args.buf_size,
                       buf_count=args.buf_count, fails_to_boot=args.fails_to_boot,
                       reset_delay=args.reset_delay, reenumerate=args.usb is not None,
                       reenumerate_seconds=args.usb or 1.0, smp_v2=not args.smp_v1,
                       supports_params=not args.no_params,
                       app_unhealthy=args.app_unhealthy)
    if args.key:
        with open(args.key, "rb") as f:
            config.public_key_pem = f.read()
    if args.enc_key:
        from ferry.sim.mcu.encrypted import load_device_key

        try:
            with open(args.enc_key, "rb") as f:
                config.enc_key = f.read()
            load_device_key(config.enc_key)
        except (OSError, ValueError) as err:
            print(f"ferry sim mcu: --enc-key {args.enc_key}: {err}", file=sys.stderr)
            return 2
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
