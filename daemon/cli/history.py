"""``ferry history [--json]``: past and pending deployments from the journal.

Reads the journal directly (SQLite WAL allows a reader beside ferryd), so it works
when the daemon is down, which is when a technician most needs it.

A device deployment (a DDI action on a device's own controller, issue 19) names its
controller and action, and a campaign every action it carried, so that a line here
can be found on the server: ``controller gw1.mcu0, action 7``.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
import time
from typing import Any

from ferry.daemon.cli import exitcodes


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "history", help="list past deployments and their result",
        description="List deployments (newest first) with their result, per-target "
        "outcome and the error that ended a failed one.")
    p.add_argument("-n", "--limit", type=int, default=20, help="how many (default 20)")
    p.add_argument("--steps", action="store_true", help="show every recorded step")
    p.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                   help="machine-readable output")
    p.set_defaults(func=run)


def _when(t: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t)) if t else "-"


DEVICE_ORIGIN = "ddi-device"  # ferry.daemon.install.devicedeploy.DEVICE_ORIGIN
_SHOWN_ACTIONS = 6


def controllers(d: dict[str, Any]) -> list[dict[str, str]]:
    """The (controller id, action id) pairs a device deployment carried: a campaign's
    from its info, one device's from its external id ``<controller id>:<action id>``."""
    if d.get("origin") != DEVICE_ORIGIN:
        return []
    keys = (d.get("info") or {}).get("actions")
    if not isinstance(keys, list):
        keys = [d.get("external_id") or ""]
    out = []
    for key in keys:
        cid, sep, aid = str(key).rpartition(":")
        if sep and cid:
            out.append({"controller_id": cid, "action_id": aid})
    return out


def controller_line(items: list[dict[str, str]]) -> str:
    shown = [f"{c['controller_id']} (action {c['action_id']})"
             for c in items[:_SHOWN_ACTIONS]]
    more = f", +{len(items) - _SHOWN_ACTIONS} more" if len(items) > _SHOWN_ACTIONS else ""
    if len(items) == 1:
        c = items[0]
        return f"controller {c['controller_id']}, action {c['action_id']}"
    return f"campaign of {len(items)} actions: {', '.join(shown)}{more}"


def collect(journal: Any, limit: int) -> list[dict[str, Any]]:
    out = []
    for dep in journal.history(limit):
        d = dep.as_dict()
        d["controllers"] = controllers(d)
        d["steps"] = [vars(s) | {} for s in journal.steps(dep.id)]
        d["targets"] = [vars(t) | {} for t in journal.targets(dep.id)]
        out.append(d)
    return out


def run(args: argparse.Namespace) -> int:
    from ferry.daemon.config import DEFAULT_PATH, load_config
    from ferry.daemon.journal import Journal, JournalError

    config = load_config(args.config or DEFAULT_PATH)
    db = config.gateway.data_dir / Journal.FILENAME
    try:
        exists = db.exists()
    except PermissionError as err:
        raise JournalError(f"cannot read the journal {db}: {err.strerror}; ferry history "
                           "needs root or group ferry") from err
    if not exists:
        if getattr(args, "json", False):
            print("[]")
        else:
            print("no deployments yet")
        return exitcodes.OK
    journal = Journal.open_readonly(db)
    try:
        items = collect(journal, args.limit)
    except sqlite3.Error as err:
        raise JournalError(f"cannot read the journal {db}: {err}") from err
    finally:
        journal.close()
    if getattr(args, "json", False):
        json.dump(items, sys.stdout, indent=2, sort_keys=True)
        print()
        return exitcodes.OK
    if not items:
        print("no deployments yet")
    for d in items:
        result = d["result"] or f"pending ({d['state']})"
        slot = f" {d['from_slot']}->{d['to_slot']}" if d["to_slot"] else ""
        print(f"#{d['id']} {_when(d['created'])} UTC  {d['version'] or '?'}{slot}  {result}")
        print(f"    source: {d['source']}")
        if d["controllers"]:
            print(f"    {controller_line(d['controllers'])}")
        if d["error"]:
            print(f"    error: {d['error']}")
        for t in d["targets"]:
            ver = f" {t['version']}" if t["version"] else ""
            msg = f": {t['message']}" if t["message"] else ""
            print(f"    target {t['name']} ({t['transport']}): {t['state']}{ver}{msg}")
        if args.steps:
            for s in d["steps"]:
                detail = f"  {s['detail']}" if s["detail"] else ""
                print(f"    {_when(s['started'])} {s['name']}: {s['status']}{detail}")
    return exitcodes.OK
