"""The committed introspection XML is what ferryd really serves."""

from __future__ import annotations

import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

from dbus_fixtures import private_bus, running_ferryd
from install_gateway import make_gateway

from ferry.daemon.service import dbus_api


def _shape(xml: str) -> set[tuple[str, str, tuple[str, ...]]]:
    root = ET.fromstring(xml)
    iface = next(i for i in root.iter("interface") if i.get("name") == dbus_api.INTERFACE)
    out = set()
    for el in iface:
        if el.tag in ("method", "signal"):
            sig = tuple(f"{a.get('direction', 'out')}:{a.get('type')}" for a in el.iter("arg"))
            out.add((el.tag, el.get("name", ""), sig))
        elif el.tag == "property":
            out.add(("property", el.get("name", ""), (el.get("type", ""), el.get("access", ""))))
    return out


def test_introspection_matches_committed_xml(tmp_path: Path) -> None:
    gw = make_gateway(tmp_path / "gw")
    committed = dbus_api.INTROSPECTION_XML.read_text()
    with private_bus(with_policy=True) as address, \
            running_ferryd(gw.config_path, address, FERRY_BOOT_ID_PATH=str(gw.boot_id)):
        out = subprocess.run(
            ["dbus-send", f"--bus={address}", "--print-reply=literal", "--dest=org.ferry.Ferry1",
             "/org/ferry/Ferry1", "org.freedesktop.DBus.Introspectable.Introspect"],
            capture_output=True, text=True, check=True).stdout
    live = out.strip()
    assert _shape(live) == _shape(committed)
    assert {m for kind, m, _ in _shape(committed) if kind == "method"} == {
        "Install", "InstallFd", "Cancel", "Mark", "GetStatus", "ListTargets", "Flash"}
