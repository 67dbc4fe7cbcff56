"""Campaigns: device actions with one image on one broadcast medium flashed once (issue 19).

A hawkBit rollout gives every node its own action with the same artifact. Against the
OpenAPI-checked fixture (tests/ddi_server.py), with the GatewayToken, on a whole
gateway in a temp directory: LoRa node controllers whose actions meet in ONE multicast
session of the simulated network (sim/lora, the real ``lora`` transport and FUOTA
session code), each node's result going to its own action; Zigbee targets on one
coordinator in one deployment; the gathering window and its early end once every peer
on the medium was polled.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path
from typing import Any, BinaryIO, ClassVar

import pytest
from install_gateway import make_bundle, make_gateway

from ferry.daemon.backend import campaign, ddi
from ferry.daemon.backend.controllers import ControllerIdClash, node_ids
from ferry.daemon.backend.devices import DevicePoller, DeviceState, load_states, status_rows
from ferry.daemon.config import TargetConfig, config_from_dict
from ferry.daemon.install.pipeline import make_context
from ferry.daemon.journal import Journal
from ferry.packaging.description import TargetSpec
from ferry.proxy.lora import transport as lora_transport
from ferry.proxy.transport import FlashResult, Progress, Target, TargetState
from ferry.sim.lora.network import Bernoulli, SimClock, SimNetwork
from ferry.sim.lora.node import Node

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from ddi_server import DdiFixture, validate_exchange

TOKEN = "gw-token-9"
EUIS = [f"70b3d57ed00000{i:02x}" for i in range(1, 5)]


class Clock:
    def __init__(self) -> None:
        self.now = 2_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def server():
    s = DdiFixture(controller_id="gw1", gateway_token=TOKEN).start()
    yield s
    s.stop()
    assert s.violations == []
    for d in s.devices.values():
        assert d.violations == []


# -- LoRa: node controllers, one multicast session ----------------------------------------------


class LoraWorld:
    """Four simulated LoRa nodes behind one network server; counts multicast sessions."""

    def __init__(self, tmp: Path, dead: str = "") -> None:
        rng = random.Random(19)
        self.clock = SimClock()
        self.nodes: dict[str, Node] = {}
        keys = {}
        for eui in EUIS:
            key = rng.randbytes(16)
            self.nodes[eui] = Node(eui, key, clock_offset=rng.uniform(-30, 30))
            keys[eui] = key.hex()
        loss = {e: Bernoulli(1.0 if e == dead else 0.05) for e in EUIS}
        self.net = SimNetwork(self.clock, self.nodes, loss, seed=19)
        self.sessions: list[list[str]] = []
        configure = self.net.configure_multicast

        def counted(group: Any, devs: list[str]) -> None:
            self.sessions.append(sorted(devs))
            configure(group, devs)

        self.net.configure_multicast = counted  # type: ignore[method-assign]
        self.keys = tmp / "keys.json"
        self.keys.write_text(json.dumps(keys))
        self.state = tmp / "lora-state"

    def factory(self, name: str, options: dict[str, Any]) -> Any:
        assert name == "lora"
        return lora_transport.LoraTransport(options, network_factory=lambda _o: self.net,
                                            clock=self.clock)

    def toml(self, url: str, window: float) -> str:
        return (f'\n[backend]\nurl = "{url}"\ncontroller_id = "gw1"\n'
                f'gateway_token = "{TOKEN}"\ndevice_controllers = true\n'
                f"node_controllers = true\ncampaign_window = {window}\npoll_jitter = 0.0\n"
                f'\n[[target]]\nname = "lora-a"\ntransport = "lora"\naddress = "grp1"\n'
                f'[target.options]\ndevices = "{",".join(EUIS)}"\n'
                f'keys_file = "{self.keys}"\napplication_id = "app"\n'
                f'answer_timeout = "120"\nstart_margin = "200"\ndr = "4"\n'
                f'max_rounds = "3"\nstate_dir = "{self.state}"\n')


def lora_gateway(tmp_path, server, monkeypatch, *, window=600.0, dead=""):
    world = LoraWorld(tmp_path, dead)
    gw = make_gateway(tmp_path / "gw", extra=world.toml(server.url, window))
    monkeypatch.setenv("FERRY_BOOT_ID_PATH", str(gw.boot_id))
    return gw, world


def lora_poller(gw, world, clock):
    cfg = gw.config
    return DevicePoller(cfg, make_context(cfg), factory=world.factory, clock=clock,
                        client_factory=lambda s: ddi.DdiClient(
                            s, on_exchange=validate_exchange))


def lora_bundle(gw, tmp_path, fw: bytes, version="2.0.0") -> bytes:
    return make_bundle(gw, tmp_path / f"lora-{version}.swu", version=version, targets=[
        (TargetSpec("lora", "lora-a", "bin", version), fw)]).read_bytes()


def node_id(eui: str) -> str:
    return f"gw1.lora-a.{eui}"


def test_each_listed_lora_node_is_a_controller_of_its_own(server, tmp_path, monkeypatch):
    gw, world = lora_gateway(tmp_path, server, monkeypatch)
    ids = node_ids(gw.config)
    assert list(ids) == [node_id(e) for e in EUIS]
    assert all(tc.name == "lora-a" for tc, _n in ids.values())
    p = lora_poller(gw, world, Clock())
    p.step()
    assert set(server.devices) == {"gw1.lora-a", *map(node_id, EUIS)}
    attrs = server.devices[node_id(EUIS[0])].config_data
    assert attrs["ferry.address"] == EUIS[0] and attrs["ferry.group"] == "grp1"
    assert attrs["ferry.last_result"] == "never"
    assert p.status()[f"lora-a/{EUIS[0]}"]["controller_id"] == node_id(EUIS[0])
    rows = status_rows(gw.config, gw.data_dir)  # what ferry status / ferry devices show
    assert list(rows) == ["lora-a", *(f"lora-a/{e}" for e in EUIS)]
    assert rows[f"lora-a/{EUIS[1]}"]["controller_id"] == node_id(EUIS[1])
    assert rows[f"lora-a/{EUIS[1]}"]["backend"] == "ok"
    clash = config_from_dict({"gateway": {"compatible": "x"},
                              "backend": {"url": "http://h", "controller_id": "g",
                                          "node_controllers": True},
                              "target": [{"name": "a", "transport": "lora",
                                          "options": {"devices": "n1"}},
                                         {"name": "b", "transport": "dfu",
                                          "controller_id": "g.a.n1"}]})
    with pytest.raises(ControllerIdClash, match=r"node n1 gets controller id 'g\.a\.n1'"):
        node_ids(clash)


def test_a_rollout_to_three_lora_nodes_is_one_multicast_session(server, tmp_path,
                                                                monkeypatch):
    gw, world = lora_gateway(tmp_path, server, monkeypatch)
    fw = random.Random(5).randbytes(2400)
    data = lora_bundle(gw, tmp_path, fw)
    picked = EUIS[:3]
    aids = {e: server.device(node_id(e)).assign([("firmware", "lora", "2.0.0",
                                                  {"lora.swu": data})]) for e in picked}
    clock = Clock()
    p = lora_poller(gw, world, clock)
    p.step()  # every controller polled once: the window ends early, one campaign
    assert world.sessions == [picked]  # one multicast session, the three nodes only
    for e in picked:
        assert world.nodes[e].image == fw
        fb = server.device(node_id(e)).actions[aids[e]].feedback
        assert next(f["status"]["execution"] for f in fb) == "scheduled"  # gathering
        last = fb[-1]["status"]
        assert last["execution"] == "closed" and last["result"]["finished"] == "success"
        assert any(d.startswith(f"target lora-a/{e}: ok version 2.0.0")
                   for d in last["details"]), last["details"]
        assert "campaign: one flash for 3 action(s)" in " ".join(last["details"])
        assert not any(EUIS[3] in d for d in last["details"])  # its own node only
    assert world.nodes[EUIS[3]].image is None  # no action, not in the session
    j = Journal.open(gw.data_dir)
    deps = [d for d in j.history(limit=10) if d.origin == "ddi-device"]
    assert len(deps) == 1 and deps[0].info["only_nodes"] == {"lora-a": picked}
    assert sorted(deps[0].info["actions"]) == sorted(f"{node_id(e)}:{aids[e]}"
                                                     for e in picked)
    # the fourth node's own later action is a session of its own and is not skipped
    aid4 = server.device(node_id(EUIS[3])).assign([("firmware", "lora", "2.0.0",
                                                    {"lora.swu": data})])
    clock.now += 3600
    p.step()
    assert world.sessions[-1] == [EUIS[3]] and world.nodes[EUIS[3]].image == fw
    assert server.device(node_id(EUIS[3])).actions[aid4].feedback[-1]["status"][
        "result"]["finished"] == "success"
    p.step()
    assert server.devices[node_id(EUIS[0])].config_data["ferry.version"] == "2.0.0"


def test_a_campaign_cut_short_resumes_for_its_nodes_and_reports_each_once(
        server, tmp_path, monkeypatch):
    """A crash before the flash: ferryd's start-up resume runs the campaign's one
    session for its nodes only, and a new poller reports every action without
    flashing again."""
    from ferry.daemon.install import proxyphase
    from ferry.daemon.install.pipeline import resume

    gw, world = lora_gateway(tmp_path, server, monkeypatch)
    fw = random.Random(9).randbytes(1000)
    data = lora_bundle(gw, tmp_path, fw)
    aids = {e: server.device(node_id(e)).assign([("firmware", "l", "2.0.0",
                                                  {"l.swu": data})]) for e in EUIS[1:3]}

    def crash(ctx, dep_id, factory=None):
        raise KeyboardInterrupt  # the process dies here, before any frame goes out

    monkeypatch.setattr(proxyphase, "run", crash)
    with pytest.raises(KeyboardInterrupt):
        lora_poller(gw, world, Clock()).step()
    monkeypatch.undo()
    monkeypatch.setenv("FERRY_BOOT_ID_PATH", str(gw.boot_id))
    assert world.sessions == []
    saved = load_states(gw.data_dir)
    assert {saved[node_id(e)].action_state for e in EUIS[1:3]} == {"flashing"}
    monkeypatch.setattr("ferry.daemon.install.proxyphase._default_factory", world.factory)
    resume(make_context(gw.config))  # ferryd's start-up
    assert world.sessions == [EUIS[1:3]]
    later = Clock()
    later.now += 5
    lora_poller(gw, world, later).step()  # a new ferryd: the same actions, already done
    assert len(world.sessions) == 1
    for e in EUIS[1:3]:
        fb = server.device(node_id(e)).actions[aids[e]].feedback
        closed = [f for f in fb if f["status"]["execution"] == "closed"]
        assert len(closed) == 1 and closed[0]["status"]["result"]["finished"] == "success"


class Ticking(Clock):
    """Wall time moves on with every look, as it does between real requests."""

    def __call__(self) -> float:
        self.now += 0.003
        return self.now


def test_the_polls_of_one_turn_count_as_simultaneous(server, tmp_path, monkeypatch):
    gw, world = lora_gateway(tmp_path, server, monkeypatch, window=600.0)
    data = lora_bundle(gw, tmp_path, random.Random(10).randbytes(900))
    # the last node's action: every peer was polled earlier in the same turn
    aid = server.device(node_id(EUIS[3])).assign([("firmware", "l", "2", {"l.swu": data})])
    lora_poller(gw, world, Ticking()).step()
    assert world.sessions == [[EUIS[3]]]  # not held back for the 600 s window
    assert server.device(node_id(EUIS[3])).actions[aid].feedback[-1]["status"][
        "result"]["finished"] == "success"


def test_a_dead_node_fails_its_own_action_only(server, tmp_path, monkeypatch):
    dead = EUIS[1]
    gw, world = lora_gateway(tmp_path, server, monkeypatch, dead=dead)
    data = lora_bundle(gw, tmp_path, random.Random(6).randbytes(1500))
    aids = {e: server.device(node_id(e)).assign([("firmware", "lora", "2.0.0",
                                                  {"lora.swu": data})]) for e in EUIS[:3]}
    lora_poller(gw, world, Clock()).step()
    assert len(world.sessions) == 1
    for e in EUIS[:3]:
        st = server.device(node_id(e)).actions[aids[e]].feedback[-1]["status"]
        assert st["result"]["finished"] == ("failure" if e == dead else "success"), st
    bad = server.device(node_id(dead)).actions[aids[dead]].feedback[-1]["status"]
    assert any(d.startswith(f"target lora-a/{dead}: FAILED") for d in bad["details"])


def test_the_window_waits_for_the_peers_then_flashes_once(server, tmp_path, monkeypatch):
    gw, world = lora_gateway(tmp_path, server, monkeypatch, window=600.0)
    data = lora_bundle(gw, tmp_path, random.Random(7).randbytes(1200))
    gw_cfg = gw.config
    clock = Clock()
    p = lora_poller(gw, world, clock)
    p.per_poll = 1  # one device poll per step: the peers are polled one after the other
    p.tokens = 1.0
    p.gateway_interval(60.0)
    first = server.device(node_id(EUIS[0])).assign([("firmware", "l", "2", {"l.swu": data})])
    server.device(node_id(EUIS[2])).assign([("firmware", "l", "2", {"l.swu": data})])
    for dev in [server.device(c) for c in ["gw1.lora-a", *map(node_id, EUIS)]]:
        dev.sleep = "00:01:00"
    steps = 0
    while not world.sessions:
        p.step()
        clock.now += 60.0
        steps += 1
        assert steps < 10
    # five controllers, one poll a minute, the group's own first: the first action
    # arrives at the second poll and the campaign goes once the four others were
    # polled after it (5 minutes), not at the end of the 600 s window, with both actions
    assert steps == 6 and world.sessions == [[EUIS[0], EUIS[2]]]
    assert gw_cfg.backend.campaign_window == 600.0
    assert server.device(node_id(EUIS[0])).actions[first].feedback[-1]["status"][
        "result"]["finished"] == "success"


def test_the_window_ends_a_campaign_a_slow_peer_never_joins(server, tmp_path, monkeypatch):
    gw, world = lora_gateway(tmp_path, server, monkeypatch, window=120.0)
    data = lora_bundle(gw, tmp_path, random.Random(8).randbytes(1200))
    clock = Clock()
    p = lora_poller(gw, world, clock)
    server.device(node_id(EUIS[0])).assign([("firmware", "l", "2", {"l.swu": data})])
    p.step()
    assert world.sessions == [[EUIS[0]]]  # all polled at once: nothing to wait for
    clock.now += 10.0
    p.states[node_id(EUIS[3])].next_poll = clock.now + 10_000  # a peer that sleeps long
    server.device(node_id(EUIS[1])).assign([("firmware", "l", "2", {"l.swu": data})])
    for cid in p.states:
        if cid != node_id(EUIS[3]):
            p.states[cid].next_poll = clock.now
    p.step()
    assert len(world.sessions) == 1
    assert load_states(gw.data_dir)[node_id(EUIS[1])].action_state == "gathering"
    clock.now += 121.0
    p.step()
    assert world.sessions[-1] == [EUIS[1]]


# -- Zigbee: nodes on one coordinator ------------------------------------------------------------


class FakeZigbee:
    flashed: ClassVar[list[str]] = []

    def __init__(self, name: str) -> None:
        self.name = name

    def discover(self) -> list[Target]:
        return []

    def inspect(self, target: Target) -> TargetState:
        return TargetState(reachable=True)

    def flash(self, target: Target, image: BinaryIO, *, progress: Progress) -> FlashResult:
        image.read()
        FakeZigbee.flashed.append(target.name)
        return FlashResult(ok=True, version=target.options.get("spec_version", ""),
                           detail={f"node.{target.address}": "ok"})


ZIGBEE = "".join(f'\n[[target]]\nname = "z{i}"\ntransport = "zigbee"\naddress = "0x{i:016x}"\n'
                 'image_id = "lamp"\n' for i in range(3))
ZIGBEE += '\n[[target]]\nname = "mcu0"\ntransport = "smp-serial"\naddress = "/dev/ttyUSB0"\n'


@pytest.fixture
def zgw(tmp_path, server, monkeypatch):
    g = make_gateway(tmp_path / "gw", extra=(
        f'\n[backend]\nurl = "{server.url}"\ncontroller_id = "gw1"\n'
        f'gateway_token = "{TOKEN}"\ndevice_controllers = true\npoll_jitter = 0.0\n'
        f"campaign_window = 300\n{ZIGBEE}"))
    monkeypatch.setenv("FERRY_BOOT_ID_PATH", str(g.boot_id))
    FakeZigbee.flashed = []
    return g


def zpoller(gw) -> DevicePoller:
    cfg = gw.config
    return DevicePoller(cfg, make_context(cfg), factory=lambda n, o: FakeZigbee(n),
                        clock=Clock(), client_factory=lambda s: ddi.DdiClient(
                            s, on_exchange=validate_exchange))


def zbundle(gw, tmp_path, version: str, selector: dict[str, str]) -> bytes:
    return make_bundle(gw, tmp_path / f"z-{version}.swu", version=version, targets=[
        (TargetSpec("zigbee", "lamp", "bin", version, selector=selector),
         b"Z" * 700)]).read_bytes()


def test_zigbee_nodes_with_one_image_are_one_deployment(server, zgw, tmp_path):
    data = zbundle(zgw, tmp_path, "5", {"image_id": "lamp"})
    other = zbundle(zgw, tmp_path, "6", {"image_id": "lamp"})
    a0 = server.device("gw1.z0").assign([("firmware", "lamp", "5", {"z.swu": data})])
    a1 = server.device("gw1.z1").assign([("firmware", "lamp", "5", {"z.swu": data})])
    a2 = server.device("gw1.z2").assign([("firmware", "lamp", "6", {"z.swu": other})])
    zpoller(zgw).step()
    j = Journal.open(zgw.data_dir)
    deps = sorted((d for d in j.history(limit=10) if d.origin == "ddi-device"),
                  key=lambda d: d.id)
    # same sha256: one deployment for z0 and z1; another artifact: a campaign of its own
    assert [sorted(d.info["devices"]) for d in deps] == [["z0", "z1"], ["z2"]]
    assert sorted(FakeZigbee.flashed) == ["z0", "z1", "z2"]
    for cid, aid, ver in (("gw1.z0", a0, "5"), ("gw1.z1", a1, "5"), ("gw1.z2", a2, "6")):
        st = server.device(cid).actions[aid].feedback[-1]["status"]
        assert st["result"]["finished"] == "success"
        name = cid.split(".")[1]
        assert any(d.startswith(f"target {name}: ok version {ver}") for d in st["details"])
        assert not any(d.startswith("target z") and not d.startswith(f"target {name}")
                       for d in st["details"])


def test_a_campaign_member_without_an_image_fails_alone(server, zgw, tmp_path):
    data = make_bundle(zgw, tmp_path / "named.swu", version="5", targets=[
        (TargetSpec("zigbee", "z0", "bin", "5"), b"Z" * 700)]).read_bytes()
    a0 = server.device("gw1.z0").assign([("firmware", "lamp", "5", {"z.swu": data})])
    a1 = server.device("gw1.z1").assign([("firmware", "lamp", "5", {"z.swu": data})])
    zpoller(zgw).step()
    assert FakeZigbee.flashed == ["z0"]
    ok = server.device("gw1.z0").actions[a0].feedback[-1]["status"]
    bad = server.device("gw1.z1").actions[a1].feedback[-1]["status"]
    assert ok["result"]["finished"] == "success"
    assert bad["result"]["finished"] == "failure"
    assert any("has no image for device z1 (zigbee, image_id lamp)" in d
               for d in bad["details"]), bad["details"]


def test_a_unicast_device_is_never_gathered(server, zgw, tmp_path):
    data = make_bundle(zgw, tmp_path / "m.swu", version="2", targets=[
        (TargetSpec("smp-serial", "mcu0", "bin", "2"), b"M" * 300)]).read_bytes()
    dev = server.device("gw1.mcu0")
    aid = dev.assign([("firmware", "mcu", "2", {"m.swu": data})])
    cfg = zgw.config
    p = DevicePoller(cfg, make_context(cfg), factory=lambda n, o: FakeZigbee(n),
                     clock=Clock())
    p.step()
    assert next(f["status"]["execution"] for f in dev.actions[aid].feedback) == "proceeding"


# -- the rules on their own ----------------------------------------------------------------------


def test_campaign_keys_scope_and_readiness():
    lora = TargetConfig("g", "lora", "grp", options={"application_id": "a"})
    zb = TargetConfig("z", "zigbee", "0x1")
    assert campaign.medium(lora).startswith("lora:") and campaign.medium(zb) == \
        "zigbee:127.0.0.1:1883/zigbee2mqtt"
    assert campaign.medium(TargetConfig("m", "smp-serial", "/dev/x")) == ""
    # the zigpy adapter: one medium per coordinator, by its serial port
    zp = {"adapter": "zigpy", "radio": "znp"}
    assert campaign.medium(TargetConfig("a", "zigbee", "*", options={
        **zp, "port": "/dev/ttyUSB0"})) == "zigbee:zigpy:/dev/ttyUSB0"
    assert campaign.medium(TargetConfig("b", "zigbee", "*", options={
        **zp, "port": "/dev/ttyUSB1"})) != campaign.medium(TargetConfig(
            "a", "zigbee", "*", options={**zp, "port": "/dev/ttyUSB0"}))
    assert campaign.campaign_key("AB", "m", "c1") == campaign.campaign_key("ab", "m", "c2")
    assert campaign.campaign_key("", "m", "c1") != campaign.campaign_key("", "m", "c2")
    a = DeviceState("c.a", "g", node="n2", gathered=100.0, last_poll=100.0)
    b = DeviceState("c.b", "g", node="n1", gathered=150.0, last_poll=150.0)
    peer = DeviceState("c.c", "g", node="n3", last_poll=90.0)
    assert campaign.scope([a, b]) == {"g": ["n1", "n2"]}
    assert campaign.scope([a, DeviceState("c", "g")]) == {"g": None}
    assert not campaign.ready([a, b], [a, b, peer], 60.0, 140.0)
    assert campaign.ready([a, b], [a, b, peer], 60.0, 160.0)  # the window is over
    peer.last_poll = 120.0
    assert campaign.ready([a, b], [a, b, peer], 60.0, 121.0)  # every peer polled since
    assert campaign.due_at([a, b], 60.0) == 160.0


# -- ferry history -------------------------------------------------------------------------------


def test_history_names_the_controllers_of_device_deployments(server, zgw, tmp_path, capsys):
    from ferry.daemon.cli.main import main

    data = zbundle(zgw, tmp_path, "5", {"image_id": "lamp"})
    a0 = server.device("gw1.z0").assign([("firmware", "lamp", "5", {"z.swu": data})])
    a1 = server.device("gw1.z1").assign([("firmware", "lamp", "5", {"z.swu": data})])
    m = make_bundle(zgw, tmp_path / "m.swu", version="2", targets=[
        (TargetSpec("smp-serial", "mcu0", "bin", "2"), b"M" * 300)]).read_bytes()
    am = server.device("gw1.mcu0").assign([("firmware", "mcu", "2", {"m.swu": m})])
    zpoller(zgw).step()
    assert main(["--config", str(zgw.config_path), "history"]) == 0
    out = capsys.readouterr().out
    assert f"controller gw1.mcu0, action {am}" in out
    assert (f"campaign of 2 actions: gw1.z0 (action {a0}), gw1.z1 (action {a1})") in out
    assert main(["--config", str(zgw.config_path), "history", "--json"]) == 0
    items = json.loads(capsys.readouterr().out)
    by_id = {tuple(c["controller_id"] for c in d["controllers"]): d for d in items}
    assert set(by_id) == {("gw1.mcu0",), ("gw1.z0", "gw1.z1")}
    assert by_id[("gw1.mcu0",)]["controllers"] == [{"controller_id": "gw1.mcu0",
                                                     "action_id": am}]


def test_a_surprise_in_a_campaign_leaves_its_actions_to_the_next_poll(server, zgw, tmp_path,
                                                                       monkeypatch):
    from ferry.daemon.install import devicedeploy

    data = zbundle(zgw, tmp_path, "5", {"image_id": "lamp"})
    aid = server.device("gw1.z0").assign([("firmware", "lamp", "5", {"z.swu": data})])
    real = devicedeploy.start_campaign
    calls = []

    def surprise(*a, **kw):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("transport bug")
        return real(*a, **kw)

    monkeypatch.setattr(devicedeploy, "start_campaign", surprise)
    logged: list[str] = []
    cfg = zgw.config
    clock = Clock()
    p = DevicePoller(cfg, make_context(cfg), factory=lambda n, o: FakeZigbee(n), clock=clock,
                     log=logged.append)
    p.step()
    assert any("RuntimeError: transport bug" in m for m in logged)
    assert FakeZigbee.flashed == [] and server.device("gw1.z0").actions[aid].state == "open"
    clock.now += 3600  # its next poll: gathered again, flashed, reported
    p.step()
    assert FakeZigbee.flashed == ["z0"] and len(calls) == 2
    assert server.device("gw1.z0").actions[aid].feedback[-1]["status"]["result"][
        "finished"] == "success"


# -- Zigbee: a population whose nodes are discovered ---------------------------------------------

POP = ["0x00124b0000cccc01", "0x00124b0000cccc02", "0x00124b0000cccc03"]


class FakePopulation:
    """A Zigbee2MQTT coordinator's OTA nodes as the zigbee transport sees them: discover
    lists them, a population flash updates those named in ``devices`` (or all)."""

    nodes: ClassVar[list[str]] = []
    flashed: ClassVar[list[list[str]]] = []
    fail_discovery: ClassVar[bool] = False

    def __init__(self, name: str) -> None:
        self.name = name

    def discover(self) -> list[Target]:
        if FakePopulation.fail_discovery:
            raise OSError("no bridge/devices message from Zigbee2MQTT")
        return [Target(name=n, transport="zigbee", address=n) for n in FakePopulation.nodes]

    def inspect(self, target: Target) -> TargetState:
        return TargetState(reachable=True)

    def flash(self, target: Target, image: BinaryIO, *, progress: Progress) -> FlashResult:
        image.read()
        assert target.address == "*"
        nodes = [n for n in target.options.get("devices", "").split(",") if n] or \
            list(FakePopulation.nodes)
        FakePopulation.flashed.append(nodes)
        return FlashResult(ok=True, version=target.options.get("spec_version", ""),
                           detail={f"node.{n}": "ok" for n in nodes})


@pytest.fixture
def popgw(tmp_path, server, monkeypatch):
    g = make_gateway(tmp_path / "gw", extra=(
        f'\n[backend]\nurl = "{server.url}"\ncontroller_id = "gw1"\n'
        f'gateway_token = "{TOKEN}"\ndevice_controllers = true\nnode_controllers = true\n'
        "node_discovery_interval = 600\npoll_jitter = 0.0\ncampaign_window = 300\n"
        '\n[[target]]\nname = "zpop"\ntransport = "zigbee"\naddress = "*"\n'
        'image_id = "lamp"\n'))
    monkeypatch.setenv("FERRY_BOOT_ID_PATH", str(g.boot_id))
    FakePopulation.nodes, FakePopulation.flashed = [], []
    FakePopulation.fail_discovery = False
    return g


def pop_poller(gw, clock) -> DevicePoller:
    cfg = gw.config
    return DevicePoller(cfg, make_context(cfg), factory=lambda n, o: FakePopulation(n),
                        clock=clock, client_factory=lambda s: ddi.DdiClient(
                            s, on_exchange=validate_exchange))


def pop_id(ieee: str) -> str:
    return f"gw1.zpop.{ieee.removeprefix('0x')}"


def assign_and_poll(server, p: DevicePoller, clock, data: bytes, nodes: list[str]
                    ) -> dict[str, int]:
    """Give each node's controller an action with ``data``, then one poller turn in
    which every controller is due: the campaign's gathering ends at once."""
    aids = {n: server.device(pop_id(n)).assign([("firmware", "lamp", "5", {"z.swu": data})])
            for n in nodes}
    clock.now += 3600
    for st in p.states.values():
        st.next_poll = clock.now
    p.step()
    return aids


def test_each_discovered_zigbee_node_is_a_controller_of_its_own(server, popgw):
    """A population target (address "*") lists no nodes: the ones its coordinator
    discovers become controllers, polled in the turn that found them. Discovery only
    adds (a node asleep at the next one keeps its controller), a failed discovery
    changes nothing, and a restart, ferry status and ferry devices see the same."""
    from ferry.daemon.backend import discovery

    FakePopulation.nodes = POP[:2]
    clock = Clock()
    p = pop_poller(popgw, clock)
    assert set(p.states) == {"gw1.zpop"}  # nothing discovered yet
    p.step()
    assert set(server.devices) == {"gw1.zpop", pop_id(POP[0]), pop_id(POP[1])}
    attrs = server.devices[pop_id(POP[0])].config_data
    assert attrs["ferry.address"] == POP[0] and attrs["ferry.transport"] == "zigbee"
    assert discovery.load(popgw.data_dir) == {"zpop": POP[:2]}

    FakePopulation.nodes = [POP[0], POP[2]]  # a node joins, another sleeps
    clock.now += 300
    p.step()  # before the interval: not asked again
    assert pop_id(POP[2]) not in p.states
    FakePopulation.fail_discovery = True
    clock.now += 301
    p.step()  # asked, failed: the list stays
    assert discovery.load(popgw.data_dir) == {"zpop": POP[:2]}
    FakePopulation.fail_discovery = False
    clock.now += 601
    p.step()
    assert {pop_id(n) for n in POP} <= set(p.states)
    assert pop_id(POP[2]) in server.devices
    assert discovery.load(popgw.data_dir) == {"zpop": POP}

    again = pop_poller(popgw, clock)  # ferryd restarted
    assert set(again.nodes) == {pop_id(n) for n in POP}
    rows = status_rows(popgw.config, popgw.data_dir)
    assert {f"zpop/{n}" for n in POP} <= set(rows)
    assert rows[f"zpop/{POP[1]}"]["controller_id"] == pop_id(POP[1])


def test_a_rollout_to_discovered_zigbee_nodes_is_one_update_of_those_nodes(
        server, popgw, tmp_path):
    """Two discovered nodes get the same artifact: one deployment of the population
    target restricted to them (its ``devices`` option), each action told its own
    node's result; the third node is not touched."""
    FakePopulation.nodes = list(POP)
    clock = Clock()
    p = pop_poller(popgw, clock)
    p.step()  # discovered and registered
    data = zbundle(popgw, tmp_path, "5", {"image_id": "lamp"})
    picked = [POP[0], POP[2]]
    aids = assign_and_poll(server, p, clock, data, picked)
    assert FakePopulation.flashed == [picked]
    j = Journal.open(popgw.data_dir)
    deps = [d for d in j.history(limit=10) if d.origin == "ddi-device"]
    assert len(deps) == 1 and deps[0].info["only_nodes"] == {"zpop": picked}
    for n in picked:
        last = server.device(pop_id(n)).actions[aids[n]].feedback[-1]["status"]
        assert last["execution"] == "closed" and last["result"]["finished"] == "success"
        assert any(d.startswith(f"target zpop/{n}: ok version 5") for d in last["details"]), \
            last["details"]
        assert not any(POP[1] in d for d in last["details"])


def test_a_rollout_to_discovered_nodes_through_zigpy_is_one_broadcast_notify(
        server, popgw, tmp_path):
    """The same rollout with ferry owning the coordinator (``adapter = "zigpy"``):
    discovery reads zigpy's device list, and the campaign reaches the two nodes with
    actions through one broadcast Image Notify over zigpy's own application layer
    (the radio below it is the simulated network). The third node hears the notify,
    asks, and is told there is no image for it."""
    import contextlib

    from ferry.proxy.zigbee import otafile
    from ferry.proxy.zigbee.zigpytransport import ZigpyOptions, ZigpyTransport
    from ferry.sim.zigbee.node import NodeProfile
    from ferry.sim.zigbee.zigpy_radio import LoopClock, make_network, open_sim_app

    ieees = [f"00:12:4b:00:00:cc:cc:0{i}" for i in (1, 2, 3)]
    clock_ = LoopClock()
    net = make_network([NodeProfile(ieee=i, manufacturer_code=0x1234, image_type=0x42,
                                    file_version=4, boot_time_s=0.2, response_timeout_s=0.5)
                        for i in ieees], clock=clock_, seed=3)
    apps: list[Any] = []

    @contextlib.asynccontextmanager
    async def opener():
        app = await open_sim_app(net, clock_)
        apps.append(app)
        try:
            yield app
        finally:
            await app.shutdown(db=False)

    opts = ZigpyOptions(radio="sim", port="-", database="-", poll_s=0.1, settle_s=3.0,
                        campaign_timeout_s=30.0)
    cfg = popgw.config
    p = DevicePoller(cfg, make_context(cfg), factory=lambda n, o: ZigpyTransport(opener, opts),
                     clock=(clock := Clock()), client_factory=lambda s: ddi.DdiClient(
                         s, on_exchange=validate_exchange))
    p.step()  # discovered through zigpy and registered
    assert {pop_id(n) for n in POP} <= set(server.devices)
    ota = otafile.build_simple(otafile.OtaHeader(0x1234, 0x42, 5), b"\x5a" * 600).serialize()
    data = make_bundle(popgw, tmp_path / "zigpy-5.swu", version="5", targets=[
        (TargetSpec("zigbee", "lamp", "bin", "5", selector={"image_id": "lamp"}), ota)]
    ).read_bytes()
    picked = [POP[0], POP[2]]
    aids = assign_and_poll(server, p, clock, data, picked)
    flash_app = apps[-1]
    assert flash_app.sent_broadcast == 1 and flash_app.bad_frames == []
    assert [net.nodes[i].version for i in ieees] == [5, 4, 5]
    for n in picked:
        last = server.device(pop_id(n)).actions[aids[n]].feedback[-1]["status"]
        assert last["execution"] == "closed" and last["result"]["finished"] == "success"
        assert any(d.startswith(f"target zpop/{n}: ok") for d in last["details"]), \
            last["details"]
