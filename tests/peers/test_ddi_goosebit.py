"""ferry's DDI side against goosebit, a real DDI server (PyPI, in .cache/goosebit-venv).

Each test uploads a signed ferry bundle through goosebit's management API and assigns
it, lets the gateway side (DDI runner + the real install pipeline, boot check and proxy
phase on a simulated gateway) take it to the end, and asserts on goosebit's own view:
device state, installed version, action log. Every DDI request and answer is checked
against the hawkBit DDI OpenAPI document on the way.
"""

from __future__ import annotations

import itertools
import sys
import time
from pathlib import Path

import pytest

from ferry.daemon.backend import ddi
from ferry.daemon.backend import runner as backend
from ferry.daemon.backend.health import transport_inspect
from ferry.daemon.backend.pipeline_adapter import PipelineGateway
from ferry.daemon.boot.bootloader import make_bootloader
from ferry.daemon.config import load_config
from ferry.packaging.description import TargetSpec
from ferry.packaging.devpki import write_dev_pki
from ferry.packaging.writer import ImageInput, create_bundle, load_signing_key
from ferry.sim.gateway import SimGateway, TargetEntry, rootfs_image
from ferry.sim.goosebit import Goosebit, GoosebitError, find_venv
from ferry.sim.mcu import McuConfig, SimMcu
from ferry.sim.mcu import image as mcu_image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from ddi_server import validate_exchange

_n = itertools.count(1)


@pytest.fixture(scope="module")
def goosebit(tmp_path_factory):
    try:
        find_venv()
    except GoosebitError as exc:
        pytest.fail(str(exc))
    gb = Goosebit(tmp_path_factory.mktemp("goosebit"))
    gb.start(timeout=120)
    yield gb
    gb.stop()


class Rig:
    """One simulated gateway (own compatible string and controller id) on goosebit."""

    def __init__(self, gb, root: Path, monkeypatch, *, mcu: bool = False) -> None:
        n = next(_n)
        self.gb = gb
        self.root = root
        self.compatible = f"ferry-peer-{n}"
        self.cid = f"ferry-peer-gw-{n}"
        self.pki = write_dev_pki(root / "pki")
        self.mcu = None
        targets = []
        if mcu:
            self.mcu = SimMcu(McuConfig(baud=None),
                              running=mcu_image.build((1, 0, 0, 0), b"fw1" * 500)).start()
            targets.append(TargetEntry("mcu0", "smp-serial", self.mcu.port, baud=115200))
        gw_root = root / "gw"

        def on_boot(slot, rootfs):
            if rootfs.get("health") == "ok":  # ferry-mark-good.service on a real gateway
                make_bootloader(load_config(gw_root / "ferry.toml"), warn=False).mark_good(slot)

        self.gw = SimGateway(gw_root, compatible=self.compatible, keyring=self.pki.ca_cert,
                             backend_url=gb.url, controller_id=self.cid, targets=targets,
                             on_boot=on_boot, health_window=2.0).create("1.0.0")
        monkeypatch.setenv("FERRY_BOOT_ID_PATH", str(self.gw.boot_id_path))
        self.config = load_config(self.gw.config_path)
        self.exchanges = []

        def check(method, url, req, status, resp):
            validate_exchange(method, url, req, status, resp)
            rest = url.split(f"/controller/v1/{self.cid}", 1)[-1].split("?")[0].strip("/")
            self.exchanges.append((method, rest.split("/")[0], status))

        self.pipeline = PipelineGateway(self.config, reboot=self.gw.reboot,
                                        boot_id=self.gw.boot_id, immediate_reboot=True,
                                        inspect=transport_inspect, system=("running", ()))
        self.client = ddi.DdiClient(ddi.DdiSettings.from_config(self.config.backend),
                                    on_exchange=check)
        self.runner = backend.DeploymentRunner(self.client, self.pipeline,
                                               self.config.gateway.data_dir)

    def bundle(self, version: str, *, healthy: bool = True, mcu_fw: bool = False,
               signer=None) -> Path:
        out = self.root / f"b-{version}-{healthy}"
        out.mkdir()
        images = [ImageInput(rootfs_image(out / "rootfs.img", version, healthy=healthy,
                                          reason="app.service failed (peer test)"), "zstd")]
        if mcu_fw:
            fw = out / "mcu0.bin"
            fw.write_bytes(mcu_image.build((1, 4, 0, 0), b"fw14" * 700))
            images.append(ImageInput(fw, None, TargetSpec("smp-serial", "mcu0", "mcuboot",
                                                          "1.4.0")))
        pki = signer or self.pki
        path = out / f"ferry-{version}.swu"
        create_bundle(path, signing=load_signing_key(pki.signer_key, pki.signer_cert),
                      version=version, compatible=[self.compatible], images=images)
        return path

    def deploy(self, bundle: Path) -> backend.StepResult:
        assert self.runner.step().event == "idle"  # registers, sends configData
        sw = self.gb.upload(bundle)
        self.gb.assign(self.cid, sw)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            res = self.runner.step()
            if res.event == "finished":
                return res
            if res.event == "idle":
                time.sleep(0.5)
        raise AssertionError("the deployment did not finish within 120 s")

    def close(self):
        if self.mcu is not None:
            self.mcu.stop()


@pytest.fixture
def rig_factory(goosebit, tmp_path, monkeypatch):
    rigs = []

    def make(**kw):
        r = Rig(goosebit, tmp_path / f"rig{len(rigs)}", monkeypatch, **kw)
        rigs.append(r)
        return r

    yield make
    for r in rigs:
        r.close()


def test_goosebit_sees_a_committed_gateway_and_flashed_mcu(goosebit, rig_factory):
    rig = rig_factory(mcu=True)
    res = rig.deploy(rig.bundle("2.0.0", mcu_fw=True))
    assert res.detail == "success"
    dev = goosebit.device(rig.cid)
    assert dev["last_state"] == "Finished"
    assert dev["sw_version"] == "2.0.0"
    assert dev["progress"] == 100
    assert dev["hardware"]["revision"] == rig.compatible  # configData hw_revision
    log = goosebit.log(rig.cid)
    assert "gateway committed version 2.0.0" in log
    assert "target mcu0: ok version 1.4.0" in log
    assert "Downloaded 100%" in log
    # the gateway really runs it
    h = rig.pipeline.health()
    assert (h.gateway.booted_slot, h.gateway.committed, h.gateway.version) == ("B", True,
                                                                               "2.0.0")
    assert h.targets[0].version.startswith("1.4.0") and h.targets[0].reachable
    # the conversation: poll, configData, deploymentBase, feedback ... closed
    kinds = {(m, p) for m, p, _ in rig.exchanges}
    assert {("GET", ""), ("PUT", "configData"), ("GET", "deploymentBase"),
            ("POST", "deploymentBase")} <= kinds


def test_goosebit_sees_health_failure_and_rollback(goosebit, rig_factory):
    rig = rig_factory()
    res = rig.deploy(rig.bundle("2.0.0", healthy=False))
    assert res.detail == "failure"
    dev = goosebit.device(rig.cid)
    assert dev["last_state"] == "Error"
    assert dev["sw_version"] == "1.0.0"  # configData after the rollback says what runs
    log = goosebit.log(rig.cid)
    assert "health check failed" in log and "app.service failed (peer test)" in log
    assert "gateway rolled back, running 1.0.0" in log
    h = rig.pipeline.health()
    assert (h.gateway.booted_slot, h.gateway.version) == ("A", "1.0.0")
    # goosebit has no installedBase: the runner tried it and carried on
    assert ("PUT", "installedBase", 404) in rig.exchanges or \
        ("PUT", "installedBase", 405) in rig.exchanges
    assert not any("installedBase set" in line for line in log.splitlines())


def test_goosebit_sees_a_bundle_refused_by_the_keyring(goosebit, rig_factory, tmp_path):
    rig = rig_factory()
    stranger = write_dev_pki(tmp_path / "stranger")
    res = rig.deploy(rig.bundle("2.0.0", signer=stranger))
    assert res.detail == "failure"
    dev = goosebit.device(rig.cid)
    assert dev["last_state"] == "Error"
    assert dev["sw_version"] == "1.0.0"
    log = goosebit.log(rig.cid)
    assert "install failed" in log
    h = rig.pipeline.health()
    assert (h.gateway.booted_slot, h.gateway.version, h.gateway.committed) == ("A", "1.0.0",
                                                                               True)
    # slot B never became bootable
    state = make_bootloader(rig.config, warn=False).state()
    assert state.primary == "A"
