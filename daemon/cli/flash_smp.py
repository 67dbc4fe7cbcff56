"""``ferry flash smp-serial PORT IMAGE``: one MCUboot image to one MCU over SMP on a UART.

The flash stops at "booted, not confirmed", then the same health check and decision as
the daemon's proxy phase (``ferry.proxy.smp.settle``) confirm the image or reset the MCU
back to its old one, so a technician's flash cannot confirm an image whose application
is broken.
"""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "smp-serial",
        help="MCUboot image to an MCU over SMP (mcumgr) on a serial port",
        description="Upload an MCUboot image over SMP on a serial port, boot it in test "
        "mode, check its health, and confirm it only when the check passes; otherwise "
        "reset the MCU so MCUboot brings the old image back. An image that does not boot "
        "is rolled back by MCUboot. "
        "Encrypted images (imgtool --encrypt) go as they are: only MCUboot, holding the "
        "key, can check their plaintext hash, and the result says so.",
    )
    parser.add_argument("port", metavar="PORT", help="serial port, e.g. /dev/ttyACM0")
    parser.add_argument("image", metavar="IMAGE", help="signed MCUboot image (imgtool sign)")
    parser.add_argument("--baud", type=int, default=115200, help="line rate (default 115200)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--confirm", dest="test_only", action="store_false",
                      help="confirm the new image once it runs and passes its health "
                      "check (default)")
    mode.add_argument("--test-only", "--no-confirm", dest="test_only", action="store_true",
                      help="boot it in test mode and stop: the next reset reverts it "
                      "unless the application confirms itself")
    parser.add_argument("--health-timeout", metavar="S", default="30",
                        help="seconds the new image has to pass its health check, retried "
                        "every --health-interval (default 30)")
    parser.add_argument("--health-interval", metavar="S", default="1",
                        help="seconds between health check tries (default 1)")
    check = parser.add_mutually_exclusive_group()
    check.add_argument("--health-command", metavar="CMD",
                       help="health check run here after the SMP echo check (split like a "
                       "shell line, no shell): exit 0 is healthy; FERRY_TARGET_PORT and "
                       "FERRY_TARGET_VERSION are in its environment")
    check.add_argument("--health-smp", metavar="GROUP[:COMMAND]",
                       help="health check: read the application's SMP group GROUP (64 or "
                       "above), command COMMAND (default 0); an SMP error is unhealthy")
    parser.add_argument("--force", action="store_true",
                        help="allow an image older than the running one")
    parser.add_argument("--timeout", type=float, default=5.0,
                        help="seconds to wait for each answer (default 5)")
    parser.add_argument("--boot-timeout", type=float, default=60.0,
                        help="seconds to wait for the MCU after reset (default 60)")
    parser.add_argument("--reset-delay", metavar="S", default="0.25",
                        help="how long the MCU keeps running its old image after "
                        "answering reset: Zephyr's CONFIG_MCUMGR_GRP_OS_RESET_MS "
                        "(default 0.25; e.g. 1.5 or 1500ms)")
    parser.set_defaults(func=run, test_only=False)


def run(args: argparse.Namespace) -> int:
    from ferry.daemon.cli.flashrun import flash_image
    from ferry.proxy.registry import get_transport
    from ferry.proxy.transport import DEFER_CONFIRM, Target

    options = {"baud": str(args.baud), "timeout": str(args.timeout),
               "boot_timeout": str(args.boot_timeout), "reset_delay": str(args.reset_delay),
               "force": "1" if args.force else "",
               "test_only": "1" if args.test_only else "",
               DEFER_CONFIRM: "" if args.test_only else "1",
               "health_timeout_s": str(args.health_timeout),
               "health_interval_s": str(args.health_interval),
               "health_command": args.health_command or ""}
    if args.health_smp:
        group, _, command = str(args.health_smp).partition(":")
        options.update(health_smp_group=group, health_smp_command=command or "0")
    target = Target(name=args.port, transport="smp-serial", address=args.port,
                    options={k: v for k, v in options.items() if v})

    def step(bar: Any, done: int, total: int, message: str) -> None:
        bar.update(done, "" if message == "upload" else message)

    return flash_image(Settling(get_transport("smp-serial", {})), target, args.image,
                       label="upload", as_json=bool(getattr(args, "json", False)), step=step,
                       after=encryption_note)


class Settling:
    """The transport's flash followed by its health check and the confirm or revert."""

    def __init__(self, transport: Any) -> None:
        self.transport = transport

    def flash(self, target: Any, image: Any, *, progress: Any) -> Any:
        from ferry.proxy.smp.settle import settle

        size = [0]

        def upload(done: int, total: int, message: str) -> None:
            size[0] = total or size[0]
            progress(done, total, message)

        result = self.transport.flash(target, image, progress=upload)
        if result.trial is None:
            return result
        # health tries and the decision keep the bar full and show their word
        return settle(self.transport, target, result.trial, booted=result,
                      progress=lambda d, t, m: progress(size[0], size[0], m))


def encryption_note(result: Any) -> None:
    """One more line for an encrypted image: what ferry could not check, and who did."""
    import sys

    kind = result.detail.get("encrypted", "no")
    if kind == "no":
        return
    checked = result.detail.get("hash_checked", "false")
    why = ("the payload is in clear" if checked == "true" else
           "ferry holds no device key, so MCUboot checks the plaintext hash at boot")
    print(f"image: encrypted {kind}; hash_checked: {checked} ({why})", file=sys.stderr)
