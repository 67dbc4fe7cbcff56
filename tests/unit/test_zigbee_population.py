"""ferry's OTA server against a simulated population (ferry.sim.zigbee, its own codec).

Times are simulated seconds from a discrete-event clock, never wall time."""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

from ferry.daemon.cli.simrun_zigbee import make_image, simulate
from ferry.proxy.zigbee.progress import DONE, MemoryProgressStore, SqliteProgressStore
from ferry.proxy.zigbee.server import ServerConfig
from ferry.sim.zigbee.population import make_profiles

MFR, ITYPE, OLD, NEW = 0x1234, 0x0001, 0x00010000, 0x00020000


def test_hundred_nodes_at_five_percent_loss_all_end_on_new_version() -> None:
    image = make_image(6 * 1024, manufacturer_code=MFR, image_type=ITYPE, file_version=NEW)
    profiles = make_profiles(100, manufacturer_code=MFR, image_type=ITYPE, file_version=OLD,
                             seed=5, others=4)
    res = simulate(image, profiles, loss=0.05, seed=5,
                   config=ServerConfig(max_concurrent=16, min_block_period_ms=20))
    assert res.nodes == 100
    assert res.all_done, f"only {res.updated}/100 updated"
    assert res.lost > 0  # the loss model really dropped frames
    assert res.reboots > 0  # some nodes power-cycled mid-transfer and still made it
    want = hashlib.sha256(image).hexdigest()
    ours = [k for k in res.versions if k.startswith("00124b00")]
    assert all(res.versions[k] == NEW for k in ours)
    assert all(res.image_sha256[k] == want for k in ours)  # byte-exact on every node
    others = [k for k in res.versions if k.startswith("00158d00")]
    assert len(others) == 4 and all(res.versions[k] == 1 for k in others)  # untouched
    # Simulated seconds: the slowest node queries at most every 1800 s; allow two rounds.
    assert res.seconds < 2 * 3600, res.seconds
    # Lower bound for the whole population: one node cannot beat its own block count.
    assert res.seconds > math.ceil(len(image) / 64) * 0.02


def test_gateway_restarts_resume_every_node_from_the_store(tmp_path: Path) -> None:
    image = make_image(12 * 1024, manufacturer_code=MFR, image_type=ITYPE, file_version=NEW)
    profiles = make_profiles(20, manufacturer_code=MFR, image_type=ITYPE, file_version=OLD,
                             seed=9, reboot_share=0.0, sleepy_share=0.0, page_share=0.3)
    store = SqliteProgressStore(tmp_path / "ota.db", scope="dep-1")
    res = simulate(image, profiles, loss=0.02, seed=9, store=store, restart_every_s=45.0,
                   config=ServerConfig(max_concurrent=20, min_block_period_ms=50,
                                       checkpoint_bytes=1024))
    assert res.all_done
    assert res.restarts >= 2
    assert res.resumed >= 5  # restarts hit nodes mid-download, and they carried on
    rows = SqliteProgressStore(tmp_path / "ota.db", scope="dep-1").load()
    assert len(rows) == 20
    assert all(p.state == DONE and p.target_version == NEW for p in rows.values())
    # Resumed, not restarted: image bytes served per node stay near one image.
    for p in rows.values():
        assert p.bytes_served < 1.5 * len(image), (p.node, p.bytes_served)
    # Another deployment's scope sees nothing of this one.
    assert SqliteProgressStore(tmp_path / "ota.db", scope="dep-2").load() == {}


def test_min_block_period_bounds_a_single_node_from_below() -> None:
    image = make_image(5000, manufacturer_code=MFR, image_type=ITYPE, file_version=NEW)
    profiles = make_profiles(1, manufacturer_code=MFR, image_type=ITYPE, file_version=OLD,
                             seed=2, sleepy_share=0, page_share=0, reboot_share=0)
    profiles[0].max_data_size = 50
    store = MemoryProgressStore()
    res = simulate(image, profiles, config=ServerConfig(min_block_period_ms=250), store=store,
                   spread_s=0.0)
    assert res.all_done
    blocks = math.ceil(len(image) / 50)
    assert res.seconds >= (blocks - 1) * 0.25
    assert res.seconds < blocks * 0.25 + 60  # pacing, not timeouts, sets the pace


def test_ferry_sim_zigbee_command(capsys) -> None:  # type: ignore[no-untyped-def]
    import json

    from ferry.daemon.cli.main import main

    rc = main(["--json", "sim", "zigbee", "--nodes", "12", "--others", "2",
               "--image-size", "3000", "--loss", "0.05"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0 and out["updated"] == out["nodes"] == 12 and out["all_done"]
