"""``ferry sim lora``: arguments only; the simulation lives in ``simrun_lora`` and is
imported when the command runs, so ``ferry`` starts fast and small for every other command.
"""

from __future__ import annotations

import argparse
from typing import Any


def _run_lazily(args: argparse.Namespace) -> int:
    from ferry.daemon.cli import simrun_lora

    return simrun_lora.run(args)


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "lora",
        help="run a FUOTA campaign against simulated LoRaWAN nodes",
        description="Run ferry's LoRa FUOTA (clock sync, multicast setup, fragments with "
        "FEC, status rounds) against simulated class C nodes in simulated time.",
    )
    parser.add_argument("--nodes", type=int, default=10)
    parser.add_argument("--size", type=int, default=100 * 1024, help="image bytes")
    parser.add_argument("--loss", type=float, default=0.1, help="mean frame loss per node")
    parser.add_argument("--burst", action="store_true", help="Gilbert-Elliott burst loss")
    parser.add_argument("--late", type=int, default=0, help="nodes that join the window late")
    parser.add_argument("--dr", type=int, default=5, help="EU868 data rate (0-5)")
    parser.add_argument("--duty-cycle", type=float, default=0.1)
    parser.add_argument("--loss-estimate", type=float, default=0.1,
                        help="loss the first redundancy is planned for")
    parser.add_argument("--ts004", choices=("1", "2", "mixed"), default="1",
                        help="the nodes' TS004 build: v1 (LoRaMac-node), v2 (STM32CubeWL "
                        "LORAWAN_PACKAGES_VERSION 2), or mixed")
    parser.add_argument("--stock-limits", action="store_true",
                        help="nodes built with LoRaMac-node's stock FragDecoder limits "
                        "(21 fragments of <= 50 B, 5 lost recoverable); ferry plans for them")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", action="store_true", default=argparse.SUPPRESS)
    parser.set_defaults(func=_run_lazily)
