"""``ferry flash dfu`` end to end against the simulated device."""

from __future__ import annotations

import json
import os

import pytest

from ferry.daemon.cli import flash_dfu
from ferry.daemon.cli.main import main
from ferry.proxy.dfu.files import add_suffix
from ferry.sim.dfu.harness import setup, uboot_spec


@pytest.fixture
def sim(monkeypatch):
    sim = setup()
    original = flash_dfu.transport_options
    monkeypatch.setattr(flash_dfu, "transport_options",
                        lambda args: {**original(args), **sim.host_options()})
    return sim


def test_flash_with_progress(sim, tmp_path, capsys):
    dev = sim.add()
    image = os.urandom(20 * 1024)
    path = tmp_path / "fw.bin"
    path.write_bytes(image)
    assert main(["flash", "dfu", "1209:5a01,0001", str(path)]) == 0
    err = capsys.readouterr().err
    assert "dfu [" in err and "100.0%" in err
    assert "done: flashed 20480 bytes (raw)" in err and "verified by upload" in err
    assert dev.firmware() == image


def test_wrong_device_file_fails_with_exit_code_1(sim, tmp_path, capsys):
    sim.add()
    path = tmp_path / "fw.dfu"
    path.write_bytes(add_suffix(b"\x00" * 100, 0x0483, 0xDF11))
    assert main(["--json", "flash", "dfu", "1209:5a01", str(path)]) == 1
    out = json.loads(capsys.readouterr().out)
    assert out["ok"] is False and out["detail"]["error"] == "WrongDevice"


def test_alt_and_no_reset(sim, tmp_path):
    dev = sim.add()
    path = tmp_path / "fw.bin"
    path.write_bytes(b"\x33" * 999)
    assert main(["flash", "dfu", "1209:5a01", str(path), "--alt", "0", "--no-reset"]) == 0
    assert dev.mode == "dfu" and dev.firmware() == b"\x33" * 999
    assert main(["flash", "dfu", "1209:df11", str(path), "--alt", "3"]) == 1


def test_flash_command_works_without_the_top_level_parser(sim, tmp_path):
    # The QEMU guest test builds only this command's parser; --json is then absent.
    import argparse

    dev = sim.add()
    path = tmp_path / "fw.bin"
    path.write_bytes(b"\x44" * 100)
    parser = argparse.ArgumentParser()
    flash_dfu.register(parser.add_subparsers())
    args = parser.parse_args(["dfu", "1209:5a01", str(path)])
    assert args.func(args) == 0
    assert dev.firmware() == b"\x44" * 100


def test_detach_before_reset_restarts_a_uboot_board(sim, tmp_path):
    dev = sim.add(uboot_spec())
    path = tmp_path / "fw.bin"
    path.write_bytes(b"\x55" * 5000)
    assert main(["flash", "dfu", "0525:a4a5", str(path)]) == 0
    assert dev.present  # a USB reset alone leaves U-Boot in its dfu command
    assert main(["flash", "dfu", "0525:a4a5", str(path), "--detach-before-reset"]) == 0
    assert not dev.present and "detach: dfu command ends, board resets" in dev.log
    assert dev.firmware() == b"\x55" * 5000
