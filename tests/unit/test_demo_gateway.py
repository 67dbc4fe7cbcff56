"""The simulated gateway's U-Boot (sim/gateway.py) against ferry's own env code.

The two are written apart on purpose; here each reads what the other writes, and the
boot logic does what RAUC's bootchooser script does.
"""

from __future__ import annotations

from ferry.daemon.boot.bootloader import make_bootloader
from ferry.daemon.config import load_config
from ferry.sim import gateway as simgw
from ferry.sim.gateway import SimGateway, read_env, rootfs_image, write_env


def make(tmp_path, **kw):
    return SimGateway(tmp_path / "gw", **kw).create("1.0.0")


def test_factory_gateway_boots_a_and_ferry_reads_the_env(tmp_path):
    gw = make(tmp_path)
    bl = make_bootloader(load_config(gw.config_path), warn=False)
    st = bl.state()
    assert bl.booted() == "A"
    assert st.canary and st.redundant
    assert st.slot("A").attempts_left == 2  # the boot script counted this boot
    assert load_config(gw.config_path).gateway.running_version() == "1.0.0"


def test_ferry_activate_makes_the_sim_boot_b_and_count_down(tmp_path):
    gw = make(tmp_path)
    cfg = load_config(gw.config_path)
    bl = make_bootloader(cfg, warn=False)
    with open(gw.slot_path("B"), "r+b") as f:
        f.write(rootfs_image(tmp_path / "r2.img", "2.0.0").read_bytes())
    bl.activate("B")
    assert gw.boot() == "B"
    assert cfg.gateway.running_version() == "2.0.0"
    assert bl.booted() == "B" and bl.state().pending
    # no mark-good: each boot uses one attempt, then U-Boot falls back to A
    assert [gw.boot() for _ in range(3)] == ["B", "B", "A"]
    assert cfg.gateway.running_version() == "1.0.0"


def test_mark_good_by_ferry_is_seen_by_the_sim(tmp_path):
    gw = make(tmp_path)
    bl = make_bootloader(load_config(gw.config_path), warn=False)
    bl.mark_good("A")
    _, _, env = read_env(gw.env_path)
    assert env["BOOT_A_LEFT"] == "3"
    bl.mark_bad("B")
    assert [gw.boot() for _ in range(3)] == ["A", "A", "A"]


def test_no_attempts_left_resets_all_counters(tmp_path):
    gw = make(tmp_path)
    _, _, env = read_env(gw.env_path)
    env.update(BOOT_A_LEFT="0", BOOT_B_LEFT="0")
    write_env(gw.env_path, env)
    assert gw.boot() == "A"
    _, _, env = read_env(gw.env_path)
    assert (env["BOOT_A_LEFT"], env["BOOT_B_LEFT"]) == ("2", "3")


def test_incremental_flag_wraps_and_a_torn_copy_is_ignored(tmp_path):
    path = tmp_path / "env"
    simgw.factory_env(path, ["A", "B"])
    for i in range(300):  # the flag byte wraps 255 -> 0
        _, _, env = read_env(path)
        env["n"] = str(i)
        write_env(path, env)
    cur, _, env = read_env(path)
    assert env["n"] == "299"
    raw = bytearray(path.read_bytes())
    raw[cur * simgw.ENV_SIZE + 10] ^= 0xFF  # tear the current copy
    path.write_bytes(bytes(raw))
    _, _, env = read_env(path)
    assert env["n"] == "298"


def test_unhealthy_rootfs_fails_its_check(tmp_path):
    import subprocess

    gw = make(tmp_path)
    check = gw.root / "bin" / "app-check"
    assert subprocess.run([str(check)], capture_output=True).returncode == 0
    with open(gw.slot_path("B"), "r+b") as f:
        f.write(rootfs_image(tmp_path / "bad.img", "2.0.0", healthy=False,
                             reason="app.service: boom").read_bytes())
    make_bootloader(load_config(gw.config_path), warn=False).activate("B")
    gw.boot()
    proc = subprocess.run([str(check)], capture_output=True, text=True)
    assert proc.returncode == 1 and "app.service: boom" in proc.stderr
