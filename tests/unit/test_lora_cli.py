"""``ferry sim lora`` and ``ferry flash lora`` end to end (simulated nodes)."""

from __future__ import annotations

import json
import random

from ferry.daemon.cli import exitcodes
from ferry.daemon.cli.main import main
from ferry.proxy.lora import transport as lora_transport
from ferry.sim.lora.decoder import STOCK
from ferry.sim.lora.network import Bernoulli, SimClock, SimNetwork
from ferry.sim.lora.node import Node


def test_sim_lora_burst_and_late(capsys):
    rc = main(["sim", "lora", "--nodes", "4", "--size", "6000", "--burst", "--late", "1",
               "--seed", "3"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert out.startswith("4/4 nodes rebuilt 6000 bytes")


def test_sim_lora_json(capsys):
    assert main(["--json", "sim", "lora", "--nodes", "2", "--size", "3000", "--loss", "0.2"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["rebuilt"] == 2 and data["uncoded"] == 13 and data["frag_size"] == 239
    assert data["fragments_sent"] >= 13


def test_flash_lora_through_transport(tmp_path, monkeypatch, capsys):
    rng = random.Random(4)
    clock = SimClock()
    nodes, keys = {}, {}
    for i in range(2):
        eui = f"00000000000000a{i}"
        key = rng.randbytes(16)
        nodes[eui] = Node(eui, key, clock_offset=rng.uniform(-50, 50))
        keys[eui] = key.hex()
    net = SimNetwork(clock, nodes, {e: Bernoulli(0.1) for e in nodes}, seed=4)
    (tmp_path / "keys.json").write_text(json.dumps(keys))
    image = rng.randbytes(3000)
    (tmp_path / "fw.bin").write_bytes(image)
    seen = {}

    def fake_create(options):
        seen.update(options)
        return lora_transport.LoraTransport(options, network_factory=lambda _o: net, clock=clock)

    monkeypatch.setattr(lora_transport, "create", fake_create)
    rc = main(["flash", "lora", "grp", str(tmp_path / "fw.bin"), "--devices", ",".join(nodes),
               "--keys-file", str(tmp_path / "keys.json"), "--application-id", "app",
               "--answer-timeout", "120", "--start-margin", "200", "--dr", "4"])
    cap = capsys.readouterr()
    assert rc == 0, cap
    assert "done: 2/2 nodes" in cap.err
    assert "00000000000000a1: complete" in cap.out
    assert seen["dr"] == "4" and seen["application_id"] == "app"
    assert all(n.image == image for n in nodes.values())
    assert main(["flash", "lora", "grp", str(tmp_path / "none.bin"), "--devices", "x",
                 "--keys-file", "k", "--application-id", "a"]) == exitcodes.FAILED


def _stock_setup(tmp_path, monkeypatch, size):
    rng = random.Random(5)
    clock = SimClock()
    nodes, keys = {}, {}
    for i in range(2):
        eui = f"00000000000000b{i}"
        key = rng.randbytes(16)
        nodes[eui] = Node(eui, key, limits=STOCK, ts004_version=1 + i)
        keys[eui] = key.hex()
    net = SimNetwork(clock, nodes, {e: Bernoulli(0.05) for e in nodes}, seed=5)
    (tmp_path / "keys.json").write_text(json.dumps(keys))
    image = rng.randbytes(size)
    (tmp_path / "fw.bin").write_bytes(image)
    monkeypatch.setattr(lora_transport, "create", lambda o: lora_transport.LoraTransport(
        o, network_factory=lambda _o: net, clock=clock))
    args = ["flash", "lora", "grp", str(tmp_path / "fw.bin"), "--devices", ",".join(nodes),
            "--keys-file", str(tmp_path / "keys.json"), "--application-id", "app",
            "--answer-timeout", "120", "--start-margin", "200"]
    return nodes, image, args


def test_flash_lora_to_stock_nodes_says_not_enough_memory_per_node(tmp_path, monkeypatch,
                                                                   capsys):
    nodes, _image, args = _stock_setup(tmp_path, monkeypatch, 1_000)
    assert main(args) == exitcodes.FAILED
    out = capsys.readouterr().out
    for eui in nodes:
        assert f"{eui}: failed: FragSessionSetupReq refused: not enough memory" in out
    assert "frag_max_nb" in out


def test_flash_lora_with_stock_limits_plans_within_them(tmp_path, monkeypatch, capsys):
    nodes, image, args = _stock_setup(tmp_path, monkeypatch, 1_000)
    assert main([*args, "--node-limits", "stock"]) == 0, capsys.readouterr()
    assert all(n.image == image for n in nodes.values())
    _nodes, _image, args = _stock_setup(tmp_path, monkeypatch, 5_000)
    assert main([*args, "--node-limits", "stock"]) == exitcodes.FAILED
    assert "frag_max_nb = 21" in capsys.readouterr().err
