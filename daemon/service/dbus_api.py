"""ferryd's D-Bus names, shared by the service and the CLI's client (docs/dbus-api.md)."""

from __future__ import annotations

from pathlib import Path

BUS_NAME = "org.ferry.Ferry1"
OBJECT_PATH = "/org/ferry/Ferry1"
INTERFACE = "org.ferry.Ferry1"

# Methods only root and members of group "ferry" may call. The D-Bus policy file
# (systemd/org.ferry.Ferry1.conf) enforces the same on the system bus; ferryd checks the
# caller's uid again because a misinstalled policy must not open the gateway.
STATE_CHANGING = frozenset({"Install", "InstallFd", "Cancel", "Mark", "Flash"})
PRIVILEGED_GROUP = "ferry"

ERROR_DENIED = f"{INTERFACE}.Error.PermissionDenied"
ERROR_BUSY = f"{INTERFACE}.Error.Busy"
ERROR_FAILED = f"{INTERFACE}.Error.Failed"
ERROR_NOT_ALLOWED = f"{INTERFACE}.Error.NotAllowed"
ERROR_INVALID_ARGS = "org.freedesktop.DBus.Error.InvalidArgs"

INTROSPECTION_XML = Path(__file__).resolve().parent / "org.ferry.Ferry1.xml"
