"""``ferry cancel``: stop the running install before the slot switch (needs ferryd)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from ferry.daemon.cli import exitcodes


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "cancel", help="cancel the running install (before the slot switch only)",
        description="Ask ferryd to stop the running install. Possible until the new slot "
        "is activated; after that the update finishes or rolls back on its own.")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ferry.daemon.cli import dbus_client as client

    cancelling = client.cancel()
    if args.json:
        print(json.dumps({"cancelling": cancelling}))
    elif cancelling:
        print("ferry: cancelling; the install stops at its next step and the running "
              "slot stays as it is")
    else:
        print("ferry: nothing to cancel (no install is running)")
    return exitcodes.OK if cancelling else exitcodes.FAILED
