"""Per-node results of radio targets (a LoRa group, a Zigbee population) carried from
``FlashResult.detail`` through the journal into combined health, configData,
``ferry status``, ``ferry devices`` and the DDI feedback details."""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path
from typing import Any, BinaryIO

import pytest
from install_gateway import make_gateway

from ferry.daemon.backend import health as health_mod
from ferry.daemon.backend.pipeline_adapter import PipelineGateway, node_outcomes
from ferry.daemon.cli.main import main
from ferry.daemon.cli.status import collect_standalone, render
from ferry.daemon.install.pipeline import make_context
from ferry.daemon.install.proxyphase import node_rows, run
from ferry.daemon.journal import SCHEMA_VERSION, Journal
from ferry.proxy.transport import FlashResult, Progress, Target, TargetState

EUIS = ["70b3d57ed0050001", "70b3d57ed0050002", "70b3d57ed0050003"]

TARGETS = """
[[target]]
name = "field"
transport = "lora"
address = "grp-1"

[[target]]
name = "mcu"
transport = "smp-serial"
address = "/dev/ttyUSB0"
"""


class GroupTransport:
    """Answers like the LoRa transport: one key per node, two nodes done, one not."""

    name = "lora"

    def discover(self) -> list[Target]:
        return []

    def inspect(self, target: Target) -> TargetState:
        return TargetState(reachable=True)

    def flash(self, target: Target, image: BinaryIO, *, progress: Progress) -> FlashResult:
        image.read()
        if target.transport != "lora":
            return FlashResult(ok=True, version="5.0", message="confirmed")
        return FlashResult(ok=False, version="", message="2/3 nodes rebuilt the image",
                           detail={f"node.{EUIS[0]}": "complete",
                                   f"node.{EUIS[1]}": "incomplete: 12 fragments missing",
                                   f"node.{EUIS[2]}": "complete",
                                   "fragments_sent": "140"})


def _stage(gw: Any, j: Journal, images: list[tuple[str, str, bytes]]) -> int:
    staged = []
    for i, (name, transport, data) in enumerate(images):
        path = gw.data_dir / "staging" / f"1-{i}.bin"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        staged.append({"filename": f"{name}.bin", "path": str(path), "size": len(data),
                       "sha256": hashlib.sha256(data).hexdigest(), "transport": transport,
                       "name": name, "format": "bin", "version": "2.1.0", "selector": {}})
    dep = j.create("targets.swu", origin="ddi", external_id="77")
    j.set_info(dep, staged=staged)
    j.update(dep, state="committed")
    return dep


@pytest.fixture
def flashed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Any, Journal, int]:
    gw = make_gateway(tmp_path / "gw", extra=TARGETS)
    monkeypatch.setenv("FERRY_BOOT_ID_PATH", str(gw.boot_id))
    j = Journal.open(gw.data_dir)
    dep = _stage(gw, j, [("field", "lora", b"L" * 300), ("mcu", "smp-serial", b"M" * 30)])
    run(make_context(gw.config, journal=j), dep, factory=lambda n, o: GroupTransport())
    return gw, j, dep


def test_journal_keeps_one_row_per_node_beside_the_target(flashed) -> None:
    _gw, j, dep = flashed
    assert SCHEMA_VERSION >= 3
    targets = {t.name: t for t in j.targets(dep)}
    assert set(targets) == {"field", "mcu"}  # nodes are not targets: counts stay right
    assert targets["field"].state == "failed" and targets["mcu"].state == "ok"
    nodes = {n.node: n for n in j.nodes(dep, "field")}
    assert set(nodes) == set(EUIS)
    assert nodes[EUIS[0]].state == "ok" and nodes[EUIS[0]].version == "2.1.0"
    assert nodes[EUIS[1]].state == "failed" and nodes[EUIS[1]].version is None
    assert nodes[EUIS[1]].message == "12 fragments missing"
    assert j.nodes(dep, "mcu") == []  # a single MCU reports no nodes
    assert "1 of 2 target(s) failed" in (j.get(dep).error or "")


def test_health_lists_nodes_and_config_data_has_a_key_per_node(flashed) -> None:
    gw, j, _dep = flashed
    h = health_mod.collect(gw.config, journal=j, system=("running", ()), uptime_s=5)
    nodes = [t for t in h.targets if t.group == "field"]
    assert [t.address for t in nodes] == EUIS
    assert [t.last_result for t in nodes] == ["success", "failure", "success"]
    assert nodes[0].name == f"field/{EUIS[0]}" and nodes[0].version == "2.1.0"
    assert h.state == "degraded"
    assert "target field: 1 of 3 nodes failed their last flash" in h.reasons

    data = health_mod.to_config_data(h)
    assert data[f"node.field.{EUIS[0]}"] == "success 2.1.0"
    assert data[f"node.field.{EUIS[1]}"] == "failure"
    assert data["target.field.nodes"] == "2 success, 1 failure"
    assert "target.mcu.nodes" not in data
    assert not any(k.startswith(f"target.field/{EUIS[0]}") for k in data)

    # the D-Bus round trip keeps the group
    back = health_mod.from_dict(h.as_dict())
    assert [t.group for t in back.targets].count("field") == 3


def test_config_data_stays_within_hawkbit_quota_failing_nodes_first() -> None:
    gw = health_mod.GatewayHealth("A", True, "1.0", "gw", 1.0, "running")
    group = health_mod.TargetHealth("big", "lora", "grp", last_result="failure")
    nodes = [health_mod.TargetHealth(f"big/n{i:03d}", "lora", f"n{i:03d}", version="2",
                                     last_result="failure" if i in (150, 170) else "success",
                                     group="big") for i in range(200)]
    data = health_mod.to_config_data(health_mod.Health(gw, (group, *nodes)))
    assert len(data) == health_mod.MAX_ATTRIBUTES
    assert data["node.big.n150"] == "failure 2" and data["node.big.n170"] == "failure 2"
    assert data["target.big.nodes"] == "198 success, 2 failure"
    assert all(len(v) <= health_mod.MAX_VALUE for v in data.values())


def test_status_text_shows_nodes_compactly_within_80_columns(tmp_path: Path) -> None:
    gw = make_gateway(tmp_path / "gw", extra=TARGETS)
    j = Journal.open(gw.data_dir)
    dep = j.create("x")
    j.set_target(dep, "field", transport="lora", state="failed", message="29/30 nodes")
    j.set_nodes(dep, "field", transport="lora", nodes=[
        (f"70b3d57ed00500{i:02x}", "failed" if i == 17 else "ok",
         None if i == 17 else "2.1.0", "incomplete" if i == 17 else "complete")
        for i in range(30)])
    j.finish(dep, "failure", "1 of 1 target(s) failed")
    j.close()
    text = render(collect_standalone(str(gw.config_path)))
    lines = text.splitlines()
    assert all(len(line) <= 80 for line in lines), text
    # the health section indents its block by two more columns
    assert "      nodes: 30 (29 success, 1 failure)" in lines
    node_lines = [ln for ln in lines if ln.startswith("      70b3d57ed00500")]
    assert len(node_lines) == health_mod.NODE_LINES
    assert node_lines[0].split() == ["70b3d57ed0050011", "?", "failure"]  # failing first
    assert f"      ... {30 - health_mod.NODE_LINES} more (ferry devices lists all)" in lines
    assert not any("! field/" in ln for ln in lines)  # no per-node problem flood


def test_devices_lists_nodes_under_their_group(flashed, capsys) -> None:
    gw, j, _dep = flashed
    j.close()
    assert main(["--config", str(gw.config_path), "devices"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert all(len(line) <= 80 for line in lines)
    names = [ln.split()[0] for ln in lines[1:] if not ln.lstrip().startswith("!")]
    assert names == ["field", *EUIS, "mcu"]
    row = next(ln for ln in lines if ln.startswith(f"  {EUIS[1]}"))
    assert "failure" in row.split() and "lora" in row.split()
    assert "    ! 12 fragments missing" in lines
    assert main(["--config", str(gw.config_path), "devices", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    by_name = {r["name"]: r for r in rows}
    assert by_name[f"field/{EUIS[2]}"]["group"] == "field"
    assert by_name[f"field/{EUIS[2]}"]["last_result"] == "success"


def test_ddi_feedback_has_a_details_line_per_node(flashed) -> None:
    gw, j, dep = flashed
    out = PipelineGateway(gw.config, journal=j).outcome(j.get(dep))
    lines = [t.line() for t in out.targets]
    assert f"target field/{EUIS[1]}: FAILED (12 fragments missing)" in lines
    assert f"target field/{EUIS[0]}: ok version 2.1.0 (complete)" in lines
    assert lines.index(f"target field/{EUIS[1]}: FAILED (12 fragments missing)") < \
        lines.index(f"target field/{EUIS[0]}: ok version 2.1.0 (complete)")
    assert any(ln.startswith("target mcu: ok version 5.0") for ln in lines)


def test_ddi_node_lines_are_capped_and_the_rest_counted(tmp_path: Path) -> None:
    j = Journal.open(tmp_path)
    dep = j.create("x")
    j.set_nodes(dep, "big", transport="lora", nodes=[
        (f"n{i:03d}", "failed" if i % 50 == 0 else "ok", "2", "x") for i in range(120)])
    outs = node_outcomes(j, dep, limit=10)
    assert len(outs) == 11
    assert [o.name for o in outs[:3]] == ["big/n000", "big/n050", "big/n100"]
    assert outs[-1].line() == "target big/*: ok (110 more node(s) not listed, 0 of them failed)"


def test_node_rows_parsing_rules() -> None:
    from ferry.daemon.config import TargetConfig

    tc = TargetConfig(name="lamp", transport="zigbee", address="0x00124b0001")
    single = FlashResult(ok=True, version="0x2", detail={"node.0x00124b0001": "ok"})
    assert node_rows(tc, single, "0x2") == []  # the target is its own only node
    many = FlashResult(ok=True, version="3", skipped=False, detail={
        "node.a": "ok", "node.b": "skipped", "node.c": "pending", "from_x": "1"})
    assert node_rows(tc, many, "3") == [("a", "ok", "3", "ok"), ("b", "skipped", "3", "skipped"),
                                       ("c", "failed", None, "pending")]


def test_real_lora_transport_nodes_reach_the_journal(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Through the real LoRa FUOTA transport against simulated nodes (their own
    decoder): every node that rebuilt the image is a journal row and a health entry."""
    from ferry.proxy.lora.session import Device
    from ferry.proxy.lora.transport import LoraTransport
    from ferry.sim.lora.network import Bernoulli, SimClock, SimNetwork
    from ferry.sim.lora.node import Node

    rng = random.Random(5)
    clock = SimClock()
    nodes, devices = {}, []
    for i in range(3):
        eui = f"70b3d57ed00509{i:02x}"
        key = rng.randbytes(16)
        nodes[eui] = Node(eui, key, clock_offset=rng.uniform(-300, 300),
                          rng=random.Random(50 + i))
        devices.append(Device(eui, key))
    net = SimNetwork(clock, nodes, {e: Bernoulli(0.05) for e in nodes}, seed=5)
    keys = tmp_path / "keys.json"
    keys.write_text(json.dumps({d.dev_eui: d.root_key.hex() for d in devices}))
    extra = f"""
[[target]]
name = "field"
transport = "lora"
address = "grp-1"

[target.options]
devices = "{','.join(nodes)}"
keys_file = "{keys}"
answer_timeout = "120"
start_margin = "150"
state_dir = "{tmp_path / 'lora-state'}"
"""
    gw = make_gateway(tmp_path / "gw", extra=extra)
    monkeypatch.setenv("FERRY_BOOT_ID_PATH", str(gw.boot_id))
    j = Journal.open(gw.data_dir)
    image = random.Random(6).randbytes(4_000)
    dep = _stage(gw, j, [("field", "lora", image)])

    def factory(name: str, options: dict[str, Any]) -> LoraTransport:
        return LoraTransport({k: str(v) for k, v in options.items()},
                             network_factory=lambda _o: net, clock=clock)

    run(make_context(gw.config, journal=j), dep, factory=factory)
    assert all(n.image == image for n in nodes.values())
    assert j.targets(dep)[0].state == "ok"
    rows = j.nodes(dep, "field")
    assert [(r.node, r.state, r.version) for r in rows] == [
        (e, "ok", "2.1.0") for e in sorted(nodes)]
    h = health_mod.collect(gw.config, journal=j, system=("running", ()), uptime_s=1)
    data = health_mod.to_config_data(h)
    assert {k for k in data if k.startswith("node.field.")} == {
        f"node.field.{e}" for e in nodes}
    assert h.state == "ok"
    out = PipelineGateway(gw.config, journal=j).outcome(j.get(dep))
    assert sum(1 for t in out.targets if t.name.startswith("field/") and t.ok) == 3


def test_journal_upgrade_from_schema_2_keeps_targets(tmp_path: Path) -> None:
    import sqlite3

    from ferry.daemon.journal import migrate

    conn = sqlite3.connect(str(tmp_path / "journal.db"), isolation_level=None)
    migrate(conn, upto=2)
    conn.execute("INSERT INTO deployments (source, state, created, updated)"
                 " VALUES ('x', 'done', 0, 0)")
    conn.execute("INSERT INTO targets VALUES (1, 'mcu', 'dfu', NULL, 'ok', '1', NULL, 0)")
    conn.close()
    j = Journal(tmp_path / "journal.db")
    assert j.targets(1)[0].name == "mcu" and j.nodes(1) == []
    j.set_nodes(1, "field", transport="lora", nodes=[("a", "ok", "2", "complete")])
    assert j.nodes(1)[0].node == "a"


def test_devices_lists_configured_lora_nodes_before_their_first_campaign(
        tmp_path: Path, capsys) -> None:
    extra = """
[[target]]
name = "field"
transport = "lora"
address = "grp-1"

[target.options]
devices = "70B3D57ED0050001, 70b3d57ed0050002"
keys_file = "/nonexistent/keys.json"
"""
    gw = make_gateway(tmp_path / "gw", extra=extra)
    j = Journal.open(gw.data_dir)
    dep = j.create("x")
    j.set_target(dep, "field", transport="lora", state="failed", message="1/2 nodes")
    j.set_nodes(dep, "field", transport="lora",
                nodes=[("70b3d57ed0050002", "ok", "2.1.0", "complete")])
    j.finish(dep, "failure")
    j.close()
    assert main(["--config", str(gw.config_path), "devices", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["field/70b3d57ed0050001"]["last_result"] == "never"
    assert rows["field/70b3d57ed0050002"]["last_result"] == "success"
    assert rows["field/70b3d57ed0050002"]["version"] == "2.1.0"
    assert list(rows) == ["field", "field/70b3d57ed0050001", "field/70b3d57ed0050002"]
