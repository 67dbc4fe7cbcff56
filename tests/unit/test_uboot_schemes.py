"""Bootchooser (RAUC) and bootcount (Mender) operations over a file-backed env, the
canary, the single-copy warning, and that every operation is one env write."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from ferry.daemon.boot import bootchooser, bootcount
from ferry.daemon.boot.bootloader import CANARY_VAR, BootloaderError, CanaryError, make_bootloader
from ferry.daemon.boot.ubootenv import _Sink
from ferry.daemon.config import load_config

SIZE = 0x2000


def gateway(tmp_path: Path, *, scheme: str = "bootchooser", redundant: bool = True,
            booted: str = "A", canary: bool = True, attempts: int = 3):
    (tmp_path / "env.img").write_bytes(b"\xff" * (2 * SIZE))
    lines = f"env.img 0 {SIZE:#x}\n" + (f"env.img {SIZE:#x} {SIZE:#x}\n" if redundant else "")
    (tmp_path / "fw_env.config").write_text(lines)
    (tmp_path / "cmdline").write_text(f"console=ttyS0 ferry.slot={booted} rw\n")
    (tmp_path / "ferry.toml").write_text(f"""
[gateway]
compatible = "test-gw"
version = "1.0"
data_dir = "data"
[bootloader]
scheme = "{scheme}"
fw_env_config = "fw_env.config"
cmdline = "cmdline"
lock_file = "lock"
attempts = {attempts}
[[slot]]
name = "rootfs.0"
bootname = "A"
device = "/dev/slotA"
[[slot]]
name = "rootfs.1"
bootname = "B"
device = "/dev/slotB"
""")
    config = load_config(tmp_path / "ferry.toml")
    bl = make_bootloader(config, warn=False)
    mod = bootchooser if scheme == "bootchooser" else bootcount
    env = mod.default_env(config)
    if canary:
        env[CANARY_VAR] = "1"
    bl.store.initialize(env)
    return config, bl


class CountingSink(_Sink):
    def __init__(self) -> None:
        self.full_writes = 0

    def pwrite(self, fd, data, offset):
        if len(data) > 1:
            self.full_writes += 1
        super().pwrite(fd, data, offset)


# --- bootchooser ------------------------------------------------------------------


def test_bootchooser_activate_good_bad(tmp_path):
    config, bl = gateway(tmp_path)
    assert bl.booted() == "A"
    st = bl.state()
    assert st.primary == "A" and st.booted == "A" and st.canary and st.redundant
    assert st.slot("A").words == ["booted", "primary", "good"]

    sink = CountingSink()
    bl.store.sink = sink
    bl.activate("B")
    assert sink.full_writes == 1  # order and counter in one write
    env = bl.store.read()
    assert env["BOOT_ORDER"] == "B A" and env["BOOT_B_LEFT"] == "3"
    st = bl.state()
    assert st.primary == "B" and st.pending
    assert bootchooser.choose(env, config) == "B"

    bl.mark_bad("B")
    env = bl.store.read()
    assert env["BOOT_ORDER"] == "A" and env["BOOT_B_LEFT"] == "0"
    assert not bl.state().slot("B").good
    assert bl.state().primary == "A"

    bl.mark_good("B")
    env = bl.store.read()
    assert env["BOOT_ORDER"] == "A B" and env["BOOT_B_LEFT"] == "3"
    assert bl.state().slot("B").good


def test_bootchooser_mark_good_restores_attempts(tmp_path):
    _config, bl = gateway(tmp_path, attempts=5)
    bl.store.update({"BOOT_A_LEFT": "2"})  # as after two boots of A
    assert bl.state().slot("A").attempts_left == 2
    bl.mark_good("A")
    assert bl.store.read()["BOOT_A_LEFT"] == "5"
    assert not bl.state().pending


def test_choose_follows_the_boot_script(tmp_path):
    config, _bl = gateway(tmp_path)
    assert bootchooser.choose({"BOOT_ORDER": "B A", "BOOT_A_LEFT": "1", "BOOT_B_LEFT": "0"},
                              config) == "A"
    assert bootchooser.choose({"BOOT_ORDER": "A B", "BOOT_A_LEFT": "0", "BOOT_B_LEFT": "0"},
                              config) is None
    # missing counters: the script's default of 3
    assert bootchooser.choose({"BOOT_ORDER": "B"}, config) == "B"


def test_canary_missing_blocks_activation(tmp_path):
    _config, bl = gateway(tmp_path, canary=False)
    with pytest.raises(CanaryError, match=r"fw_env\.config"):
        bl.activate("B")
    assert bl.store.read()["BOOT_ORDER"] == "A B"  # nothing written
    bl.mark_good("A")  # marking needs no canary


def test_unknown_slot(tmp_path):
    _config, bl = gateway(tmp_path)
    with pytest.raises(BootloaderError, match="'C'"):
        bl.activate("C")


# --- bootcount ------------------------------------------------------------------


def test_bootcount_activate_commit(tmp_path):
    _config, bl = gateway(tmp_path, scheme="bootcount", attempts=1)
    sink = CountingSink()
    bl.store.sink = sink
    bl.activate("B")
    assert sink.full_writes == 1
    env = bl.store.read()
    assert env["ferry_boot_part"] == "B"
    assert env["upgrade_available"] == "1"
    assert env["bootcount"] == "0"
    assert env["bootlimit"] == "1"
    assert env["ferry_prev_part"] == "A"
    st = bl.state()
    assert st.primary == "B" and st.pending and st.slot("B").attempts_left == 1

    # U-Boot boots B and counts
    bl.store.update({"bootcount": "1"})
    (tmp_path / "cmdline").write_text("ferry.slot=B\n")
    assert bl.state().slot("B").attempts_left == 0
    bl.mark_good("B")
    env = bl.store.read()
    assert env["upgrade_available"] == "0" and env["bootcount"] == "0"
    assert not bl.state().pending


def test_bootcount_mark_bad_goes_back(tmp_path):
    _config, bl = gateway(tmp_path, scheme="bootcount")
    bl.activate("B")
    (tmp_path / "cmdline").write_text("ferry.slot=B\n")
    bl.mark_bad("B")
    env = bl.store.read()
    assert env["ferry_boot_part"] == "A"
    assert env["upgrade_available"] == "0"
    assert env["ferry_failed_part"] == "B"
    st = bl.state()
    assert st.primary == "A" and not st.slot("B").good
    bl.mark_good("B")  # good again (but not primary)
    assert bl.state().slot("B").good
    assert bl.state().primary == "A"


def test_bootcount_activate_booted_commits_it(tmp_path):
    _config, bl = gateway(tmp_path, scheme="bootcount")
    bl.activate("A")
    env = bl.store.read()
    assert env["ferry_boot_part"] == "A" and env["upgrade_available"] == "0"


# --- warnings -----------------------------------------------------------------------


def test_single_copy_warns_at_start(tmp_path, caplog):
    config, _ = gateway(tmp_path, redundant=False)
    with caplog.at_level(logging.WARNING, logger="ferry.bootloader"):
        make_bootloader(config)
    assert "single copy" in caplog.text
    caplog.clear()
    (tmp_path / "r").mkdir()
    config2, _ = gateway(tmp_path / "r", redundant=True)
    with caplog.at_level(logging.WARNING, logger="ferry.bootloader"):
        make_bootloader(config2)
    assert "single copy" not in caplog.text
