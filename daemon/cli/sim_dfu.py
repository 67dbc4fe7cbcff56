"""``ferry sim dfu``: serve a simulated DFU / DfuSe device over usbredir for QEMU.

Start it first, then QEMU with ``-chardev socket,id=ur,host=127.0.0.1,port=PORT
-device qemu-xhci -device usb-redir,chardev=ur``: the guest kernel enumerates it.
``--stack`` picks whose DFU code answers (see ferry.sim.dfu.stacks).
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from ferry.daemon.cli import exitcodes


def _faults(specs: list[str]) -> Any:
    from ferry.sim.dfu.device import Faults

    faults = Faults()
    for spec in specs:
        name, _, arg = spec.partition("@")
        if name in ("stall", "err-write", "disconnect") and arg.isdigit():
            field = {"stall": "stall_at_block", "err-write": "err_write_at_block",
                     "disconnect": "disconnect_at_block"}[name]
            setattr(faults, field, int(arg))
        elif name == "err-verify" and not arg:
            faults.err_verify = True
        elif name == "stuck-manifest" and not arg:
            faults.stuck_in_manifest = True
        else:
            raise SystemExit(f"ferry: unknown fault {spec!r}; use stall@N, err-write@N, "
                             "disconnect@N, err-verify, stuck-manifest")
    return faults


def run(args: argparse.Namespace) -> int:
    from ferry.sim.dfu.device import Timing
    from ferry.sim.dfu.harness import dfuse_spec, plain_spec, uboot_spec, zephyr_spec
    from ferry.sim.dfu.stacks import build
    from ferry.sim.dfu.usbredir import UsbredirServer

    if args.dfuse and args.stack != "generic":
        raise SystemExit("ferry: --dfuse is the STM32 ROM; it cannot be combined with "
                         f"--stack {args.stack}")
    spec = {"u-boot": uboot_spec, "zephyr": zephyr_spec}.get(
        args.stack, dfuse_spec if args.dfuse else plain_spec)()
    spec.vid = int(args.vid, 16) if args.vid else spec.vid
    if args.pid:
        spec.runtime_pid = spec.dfu_pid = int(args.pid, 16)
    if args.dfu_pid:
        spec.dfu_pid = int(args.dfu_pid, 16)
    if args.serial is not None:
        spec.serial = args.serial
    if args.dfu_only:
        spec.start_in_runtime = spec.has_runtime = False
    spec.will_detach = args.will_detach or spec.will_detach
    spec.manifestation_tolerant = spec.manifestation_tolerant and not args.not_tolerant
    if args.transfer_size:
        spec.transfer_size = args.transfer_size
    if args.poll_ms is not None:
        spec.poll_ms = args.poll_ms
    timing = Timing(args.program_ms, args.erase_ms, args.manifest_ms)
    device = build(spec, faults=_faults(args.fault or []), timing=timing)
    server = UsbredirServer(device, args.host, args.port).start()
    print(f"ferry sim dfu: {spec.vid:04x}:{device.pid:04x} ({spec.stack}, {device.mode} mode) on "
          f"usbredir {args.host}:{server.port}", flush=True)
    try:
        while True:
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
        print("\n".join(device.log), file=sys.stderr)
    return exitcodes.OK


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "dfu", help="a USB DFU 1.1 / DfuSe device served over usbredir (for QEMU)",
        description="Serve a simulated USB DFU device to QEMU's usb-redir over TCP.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="TCP port (0: pick a free one)")
    parser.add_argument("--stack", choices=("generic", "u-boot", "zephyr"), default="generic",
                        help="whose DFU code answers: generic DFU 1.1, U-Boot's dfu command "
                        "(0525:a4a5, checks block numbers) or Zephyr's usb_dfu (2fe3:0100, "
                        "writes alt image_1)")
    parser.add_argument("--dfuse", action="store_true",
                        help="an STM32-style DfuSe bootloader (0483:df11, DFU mode only)")
    parser.add_argument("--vid", help="vendor id (hex)")
    parser.add_argument("--pid", help="product id in both modes (hex)")
    parser.add_argument("--dfu-pid", help="product id in DFU mode (hex)")
    parser.add_argument("--serial", help="serial number string")
    parser.add_argument("--dfu-only", action="store_true", help="no run-time (application) mode")
    parser.add_argument("--will-detach", action="store_true", help="set bitWillDetach")
    parser.add_argument("--not-tolerant", action="store_true",
                        help="clear bitManifestationTolerant")
    parser.add_argument("--transfer-size", type=int, help="wTransferSize")
    parser.add_argument("--poll-ms", type=int,
                        help="fixed bwPollTimeout (U-Boot DFU_DEFAULT_POLL_TIMEOUT, Zephyr 8)")
    parser.add_argument("--program-ms", type=int, default=4, help="busy time per block")
    parser.add_argument("--erase-ms", type=int, default=10, help="busy time per page erase")
    parser.add_argument("--manifest-ms", type=int, default=20, help="manifestation time")
    parser.add_argument("--fault", action="append", metavar="FAULT",
                        help="stall@N, err-write@N, disconnect@N, err-verify, stuck-manifest")
    parser.set_defaults(func=run)
