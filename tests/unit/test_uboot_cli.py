"""``ferry --config PATH mark ...`` and ``ferry --config PATH status`` work standalone."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ferry.daemon.boot import bootchooser
from ferry.daemon.boot.bootloader import CANARY_VAR, make_bootloader
from ferry.daemon.boot.slotrecord import record_verified
from ferry.daemon.cli.main import main
from ferry.daemon.config import load_config

SIZE = 0x2000


def gateway(tmp_path: Path, *, redundant: bool = True) -> Path:
    (tmp_path / "env.img").write_bytes(b"\xff" * (2 * SIZE))
    lines = f"env.img 0 {SIZE:#x}\n" + (f"env.img {SIZE:#x} {SIZE:#x}\n" if redundant else "")
    (tmp_path / "fw_env.config").write_text(lines)
    (tmp_path / "cmdline").write_text("root=/dev/vda2 ferry.slot=A\n")
    cfg = tmp_path / "ferry.toml"
    cfg.write_text("""
[gateway]
compatible = "gw"
version = "1.0.0"
data_dir = "data"
[bootloader]
fw_env_config = "fw_env.config"
cmdline = "cmdline"
lock_file = "lock"
[[slot]]
name = "rootfs.0"
bootname = "A"
device = "slotA.img"
[[slot]]
name = "rootfs.1"
bootname = "B"
device = "slotB.img"
""")
    config = load_config(cfg)
    env = bootchooser.default_env(config)
    env[CANARY_VAR] = "1"
    make_bootloader(config, warn=False).store.initialize(env)
    return cfg


def verified_slot(cfg: Path, name: str, version: str) -> None:
    """What a verified install leaves: the image in the slot and its record."""
    config = load_config(cfg)
    image = (version.encode() * 1000)[:4000]
    slot = config.slot(name)
    Path(slot.device).write_bytes(image + b"\0" * 4096)
    record_verified(config, name, sha256=hashlib.sha256(image).hexdigest(), size=len(image),
                    version=version)


def read_env(cfg: Path) -> dict[str, str]:
    return make_bootloader(load_config(cfg), warn=False).store.read()


def test_mark_active_other_then_bad(tmp_path, capsys):
    cfg = gateway(tmp_path)
    verified_slot(cfg, "rootfs.1", "1.1.0")
    assert main(["--config", str(cfg), "mark", "active", "other"]) == 0
    assert "rootfs.1 (B) active" in capsys.readouterr().out
    assert read_env(cfg)["BOOT_ORDER"] == "B A"
    assert main(["--config", str(cfg), "mark", "bad", "B", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["slot"] == "rootfs.1" and out["state"] == "bad"
    assert read_env(cfg)["BOOT_ORDER"] == "A"
    assert main(["--config", str(cfg), "mark", "good"]) == 0  # default: booted
    assert "rootfs.0 (A) good" in capsys.readouterr().out


def test_mark_unknown_slot_fails_cleanly(tmp_path, capsys):
    cfg = gateway(tmp_path)
    assert main(["--config", str(cfg), "mark", "good", "C"]) != 0
    assert "no slot named 'C'" in capsys.readouterr().err


def test_status_text_and_json(tmp_path, capsys):
    cfg = gateway(tmp_path)
    verified_slot(cfg, "rootfs.1", "1.1.0")
    assert main(["--config", str(cfg), "mark", "active", "B"]) == 0
    capsys.readouterr()
    assert main(["--config", str(cfg), "status"]) == 0
    text = capsys.readouterr().out
    assert "bootchooser" in text and "B activated for the next boot" in text
    lines = {ln.split()[0]: ln for ln in text.splitlines() if ln.startswith("rootfs.")}
    row = lines["rootfs.0"].split()
    assert row[1] == "A" and row[2].endswith("slotA.img") and row[3] == "booted"
    assert "1.0.0" in lines["rootfs.0"]  # the running version for the booted slot
    assert "primary" in lines["rootfs.1"] and "1.1.0" in lines["rootfs.1"]

    assert main(["--config", str(cfg), "status", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    slots = {s["bootname"]: s for s in data["bootloader"]["slots"]}
    assert slots["B"]["primary"] and slots["B"]["attempts_left"] == 3
    assert slots["A"]["booted"] and slots["A"]["state"] == ["booted", "good"]
    assert data["bootloader"]["redundant_env"] is True
    assert main(["--json", "--config", str(cfg), "status"]) == 0  # global --json too
    assert json.loads(capsys.readouterr().out)["bootloader"]["scheme"] == "bootchooser"


def test_status_flags_a_single_copy_env(tmp_path, capsys):
    cfg = gateway(tmp_path, redundant=False)
    assert main(["--config", str(cfg), "status"]) == 0
    assert "SINGLE COPY" in capsys.readouterr().out
