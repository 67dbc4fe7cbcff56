"""Zigbee2MQTT's local override index, as ferry shares it with Z2M and with itself.

Z2M reads the file named by ``ota.zigbee_ota_override_index_location`` on every check
and update and takes the FIRST entry whose manufacturer code and image type (and
hardware/file-version ranges) match the node (zigbee-herdsman 10.x
``src/controller/helpers/ota.ts`` ``getOtaIndex`` + ``Device.findMatchingOtaImage``;
zigbee-herdsman-converters 23.x ``src/lib/ota.ts`` ``getIndex``/``getImageMeta``).
An entry with ``force: true`` is offered to EVERY node of that manufacturer code and
image type, whatever version it runs, the same one included (herdsman
``Device.checkOta``: ``available: meta.force ? true : ...``; converters
``isImageAvailable``: ``meta.force ? -1 : ...``). Left in the index, a forced entry
makes Z2M show "update available" on every sibling and re-flash or downgrade any
sibling whose Update button is pressed. So:

- ferry keeps one entry per (manufacturer, image type), first in the list; entries it
  did not write are never touched;
- a forced entry exists only while ferry's own update of its target runs: the caller
  holds the type's lock exclusively (``type_lock``) and calls ``unforce`` in a
  ``finally`` (success, failure, timeout, Ctrl-C). Forced updates of one type are
  therefore serialised, and unforced ones share the lock (they stage the same file);
- a forced entry found while nobody holds its type lock exclusively is left over
  from a killed ferry: ``stage`` and ``sweep`` make it unforced;
- the ``.ota`` file of an entry that is replaced is deleted (only inside ferry's own
  image directory).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ferry.proxy.zigbee.errors import AdapterError
from ferry.proxy.zigbee.files import atomic_write, ensure_dir
from ferry.proxy.zigbee.otafile import OtaHeader


def _lock_fd(path: Path) -> int:
    ensure_dir(path.parent)
    return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)


@contextlib.contextmanager
def _flock(path: Path, *, exclusive: bool, timeout_s: float, what: str) -> Iterator[None]:
    fd = _lock_fd(path)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                if time.monotonic() >= deadline:
                    raise AdapterError(f"{what} did not end within {timeout_s:.0f} s; "
                                       "try again when it has finished") from None
                time.sleep(0.05)
        yield
    finally:
        os.close(fd)  # closing releases the flock


@dataclass
class OverrideIndex:
    data_dir: Path
    index_file: str = "ferry-ota-index.json"
    image_dir: str = "ferry-ota"  # under data_dir; ferry's entries point here

    @property
    def path(self) -> Path:
        p = Path(self.index_file)
        return p if p.is_absolute() else self.data_dir / p

    @property
    def image_path(self) -> Path:
        return self.data_dir / self.image_dir

    @property
    def _prefix(self) -> str:
        return f"{self.image_dir}/"

    def _lock_path(self, name: str) -> Path:
        return self.data_dir / self.image_dir / name

    def is_ours(self, entry: dict[str, Any]) -> bool:
        return str(entry.get("url", "")).startswith(self._prefix)

    # ---- locks ---------------------------------------------------------------------

    def type_lock(self, manufacturer_code: int, image_type: int, *, exclusive: bool,
                  timeout_s: float) -> contextlib.AbstractContextManager[None]:
        """Held for a whole update of one node: exclusively by a forced one."""
        name = f".lock-{manufacturer_code:04x}-{image_type:04x}"
        return _flock(self._lock_path(name), exclusive=exclusive, timeout_s=timeout_s,
                      what=f"another ferry update of manufacturer 0x{manufacturer_code:04X} "
                           f"image type 0x{image_type:04X}")

    def _index_lock(self) -> contextlib.AbstractContextManager[None]:
        return _flock(self._lock_path(".index.lock"), exclusive=True, timeout_s=60.0,
                      what="another ferry process writing the override index")

    def _type_held_exclusively(self, manufacturer_code: int, image_type: int) -> bool:
        fd = _lock_fd(self._lock_path(f".lock-{manufacturer_code:04x}-{image_type:04x}"))
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return False
        except OSError:
            return True
        finally:
            os.close(fd)

    # ---- the file ------------------------------------------------------------------

    def load(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        try:
            loaded = json.loads(self.path.read_text() or "[]")
        except json.JSONDecodeError as exc:
            raise AdapterError(f"{self.path} is not valid JSON ({exc}); fix or remove it, "
                               "Zigbee2MQTT cannot read it either") from exc
        except OSError as exc:
            raise AdapterError(f"cannot read {self.path}: {exc.strerror}") from exc
        if not isinstance(loaded, list) or not all(isinstance(e, dict) for e in loaded):
            raise AdapterError(f"{self.path} must hold a JSON list of image entries")
        return loaded

    def ensure_exists(self) -> None:
        """Z2M fails every check while the configured index file is missing (ENOENT from
        its readFileSync), so ferry creates an empty one before its first check."""
        if not self.path.exists():
            with self._index_lock():
                if not self.path.exists():
                    self._save([])

    def _save(self, entries: list[dict[str, Any]]) -> None:
        atomic_write(self.path, (json.dumps(entries, indent=2) + "\n").encode())

    def _unforce_stale(self, entries: list[dict[str, Any]]) -> bool:
        changed = False
        for e in entries:
            if (e.get("force") and self.is_ours(e)
                    and isinstance(e.get("manufacturerCode"), int)
                    and isinstance(e.get("imageType"), int)
                    and not self._type_held_exclusively(e["manufacturerCode"], e["imageType"])):
                del e["force"]
                changed = True
        return changed

    def _delete_image(self, url: str) -> None:
        if url.startswith(self._prefix) and "/" not in url[len(self._prefix):]:
            (self.data_dir / url).unlink(missing_ok=True)

    # ---- what the transport does ---------------------------------------------------

    def stage(self, raw: bytes, header: OtaHeader, *, force: bool) -> dict[str, Any]:
        """Write the file and put its entry first. A forced stage needs the type lock
        held exclusively by the caller."""
        name = (f"{header.manufacturer_code:04x}-{header.image_type:04x}-"
                f"{header.file_version:08x}.ota")
        rel = f"{self.image_dir}/{name}"
        entry: dict[str, Any] = {
            "url": rel,
            "fileName": name,
            "manufacturerCode": header.manufacturer_code,
            "imageType": header.image_type,
            "fileVersion": header.file_version,
            "fileSize": len(raw),
            "sha512": hashlib.sha512(raw).hexdigest(),
            "otaHeaderString": header.header_string.decode("utf-8", "replace"),
        }
        if header.min_hardware_version is not None:
            entry["hardwareVersionMin"] = header.min_hardware_version
            entry["hardwareVersionMax"] = header.max_hardware_version
        if force:
            entry["force"] = True
        with self._index_lock():
            entries = self.load()
            atomic_write(self.data_dir / rel, raw)
            kind = (header.manufacturer_code, header.image_type)
            replaced = [e for e in entries if self.is_ours(e)
                        and (e.get("manufacturerCode"), e.get("imageType")) == kind]
            kept = [e for e in entries if not any(e is r for r in replaced)]
            self._unforce_stale(kept)
            # Override entries come first in Z2M's lookup; ours first within the override.
            self._save([entry, *kept])
            for old in replaced:
                if old.get("url") != rel:
                    self._delete_image(str(old.get("url", "")))
        return entry

    def unforce(self, entry: dict[str, Any]) -> None:
        """End of ferry's forced update: the entry stays, as an ordinary one."""
        with self._index_lock():
            entries = self.load()
            changed = False
            for e in entries:
                if e.get("url") == entry.get("url") and e.get("force"):
                    del e["force"]
                    changed = True
            if changed:
                self._save(entries)

    def sweep(self) -> bool:
        """Unforce forced ferry entries whose update is no longer running (a killed
        ferry left them); True when the index changed."""
        if not self.path.exists():
            return False
        with self._index_lock():
            entries = self.load()
            if self._unforce_stale(entries):
                self._save(entries)
                return True
        return False
