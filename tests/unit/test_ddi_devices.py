"""Every device behind the gateway a DDI controller of its own (issue #19).

Against the OpenAPI-checked fixture (tests/ddi_server.py) with the tenant's
GatewayToken and several controllers, on a whole gateway in a temp directory (slots
and env are files), flashing through a fake transport that records what it got. The
peer check: goosebit 0.2.12 does not know the GatewayToken (its
``updater/routes.py`` reads only ``TargetToken``; any other header counts as no token),
so device controllers work there only with device auth off or in setup/lax mode; the
token itself is checked here only.
"""

from __future__ import annotations

import hashlib
import sys
import threading
from pathlib import Path
from typing import Any, BinaryIO, ClassVar

import pytest
from install_gateway import make_bundle, make_gateway, make_image

from ferry.daemon.backend import ddi
from ferry.daemon.backend.controllers import (
    ControllerIdClash,
    device_controller_id,
    device_ids,
    node_controller_id,
)
from ferry.daemon.backend.devices import (
    DevicePoller,
    UnknownController,
    load_states,
    run_loop,
    status_rows,
)
from ferry.daemon.config import ConfigError, TargetConfig, config_from_dict, load_config
from ferry.daemon.install.pipeline import DeploymentBusy, install, make_context, resume
from ferry.daemon.journal import Journal
from ferry.packaging.description import TargetSpec
from ferry.proxy.transport import FlashResult, Progress, Target, TargetState

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from ddi_server import DdiFixture, validate_exchange

TOKEN = "gw-token-7"

DEVICES = """
[[target]]
name = "mcu0"
transport = "smp-serial"
address = "/dev/ttyUSB0"

[[target]]
name = "radio"
transport = "dfu"
address = "1234:5678"
image_id = "radio-v2"
controller_id = "radio-serial-0042"
"""


class FakeTransport:
    """Records each flash; a device listed in ``offline`` does not answer inspect."""

    flashed: ClassVar[list[tuple[str, bytes]]] = []
    offline: ClassVar[set[str]] = set()

    def __init__(self, name: str) -> None:
        self.name = name

    def discover(self) -> list[Target]:
        return []

    def inspect(self, target: Target) -> TargetState:
        if target.name in FakeTransport.offline:
            raise OSError(f"no answer from {target.address}")
        return TargetState(reachable=True)

    def flash(self, target: Target, image: BinaryIO, *, progress: Progress) -> FlashResult:
        data = image.read()
        progress(len(data) // 2, len(data), "upload")
        progress(len(data), len(data), "upload")
        FakeTransport.flashed.append((target.name, data))
        return FlashResult(ok=True, version=target.options.get("spec_version", ""),
                           message="confirmed")


def factory(name: str, options: dict[str, Any]) -> FakeTransport:
    return FakeTransport(name)


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

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


def backend_toml(url: str, *, token: str = TOKEN, extra: str = "") -> str:
    tok = f'gateway_token = "{token}"\n' if token else ""
    return (f'\n[backend]\nurl = "{url}"\ncontroller_id = "gw1"\n{tok}'
            f"device_controllers = true\npoll_jitter = 0.0\n{extra}{DEVICES}")


@pytest.fixture
def gw(tmp_path, server, monkeypatch):
    g = make_gateway(tmp_path / "gw", extra=backend_toml(server.url))
    monkeypatch.setenv("FERRY_BOOT_ID_PATH", str(g.boot_id))
    FakeTransport.flashed = []
    FakeTransport.offline = set()
    return g


def poller(gw, *, busy=None, clock=None, config=None) -> DevicePoller:
    cfg = config or gw.config
    ctx = make_context(cfg)
    return DevicePoller(cfg, ctx, factory=factory, busy=busy, clock=clock or Clock(),
                        client_factory=lambda s: ddi.DdiClient(s, on_exchange=validate_exchange))


def device_bundle(gw, tmp_path, name="mcu", version="2.0.0", *, targets=None, image=None):
    targets = targets if targets is not None else [
        (TargetSpec("smp-serial", "mcu0", "bin", version), b"M" * 3000)]
    return make_bundle(gw, tmp_path / f"{name}.swu", version=version, targets=targets,
                       image=image).read_bytes()


def slot_digests(gw) -> tuple[str, str, str]:
    return (hashlib.sha256(gw.slot_path("A").read_bytes()).hexdigest(),
            hashlib.sha256(gw.slot_path("B").read_bytes()).hexdigest(),
            hashlib.sha256((gw.root / "env0").read_bytes()
                           + (gw.root / "env1").read_bytes()).hexdigest())


def last_status(dev, aid):
    return dev.actions[aid].feedback[-1]["status"]


# -- controller ids ---------------------------------------------------------------------------


def test_controller_ids_derive_from_the_gateways_and_are_configurable():
    cfg = config_from_dict({"gateway": {"compatible": "x"},
                            "backend": {"url": "http://h", "controller_id": "gw-0042"},
                            "target": [{"name": "mcu0", "transport": "dfu"},
                                       {"name": "door lock/2", "transport": "zigbee"},
                                       {"name": "m", "transport": "dfu",
                                        "controller_id": "moved-mcu-7"}]})
    ids = device_ids(cfg)
    assert list(ids) == ["gw-0042.mcu0", "gw-0042.door_lock_2", "moved-mcu-7"]
    assert device_ids(cfg) == ids  # stable: the same config, the same ids
    long_a = device_controller_id("g" * 50, TargetConfig("a" * 30 + "x", "dfu"))
    long_b = device_controller_id("g" * 50, TargetConfig("a" * 30 + "y", "dfu"))
    assert len(long_a) == len(long_b) == 64 and long_a != long_b
    assert node_controller_id("gw-0042.lora-a", "70B3D57ED0000001") == \
        "gw-0042.lora-a.70b3d57ed0000001"
    assert node_controller_id("gw.z", "0x00124B0001A2B3C4") == "gw.z.00124b0001a2b3c4"


def test_clashing_or_unsafe_controller_ids_are_refused():
    base = {"gateway": {"compatible": "x"},
            "backend": {"url": "http://h", "controller_id": "gw1"}}
    clash = config_from_dict({**base, "target": [
        {"name": "a", "transport": "dfu"},
        {"name": "b", "transport": "dfu", "controller_id": "gw1.a"}]})
    with pytest.raises(ControllerIdClash, match=r"a and b both get controller id .gw1\.a."):
        device_ids(clash)
    own = config_from_dict({**base, "target": [
        {"name": "a", "transport": "dfu", "controller_id": "gw1"}]})
    with pytest.raises(ControllerIdClash, match="the gateway's own"):
        device_ids(own)
    with pytest.raises(ConfigError, match="controller_id 'a b' may hold only letters"):
        config_from_dict({**base, "target": [
            {"name": "a", "transport": "dfu", "controller_id": "a b"}]})
    with pytest.raises(ConfigError, match=r"needs backend\.gateway_token"):
        config_from_dict({"gateway": {"compatible": "x"},
                          "backend": {"url": "http://h", "controller_id": "gw1",
                                      "target_token": "t", "device_controllers": True}})


# -- polling with the GatewayToken ---------------------------------------------------------------


def test_each_device_polls_with_the_gateway_token_and_registers_its_attributes(server, gw):
    p = poller(gw)
    p.step()
    assert set(server.devices) == {"gw1.mcu0", "radio-serial-0042"}
    for dev in server.devices.values():
        assert dev.auth_headers and set(dev.auth_headers) == {f"GatewayToken {TOKEN}"}
    attrs = server.devices["radio-serial-0042"].config_data
    assert attrs["ferry.transport"] == "dfu" and attrs["ferry.address"] == "1234:5678"
    assert attrs["ferry.image_id"] == "radio-v2" and attrs["ferry.gateway"] == "gw1"
    assert attrs["ferry.last_result"] == "never" and attrs["hw_revision"] == "test-gw"
    assert server.polls("gw1") == 0  # the gateway's own controller is its runner's
    rows = status_rows(gw.config, gw.data_dir)
    assert rows["mcu0"]["controller_id"] == "gw1.mcu0" and rows["mcu0"]["backend"] == "ok"


def test_each_device_is_polled_on_its_own_sleep(server, gw):
    clock = Clock()
    p = poller(gw, clock=clock)
    server.device("gw1.mcu0").sleep = "00:01:00"
    server.device("radio-serial-0042").sleep = "00:10:00"
    p.gateway_interval(60.0)
    for _ in range(30):  # 30 minutes of 60 s steps
        p.step()
        clock.now += 60.0
    assert server.polls("gw1.mcu0") == 30
    assert server.polls("radio-serial-0042") == 3


def test_many_devices_cost_a_bounded_number_of_polls_per_gateway_interval(tmp_path, server):
    many = "".join(f'\n[[target]]\nname = "n{i}"\ntransport = "zigbee"\naddress = "0x{i:04x}"\n'
                   for i in range(40))
    gw = make_gateway(tmp_path / "gw", extra=(
        f'\n[backend]\nurl = "{server.url}"\ncontroller_id = "gw1"\n'
        f'gateway_token = "{TOKEN}"\ndevice_controllers = true\npoll_jitter = 0.0\n'
        f"device_polls_per_poll = 5\n{many}"))
    clock = Clock()
    p = poller(gw, clock=clock)
    server.sleep = "00:01:00"
    p.gateway_interval(60.0)
    for _ in range(60):  # one hour of 60 s steps
        p.step()
        clock.now += 60.0
    total = server.polls()
    # 5 a gateway interval (and the first 5 at once), not 40 a minute
    assert total <= 5 * 60 + 5
    per_device = [server.polls(f"gw1.n{i}") for i in range(40)]
    assert min(per_device) >= 7  # the longest-waiting first: every device gets its turn


# -- device deployments ---------------------------------------------------------------------------


def test_a_device_deployment_flashes_that_device_only_and_reports(server, gw, tmp_path):
    before = slot_digests(gw)
    dev = server.device("gw1.mcu0")
    aid = dev.assign([("firmware", "mcu0", "2.0.0", {"mcu.swu": device_bundle(
        gw, tmp_path, targets=[(TargetSpec("smp-serial", "mcu0", "bin", "2.0.0"), b"M" * 3000),
                               (TargetSpec("dfu", "radio-fw", "dfu", "7",
                                           selector={"image_id": "radio-v2"}), b"R" * 900)])})])
    p = poller(gw)
    p.step()
    assert FakeTransport.flashed == [("mcu0", b"M" * 3000)]  # not the radio, though listed
    st = last_status(dev, aid)
    assert st["execution"] == "closed" and st["result"]["finished"] == "success"
    assert "bundle mcu.swu: version 2.0.0 for mcu0" in st["details"]
    assert any(d.startswith("target mcu0: ok version 2.0.0") for d in st["details"])
    progress = [f["status"]["result"].get("progress") for f in dev.actions[aid].feedback]
    assert {"cnt": 100, "of": 100} in progress
    assert slot_digests(gw) == before  # the gateway's slots and env are untouched
    j = Journal.open(gw.data_dir)
    dep = j.latest()
    assert dep.origin == "ddi-device" and dep.external_id == f"gw1.mcu0:{aid}"
    assert dep.result == "success" and dep.to_slot is None
    assert [t.name for t in j.targets(dep.id)] == ["mcu0"]
    assert not server.devices["radio-serial-0042"].actions  # the radio's own is empty
    p.step()  # the next poll registers the new version
    assert dev.config_data["ferry.version"] == "2.0.0"
    assert dev.config_data["ferry.last_result"] == "success"
    assert load_states(gw.data_dir)["gw1.mcu0"].last_action == f"{aid}: success"


def test_a_bundle_without_an_image_for_the_device_is_refused_with_feedback(server, gw,
                                                                          tmp_path):
    dev = server.device("radio-serial-0042")
    aid = dev.assign([("firmware", "fw", "2.0.0", {"mcu.swu": device_bundle(gw, tmp_path)})])
    poller(gw).step()
    st = last_status(dev, aid)
    assert st["result"]["finished"] == "failure"
    assert any("has no image for device radio (dfu, image_id radio-v2); its images: "
               "mcu0 (smp-serial)" in d for d in st["details"])
    assert FakeTransport.flashed == []


def test_a_bundle_with_a_rootfs_never_touches_the_gateway(server, gw, tmp_path):
    before = slot_digests(gw)
    dev = server.device("gw1.mcu0")
    data = device_bundle(gw, tmp_path, "full", "3.0.0", image=make_image("3.0.0", 1 << 18))
    aid = dev.assign([("os", "gw", "3.0.0", {"full.swu": data})])
    poller(gw).step()
    st = last_status(dev, aid)
    assert st["result"]["finished"] == "failure"
    assert any("carries a gateway rootfs" in d for d in st["details"])
    assert slot_digests(gw) == before and FakeTransport.flashed == []


def test_an_offline_device_keeps_its_action_open_and_is_retried(server, gw, tmp_path):
    clock = Clock()
    FakeTransport.offline = {"mcu0"}
    dev = server.device("gw1.mcu0")
    dev.sleep = "00:00:30"
    aid = dev.assign([("firmware", "fw", "2.0.0", {"mcu.swu": device_bundle(gw, tmp_path)})])
    p = poller(gw, clock=clock)
    p.step()
    clock.now += 31
    p.step()
    assert dev.actions[aid].state == "open"
    said = [f["status"] for f in dev.actions[aid].feedback]
    assert len(said) == 1 and said[0]["execution"] == "proceeding"  # told once, not per poll
    assert "device mcu0 is offline (no answer from /dev/ttyUSB0)" in said[0]["details"][0]
    assert status_rows(gw.config, gw.data_dir)["mcu0"]["action"] == f"{aid} offline"
    FakeTransport.offline = set()
    clock.now += 31
    p.step()
    assert last_status(dev, aid)["result"]["finished"] == "success"
    assert FakeTransport.flashed == [("mcu0", b"M" * 3000)]


def test_device_deployments_wait_while_the_gateway_deploys(server, gw, tmp_path):
    clock = Clock()
    busy = ["gateway action 4 is rebooting"]
    dev = server.device("gw1.mcu0")
    aid = dev.assign([("firmware", "fw", "2.0.0", {"mcu.swu": device_bundle(gw, tmp_path)})])
    p = poller(gw, busy=lambda: busy[0], clock=clock)
    p.step()
    st = last_status(dev, aid)
    assert st["execution"] == "scheduled" and "gateway action 4 is rebooting" in st["details"][0]
    assert FakeTransport.flashed == []
    busy[0] = ""
    j = Journal.open(gw.data_dir)  # a local install journaled and not finished
    other = j.create("/tmp/x.swu", origin="cli")
    j.update(other, state="rebooting")
    clock.now += 2
    p.step()
    assert "deployment" in last_status(dev, aid)["details"][0] and FakeTransport.flashed == []
    j.finish(other, "success")
    clock.now += 2
    p.step()
    assert last_status(dev, aid)["result"]["finished"] == "success"


def test_a_gateway_install_waits_for_a_device_deployment_in_its_flash_phase(gw, tmp_path):
    j = Journal.open(gw.data_dir)
    dep = j.create("http://x/mcu.swu", origin="ddi-device", external_id="gw1.mcu0:3",
                   info={"device": "mcu0", "only_targets": ["mcu0"]})
    j.update(dep, state="proxy")
    bundle = make_bundle(gw, tmp_path / "g.swu", version="2.0.0",
                         image=make_image("2.0.0", 1 << 18))
    with pytest.raises(DeploymentBusy, match=f"deployment {dep} .* is proxy"):
        install(gw.config, str(bundle), ctx=make_context(gw.config))


def test_a_device_deployment_cut_short_resumes_and_reports_once(server, gw, tmp_path,
                                                                monkeypatch):
    """A crash during the flash: ferryd's start-up resume finishes the journal's
    deployment through the pipeline's entry point, and the poller reports it once
    without flashing again."""
    from ferry.daemon.install import proxyphase

    dev = server.device("gw1.mcu0")
    aid = dev.assign([("firmware", "fw", "2.0.0", {"mcu.swu": device_bundle(gw, tmp_path)})])
    calls = []

    def crash(ctx, dep_id, factory=None):
        calls.append(dep_id)
        raise KeyboardInterrupt  # the process dies here, before any flash

    monkeypatch.setattr(proxyphase, "run", crash)
    p = poller(gw)
    with pytest.raises(KeyboardInterrupt):
        p.step()
    monkeypatch.undo()
    monkeypatch.setenv("FERRY_BOOT_ID_PATH", str(gw.boot_id))
    monkeypatch.setattr("ferry.daemon.install.proxyphase._default_factory", factory)
    j = Journal.open(gw.data_dir)
    assert j.pending().state == "committed" and dev.actions[aid].state == "open"
    resume(make_context(gw.config))  # ferryd's start-up
    assert j.get(calls[0]).result == "success"
    assert FakeTransport.flashed == [("mcu0", b"M" * 3000)]
    later = Clock()
    later.now += 5
    poller(gw, clock=later).step()  # a new ferryd: the same action, already done
    st = last_status(dev, aid)
    assert st["execution"] == "closed" and st["result"]["finished"] == "success"
    assert len(FakeTransport.flashed) == 1


def test_a_device_deployment_superseded_by_a_local_install_waits_and_starts_again(
        server, gw, tmp_path, monkeypatch):
    """A local install takes over a device deployment still staging (the pipeline
    cancels a pending one before activation): nothing is flashed, the action waits and
    runs again at the next poll."""
    from ferry.daemon.install import devicedeploy

    real = devicedeploy._prepare
    taken = []

    def prepare(ctx, dep_id):
        real(ctx, dep_id)
        if not taken:  # the install thread's pipeline.install, as it finds it pending
            taken.append(dep_id)
            ctx.journal.finish(dep_id, "cancelled",
                               "interrupted before activation; superseded by a new install")

    monkeypatch.setattr(devicedeploy, "_prepare", prepare)
    clock = Clock()
    dev = server.device("gw1.mcu0")
    aid = dev.assign([("firmware", "fw", "2.0.0", {"mcu.swu": device_bundle(gw, tmp_path)})])
    p = poller(gw, clock=clock)
    p.step()
    assert FakeTransport.flashed == []
    st = last_status(dev, aid)
    assert st["execution"] == "scheduled" and "superseded by a new install" in st["details"][0]
    clock.now += 2
    p.step()
    assert last_status(dev, aid)["result"]["finished"] == "success"
    assert FakeTransport.flashed == [("mcu0", b"M" * 3000)]


def test_a_cancel_of_a_waiting_device_action_is_accepted(server, gw, tmp_path):
    clock = Clock()
    dev = server.device("gw1.mcu0")
    aid = dev.assign([("firmware", "fw", "2.0.0", {"mcu.swu": device_bundle(gw, tmp_path)})],
                     update="skip")
    p = poller(gw, clock=clock)
    p.step()
    assert last_status(dev, aid)["execution"] == "scheduled"
    cid = dev.request_cancel(aid)
    clock.now += 2
    p.step()
    assert dev.cancel.feedback[-1]["status"]["execution"] == "closed"
    assert dev.actions[aid].state == "canceled" and dev.cancel.id == cid
    assert FakeTransport.flashed == []
    assert load_states(gw.data_dir)["gw1.mcu0"].action_id == ""


# -- bad input ---------------------------------------------------------------------------


def test_a_controller_id_the_gateway_does_not_know_is_refused(server, gw, tmp_path):
    p = poller(gw)
    with pytest.raises(UnknownController, match=r"gw1\.ghost. is not a device"):
        p.poll("gw1.ghost")
    # a device's poll linking into another controller's deployment is not acted on
    other = server.device("gw1.other")
    aid = other.assign([("firmware", "fw", "2.0.0", {"mcu.swu": device_bundle(gw, tmp_path)})])
    dev = server.device("gw1.mcu0")
    dev.deployment_link_base = f"{server.url}/DEFAULT/controller/v1/gw1.other"
    dev.current, dev.actions = aid, other.actions
    p.poll("gw1.mcu0")
    st = load_states(gw.data_dir)["gw1.mcu0"]
    assert st.status == "error" and "another controller's path" in st.message
    assert FakeTransport.flashed == [] and other.actions[aid].feedback == []


def test_a_device_removed_from_the_config_is_forgotten(server, gw, tmp_path):
    poller(gw).step()
    text = gw.config_path.read_text()
    gw.config_path.write_text(text.replace('controller_id = "radio-serial-0042"\n', ""))
    logged = []
    cfg = load_config(gw.config_path)
    DevicePoller(cfg, make_context(cfg), factory=factory, clock=Clock(), log=logged.append)
    assert "radio-serial-0042" not in load_states(gw.data_dir)
    assert any("'radio-serial-0042' (target radio) is not in the config" in m for m in logged)


def test_a_rejected_gateway_token_is_a_clear_status(server, tmp_path, monkeypatch):
    from ferry.daemon.cli.status import render
    from ferry.daemon.service.status import collect

    gw = make_gateway(tmp_path / "gw", extra=backend_toml(server.url, token="wrong"))
    poller(gw).step()
    rows = status_rows(gw.config, gw.data_dir)
    assert rows["mcu0"]["backend"] == "auth-refused"
    assert "server refused gw1.mcu0 (401) with GatewayToken" in rows["mcu0"]["backend_message"]
    cfg = gw.config
    ctx = make_context(cfg)
    text = render(collect(cfg, journal=ctx.journal, bootloader=ctx.bootloader))
    assert "device controllers: 2 (GatewayToken)" in text
    assert "mcu0: gw1.mcu0 AUTH-REFUSED, no action" in text
    assert "! server refused gw1.mcu0 (401) with GatewayToken" in text


def test_ferry_devices_shows_controller_ids_and_actions(server, gw, tmp_path):
    from ferry.daemon.cli.devices import render
    from ferry.daemon.service.status import targets

    clock = Clock()
    dev = server.device("gw1.mcu0")
    aid = dev.assign([("firmware", "fw", "2.0.0", {"mcu.swu": device_bundle(gw, tmp_path)})],
                     update="skip")
    poller(gw, clock=clock).step()
    ctx = make_context(gw.config)
    rows = targets(gw.config, ctx.journal)
    by = {r["name"]: r for r in rows}
    assert by["mcu0"]["controller_id"] == "gw1.mcu0" and by["mcu0"]["action"] == \
        f"{aid} waiting"
    text = render(rows)
    assert f"controller gw1.mcu0 (ok), action {aid} waiting: waiting for the server" in text
    assert "controller radio-serial-0042 (ok), no action" in text


def test_run_loop_steps_the_gateway_first_then_the_devices(server, gw):
    order: list[str] = []
    stop = threading.Event()
    p = poller(gw)
    real = p.poll

    def gateway() -> float:
        order.append("gateway")
        if len(order) > 1:
            stop.set()
        return 0.01

    def poll(cid: str) -> None:
        order.append(cid)
        real(cid)

    p.poll = poll  # type: ignore[method-assign]
    run_loop(gateway, p, stop)
    assert order[0] == "gateway" and set(order[1:3]) == {"gw1.mcu0", "radio-serial-0042"}


# -- the real transport and ferryd's backend thread ------------------------------------------------


@pytest.fixture
def sim_mcu():
    from ferry.sim.mcu import McuConfig, SimMcu
    from ferry.sim.mcu import image as mcu_image

    m = SimMcu(McuConfig(baud=None), running=mcu_image.build((1, 0, 0, 0), b"x" * 900))
    m.start()
    yield m
    m.stop()


def sim_gateway(tmp_path, server, mcu, monkeypatch):
    from ferry.daemon.boot.bootloader import make_bootloader
    from ferry.packaging.devpki import write_dev_pki
    from ferry.sim.gateway import SimGateway, TargetEntry

    pki = write_dev_pki(tmp_path / "pki")
    root = tmp_path / "simgw"

    def on_boot(slot, rootfs):
        if rootfs.get("health") == "ok":
            make_bootloader(load_config(root / "ferry.toml"), warn=False).mark_good(slot)

    g = SimGateway(root, keyring=pki.ca_cert, backend_url=server.url, controller_id="gw1",
                   targets=[TargetEntry("mcu0", "smp-serial", mcu.port, baud=115200)],
                   on_boot=on_boot, health_window=2.0).create("1.0.0")
    monkeypatch.setenv("FERRY_BOOT_ID_PATH", str(g.boot_id_path))
    text = g.config_path.read_text()
    g.config_path.write_text(text.replace(
        "[backend]\n", f'[backend]\ngateway_token = "{TOKEN}"\ndevice_controllers = true\n'))
    return g, pki


def mcu_bundle(tmp_path, pki, version, fw):
    from ferry.packaging.writer import ImageInput, create_bundle, load_signing_key
    from ferry.sim.mcu import image as mcu_image

    p = tmp_path / f"fw-{version}.bin"
    p.write_bytes(mcu_image.build(fw, b"new firmware" * 300))
    out = tmp_path / f"mcu-{version}.swu"
    create_bundle(out, signing=load_signing_key(pki.signer_key, pki.signer_cert),
                  version=version, compatible=["ferry-demo-gw"],
                  images=[ImageInput(p, None, TargetSpec("smp-serial", "mcu0", "mcuboot",
                                                         ".".join(map(str, fw[:3]))))])
    return out.read_bytes()


def test_a_device_deployment_through_the_real_smp_transport(server, tmp_path, sim_mcu,
                                                            monkeypatch):
    """The simulated MCU (MCUboot over SMP on a pty) takes the image, boots it and is
    confirmed; the gateway's slot and version stay as they were."""
    g, pki = sim_gateway(tmp_path, server, sim_mcu, monkeypatch)
    cfg = load_config(g.config_path)
    dev = server.device("gw1.mcu0")
    aid = dev.assign([("firmware", "mcu0", "1.4.0",
                       {"mcu.swu": mcu_bundle(tmp_path, pki, "1.4.0", (1, 4, 0, 0))})])
    ctx = make_context(cfg)
    p = DevicePoller(cfg, ctx, clock=Clock(),
                     client_factory=lambda s: ddi.DdiClient(s, on_exchange=validate_exchange))
    p.step()
    st = last_status(dev, aid)
    assert st["result"]["finished"] == "success", st["details"]
    assert any(d.startswith("target mcu0: ok version 1.4.0") for d in st["details"])
    assert set(dev.auth_headers) == {f"GatewayToken {TOKEN}"}
    assert cfg.gateway.running_version() == "1.0.0"
    assert ctx.bootloader.booted() == "A" and ctx.bootloader.state().pending is False


def test_ferryd_backend_thread_polls_the_gateway_and_its_devices(server, tmp_path, sim_mcu,
                                                                 monkeypatch):
    from ferry.daemon.backend.pipeline_adapter import resume_then_poll

    g, _pki = sim_gateway(tmp_path, server, sim_mcu, monkeypatch)
    cfg = load_config(g.config_path)
    stop = threading.Event()
    resumed = []
    t = threading.Thread(target=resume_then_poll,
                         args=(lambda: resumed.append(1), cfg, make_context(cfg), stop))
    t.start()
    try:
        for _ in range(400):
            if server.polls("gw1") and server.polls("gw1.mcu0"):
                break
            stop.wait(0.05)
    finally:
        stop.set()
        t.join(timeout=30)
    assert resumed == [1] and not t.is_alive()
    assert server.polls("gw1") >= 1 and server.polls("gw1.mcu0") >= 1
    first = next(cid for cid, m, rest in server.log if m == "GET" and rest == "")
    assert first == "gw1"  # the gateway's runner steps first
    assert set(server.device("gw1.mcu0").auth_headers) == {f"GatewayToken {TOKEN}"}
    assert server.device("gw1.mcu0").config_data["ferry.transport"] == "smp-serial"


def test_a_surprise_in_one_device_leaves_the_others_and_the_schedule_alone(server, gw,
                                                                          tmp_path):
    clock = Clock()
    cfg = gw.config

    def inspect(tc):
        raise RuntimeError("driver bug")

    p = DevicePoller(cfg, make_context(cfg), factory=factory, inspect=inspect, clock=clock,
                     client_factory=lambda s: ddi.DdiClient(s, on_exchange=validate_exchange))
    dev = server.device("gw1.mcu0")
    dev.assign([("firmware", "fw", "2.0.0", {"mcu.swu": device_bundle(gw, tmp_path)})])
    p.step()
    st = load_states(gw.data_dir)
    assert st["gw1.mcu0"].status == "error" and "RuntimeError: driver bug" in st["gw1.mcu0"].message
    assert st["gw1.mcu0"].next_poll > clock.now  # asked again after its sleep, not at once
    assert st["radio-serial-0042"].status == "ok"


def test_a_cancel_link_into_another_controllers_path_is_refused(server, gw, tmp_path):
    other = server.device("gw1.other")
    aid = other.assign([("firmware", "fw", "2.0.0", {"mcu.swu": device_bundle(gw, tmp_path)})])
    other.request_cancel(aid)
    dev = server.device("gw1.mcu0")
    dev.cancel = other.cancel
    real_base = dev._base
    dev._base = lambda: real_base().replace("gw1.mcu0", "gw1.other")  # type: ignore[method-assign]
    p = poller(gw)
    p.poll("gw1.mcu0")
    st = load_states(gw.data_dir)["gw1.mcu0"]
    assert st.status == "error" and "another controller's path" in st.message
    assert other.cancel.feedback == [] and other.actions[aid].state == "open"


def test_status_names_the_token_each_device_controller_uses():
    # devices.device_settings: a target's own TargetToken first (goosebit), else the
    # tenant's GatewayToken; ferry status said "none" for the goosebit route.
    from ferry.daemon.service.status import _device_auth

    def cfg(gateway_token: str, tokens: list[str]) -> Any:
        return config_from_dict({
            "gateway": {"compatible": "x"},
            "backend": {"url": "http://h", "controller_id": "gw1", "gateway_token": gateway_token},
            "target": [{"name": f"t{i}", "transport": "dfu", **({"target_token": t} if t else {})}
                       for i, t in enumerate(tokens)]})

    assert _device_auth(cfg("", ["a", "b"])) == "TargetToken (per target)"
    assert _device_auth(cfg("g", ["", ""])) == "GatewayToken"
    assert _device_auth(cfg("g", ["a", ""])) == "GatewayToken, TargetToken for 1 target(s)"
    assert _device_auth(cfg("", ["", ""])) == "none"
