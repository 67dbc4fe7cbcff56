"""``ferry sim lora``: a FUOTA campaign from ferry's LoRa transport to simulated nodes.

Discrete-event simulated time: a 30-minute duty-cycled broadcast runs in a fraction of
a second, and the report gives simulated airtime and wall time. ``simulate`` is where
ferry.proxy.lora and ferry.sim.lora meet; tests and bench/lora.py use it too.
"""

from __future__ import annotations

import argparse
import json
import random
from dataclasses import dataclass, field

from ferry.proxy.lora.errors import LoraError
from ferry.proxy.lora.scheduler import NodeLimits
from ferry.proxy.lora.session import Campaign, Device, Options, Report
from ferry.sim.lora.decoder import STOCK, Limits
from ferry.sim.lora.network import Bernoulli, Channel, GilbertElliott, SimClock, SimNetwork
from ferry.sim.lora.node import Node


@dataclass
class SimOutcome:
    report: Report
    rebuilt: int  # nodes whose rebuilt image equals the one sent
    nodes: int
    # per node, the fragment index its decoder finished on (the simulator's ground truth)
    finished_at: dict[str, int] = field(default_factory=dict)


def simulate(image: bytes, *, nodes: int = 10, loss: float = 0.1, burst: bool = False,
             late: int = 0, seed: int = 1, opts: Options | None = None,
             clock_spread: float = 300.0, uplink_period: float = 60.0,
             ts004: str = "1", limits: Limits | None = None) -> SimOutcome:
    """One campaign; `burst` uses Gilbert-Elliott loss with the same mean as `loss`.

    `ts004` is the nodes' TS004 build: "1", "2", or "mixed" (odd nodes v2); `limits`
    their FragDecoder limits (``decoder.STOCK``: LoRaMac-node as shipped).
    """
    rng = random.Random(seed)
    clock = SimClock()
    sim_nodes: dict[str, Node] = {}
    channels: dict[str, Channel] = {}
    devices = []
    for i in range(nodes):
        eui = f"70b3d57ed0{seed & 0xFFFF:04x}{i:04x}"
        key = rng.randbytes(16)
        sim_nodes[eui] = Node(eui, key, clock_offset=rng.uniform(-clock_spread, clock_spread),
                              join_delay=rng.uniform(60, 600) if i < late else 0.0,
                              rng=random.Random(rng.random()),
                              ts004_version=2 if ts004 == "2" or (ts004 == "mixed" and i % 2)
                              else 1,
                              limits=limits or Limits())
        devices.append(Device(eui, key))
        if burst and loss > 0:
            # bad state loses everything, bursts last 5 frames on average
            p_bg = 0.2
            channels[eui] = GilbertElliott(p_gb=p_bg * loss / (1 - loss), p_bg=p_bg)
        else:
            channels[eui] = Bernoulli(loss)
    net = SimNetwork(clock, sim_nodes, channels, uplink_period=uplink_period, seed=seed)
    o = opts or Options()
    report = Campaign(net, clock, "sim-group", devices, o).run(image)
    rebuilt = sum(1 for n in sim_nodes.values() if n.image == image)
    finished = {eui: min(n.finished_at.values()) for eui, n in sim_nodes.items()
                if n.finished_at}
    return SimOutcome(report, rebuilt, nodes, finished)


def run(args: argparse.Namespace) -> int:
    image = random.Random(args.seed).randbytes(args.size)
    opts = Options(dr=args.dr, loss_estimate=args.loss_estimate, duty_cycle=args.duty_cycle)
    if args.stock_limits:
        opts.limits = NodeLimits(STOCK.max_size, STOCK.max_nb, STOCK.max_redundancy)
    try:
        out = simulate(image, nodes=args.nodes, loss=args.loss, burst=args.burst,
                       late=args.late, seed=args.seed, opts=opts, ts004=args.ts004,
                       limits=STOCK if args.stock_limits else None)
    except LoraError as err:
        print(f"ferry sim lora: {err}")
        return 1
    r = out.report
    result = {
        "nodes": out.nodes, "rebuilt": out.rebuilt, "ok": r.ok,
        "uncoded": r.plan.m, "frag_size": r.plan.frag_size, "planned_parity": r.plan.redundancy,
        "fragments_sent": r.fragments_sent, "status_rounds": r.status_rounds,
        "airtime_s": round(r.airtime, 1), "wall_s": round(r.wall_time, 1),
        "per_node": {e: {"state": n.state, "ts004": n.version, "loss": round(n.loss, 3),
                         "message": n.message}
                     for e, n in r.nodes.items()},
    }
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        print(f"{out.rebuilt}/{out.nodes} nodes rebuilt {args.size} bytes: {r.plan.m} uncoded "
              f"fragments of {r.plan.frag_size} B + {r.fragments_sent - r.plan.m} parity, "
              f"{r.status_rounds} status rounds; airtime {r.airtime:.0f} s, "
              f"wall {r.wall_time / 60:.1f} min (simulated, DR{args.dr}, "
              f"{args.duty_cycle:.0%} duty cycle)")
    return 0 if r.ok and out.rebuilt == out.nodes else 1
