"""`ferry devices` standalone: configured targets with their last result, 80 columns."""

from __future__ import annotations

import json
from pathlib import Path

from install_gateway import make_gateway

from ferry.daemon.cli.main import main
from ferry.daemon.journal import Journal

TARGETS = """
[[target]]
name = "sensor-mcu"
transport = "smp-serial"
address = "/dev/ttyUSB0"

[[target]]
name = "radio"
transport = "dfu"
address = "0483:df11"
"""


def test_devices_lists_targets_with_last_result(tmp_path: Path, capsys) -> None:
    gw = make_gateway(tmp_path / "gw", extra=TARGETS)
    journal = Journal.open(gw.data_dir)
    dep = journal.create("x.swu")
    journal.set_target(dep, "sensor-mcu", transport="smp-serial", state="ok", version="1.4.0")
    journal.set_target(dep, "radio", transport="dfu", state="failed",
                       message="device stalled DNLOAD block 5; old firmware kept")
    journal.finish(dep, "failure", "1 of 2 targets failed")
    journal.close()

    assert main(["--config", str(gw.config_path), "devices"]) == 0
    text = capsys.readouterr().out
    lines = text.splitlines()
    assert all(len(line) <= 80 for line in lines)
    assert lines[0].split()[:2] == ["NAME", "TRANSPORT"]
    assert any(line.startswith("sensor-mcu") and "1.4.0" in line and "success" in line
               for line in lines)
    assert any(line.startswith("radio") and "failure" in line for line in lines)
    assert "! device stalled DNLOAD block 5" in text

    assert main(["--config", str(gw.config_path), "devices", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["radio"]["last_result"] == "failure"
    assert rows["sensor-mcu"]["version"] == "1.4.0"


def test_devices_without_ferryd_says_so(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("FERRY_BUS_ADDRESS", f"unix:path={tmp_path}/no-bus")
    assert main(["devices"]) == 3
    assert "--config" in capsys.readouterr().err


def test_discovered_zigbee_node_shows_both_hardware_versions() -> None:
    from ferry.daemon.cli.devices import render

    rows = [{"name": "lamp", "transport": "zigbee", "address": "0x00124b0000aaaa01",
             "version": "0x00010000", "last_result": "discovered", "hw_basic": "0x0001",
             "hw_query": "0x0003"},
            {"name": "plug", "transport": "zigbee", "address": "0x00124b0000aaaa02",
             "version": "0x00010000", "last_result": "discovered", "hw_basic": "0x0002"}]
    lines = render(rows).splitlines()
    assert all(len(line) <= 80 for line in lines)
    assert lines[2] == "    hardware version: basic cluster 0x0001, OTA query 0x0003"
    assert lines[4] == "    hardware version: basic cluster 0x0002, OTA query -"
