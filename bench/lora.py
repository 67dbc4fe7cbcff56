"""LoRaWAN FUOTA: 100 KiB at DR5 EU868 over many simulated sessions, at 10 % and 20 % loss.

Run: .venv/bin/python bench/lora.py [--sessions 200] [--nodes 1] [--size 102400]

Each session is a whole campaign (clock sync, McGroupSetup, FragSessionSetup,
McClassCSession, fragments, status rounds, top-ups) from ferry.proxy.lora to simulated
nodes (ferry.sim.lora, own decoder) in discrete-event time, so the numbers do not
depend on this machine. The first redundancy is planned for 10 % loss (what a gateway
assumes before its nodes report); at 20 % the status rounds must top up.

Printed against the limits of the same run:
- fragments sent ÷ M/(1−p): M/(1−p) is the fewest fragments a node losing p of them
  can rebuild from on average (an ideal code); 1.00 is the limit;
- success rate: sessions where every node rebuilt the image;
- airtime, and wall time of the broadcast under the 10 % duty cycle, each ÷ the same
  quantity for M/(1−p) fragments back to back at the duty-cycle limit; plus the whole
  campaign's wall time including the class A setup (uplinks every 60 s on average,
  SessionTime 660 s after the McClassCSessionReq).
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

from ferry.daemon.cli.simrun_lora import simulate
from ferry.proxy.lora.airtime import EU868_RX2_DUTY_CYCLE
from ferry.proxy.lora.scheduler import plan
from ferry.proxy.lora.session import Options


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def run(loss: float, sessions: int, nodes: int, size: int) -> None:
    image = random.Random(1).randbytes(size)
    p0 = plan(size, 5, 0.10)
    ideal = p0.m / (1 - loss)
    ideal_air = ideal * p0.airtime
    ideal_wall = ideal_air / EU868_RX2_DUTY_CYCLE
    ratios, airs, walls, totals, rounds = [], [], [], [], []
    ok = 0
    t0 = time.perf_counter()
    for seed in range(sessions):
        out = simulate(image, nodes=nodes, loss=loss, seed=1000 + seed,
                       opts=Options(dr=5, loss_estimate=0.10))
        r = out.report
        ok += int(r.ok and out.rebuilt == nodes)
        ratios.append(r.fragments_sent / ideal)
        airs.append(r.airtime)
        walls.append(r.finished - r.broadcast_started)
        totals.append(r.wall_time)
        rounds.append(r.status_rounds)
    cpu = time.perf_counter() - t0
    print(f"loss {loss:.0%}: M = {p0.m} fragments of {p0.frag_size} B, first redundancy "
          f"{p0.redundancy}; limit M/(1-p) = {ideal:.1f} fragments, {ideal_air:.0f} s airtime, "
          f"{ideal_wall / 60:.1f} min at {EU868_RX2_DUTY_CYCLE:.0%} duty cycle")
    print(f"  sessions {sessions} x {nodes} node(s): success {ok}/{sessions} "
          f"({ok / sessions:.1%}); status rounds median {statistics.median(rounds):.0f}, "
          f"max {max(rounds)}")
    print(f"  fragments sent / (M/(1-p)): median {statistics.median(ratios):.3f}  "
          f"p95 {pct(ratios, 0.95):.3f}  max {max(ratios):.3f}")
    print(f"  airtime: median {statistics.median(airs):.0f} s  p95 {pct(airs, 0.95):.0f} s  "
          f"(/ limit {statistics.median(airs) / ideal_air:.3f}); total over all sessions "
          f"{sum(airs) / 3600:.1f} h")
    print(f"  broadcast wall time: median {statistics.median(walls) / 60:.1f} min  p95 "
          f"{pct(walls, 0.95) / 60:.1f} min  (/ limit {statistics.median(walls) / ideal_wall:.3f})"
          f"; whole campaign incl. setup median {statistics.median(totals) / 60:.1f} min")
    print(f"  simulation cost: {cpu:.1f} s CPU for {sessions} sessions")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sessions", type=int, default=200)
    ap.add_argument("--nodes", type=int, default=1)
    ap.add_argument("--size", type=int, default=100 * 1024)
    ap.add_argument("--loss", type=float, nargs="*", default=[0.10, 0.20])
    a = ap.parse_args()
    for loss in a.loss:
        run(loss, a.sessions, a.nodes, a.size)


if __name__ == "__main__":
    main()
