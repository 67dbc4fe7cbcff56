"""Whole FUOTA campaigns against simulated nodes (their own parsers, keys and decoder)."""

from __future__ import annotations

import io
import itertools
import json
import random

import pytest

from ferry.proxy.lora import fragmentation, multicast
from ferry.proxy.lora.airtime import downlink_airtime
from ferry.proxy.lora.errors import LoraError
from ferry.proxy.lora.session import Campaign, Device, Options
from ferry.proxy.lora.transport import LoraTransport, create
from ferry.proxy.registry import get_transport
from ferry.proxy.transport import Target, no_progress
from ferry.sim.lora.network import Bernoulli, GilbertElliott, SimClock, SimNetwork
from ferry.sim.lora.node import Node


def population(n, seed, *, loss=0.1, clock=None, **net_kw):
    rng = random.Random(seed)
    clock = clock or SimClock()
    nodes, devices, channels = {}, [], {}
    for i in range(n):
        eui = f"70b3d57ed005{seed:02x}{i:02x}"
        key = rng.randbytes(16)
        nodes[eui] = Node(eui, key, clock_offset=rng.uniform(-300, 300),
                          rng=random.Random(seed * 100 + i))
        devices.append(Device(eui, key))
        channels[eui] = Bernoulli(loss)
    net = SimNetwork(clock, nodes, channels, seed=seed, **net_kw)
    return clock, net, nodes, devices


def fast(**kw):
    o = Options(answer_timeout=120, start_margin=150, status_timeout=20)
    for k, v in kw.items():
        setattr(o, k, v)
    return o


def test_group_with_random_burst_and_late_nodes_rebuilds_image():
    clock, net, nodes, devices = population(5, 1)
    euis = list(nodes)
    net.channels[euis[1]] = GilbertElliott(p_gb=0.03, p_bg=0.25)  # bursts of ~4 frames
    nodes[euis[2]].join_delay = 200  # switched to class C late: misses ~50 fragments
    image = random.Random(2).randbytes(20_000)
    report = Campaign(net, clock, "g1", devices, fast()).run(image)
    assert report.ok, report.nodes
    assert all(node.image == image for node in nodes.values())
    assert all(node.synced for node in nodes.values())
    assert report.status_rounds >= 1
    assert report.fragments_sent > report.plan.initial  # the late node forced a top-up
    assert report.airtime == pytest.approx(report.fragments_sent * report.plan.airtime
                                           + report.status_rounds
                                           * downlink_airtime(2, 5), rel=1e-6)


def test_duty_cycle_spacing_and_frames_on_the_wire():
    clock, net, _nodes, devices = population(2, 3, loss=0.0)
    net.keep_trace = True
    image = bytes(range(256)) * 8
    report = Campaign(net, clock, "g1", devices, fast(loss_estimate=0.0)).run(image)
    assert report.ok
    mc = [t for t in net.trace if t[1] == "multicast"]
    frags = [t for t in mc if t[4][0] == 0x08]
    assert [int.from_bytes(t[4][1:3], "little") & 0x3FFF for t in frags] == list(
        range(1, len(frags) + 1))  # N from 1, in order
    for (t0, *_a, p0), (t1, *_b) in itertools.pairwise(mc):
        air = downlink_airtime(len(p0), 5)
        assert t1 - t0 >= air / 0.10 - 1e-6  # 10 % duty cycle on the g3 sub-band
    uni = {t[4][0] for t in net.trace if t[1] == "unicast" and t[3] == 200}
    assert uni == {0x02, 0x04}  # McGroupSetupReq, McClassCSessionReq


def test_top_up_when_nodes_lose_more_than_planned():
    clock, net, nodes, devices = population(3, 4, loss=0.3)
    image = random.Random(4).randbytes(30_000)
    report = Campaign(net, clock, "g", devices, fast(loss_estimate=0.0)).run(image)
    assert report.ok
    assert report.status_rounds >= 2
    assert max(n.loss for n in report.nodes.values()) > 0.2  # learnt from FragSessionStatus
    assert all(node.image == image for node in nodes.values())


def test_lost_unicasts_are_resent():
    clock, net, _nodes, devices = population(4, 5, unicast_loss=0.3)
    image = random.Random(5).randbytes(5_000)
    report = Campaign(net, clock, "g", devices, fast(attempts=8)).run(image)
    assert report.ok
    assert net.stats.unicast_lost > 0


def test_wrong_root_key_and_absent_node_are_reported_not_fatal():
    clock, net, nodes, devices = population(3, 6)
    bad = Device(devices[0].dev_eui, bytes(16))  # ferry's key differs from the node's
    absent = Device("70b3d57ed00fffff", bytes(range(16)))
    image = random.Random(6).randbytes(4_000)
    report = Campaign(net, clock, "g", [bad, *devices[1:], absent],
                      fast(max_rounds=2, attempts=2)).run(image)
    assert not report.ok
    assert report.nodes[devices[1].dev_eui].state == "complete"
    assert report.nodes[devices[2].dev_eui].state == "complete"
    assert report.nodes[bad.dev_eui].state == "incomplete"  # could not decrypt the group
    assert nodes[bad.dev_eui].image is None
    assert report.nodes[absent.dev_eui].state == "failed"
    assert "AppTimeReq" in report.nodes[absent.dev_eui].message


def test_mc_key_encryption_reaches_node_as_sent():
    clock, net, nodes, devices = population(1, 7, loss=0.0)
    key = bytes(range(100, 116))
    Campaign(net, clock, "g", devices, fast(mc_key=key, mc_addr=0x26011234)).run(b"x" * 300)
    node = next(iter(nodes.values()))
    assert node.groups[0].addr == 0x26011234
    assert node.groups[0].app_s_key == multicast.mc_app_s_key(key, 0x26011234)


def write_keys(tmp_path, devices):
    path = tmp_path / "keys.json"
    path.write_text(json.dumps({d.dev_eui: d.root_key.hex() for d in devices}))
    return str(path)


def test_transport_flash_inspect_and_skip(tmp_path):
    clock, net, nodes, devices = population(3, 8)
    t = LoraTransport({"answer_timeout": "120", "start_margin": "150",
                       "state_dir": str(tmp_path / "state")},
                      network_factory=lambda _o: net, clock=clock)
    target = Target("sensors", "lora", "grp-1", options={
        "devices": ",".join(d.dev_eui.upper() for d in devices),
        "keys_file": write_keys(tmp_path, devices), "spec_version": "2.1.0"})
    image = random.Random(8).randbytes(8_000)
    seen = []
    result = t.flash(target, io.BytesIO(image), progress=lambda d, n, m: seen.append(m))
    assert result.ok and result.version == "2.1.0", result
    assert "3/3 nodes" in result.message
    assert {"clock sync", "multicast setup", "fragments"} <= set(seen)
    assert all(n.image == image for n in nodes.values())
    state = t.inspect(target)
    assert state.reachable and state.version == "2.1.0"
    assert set(state.detail.values()) == {"complete"}
    again = t.flash(target, io.BytesIO(image), progress=no_progress)
    assert again.skipped and again.ok


def test_transport_option_errors(tmp_path):
    t = create({})
    with pytest.raises(LoraError, match="devices"):
        t.flash(Target("x", "lora", "g"), io.BytesIO(b"1"), progress=no_progress)
    with pytest.raises(LoraError, match="keys_file"):
        t.flash(Target("x", "lora", "g", options={"devices": "01"}), io.BytesIO(b"1"),
                progress=no_progress)
    keys = tmp_path / "k.json"
    keys.write_text(json.dumps({"0102030405060708": "abcd"}))
    with pytest.raises(LoraError, match="32 hex"):
        t.flash(Target("x", "lora", "g", options={"devices": "0102030405060708",
                                                   "keys_file": str(keys)}),
                io.BytesIO(b"1"), progress=no_progress)
    assert get_transport("lora", {"group": "g9", "devices": "01"}).discover()[0].address == "g9"


def test_status_request_goes_to_the_group_with_all_participants():
    clock, net, _nodes, devices = population(1, 9, loss=0.0)
    net.keep_trace = True
    Campaign(net, clock, "g", devices, fast(frag_index=2)).run(b"y" * 1000)
    status = [t[4] for t in net.trace if t[1] == "multicast" and t[4][0] == 0x01]
    assert status and status[0] == fragmentation.frag_session_status_req(
        2, all_participants=True) == bytes([0x01, 0x05])


def test_next_campaign_plans_for_the_loss_nodes_reported(tmp_path):
    clock, net, nodes, devices = population(3, 10, loss=0.3)
    t = LoraTransport({"answer_timeout": "120", "start_margin": "150",
                       "state_dir": str(tmp_path)}, network_factory=lambda _o: net, clock=clock)
    opts = {"devices": ",".join(d.dev_eui for d in devices),
            "keys_file": write_keys(tmp_path, devices)}
    image = random.Random(10).randbytes(20_000)
    first = t.flash(Target("s", "lora", "g", options={**opts, "spec_version": "1"}),
                    io.BytesIO(image), progress=no_progress)
    assert first.ok
    saved = json.loads((tmp_path / "lora-g.json").read_text())
    assert 0.2 < saved["loss"] <= 0.5
    planned_first = t.last_report.plan.redundancy
    second = t.flash(Target("s", "lora", "g", options={**opts, "spec_version": "2"}),
                     io.BytesIO(image), progress=no_progress)
    assert second.ok
    assert t.last_report.plan.redundancy > 2 * planned_first
    assert all(n.image == image for n in nodes.values())
