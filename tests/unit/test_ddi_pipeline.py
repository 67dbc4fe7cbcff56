"""The DDI runner over the real install pipeline on a simulated gateway, against the
OpenAPI-checked fixture: the multi-chunk, maintenance-window and cancel paths that
goosebit cannot serve (goosebit covers the single-chunk story in tests/peers)."""

from __future__ import annotations

import sys
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
from ferry.sim.mcu import McuConfig, SimMcu
from ferry.sim.mcu import image as mcu_image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from ddi_server import DdiFixture, validate_exchange


@pytest.fixture
def server():
    s = DdiFixture(controller_id="gw1").start()
    yield s
    s.stop()
    assert s.violations == []


@pytest.fixture
def mcu():
    m = SimMcu(McuConfig(baud=None), running=mcu_image.build((1, 0, 0, 0), b"x" * 900))
    m.start()
    yield m
    m.stop()


@pytest.fixture
def rig(request, server, mcu, tmp_path, monkeypatch):
    token = getattr(request, "param", None)  # a TargetToken the server insists on
    pki = write_dev_pki(tmp_path / "pki")
    root = tmp_path / "gw"

    def on_boot(slot, rootfs):
        if rootfs.get("health") == "ok":
            make_bootloader(load_config(root / "ferry.toml"), warn=False).mark_good(slot)

    gw = SimGateway(root, keyring=pki.ca_cert, backend_url=server.url, controller_id="gw1",
                    targets=[TargetEntry("mcu0", "smp-serial", mcu.port, baud=115200)],
                    on_boot=on_boot, health_window=2.0).create("1.0.0")
    monkeypatch.setenv("FERRY_BOOT_ID_PATH", str(gw.boot_id_path))
    if token:
        server.target_token = token
        text = gw.config_path.read_text()
        gw.config_path.write_text(text.replace("[backend]\n",
                                               f'[backend]\ntarget_token = "{token}"\n'))
    cfg = load_config(gw.config_path)
    pg = PipelineGateway(cfg, reboot=gw.reboot, boot_id=gw.boot_id, immediate_reboot=True,
                         inspect=transport_inspect, system=("running", ()))
    client = ddi.DdiClient(ddi.DdiSettings.from_config(cfg.backend),
                           on_exchange=validate_exchange)
    r = backend.DeploymentRunner(client, pg, cfg.gateway.data_dir)
    signing = load_signing_key(pki.signer_key, pki.signer_cert)

    def bundle(name, version, *, rootfs=True, fw=None):
        images = []
        if rootfs:
            images.append(ImageInput(rootfs_image(tmp_path / f"{name}.img", version), "zstd"))
        if fw is not None:
            p = tmp_path / f"{name}-fw.bin"
            p.write_bytes(mcu_image.build(fw, b"new firmware" * 300))
            images.append(ImageInput(p, None, TargetSpec(
                "smp-serial", "mcu0", "mcuboot", ".".join(map(str, fw[:3])))))
        out = tmp_path / f"{name}.swu"
        create_bundle(out, signing=signing, version=version, compatible=["ferry-demo-gw"],
                      images=images)
        return out.read_bytes()

    return r, pg, bundle


def finish(r, limit=10):
    for _ in range(limit):
        res = r.step()
        if res.event == "finished":
            return res
    raise AssertionError("did not finish")


def test_gateway_chunk_then_target_chunk_one_action(server, rig):
    r, pg, bundle = rig
    aid = server.assign([
        ("firmware", "mcu0 firmware", "1.4.0",
         {"mcu.swu": bundle("mcu", "2.0.1", rootfs=False, fw=(1, 4, 0, 0))}),
        ("os", "gateway", "2.0.0", {"gw.swu": bundle("gw", "2.0.0"),
                                    "gw.swu.asc": b"not a bundle"}),
    ])
    res = finish(r)
    assert res.detail == "success"
    details = server.actions[aid].feedback[-1]["status"]["details"]
    assert details.index("bundle gw.swu: version 2.0.0, rootfs written, slot activated") < \
        details.index("bundle mcu.swu: version 2.0.1")
    assert "gateway committed version 2.0.0" in details
    assert any(d.startswith("target mcu0: ok version 1.4.0") for d in details)
    assert any("ignored artifact gw.swu.asc" in d for d in details)
    h = pg.health()
    assert (h.gateway.booted_slot, h.gateway.version) == ("B", "2.0.0")
    assert h.targets[0].version.startswith("1.4.0")
    assert server.config_data["target.mcu0.result"] == "success"


@pytest.mark.parametrize("rig", ["tok-42"], indirect=True)
def test_token_protected_artifacts_stream_into_the_slot(server, rig, tmp_path):
    """The pipeline's own downloader carries the TargetToken to the backend, so the
    bundle streams into the slot: no copy in ddi-downloads first."""
    r, pg, bundle = rig
    server.assign([("os", "gateway", "2.0.0", {"gw.swu": bundle("gw", "2.0.0")})])
    assert finish(r).detail == "success"
    assert pg.health().gateway.version == "2.0.0"
    assert pg.journal.latest().source.startswith("http://")  # installed from the URL
    assert not (tmp_path / "gw" / "data" / "ddi-downloads").exists()
    assert set(server.auth_headers) == {"TargetToken tok-42"}  # every request had it


def test_maintenance_window_with_the_real_pipeline(server, rig):
    r, pg, bundle = rig
    aid = server.assign([("os", "gateway", "2.0.0", {"gw.swu": bundle("gw", "2.0.0")})],
                        window="unavailable")
    assert r.step().event == "waiting"
    assert pg.health().gateway.version == "1.0.0"
    assert pg.journal.latest() is None  # nothing installed yet
    server.actions[aid].maintenance_window = "available"
    assert finish(r).detail == "success"
    assert pg.health().gateway.version == "2.0.0"
    assert pg.journal.latest().source.endswith("gw.swu")  # installed from the download


def test_cancel_in_the_window_leaves_the_gateway_alone(server, rig):
    r, pg, bundle = rig
    aid = server.assign([("os", "gateway", "2.0.0", {"gw.swu": bundle("gw", "2.0.0")})],
                        window="unavailable")
    assert r.step().event == "waiting"
    server.request_cancel(aid)
    assert r.step().event == "cancelled"
    assert server.actions[aid].state == "canceled"
    h = pg.health()
    assert (h.gateway.booted_slot, h.gateway.version, h.gateway.committed) == ("A", "1.0.0",
                                                                               True)
    assert not list((r.data_dir / "ddi-downloads").iterdir())
