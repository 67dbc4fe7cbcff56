"""``ferry sim zigbee``: arguments only; the simulation lives in ``simrun_zigbee`` and is
imported when the command runs, so ``ferry`` starts fast and small for every other command.
"""

from __future__ import annotations

import argparse
from typing import Any


def _run_lazily(args: argparse.Namespace) -> int:
    from ferry.daemon.cli import simrun_zigbee

    return simrun_zigbee._run(args)


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "zigbee", help="serve an OTA image to a simulated Zigbee population",
        description="Run ferry's Zigbee OTA server against simulated nodes (simulated time).")
    p.add_argument("--nodes", type=int, default=100)
    p.add_argument("--others", type=int, default=0,
                   help="extra nodes of another vendor that must stay untouched")
    p.add_argument("--image-size", type=int, default=64 * 1024)
    p.add_argument("--loss", type=float, default=0.05)
    p.add_argument("--min-block-period", type=int, default=0, metavar="MS")
    p.add_argument("--max-concurrent", type=int, default=16)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--z2m", metavar="HOST:PORT",
                   help="instead: act as Zigbee2MQTT on this MQTT broker, for ferry flash zigbee")
    p.add_argument("--z2m-data-dir", metavar="DIR", default="./z2m-data",
                   help="with --z2m: the data directory ferry stages images in")
    p.add_argument("--z2m-version", choices=("2.14", "2.2"), default="2.14",
                   help="with --z2m: whose OTA rules to follow (2.2: online index first, "
                   "hardware version from the Basic cluster; 2.14: override index first, "
                   "hardware version from the node's query, abort)")
    p.add_argument("--online", action="store_true",
                   help="with --z2m: the stand-in can reach the online OTA index (without "
                   "it, Z2M 2.2 fails every check with 'fetch failed')")
    p.set_defaults(func=_run_lazily)

