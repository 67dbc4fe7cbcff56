"""``ferry flash dfu VID:PID[,SERIAL] IMAGE``: one image onto one USB DFU device.

The same transport the daemon's proxy phase uses; this command only adds argument
parsing and a progress bar, so what works here works in a deployment.
"""

from __future__ import annotations

import argparse
from typing import Any


def transport_options(args: argparse.Namespace) -> dict[str, Any]:
    """Transport options from the command line (tests replace this to reach a simulator)."""
    opts: dict[str, Any] = {}
    if args.alt is not None:
        opts["alt"] = args.alt
    if args.dfu_id:
        opts["dfu_id"] = args.dfu_id
    if args.address:
        opts["address"] = args.address
    if args.format:
        opts["format"] = args.format
    opts["verify"] = not args.no_verify
    opts["reset"] = not args.no_reset
    if args.detach_before_reset:
        opts["detach_before_reset"] = True
    return opts


def run(args: argparse.Namespace) -> int:
    from ferry.daemon.cli.flashrun import flash_image
    from ferry.proxy.dfu.transport import create
    from ferry.proxy.transport import Target

    target = Target(name="cli", transport="dfu", address=args.device,
                    options={"path": args.path} if args.path else {})
    phase = {"name": ""}

    def step(bar: Any, done: int, total: int, message: str) -> None:
        # DfuSe erases page by page before it downloads: the bar restarts per phase
        if message != phase["name"]:
            phase["name"] = message
            bar.total = total if message != "erase" else bar.total
        bar.update(done if message != "erase" else 0, message)

    # --json is set by "ferry --json" or "--json" after the command
    return flash_image(create(transport_options(args)), target, args.image, label="dfu",
                       as_json=bool(getattr(args, "json", False)), step=step)


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "dfu",
        help="flash a USB DFU / DfuSe device (raw, .dfu or DfuSe file)",
        description="Flash one image to a USB DFU 1.1 or ST DfuSe device. A device in its "
        "application (DFU run-time mode) is detached into DFU mode first; the image is "
        "read back for verification when the device allows upload, then the device is reset.",
    )
    parser.add_argument("device", metavar="VID:PID[,SERIAL]",
                        help="the device, e.g. 1209:5a01 or 0483:df11,356A37583235")
    parser.add_argument("image", metavar="IMAGE", help="raw binary, .dfu (suffix) or DfuSe file")
    parser.add_argument("--alt", metavar="N", help="alt setting number or name (default 0)")
    parser.add_argument("--dfu-id", metavar="VID:PID",
                        help="VID:PID the device uses in DFU mode, when it differs")
    parser.add_argument("--path", metavar="BUS-PORT", help="pick the device on this USB path")
    parser.add_argument("--address", metavar="ADDR",
                        help="DfuSe: flash address of a raw image (default: start of the alt)")
    parser.add_argument("--format", choices=("raw", "dfu", "dfuse"),
                        help="force the file format instead of detecting it")
    parser.add_argument("--no-verify", action="store_true", help="skip the read-back")
    parser.add_argument("--no-reset", action="store_true",
                        help="leave the device in DFU mode afterwards")
    parser.add_argument("--detach-before-reset", action="store_true",
                        help="send DFU_DETACH before the final USB reset, as dfu-util -R "
                        "does: U-Boot then leaves its dfu command and resets the board")
    parser.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                        help="print the result as JSON (same as ferry --json)")
    parser.set_defaults(func=run)
