"""ferry.sim.bootsim (its own env codec) against ferry's bootloader: every scheme,
layout and flag meaning; each side reads what the other wrote."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ferry.daemon.boot import bootchooser, bootcount
from ferry.daemon.boot.bootloader import make_bootloader
from ferry.daemon.config import load_config
from ferry.sim import bootsim

SIZE = 0x2000


def gateway(tmp_path: Path, scheme: str, redundant: bool, flags: str, attempts: int = 2):
    (tmp_path / "env.img").write_bytes(b"\xff" * (2 * SIZE))
    lines = f"env.img 0 {SIZE:#x}\n" + (f"env.img {SIZE:#x} {SIZE:#x}\n" if redundant else "")
    (tmp_path / "fw_env.config").write_text(lines)
    (tmp_path / "cmdline").write_text("")
    (tmp_path / "ferry.toml").write_text(f"""
[gateway]
compatible = "sim"
[bootloader]
scheme = "{scheme}"
fw_env_config = "fw_env.config"
flags = "{flags}"
attempts = {attempts}
cmdline = "cmdline"
lock_file = "lock"
[[slot]]
name = "rootfs.0"
bootname = "A"
device = "a.img"
[[slot]]
name = "rootfs.1"
bootname = "B"
device = "b.img"
""")
    config = load_config(tmp_path / "ferry.toml")
    bl = make_bootloader(config, warn=False)
    mod = bootchooser if scheme == "bootchooser" else bootcount
    bl.store.initialize(mod.default_env(config))

    def boot() -> bootsim.BootResult:
        return bootsim.boot(tmp_path / "fw_env.config", scheme=scheme, flags=flags,
                            cmdline_path=tmp_path / "cmdline")

    return bl, boot


LAYOUTS = [(True, "boolean"), (True, "incremental"), (False, "incremental")]


@pytest.mark.parametrize(("redundant", "flags"), LAYOUTS)
def test_bootchooser_cycle(tmp_path, redundant, flags):
    bl, boot = gateway(tmp_path, "bootchooser", redundant, flags)
    assert boot().slot == "A"
    assert bl.booted() == "A" and bl.state().canary
    bl.mark_good("A")
    bl.activate("B")
    assert [boot().slot for _ in range(3)] == ["B", "B", "A"]  # 2 attempts, then back
    assert bl.booted() == "A" and not bl.state().slot("B").good
    bl.activate("B")
    assert boot().slot == "B"
    bl.mark_good("B")
    assert boot().slot == "B"
    assert bl.state().slot("B").attempts_left == 1


@pytest.mark.parametrize(("redundant", "flags"), LAYOUTS)
def test_bootcount_cycle(tmp_path, redundant, flags):
    bl, boot = gateway(tmp_path, "bootcount", redundant, flags, attempts=1)
    assert boot().slot == "A"
    bl.activate("B")
    r = boot()
    assert r.slot == "B" and not r.rolled_back
    assert bl.store.read()["bootcount"] == "1"
    r = boot()
    assert r.slot == "A" and r.rolled_back
    assert not bl.state().slot("B").good
    bl.activate("B")
    assert boot().slot == "B"
    bl.mark_good("B")
    assert [boot().slot for _ in range(2)] == ["B", "B"]


def test_no_slot_left_resets_attempts(tmp_path):
    bl, boot = gateway(tmp_path, "bootchooser", True, "boolean")
    bl.store.update({"BOOT_A_LEFT": "0", "BOOT_B_LEFT": "0"})
    r = boot()
    assert r.slot is None and r.reset_attempts
    assert boot().slot == "A"


def test_broken_env_is_the_default_env(tmp_path):
    _bl, boot = gateway(tmp_path, "bootchooser", False, "incremental")
    img = tmp_path / "env.img"
    raw = bytearray(img.read_bytes())
    raw[10] ^= 1
    img.write_bytes(bytes(raw))
    assert boot().slot is None


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(order=st.lists(st.sampled_from(["A", "B"]), max_size=3, unique=True),
       a=st.integers(0, 9), b=st.integers(0, 9))
def test_bootsim_and_ferry_agree_on_the_choice(tmp_path, order, a, b):
    """ferry's prediction (bootchooser.choose) equals what the simulated boot does, for
    any order and counters; and ferry reads the counter bootsim saved."""
    bl, boot = gateway(tmp_path, "bootchooser", True, "incremental")
    bl.store.update({"BOOT_ORDER": " ".join(order), "BOOT_A_LEFT": str(a),
                     "BOOT_B_LEFT": str(b)})
    want = bootchooser.choose(bl.store.read(), bl.config)
    r = boot()
    assert r.slot == want
    if want is not None:
        before = {"A": a, "B": b}[want]
        assert bl.state().slot(want).attempts_left == before - 1
