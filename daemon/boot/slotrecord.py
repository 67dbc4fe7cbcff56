"""The slot record: ferry's durable word that a slot's current content was verified.

A slot may be booted only while ferry holds a record that what it holds was written by
ferry and matched a signed sha256 (docs/security.md, "Only a verified slot can be
booted"). The record lives in ``slots.json`` in the data dir, beside the version each
slot holds, and not in the journal, because:

- it is the boot room's own state: ``ferry mark --config`` checks it without opening
  the journal's SQLite schema, and the boot room stays below install;
- it replaces the version record in the *same* atomic write, so the version the floor
  is checked against is always the version whose digest was verified;
- it outlives deployments: the journal is history, the record is "what is in slot B now".

Life of a record: :func:`begin_write` turns it into ``writing`` (no digest) before the
slot is opened for writing, so a power cut mid-write leaves no verified record;
:func:`record_verified` writes it only after the hash matched and the slot was fsynced;
:func:`record_failed` says why a write or a later re-hash failed, so a refusal can
explain itself. Each change is one atomic replace (write, fsync, rename, fsync the dir)
under an exclusive ``flock`` that :func:`held` also lends to a caller which must check
and act in one step (the activation gate in ``slots``).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ferry.daemon.config import Config
from ferry.errors import FerryError

VERIFIED = "verified"  # written, hash matched, fsynced
WRITING = "writing"  # opened for writing; whatever it holds is not verified
FAILED = "failed"  # a write or a re-hash failed; ``reason`` says how
UNVERIFIED = ""  # a version without a digest: factory provisioning or an older ferry

CHUNK = 1 << 20  # re-hash buffer: memory stays O(1) whatever the slot size


class SlotRecordError(FerryError):
    """The slot records cannot be read or changed (permissions, a full data partition)."""


@dataclass(frozen=True)
class SlotRecord:
    slot: str  # slot name ("rootfs.1")
    state: str  # VERIFIED, WRITING, FAILED or UNVERIFIED
    version: str = ""  # the bundle version written (signed); "" while not verified
    sha256: str | None = None  # signed sha256 of the bytes in the slot (decompressed)
    size: int | None = None  # how many bytes from the slot's start the digest covers
    at: float | None = None  # when the state was entered (seconds since the epoch)
    reason: str = ""  # FAILED: what went wrong, to finish "its last write ..."

    @property
    def verified(self) -> bool:
        return self.state == VERIFIED and bool(self.sha256) and self.size is not None

    @property
    def when(self) -> str:
        if self.at is None:
            return "at an unknown time"
        return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(self.at))

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"version": self.version, "state": self.state}
        if self.sha256 is not None:
            out["sha256"] = self.sha256
        if self.size is not None:
            out["size"] = self.size
        if self.at is not None:
            out["at"] = self.at
        if self.reason:
            out["reason"] = self.reason
        return out


def _from_json(slot: str, raw: Any) -> SlotRecord | None:
    if not isinstance(raw, dict):
        return None
    state = str(raw.get("state", UNVERIFIED))
    sha = raw.get("sha256")
    size = raw.get("size")
    at = raw.get("at")
    return SlotRecord(
        slot=slot, state=state, version=str(raw.get("version", "")),
        sha256=sha.lower() if isinstance(sha, str) else None,
        size=size if isinstance(size, int) and not isinstance(size, bool) and size >= 0
        else None,
        at=float(at) if isinstance(at, (int, float)) and not isinstance(at, bool) else None,
        reason=str(raw.get("reason", "")),
    )


def _path(config: Config) -> Path:
    return Path(config.gateway.data_dir) / "slots.json"


class Records:
    """The records while the lock is held; every ``put`` is one durable replace."""

    def __init__(self, config: Config) -> None:
        self.path = _path(config)

    def _load(self) -> dict[str, Any]:
        # missing or unparseable: no record, which refuses activation (the safe side)
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except OSError as err:
            raise SlotRecordError(f"cannot read the slot records {self.path}: "
                                  f"{err.strerror or err}") from err
        except ValueError:
            return {}
        return data if isinstance(data, dict) else {}

    def all(self) -> dict[str, SlotRecord]:
        out = {}
        for name, raw in self._load().items():
            rec = _from_json(name, raw)
            if rec is not None:
                out[name] = rec
        return out

    def get(self, slot: str) -> SlotRecord | None:
        return _from_json(slot, self._load().get(slot))

    def put(self, rec: SlotRecord) -> None:
        data = self._load()
        data[rec.slot] = rec.to_json()
        try:
            _replace(self.path, data)
        except OSError as err:
            raise SlotRecordError(f"cannot write the slot records {self.path}: "
                                  f"{err.strerror or err}") from err


def _replace(path: Path, data: dict[str, Any]) -> None:
    """Atomic and durable: a power cut leaves the old file or the new one, never a mix."""
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


@contextmanager
def held(config: Config) -> Iterator[Records]:
    """The records under an exclusive lock, for a check and the act it permits.

    ``flock`` on a fresh open file: it excludes other processes (``ferry mark
    --config``) and other threads of ferryd alike (each open is its own lock owner).
    """
    data_dir = Path(config.gateway.data_dir)
    lock = data_dir / "slots.lock"
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    except OSError as err:
        raise SlotRecordError(f"cannot open {lock}: {err.strerror or err}; run as root "
                              "or through ferryd") from err
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield Records(config)
    finally:
        os.close(fd)


# --- the record's life -------------------------------------------------------------

def get_record(config: Config, slot: str) -> SlotRecord | None:
    return Records(config).get(slot)


def begin_write(config: Config, slot: str) -> None:
    """The slot is about to be opened for writing: drop its verified record first."""
    with held(config) as recs:
        recs.put(SlotRecord(slot=slot, state=WRITING, at=time.time()))


def record_verified(config: Config, slot: str, *, sha256: str, size: int,
                    version: str) -> None:
    """Only after the written bytes matched ``sha256`` (signed) and were fsynced."""
    with held(config) as recs:
        recs.put(SlotRecord(slot=slot, state=VERIFIED, version=version,
                            sha256=sha256.lower(), size=size, at=time.time()))


def record_failed(config: Config, slot: str, reason: str) -> None:
    """Say why the slot holds nothing verified; ``reason`` ends "its last write ...",
    e.g. "failed its hash"."""
    with held(config) as recs:
        recs.put(SlotRecord(slot=slot, state=FAILED, at=time.time(), reason=reason))


def record_slot_version(config: Config, slot: str, version: str) -> None:
    """A version without a digest (factory provisioning, the demo): shown in status,
    never enough to activate the slot. "" marks the slot scratch."""
    with held(config) as recs:
        recs.put(SlotRecord(slot=slot, state=UNVERIFIED if version else WRITING,
                            version=version, at=time.time()))


def slot_versions(config: Config) -> dict[str, str]:
    """Installed version per slot name ("" while a slot is scratch)."""
    return {name: rec.version for name, rec in Records(config).all().items()}


# --- re-hash -------------------------------------------------------------------------

def rehash(device: str | Path, size: int, *,
           progress: Callable[[int, int], None] | None = None) -> tuple[str, int]:
    """sha256 of the first ``size`` bytes of ``device``, streamed; (hex, bytes read).

    Fewer bytes than ``size`` means the slot shrank or was truncated: the digest then
    covers what was there and cannot match.
    """
    h = hashlib.sha256()
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    done = 0
    with open(device, "rb", buffering=0) as f:
        with suppress(AttributeError, OSError):  # a hint; not every file system has it
            os.posix_fadvise(f.fileno(), 0, size, os.POSIX_FADV_SEQUENTIAL)
        while done < size:
            n = f.readinto(view[: min(CHUNK, size - done)])
            if not n:
                break
            h.update(view[:n])
            done += n
            if progress is not None:
                progress(done, size)
    return h.hexdigest(), done
