"""``ferry history [--json]``: past and pending deployments from the journal.

Reads the journal directly (SQLite WAL allows a reader beside ferryd), so it works
when the daemon is down, which is when a technician most needs it.
"""

from __future__ import annotations

import argparse
import json
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


def collect(journal: Any, limit: int) -> list[dict[str, Any]]:
    out = []
    for dep in journal.history(limit):
        d = dep.as_dict()
        d["steps"] = [vars(s) | {} for s in journal.steps(dep.id)]
        d["targets"] = [vars(t) | {} for t in journal.targets(dep.id)]
        out.append(d)
    return out


def run(args: argparse.Namespace) -> int:
    from ferry.daemon.config import DEFAULT_PATH, load_config
    from ferry.daemon.journal import Journal

    config = load_config(args.config or DEFAULT_PATH)
    db = config.gateway.data_dir / Journal.FILENAME
    if not db.exists():
        if getattr(args, "json", False):
            print("[]")
        else:
            print("no deployments yet")
        return exitcodes.OK
    journal = Journal(db)
    try:
        items = collect(journal, args.limit)
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
