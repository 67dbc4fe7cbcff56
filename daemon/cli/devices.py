"""``ferry devices``: every device behind the gateway with its version and last result.

From ferryd when it runs; with ``--config`` standalone, from the config and the
journal, plus whatever each transport can discover on its own (Zigbee or LoRa nodes).
With ``[backend] device_controllers`` on, each device's DDI controller id and its
current action follow its row.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ferry.daemon.cli import exitcodes

COLUMNS = (("name", 20), ("transport", 10), ("address", 20), ("version", 10),
           ("last_result", 12))


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "devices", help="list the devices behind the gateway (MCUs, radio nodes)",
        description="List configured targets with their firmware version and the result of "
        "their last update. With --config (no ferryd needed) also asks each transport to "
        "discover devices (Zigbee and LoRa nodes).")
    p.add_argument("--discover", action="store_true",
                   help="with --config: also probe each configured transport for devices")
    p.set_defaults(func=run)


def _standalone(config_path: str, discover: bool) -> list[dict[str, Any]]:
    from ferry.daemon.config import load_config
    from ferry.daemon.journal import Journal
    from ferry.daemon.service.status import targets

    config = load_config(config_path)
    journal = Journal.open(config.gateway.data_dir)
    try:
        rows = targets(config, journal)
    finally:
        journal.close()
    if discover:
        from ferry.errors import FerryError
        from ferry.proxy.registry import get_transport

        known = {r["name"] for r in rows}
        for name in sorted({t.transport for t in config.targets}):
            opts: dict[str, Any] = {}
            for t in config.targets:
                if t.transport == name:
                    opts.update(t.options)
            try:
                found = get_transport(name, opts).discover()
            except (FerryError, OSError) as err:
                print(f"ferry devices: {name}: discovery failed: {err}", file=sys.stderr)
                continue
            for tgt in found:
                if tgt.name not in known:
                    rows.append({"name": tgt.name, "transport": tgt.transport,
                                 "address": tgt.address, "hardware_id": tgt.hardware_id,
                                 "version": tgt.options.get("version")
                                 or tgt.options.get("file_version", ""),
                                 "last_result": "discovered", "message": "",
                                 "last_seen": None, **_hardware(tgt.options)})
    return rows


def _hardware(options: dict[str, str]) -> dict[str, str]:
    """A Zigbee node's two hardware versions, where Zigbee2MQTT exposes them: the
    Basic-cluster attribute (Z2M 2.2 matches OTA images on it) and the one in the
    node's Query Next Image Request (Z2M 2.14 does); see docs/transport-zigbee.md."""
    return {k: options[k] for k in ("hw_basic", "hw_query") if options.get(k)}


def _hardware_line(r: dict[str, Any]) -> str:
    if not (r.get("hw_basic") or r.get("hw_query")):
        return ""
    return (f"    hardware version: basic cluster {r.get('hw_basic') or '-'}, "
            f"OTA query {r.get('hw_query') or '-'}")


def _controller_line(r: dict[str, Any]) -> str:
    """A device that is a DDI controller of its own: its id and current action."""
    action = f"action {r['action']}" if r.get("action") else "no action"
    backend = r.get("backend") or "?"
    text = f"  controller {r['controller_id']} ({backend}), {action}"
    note = r.get("action_message") or (r.get("backend_message") if backend != "ok" else "")
    return f"{text}: {note}"[:79] if note else text


def render(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "no devices configured ([[target]] in ferry.toml)"
    head = " ".join(title.upper().replace("_", " ").ljust(w) for title, w in COLUMNS)
    lines = [head.rstrip()]
    for r in rows:
        cells = []
        for key, width in COLUMNS:
            text = str(r.get(key) or "-")
            if key == "name" and r.get("group"):  # a radio node, listed under its group
                text = "  " + str(r.get("address") or text)
            cells.append((text[: width - 1] + "~" if len(text) > width else text).ljust(width))
        lines.append(" ".join(cells).rstrip())
        if _hardware_line(r):
            lines.append(_hardware_line(r))
        if r.get("last_result") in ("failure", "failed", "rolled-back") and r.get("message"):
            lines.append(f"{'    ' if r.get('group') else '  '}! {r['message'][:74]}")
        if r.get("controller_id"):
            lines.append(_controller_line(r))
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    if args.config:
        rows = _standalone(args.config, args.discover)
    else:
        from ferry.daemon.cli import dbus_client as client

        rows = client.list_targets()
    if args.json:
        print(json.dumps(rows, indent=2, sort_keys=True, default=str))
    else:
        print(render(rows))
    return exitcodes.OK
