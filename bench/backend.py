"""Device controllers' polling cost: requests per hour and pick-up latency for 1, 10 and 200
devices behind one gateway, against tests/ddi_server.py (issue #19); and what a campaign
saves on the radio: one LoRa multicast session for 100 nodes against 100 sessions of one.

Run: .venv/bin/python bench/backend.py [--hours 2] [--sleep 60] [--per-poll 10]
                                       [--probes 40] [--seed 1]
                                       [--campaign-nodes 100] [--image 4096]

The campaign rows run the real ``lora`` transport and FUOTA session code against the
LoRa simulator (sim/lora: nodes with LoRaMac-node's FragDecoder, 5 % downlink loss per
node, simulated time): once with every node in one session (what ferry's campaign
coalescing does with a rollout's 100 node actions), then once per node (what 100 device
actions flashed one by one would cost). Frames and time on air are the simulator's and
the session's own counts (``Report.airtime``: the multicast fragments' and status
requests' time on air at the data rate, which the 10 % duty cycle of the RX2 sub-band
turns into wall time). Printed: the ratio unicast ÷ campaign, against the node count.

Real HTTP to the OpenAPI-checked fixture on loopback (every request and answer is
validated, and counted by the server), in simulated time: the poller's clock is a
variable the bench advances to the next due poll, so the numbers do not depend on this
machine. The gateway's own controller is polled every ``--sleep`` seconds, each device
controller gets the same ``polling.sleep`` from the server (the worst case: hawkBit can
give devices a slower one), and ``--probes`` device actions are assigned at random
times to random devices (the next device without an open probe; a probe is dropped when
every device has one); a probe is picked up when that device's poll fetches its
deploymentBase.

Requests are counted once every device has had its first poll (each device's first
contact also sends its configData: one request per device per ferryd start, not
counted in the steady state). Printed against limits of the same run:
- requests per hour ÷ what N devices polled at the gateway's rate would cost
  ((1 + N) polls per gateway interval): the "N times" ferry avoids;
- requests per hour ÷ the bound ferry promises, (1 + per_poll) polls per gateway
  interval (plus one deploymentBase fetch and one feedback per probe);
- pick-up latency (median, p95, max) ÷ one gateway poll interval, and ÷ the expected
  latency of the budget, max(1, N / per_poll) gateway intervals.
"""

from __future__ import annotations

import argparse
import io
import random
import statistics
import sys
import tempfile
import types
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from ddi_server import DdiFixture, validate_exchange

from ferry.daemon.backend import ddi
from ferry.daemon.backend.devices import DevicePoller
from ferry.daemon.config import config_from_dict
from ferry.daemon.journal import Journal

TOKEN = "bench-token"


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def hhmmss(seconds: int) -> str:
    return f"{seconds // 3600:02d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def run(n: int, *, hours: float, sleep: int, per_poll: int, probes: int,
        seed: int) -> dict[str, float]:
    rng = random.Random(seed)
    server = DdiFixture(controller_id="gw1", gateway_token=TOKEN).start()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            cfg = config_from_dict({
                "gateway": {"compatible": "bench-gw", "data_dir": tmp},
                "backend": {"url": server.url, "controller_id": "gw1",
                            "gateway_token": TOKEN, "device_controllers": True,
                            "device_polls_per_poll": per_poll, "poll_jitter": 0.1},
                "target": [{"name": f"n{i}", "transport": "zigbee",
                            "address": f"0x{i:016x}"} for i in range(n)]})
            server.sleep = hhmmss(sleep)
            for i in range(n):
                server.device(f"gw1.n{i}").sleep = hhmmss(sleep)
            clock = Clock()
            ctx = types.SimpleNamespace(config=cfg, journal=Journal.open(tmp), progress=None)
            poller = DevicePoller(
                cfg, ctx, clock=clock, rng=rng.random, inspect=lambda tc: "",
                client_factory=lambda s: ddi.DdiClient(s, on_exchange=validate_exchange))
            gateway = ddi.DdiClient(ddi.DdiSettings.from_config(cfg.backend),
                                    on_exchange=validate_exchange)
            end = hours * 3600.0
            # steady state after every device's first poll (its configData goes up once)
            expected = max(1.0, n / per_poll) * sleep
            warm = expected + sleep
            schedule = sorted((rng.uniform(warm, end - 1.5 * expected - sleep),
                               rng.randrange(n)) for _ in range(probes))
            open_probes: dict[tuple[str, str], float] = {}  # (device, aid) -> assigned at
            latencies: list[float] = []
            gw_due = 0.0
            counted_from: int | None = None
            while clock.now < end:
                if counted_from is None and clock.now >= warm:
                    counted_from = len(server.log)
                while schedule and schedule[0][0] <= clock.now:
                    at, i = schedule.pop(0)
                    busy = {cid for cid, _ in open_probes}
                    free = [j for j in range(n) if f"gw1.n{(i + j) % n}" not in busy]
                    if not free:  # every device has a probe open: this one is dropped
                        continue
                    dev = server.device(f"gw1.n{(i + free[0]) % n}")
                    aid = dev.assign([("firmware", "fw", "1", {"fw.swu": b"x"})],
                                     update="skip")
                    open_probes[(dev.controller_id, aid)] = at
                if clock.now >= gw_due:
                    poll = gateway.poll()
                    interval = gateway.next_sleep(poll, rng.random)
                    poller.gateway_interval(float(sleep))
                    gw_due = clock.now + interval
                nxt = poller.step()
                for (cid, aid), at in list(open_probes.items()):
                    dev = server.device(cid)
                    if any(m == "GET" and p.endswith(f"/deploymentBase/{aid}")
                           for m, p in dev.requests):
                        latencies.append(clock.now - at)
                        dev.actions[aid].state = "closed"  # the operator's probe is done
                        del open_probes[(cid, aid)]
                upcoming = [gw_due] + ([nxt] if nxt is not None else [])
                upcoming += [t for t, _ in schedule[:1]]
                if counted_from is None:
                    upcoming.append(warm)
                clock.now = max(clock.now + 0.001, min(upcoming))
            for d in [server, *server.devices.values()]:
                if d.violations:
                    raise SystemExit(f"OpenAPI violations: {d.violations[:3]}")
            requests = len(server.log) - (counted_from or 0)
    finally:
        server.stop()
    span_h = (end - warm) / 3600.0
    per_hour = requests / span_h
    intervals_per_hour = 3600.0 / sleep
    return {
        "n": n, "per_hour": per_hour,
        "naive": (1 + n) * intervals_per_hour,
        "bound": (1 + per_poll) * intervals_per_hour + 2 * probes / span_h,
        "median": statistics.median(latencies) if latencies else float("nan"),
        "p95": sorted(latencies)[int(0.95 * (len(latencies) - 1))] if latencies
        else float("nan"),
        "max": max(latencies) if latencies else float("nan"),
        "expected": expected,
        "missed": float(len(open_probes)),
    }


def lora_sessions(n: int, size: int, seed: int, *, one_session: bool) -> dict[str, float]:
    """Flash ``n`` simulated nodes one image: in one session, or one session each."""
    import json as _json

    from ferry.proxy.lora.transport import LoraTransport
    from ferry.proxy.transport import Target
    from ferry.sim.lora.network import Bernoulli, SimClock, SimNetwork
    from ferry.sim.lora.node import Node

    rng = random.Random(seed)
    clock = SimClock()
    nodes, keys = {}, {}
    for i in range(n):
        eui = f"70b3d57e{i:08x}"
        key = rng.randbytes(16)
        nodes[eui] = Node(eui, key, clock_offset=rng.uniform(-30, 30))
        keys[eui] = key.hex()
    net = SimNetwork(clock, nodes, {e: Bernoulli(0.05) for e in nodes}, seed=seed)
    image = rng.randbytes(size)
    out = {"sessions": 0.0, "fragments": 0.0, "airtime": 0.0, "wall": 0.0, "ok": 0.0}
    with tempfile.TemporaryDirectory() as tmp:
        keys_file = Path(tmp) / "keys.json"
        keys_file.write_text(_json.dumps(keys))
        groups = [list(nodes)] if one_session else [[e] for e in nodes]
        for devs in groups:
            t = LoraTransport({"keys_file": str(keys_file), "application_id": "bench",
                               "dr": "5", "answer_timeout": "120", "start_margin": "200"},
                              network_factory=lambda _o: net, clock=clock)
            start = clock.now()
            res = t.flash(Target("grp", "lora", "grp", options={"devices": ",".join(devs)}),
                          io.BytesIO(image), progress=lambda *_a: None)
            report = t.last_report
            assert report is not None
            out["sessions"] += 1
            out["fragments"] += report.fragments_sent
            out["airtime"] += report.airtime
            out["wall"] += clock.now() - start
            out["ok"] += sum(1 for k, v in res.detail.items()
                             if k.startswith("node.") and v.startswith("complete"))
    out["multicast_frames"] = float(net.stats.multicast)
    out["unicast_frames"] = float(net.stats.unicast)
    out["uplinks"] = float(net.stats.uplinks)
    return out


def campaign_rows(n: int, size: int, seed: int) -> None:
    one = lora_sessions(n, size, seed, one_session=True)
    each = lora_sessions(n, size, seed, one_session=False)
    print(f"\nLoRa: {n} nodes, one {size}-byte image, DR5, 5 % loss per node (sim/lora)")
    print(f"{'':>20} {'sessions':>8} {'mc frames':>9} {'uc frames':>9} {'uplinks':>8} "
          f"{'airtime':>8} {'wall':>8} {'nodes ok':>8}")
    for label, r in (("1 campaign", one), (f"{n} unicast sessions", each)):
        print(f"{label:>20} {int(r['sessions']):>8} {int(r['multicast_frames']):>9} "
              f"{int(r['unicast_frames']):>9} {int(r['uplinks']):>8} {r['airtime']:>7.0f}s "
              f"{r['wall'] / 3600:>7.1f}h {int(r['ok']):>8}")
    frames = each["multicast_frames"] / max(one["multicast_frames"], 1.0)
    air = each["airtime"] / max(one["airtime"], 1e-9)
    wall = each["wall"] / max(one["wall"], 1e-9)
    print(f"unicast ÷ campaign: multicast frames {frames:.1f}x, airtime {air:.1f}x, "
          f"wall {wall:.1f}x (limit: {n}x, the node count)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--hours", type=float, default=2.0)
    ap.add_argument("--sleep", type=int, default=60, help="gateway and device polling.sleep")
    ap.add_argument("--per-poll", type=int, default=10, help="device_polls_per_poll")
    ap.add_argument("--probes", type=int, default=40)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--campaign-nodes", type=int, default=100)
    ap.add_argument("--image", type=int, default=4096, help="campaign image bytes")
    ap.add_argument("--campaign-only", action="store_true")
    args = ap.parse_args()
    if args.campaign_only:
        campaign_rows(args.campaign_nodes, args.image, args.seed)
        return
    print(f"simulated {args.hours} h, polling.sleep {args.sleep} s for the gateway and every "
          f"device, device_polls_per_poll {args.per_poll}, {args.probes} probe actions")
    print(f"{'devices':>7} {'req/h':>8} {'/naive':>7} {'/bound':>7} {'pickup med':>10} "
          f"{'p95':>7} {'max':>7} {'max/gw':>7} {'max/exp':>7} {'missed':>6}")
    for n in (1, 10, 200):
        r = run(n, hours=args.hours, sleep=args.sleep, per_poll=args.per_poll,
                probes=args.probes, seed=args.seed)
        print(f"{n:>7} {r['per_hour']:>8.0f} {r['per_hour'] / r['naive']:>7.2f} "
              f"{r['per_hour'] / r['bound']:>7.2f} {r['median']:>9.0f}s {r['p95']:>6.0f}s "
              f"{r['max']:>6.0f}s {r['max'] / args.sleep:>7.2f} "
              f"{r['max'] / r['expected']:>7.2f} {int(r['missed']):>6}")
    print("req/h: every request the server saw (polls, configData, deploymentBase, feedback) "
          "after every device's first poll; /naive: ÷ (1+N) polls per gateway interval; /bound: ÷ "
          "(1+per_poll) per interval + 2 per probe; max/gw: pick-up ÷ the gateway interval; "
          "max/exp: ÷ max(1, N/per_poll) intervals (the jittered sleep may add 10 %)")
    campaign_rows(args.campaign_nodes, args.image, args.seed)


if __name__ == "__main__":
    main()
