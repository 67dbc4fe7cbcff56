"""The v1 completion rule never calls a node done before its own decoder finished.

TS004 v1 nodes give no "done" signal; ferry infers it from NbFragReceived stopping for
a gap of fragments (``session.posterior_gap``), and a top-up that only confirms when
every node may be finished. The simulated node's decoder (LoRaMac-node's FragDecoder
model in ``ferry.sim.lora``) knows the truth: the index it finished on. A node ferry
calls complete must have frozen exactly there, and hold the image. The 1e-4 risk is
for independent loss; on bursty links (Gilbert-Elliott) a gap rule is weaker, which
docs/transport-lora.md states (raise ``done_gap`` there).
"""

from __future__ import annotations

import math
import random
import re

from ferry.proxy.lora.session import FALSE_DONE, Campaign, Device, Options, posterior_gap
from ferry.sim.lora.network import Bernoulli, GilbertElliott, SimClock, SimNetwork
from ferry.sim.lora.node import Node


def campaign(seed: int, *, nodes: int, loss: float, planned: float, burst: bool = False,
             done_gap: int | None = None) -> tuple[object, dict[str, Node], bytes]:
    rng = random.Random(seed)
    clock = SimClock()
    sim: dict[str, Node] = {}
    devices, channels = [], {}
    for i in range(nodes):
        eui = f"70b3d57ed007{seed & 0xFF:02x}{i:02x}"
        key = rng.randbytes(16)
        sim[eui] = Node(eui, key, clock_offset=rng.uniform(-300, 300),
                             rng=random.Random(seed * 100 + i))
        devices.append(Device(eui, key))
        channels[eui] = (GilbertElliott(p_gb=0.2 * loss / (1 - loss), p_bg=0.2) if burst
                         and i % 2 else Bernoulli(loss))
    net = SimNetwork(clock, sim, channels, seed=seed)
    opts = Options(answer_timeout=120, start_margin=150, status_timeout=20,
                   loss_estimate=planned, ts004_version=1, done_gap=done_gap)
    image = random.Random(seed).randbytes(24_000)  # M = 101 at DR5
    report = Campaign(net, clock, "g", devices, opts).run(image)
    return report, sim, image


def false_dones(report, sim: dict[str, Node], image: bytes) -> list[str]:
    """Nodes called complete whose decoder had not finished on the index they froze at."""
    bad = []
    for eui, res in report.nodes.items():  # type: ignore[attr-defined]
        if res.state != "complete":
            continue
        m = re.search(r"stopped at (\d+)", res.message)
        froze = int(m.group(1)) if m else None
        finished = min(sim[eui].finished_at.values(), default=None)
        if froze != finished or sim[eui].image != image:
            bad.append(f"{eui}: called done at N={froze}, decoder finished at {finished}")
    return bad


def test_no_v1_node_is_called_done_before_its_decoder_finished():
    complete = confirms = 0
    for seed in range(60):
        loss, planned = ((0.2, 0.2), (0.25, 0.1), (0.3, 0.3), (0.1, 0.1))[seed % 4]
        report, sim, image = campaign(seed, nodes=4, loss=loss, planned=planned)
        assert false_dones(report, sim, image) == []
        complete += sum(r.state == "complete" for r in report.nodes.values())
        confirms += sum(1 for b in report.bursts[1:] if b <= 8)
    assert complete >= 230  # of 240: the rule does finish nodes, it is not just silent
    assert confirms > 0  # confirm-only top-ups happened and were checked too


def test_the_check_catches_a_gap_too_short():
    # a gap of one fragment at 50 % loss (planned for 10 %: most nodes are unfinished
    # at each status round) calls unfinished nodes done: the same check
    # must see it, or the test above proves nothing
    caught = []
    for seed in range(100, 124):
        report, sim, image = campaign(seed, nodes=4, loss=0.5, planned=0.1, done_gap=1)
        caught += false_dones(report, sim, image)
    assert len(caught) >= 5  # 14 with these seeds


def test_posterior_gap_keeps_the_averaged_risk_under_the_limit():
    for lost, heard in ((90, 359), (107, 342), (45, 404), (0, 449), (300, 149)):
        g = posterior_gap(lost, heard)
        a, b = lost + 0.5, heard + 0.5
        risk = math.prod((a + i) / (a + b + i) for i in range(g))
        assert risk <= FALSE_DONE
        # Monte-Carlo of E[p^g] over the Beta posterior agrees with the product
        rng = random.Random(g)
        mc = sum(rng.betavariate(a, b) ** g for _ in range(20_000)) / 20_000
        assert abs(mc - risk) <= 0.1 * risk
    # ~20 % loss on 449 frames: 6 frames (7e-5), where p^g at p's upper 95 % bound
    # (0.233) asked for 7
    assert posterior_gap(90, 359) == 6
    assert posterior_gap(0, 449) == 4  # never below the floor for a quiet link
