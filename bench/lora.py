"""LoRaWAN FUOTA: 100 KiB at DR5 EU868 over many simulated sessions, and small blocks per M.

Run: .venv/bin/python bench/lora.py [--sessions 200] [--nodes 1] [--size 102400]
                                    [--ts004 1|2] [--small-sessions 400]

Each session is a whole campaign (clock sync, PackageVersion, McGroupSetup,
FragSessionSetup, McClassCSession, fragments, status rounds, top-ups) from
ferry.proxy.lora to simulated nodes (ferry.sim.lora: LoRaMac-node's FragDecoder model,
own parsers) in discrete-event time, so the numbers do not depend on this machine.
TS004 v1 nodes give no "done" signal: ferry infers it from their NbFragReceived stopping,
which costs a few confirming frames when a node finishes on the last fragments sent;
v2 nodes say it (FragDataBlockReceivedReq).

Printed against limits of the same run:
- fragments sent ÷ M/(1−p): M/(1−p) is the fewest fragments a node losing p of them
  can rebuild from on average (an ideal code); the target is p95 <= 1.05 when the first
  redundancy is planned for the loss the nodes see;
- for small blocks the p95 extra fragments (sent − M) per M, next to the p95 an IDEAL
  code needs (least n with P(Binomial(n, 1−p) >= M) >= 0.95): at M <= 10 even that
  exceeds 1.05·M/(1−p), so 1.05 cannot hold there and the bound is the honest limit;
- success rate, airtime and broadcast wall time under the 10 % duty cycle ÷ the same for
  M/(1−p) frames back to back, and the whole campaign including the class A setup;
- where the fragments go, per session: the first round, the top-ups (and how many of
  those only confirmed), and for v1 nodes the bound no completion rule can beat: the
  index F the simulated node's decoder finished on (read from the simulator, which knows
  it) plus the done gap, that many fragments must go out before a v1 node is provably
  done. Its p95 ÷ M/(1−p) is the floor of the v1 rows.
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import time

from ferry.daemon.cli.simrun_lora import simulate
from ferry.proxy.lora.airtime import EU868_RX2_DUTY_CYCLE
from ferry.proxy.lora.scheduler import plan
from ferry.proxy.lora.session import PRIOR_FRAMES, Options, posterior_gap

SMALL_MS = (2, 3, 4, 5, 6, 8, 10, 20, 50)


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def ideal_p95(m: int, p: float) -> int:
    """Least n with P(Binomial(n, 1−p) >= m) >= 0.95: an ideal (MDS) code's p95."""
    n = m
    while True:
        ok = sum(math.comb(n, k) * (1 - p) ** k * p ** (n - k) for k in range(m, n + 1))
        if ok >= 0.95:
            return n
        n += 1


def run(loss: float, planned: float, sessions: int, nodes: int, size: int, ts004: str) -> None:
    image = random.Random(1).randbytes(size)
    p0 = plan(size, 5, planned)
    ideal = p0.m / (1 - loss)
    ideal_air = ideal * p0.airtime
    ideal_wall = ideal_air / EU868_RX2_DUTY_CYCLE
    ratios, airs, walls, totals, rounds = [], [], [], [], []
    firsts, tops, confirms, floors = [], [], [], []
    ok = 0
    t0 = time.perf_counter()
    for seed in range(sessions):
        out = simulate(image, nodes=nodes, loss=loss, seed=1000 + seed,
                       opts=Options(dr=5, loss_estimate=planned), ts004=ts004)
        r = out.report
        ok += int(r.ok and out.rebuilt == nodes)
        ratios.append(r.fragments_sent / ideal)
        airs.append(r.airtime)
        walls.append(r.finished - r.broadcast_started)
        totals.append(r.wall_time)
        rounds.append(r.status_rounds)
        firsts.append(r.bursts[0] if r.bursts else 0)
        tops.append(sum(r.bursts[1:]))
        confirms.append(sum(1 for b in r.bursts[1:] if b <= 8))
        if ts004 == "1" and len(out.finished_at) == nodes:
            floors.append(max(f + _gap(f, r.plan.m, r.nodes, planned)
                              for f in out.finished_at.values()))
    cpu = time.perf_counter() - t0
    print(f"loss {loss:.0%} (planned for {planned:.0%}), TS004 v{ts004} nodes: M = {p0.m} "
          f"fragments of {p0.frag_size} B, first redundancy {p0.redundancy}; limit "
          f"M/(1-p) = {ideal:.1f} fragments, {ideal_air:.0f} s airtime, "
          f"{ideal_wall / 60:.1f} min at {EU868_RX2_DUTY_CYCLE:.0%} duty cycle")
    print(f"  sessions {sessions} x {nodes} node(s): success {ok}/{sessions} "
          f"({ok / sessions:.1%}); status rounds median {statistics.median(rounds):.0f}, "
          f"max {max(rounds)}")
    p95 = pct(ratios, 0.95)
    verdict = "meets" if p95 <= 1.05 else "MISSES"
    print(f"  fragments sent / (M/(1-p)): median {statistics.median(ratios):.3f}  "
          f"p95 {p95:.3f} ({verdict} 1.05)  max {max(ratios):.3f}")
    print(f"  airtime: median {statistics.median(airs):.0f} s  p95 {pct(airs, 0.95):.0f} s  "
          f"(/ limit {statistics.median(airs) / ideal_air:.3f}); total over all sessions "
          f"{sum(airs) / 3600:.1f} h")
    print(f"  broadcast wall time: median {statistics.median(walls) / 60:.1f} min  p95 "
          f"{pct(walls, 0.95) / 60:.1f} min  (/ limit {statistics.median(walls) / ideal_wall:.3f})"
          f"; whole campaign incl. setup median {statistics.median(totals) / 60:.1f} min")
    print(f"  where they go: first round {statistics.median(firsts):.0f}; top-ups median "
          f"{statistics.median(tops):.0f} p95 {pct(tops, 0.95):.0f} fragments in "
          f"{sum(1 for t in tops if t)} sessions; {sum(confirms)} top-ups of <= 8 frames "
          "(confirming)")
    if floors:
        print(f"  v1 floor, decoder's finishing index + done gap: median "
              f"{statistics.median(floors) / ideal:.3f}  p95 {pct(floors, 0.95) / ideal:.3f} "
              "(no v1 completion rule can send fewer)")
    print(f"  simulation cost: {cpu:.1f} s CPU for {sessions} sessions")


def _gap(finished: int, m: int, nodes: dict, planned: float) -> int:
    """The done gap ferry's rule asks of a node with its reported data loss."""
    missing = max(n.missing for n in nodes.values()) if nodes else 0
    seen = min(finished, m)
    lost = min(max(missing, 0), seen) + PRIOR_FRAMES * planned
    return posterior_gap(lost, seen + PRIOR_FRAMES - lost)


def small(loss: float, sessions: int, ts004: str) -> None:
    print(f"small blocks, loss {loss:.0%} (planned for it), TS004 v{ts004}, {sessions} "
          "sessions each:")
    print("     M  planned R  extra p50  extra p95  sent/(M/(1-p)) p95  ideal p95 extra  "
          "ideal/(M/(1-p))  success")
    for m in SMALL_MS:
        size = m * 239 - 7
        image = random.Random(m).randbytes(size)
        p0 = plan(size, 5, loss)
        extras, ok = [], 0
        for seed in range(sessions):
            out = simulate(image, nodes=1, loss=loss, seed=5000 + seed,
                           opts=Options(dr=5, loss_estimate=loss), ts004=ts004)
            ok += int(out.report.ok and out.rebuilt == 1)
            extras.append(out.report.fragments_sent - p0.m)
        limit = p0.m / (1 - loss)
        ideal = ideal_p95(p0.m, loss)
        e95 = pct(extras, 0.95)
        print(f"  {p0.m:4d}  {p0.redundancy:9d}  {statistics.median(extras):9.0f}  {e95:9.0f}  "
              f"{(p0.m + e95) / limit:18.3f}  {ideal - p0.m:15d}  {ideal / limit:15.3f}  "
              f"{ok}/{sessions}")


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--sessions", type=int, default=200)
    ap.add_argument("--small-sessions", type=int, default=400)
    ap.add_argument("--nodes", type=int, default=1)
    ap.add_argument("--size", type=int, default=100 * 1024)
    ap.add_argument("--ts004", choices=("1", "2"), nargs="*", default=["1", "2"])
    a = ap.parse_args()
    for ts in a.ts004:
        for loss, planned in ((0.10, 0.10), (0.20, 0.20), (0.20, 0.10)):
            run(loss, planned, a.sessions, a.nodes, a.size, ts)
        for loss in (0.10, 0.20):
            small(loss, a.small_sessions, ts)


if __name__ == "__main__":
    main()
