"""When ferry calls a node done, failed or refused: campaigns against reference-like nodes.

The simulated nodes answer as LoRaMac-node / STM32CubeWL do (see test_lora_node.py), so
a node that lost data fragments keeps MissingFrag > 0 after rebuilding; ferry must still
report it complete (v1: its NbFragReceived stops moving; v2: FragDataBlockReceivedReq),
report MatrixError and a bad MIC as failures, and say "not enough memory" per node.
"""

from __future__ import annotations

import io
import json
import random

import pytest

from ferry.proxy.lora import fragmentation
from ferry.proxy.lora.errors import ImageTooLarge
from ferry.proxy.lora.scheduler import STOCK_LIMITS
from ferry.proxy.lora.session import Campaign, Device, Options
from ferry.proxy.lora.transport import LoraTransport, campaign_options
from ferry.proxy.transport import Target, no_progress
from ferry.sim.lora.decoder import STOCK, Limits
from ferry.sim.lora.network import Bernoulli, SimClock, SimNetwork
from ferry.sim.lora.node import Node


def group(n, seed, *, loss=0.1, version=1, limits=None):
    rng = random.Random(seed)
    clock = SimClock()
    nodes, devices, channels = {}, [], {}
    for i in range(n):
        eui = f"70b3d57ed006{seed:02x}{i:02x}"
        key = rng.randbytes(16)
        v = version if version in (1, 2) else 1 + i % 2
        nodes[eui] = Node(eui, key, clock_offset=rng.uniform(-100, 100),
                          rng=random.Random(seed * 100 + i), ts004_version=v,
                          limits=limits or Limits())
        devices.append(Device(eui, key))
        channels[eui] = Bernoulli(loss)
    return clock, SimNetwork(clock, nodes, channels, seed=seed), nodes, devices


def fast(**kw):
    o = Options(answer_timeout=120, start_margin=150, status_timeout=20)
    for k, v in kw.items():
        setattr(o, k, v)
    return o


def test_v1_nodes_that_lost_data_are_complete_without_waiting_for_max_rounds():
    clock, net, nodes, devices = group(4, 1, loss=0.15)
    image = random.Random(1).randbytes(20_000)
    report = Campaign(net, clock, "g", devices, fast(max_rounds=8)).run(image)
    assert report.ok, report.nodes
    assert all(n.image == image for n in nodes.values())
    assert all(r.missing > 0 and r.version == 1 for r in report.nodes.values())
    assert all("NbFragReceived stopped" in r.message for r in report.nodes.values())
    assert report.status_rounds <= 4  # not 8 rounds of topping up a finished node


def test_v2_nodes_say_when_they_rebuilt_and_ferry_acknowledges():
    clock, net, nodes, devices = group(3, 2, version=2)
    net.keep_trace = True
    image = random.Random(2).randbytes(9_000)
    report = Campaign(net, clock, "g", devices, fast(session_cnt=7)).run(image)
    assert report.ok, report.nodes
    assert all(r.version == 2 and "MIC verified" in r.message for r in report.nodes.values())
    assert all(n.image == image for n in nodes.values())
    while net.receive(120) is not None:  # the queued answers reach the nodes: resends stop
        pass
    assert all(n.block_req_pending is None for n in nodes.values())
    acks = {t[2] for t in net.trace if t[1] == "unicast" and t[4] == b"\x04\x00"}
    assert acks == set(nodes)
    setups = [t[4] for t in net.trace if t[1] == "unicast" and t[4][:1] == b"\x02"
              and t[3] == 201]
    assert setups and all(len(s) == 17 for s in setups)


def test_mixed_group_speaks_each_node_its_version():
    clock, net, nodes, devices = group(4, 3, version=0)
    image = random.Random(3).randbytes(6_000)
    report = Campaign(net, clock, "g", devices, fast()).run(image)
    assert report.ok, report.nodes
    assert sorted(r.version for r in report.nodes.values()) == [1, 1, 2, 2]
    assert all(n.image == image for n in nodes.values())


def test_bad_mic_is_a_failure_not_done(monkeypatch):
    clock, net, _nodes, devices = group(2, 4, version=2, loss=0.0)
    monkeypatch.setattr(fragmentation, "data_block_mic", lambda *_a: 0x12345678)
    report = Campaign(net, clock, "g", devices, fast()).run(b"z" * 2_000)
    assert not report.ok
    assert all(r.state == "failed" and "MIC" in r.message for r in report.nodes.values())


def test_stock_nodes_refuse_todays_plan_and_ferry_says_so_per_node():
    clock, net, _nodes, devices = group(2, 5, limits=STOCK)
    report = Campaign(net, clock, "g", devices, fast()).run(bytes(5_000))
    assert not report.ok
    for r in report.nodes.values():
        assert r.state == "failed"
        assert "not enough memory" in r.message and "frag_max_nb" in r.message


def test_planning_within_stock_limits_fits_and_rebuilds():
    clock, net, nodes, devices = group(3, 6, limits=STOCK, loss=0.05)
    image = random.Random(6).randbytes(1_000)
    report = Campaign(net, clock, "g", devices, fast(limits=STOCK_LIMITS)).run(image)
    assert report.plan.frag_size <= 50 and report.plan.m <= 21
    assert report.ok, report.nodes
    assert all(n.image == image for n in nodes.values())


def test_too_big_for_the_limits_is_refused_before_anything_is_sent():
    clock, net, _nodes, devices = group(1, 7, limits=STOCK)
    with pytest.raises(ImageTooLarge, match="frag_max_nb = 21"):
        Campaign(net, clock, "g", devices, fast(limits=STOCK_LIMITS)).run(bytes(5_000))
    assert net.stats.unicast == 0


def test_more_lost_than_max_redundancy_is_failed_not_done():
    clock, net, nodes, devices = group(6, 8, limits=STOCK, loss=0.45)
    image = random.Random(8).randbytes(1_000)
    report = Campaign(net, clock, "g", devices, fast(limits=STOCK_LIMITS)).run(image)
    failed = [r for r in report.nodes.values() if r.state == "failed"]
    assert failed and all("MatrixError" in r.message for r in failed)
    for eui, r in report.nodes.items():
        if r.state == "complete":
            assert nodes[eui].image == image
        else:
            assert nodes[eui].image is None


def test_limit_options_and_session_counter_through_the_transport(tmp_path):
    o = campaign_options({"node_limits": "stock", "frag_max_redundancy": "9",
                          "ts004_version": "2", "session_cnt": "40"})
    assert (o.limits.max_frag_size, o.limits.max_nb_frag, o.limits.max_redundancy) == (50, 21, 9)
    assert (o.ts004_version, o.session_cnt) == (2, 40)
    for bad in ({"frag_max_nb": "0"}, {"node_limits": "big"}, {"ts004_version": "3"},
                {"session_cnt": "70000"}, {"frag_max_size": "x"}):
        with pytest.raises(Exception, match="lora option"):
            campaign_options(bad)
    clock, net, _nodes, devices = group(2, 9, version=2, loss=0.05)
    keys = tmp_path / "keys.json"
    keys.write_text(json.dumps({d.dev_eui: d.root_key.hex() for d in devices}))
    t = LoraTransport({"answer_timeout": "120", "start_margin": "150",
                       "state_dir": str(tmp_path)}, network_factory=lambda _o: net, clock=clock)
    opts = {"devices": ",".join(d.dev_eui for d in devices), "keys_file": str(keys),
            "force": "1"}
    image = random.Random(9).randbytes(3_000)
    assert t.flash(Target("s", "lora", "g", options=opts), io.BytesIO(image),
                   progress=no_progress).ok
    first = json.loads((tmp_path / "lora-g.json").read_text())["session_cnt"]
    # the counter moves on, so the nodes do not see a replay
    assert t.flash(Target("s", "lora", "g", options=opts), io.BytesIO(image),
                   progress=no_progress).ok
    assert json.loads((tmp_path / "lora-g.json").read_text())["session_cnt"] == first + 1
    # forcing an old counter is refused by every node, with the reason
    res = t.flash(Target("s", "lora", "g", options={**opts, "session_cnt": str(first)}),
                  io.BytesIO(image), progress=no_progress)
    assert not res.ok
    assert all("replay" in v for k, v in res.detail.items() if k.startswith("node."))


def test_session_time_past_on_arrival_is_reported_with_the_fix():
    clock, net, _nodes, devices = group(2, 10, loss=0.0)
    # class A downlinks wait up to a minute for an uplink: 5 s of margin is too little
    report = Campaign(net, clock, "g", devices, fast(start_margin=5, attempts=1)).run(b"q" * 900)
    late = [r for r in report.nodes.values() if r.state == "failed"]
    assert late and all("SessionTime already past" in r.message and "start_margin" in r.message
                        for r in late)
