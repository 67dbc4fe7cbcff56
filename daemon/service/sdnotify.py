"""sd_notify for ferryd: READY, STATUS, WATCHDOG.

systemd-python's ``systemd.daemon.notify`` is used when installed (the design card's
package); the fallback speaks the same datagram protocol so ferryd also runs where the
C extension could not be built (the simulator, a minimal image without it).
"""

from __future__ import annotations

import importlib
import os
import socket


def _fallback_notify(state: str) -> bool:
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        try:
            sock.connect(address)
            sock.sendall(state.encode())
        except OSError:
            return False
    return True


def notify(state: str) -> bool:
    """Send one sd_notify message; False when not running under a notify socket."""
    if not os.environ.get("NOTIFY_SOCKET"):
        return False
    try:
        # by name: the repo's systemd/ folder of unit files must not shadow it for mypy
        sd_daemon = importlib.import_module("systemd.daemon")
    except ImportError:
        return _fallback_notify(state)
    return bool(sd_daemon.notify(state))


def watchdog_interval() -> float | None:
    """Seconds between WATCHDOG=1 pings (half of WatchdogSec), or None when disabled."""
    usec = os.environ.get("WATCHDOG_USEC")
    if not usec:
        return None
    pid = os.environ.get("WATCHDOG_PID")
    if pid and pid.isdigit() and int(pid) != os.getpid():
        return None
    try:
        value = int(usec)
    except ValueError:
        return None
    return value / 1e6 / 2 if value > 0 else None
