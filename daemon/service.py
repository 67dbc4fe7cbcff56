"""``ferryd``: the gateway's update daemon (filled in by the service issue)."""

from __future__ import annotations

import sys


def main() -> int:
    print("ferryd: the D-Bus service is not built yet", file=sys.stderr)
    return 1
