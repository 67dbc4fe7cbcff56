"""Which slot is running (from the kernel command line) and what each slot holds."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ferry.daemon.boot.slots import (
    SlotError,
    booted_from_cmdline,
    booted_slot,
    other_slot,
    record_slot_version,
    slot_versions,
)
from ferry.daemon.config import SlotConfig, config_from_dict

SLOTS = (
    SlotConfig("rootfs.0", "A", Path("/dev/mmcblk0p2")),
    SlotConfig("rootfs.1", "B", Path("/dev/mmcblk0p3"), bootpart="3"),
)


@pytest.mark.parametrize(
    ("cmdline", "want"),
    [
        ("console=ttyS0 ferry.slot=B", "B"),
        ("rauc.slot=A root=/dev/mmcblk0p3", "A"),  # the slot name beats root=
        ("root=/dev/mmcblk0p3 rw", "B"),
        ("ferry.slot=rootfs.0", "A"),
        ("ferry.slot=3", "B"),  # Mender-style partition number
        ("ferry.slot=A ferry.slot=B", "B"),  # the last one wins
        ("root=/dev/sda1", None),
        ("", None),
    ],
)
def test_booted_from_cmdline(cmdline, want):
    got = booted_from_cmdline(cmdline, SLOTS)
    assert (got.bootname if got else None) == want


def test_unknown_slot_name_on_cmdline_is_an_error():
    with pytest.raises(SlotError, match=r"rauc\.slot=C"):
        booted_from_cmdline("rauc.slot=C", SLOTS)


def test_root_matches_through_symlinks(tmp_path):
    dev = tmp_path / "real-dev"
    dev.write_bytes(b"")
    link = tmp_path / "by-label-link"
    os.symlink(dev, link)
    slots = (SlotConfig("rootfs.0", "A", dev), SlotConfig("rootfs.1", "B", tmp_path / "x"))
    assert booted_from_cmdline(f"root={link}", slots).bootname == "A"


def cfg(tmp_path: Path, cmdline: str):
    (tmp_path / "cmdline").write_text(cmdline)
    return config_from_dict({
        "gateway": {"compatible": "x", "data_dir": "data"},
        "bootloader": {"cmdline": "cmdline"},
        "slot": [{"name": "rootfs.0", "bootname": "A", "device": "/dev/a"},
                 {"name": "rootfs.1", "bootname": "B", "device": "/dev/b"}],
    }, base=tmp_path)


def test_booted_slot_and_other(tmp_path):
    config = cfg(tmp_path, "quiet ferry.slot=A\n")
    assert booted_slot(config).name == "rootfs.0"
    assert other_slot(config, "A").bootname == "B"


def test_booted_slot_unknown_explains(tmp_path):
    config = cfg(tmp_path, "quiet\n")
    with pytest.raises(SlotError, match=r"ferry\.slot="):
        booted_slot(config)


def test_slot_versions_persist(tmp_path):
    config = cfg(tmp_path, "")
    assert slot_versions(config) == {}
    record_slot_version(config, "rootfs.1", "2.0.0")
    record_slot_version(config, "rootfs.0", "1.0.0")
    assert slot_versions(config) == {"rootfs.0": "1.0.0", "rootfs.1": "2.0.0"}
