"""Zigbee OTA: simulated time to update N = 1, 10, 100 nodes with a 256 KiB image.

Run: .venv/bin/python bench/zigbee.py [--loss 0.05] [--period-ms 250]

Each N runs twice: started by one unicast Image Notify per node (what Zigbee2MQTT's
one-request-per-node API comes to) and by one broadcast (ferry's zigpy adapter). A
node that misses the broadcast (lost, or asleep past its parent's buffer) comes in
with its own periodic query, which the "sim time" column shows.

Everything is simulated time from the discrete-event clock (ferry.sim.zigbee), so the
numbers do not depend on this machine. The limit printed next to each run is measured
in the same run's terms: one node cannot finish faster than blocks × the server's
minimum block period. Bytes on air count every hop, PHY/MAC/NWK/APS overhead, MAC ACKs,
requests, retransmissions and WAIT_FOR_DATA answers, per byte of image delivered.
"""

from __future__ import annotations

import argparse
import math
import time

from ferry.daemon.cli.simrun_zigbee import make_image, simulate
from ferry.proxy.zigbee.server import ServerConfig
from ferry.sim.zigbee.population import make_profiles

MFR, ITYPE = 0x1234, 0x0001


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--size", type=int, default=256 * 1024)
    ap.add_argument("--loss", type=float, default=0.05)
    ap.add_argument("--period-ms", type=int, default=250, help="server MinimumBlockPeriod")
    ap.add_argument("--block", type=int, default=50, help="server block size cap")
    ap.add_argument("--max-concurrent", type=int, default=16)
    ap.add_argument("--nodes", type=int, nargs="+", default=[1, 10, 100])
    ap.add_argument("--notify", choices=("unicast", "broadcast"), nargs="+",
                    default=["unicast", "broadcast"])
    args = ap.parse_args()

    image = make_image(args.size, manufacturer_code=MFR, file_version=0x00020000)
    blocks = math.ceil(len(image) / args.block)
    bound = blocks * args.period_ms / 1000.0
    print(f"image {len(image)} B, {blocks} blocks of {args.block} B, "
          f"min block period {args.period_ms} ms, loss {args.loss:.0%}, "
          f"max {args.max_concurrent} concurrent downloads")
    print(f"one-node lower bound: blocks x period = {bound:.0f} s ({bound / 60:.1f} min)")
    print(f"{'N':>4} {'notify':>10} {'all done':>9} {'sim time':>12} {'x bound':>8} "
          f"{'median node':>12} {'air B/image B':>14} {'channel busy':>13} {'lost':>7} "
          f"{'waits':>7} {'wall s':>7}")
    for n, how in [(n, how) for n in args.nodes for how in args.notify]:
        profiles = make_profiles(n, manufacturer_code=MFR, image_type=ITYPE,
                                 file_version=0x00010000, seed=11)
        cfg = ServerConfig(max_data_size=args.block, min_block_period_ms=args.period_ms,
                           max_concurrent=args.max_concurrent)
        t0 = time.monotonic()
        res = simulate(image, profiles, loss=args.loss, seed=11, config=cfg,
                       limit_s=48 * 3600.0, notify=how)
        wall = time.monotonic() - t0
        busy = res.bytes_on_air * 8 / 250_000 / max(res.seconds, 1e-9)
        med = res.per_node_done_s[len(res.per_node_done_s) // 2] if res.per_node_done_s else 0
        sent = f"{res.notify_frames} {'bc' if how == 'broadcast' else 'uc'}"
        print(f"{n:>4} {sent:>10} {res.updated:>4}/{res.nodes:<4} {res.seconds:>10.0f} s "
              f"{res.seconds / bound:>8.2f} {med:>10.0f} s {res.air_per_image_byte:>14.2f} "
              f"{busy:>12.0%} {res.lost:>7} {res.wait_for_data:>7} {wall:>7.1f}")


if __name__ == "__main__":
    main()
