"""Files ferry writes into Zigbee2MQTT's data directory, readable by Zigbee2MQTT.

Zigbee2MQTT usually runs as its own user (the Debian/Docker guides create
``zigbee2mqtt``) and reads the override index and the ``.ota`` files ferry writes with
``readFileSync`` (zigbee-herdsman ``src/controller/helpers/ota.ts`` ``readFirmware``,
``getOtaIndexInternal``; zigbee-herdsman-converters 23.x ``src/lib/ota.ts``
``readLocalFile``). ``tempfile.mkstemp`` creates files 0600, so an atomic replace used
to leave them unreadable to Z2M: every check then failed with EACCES. Rules here:

- a file that is replaced keeps its mode, and, where ferry runs as root, its owner
  and group (an operator who made the index ``0640 zigbee2mqtt:ferry`` keeps that);
- a new file gets 0644 whatever ferry's umask (ferryd runs with umask 027);
- a directory ferry creates gets 0755, so Z2M can reach the files in it.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from pathlib import Path

NEW_FILE_MODE = 0o644
NEW_DIR_MODE = 0o755


def ensure_dir(path: Path) -> None:
    """Create ``path`` (and parents) at 0755 when missing; an existing one is left alone."""
    missing = []
    p = path
    while not p.exists():
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        with contextlib.suppress(FileExistsError):
            d.mkdir()
            os.chmod(d, NEW_DIR_MODE)  # mkdir's mode is cut by the umask


def atomic_write(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` in one rename, keeping mode and owner (see above)."""
    ensure_dir(path.parent)
    try:
        old: os.stat_result | None = os.stat(path)
    except FileNotFoundError:
        old = None
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            if old is not None:
                if os.geteuid() == 0:
                    os.fchown(fh.fileno(), old.st_uid, old.st_gid)
                os.fchmod(fh.fileno(), stat.S_IMODE(old.st_mode))
            else:
                os.fchmod(fh.fileno(), NEW_FILE_MODE)
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
