"""Slot writer: bytes land exactly, hashes are checked, errors surface from any thread."""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import pytest
import zstandard

from ferry.daemon.install.slotwriter import (
    SlotHashMismatch,
    SlotTooSmall,
    SlotWriteError,
    slot_capacity,
    write_slot,
)


class Trickle(io.RawIOBase):
    """Short reads of odd sizes, like a socket, then optionally an error."""

    def __init__(self, data: bytes, fail_at: int | None = None) -> None:
        self.data, self.pos, self.fail_at = data, 0, fail_at

    def readable(self) -> bool:
        return True

    def readinto(self, b: memoryview | bytearray) -> int:  # type: ignore[override]
        if self.fail_at is not None and self.pos >= self.fail_at:
            raise ConnectionResetError("peer went away")
        n = min(len(b), 77_777, len(self.data) - self.pos)
        b[:n] = self.data[self.pos:self.pos + n]
        self.pos += n
        return n


def make_slot(tmp_path: Path, size: int = 8 << 20) -> Path:
    p = tmp_path / "slot.img"
    with open(p, "wb") as f:
        f.truncate(size)
    return p


def test_raw_write_lands_exactly_and_keeps_the_tail(tmp_path: Path) -> None:
    slot = make_slot(tmp_path)
    data = os.urandom(3 * (1 << 20) + 12345)
    seen: list[int] = []
    res = write_slot(Trickle(data), slot, expected_size=len(data), progress=seen.append)  # type: ignore[arg-type]
    content = slot.read_bytes()
    assert content[: len(data)] == data
    assert len(content) == 8 << 20  # a slot is never truncated or grown
    assert res.size == len(data) and seen[-1] == len(data)


def test_zstd_with_decompressed_hash(tmp_path: Path) -> None:
    slot = make_slot(tmp_path)
    data = os.urandom(1 << 20) * 3
    comp = zstandard.ZstdCompressor().compress(data)
    res = write_slot(Trickle(comp), slot, compressed="zstd", expected_size=len(data),  # type: ignore[arg-type]
                     expected_sha256=hashlib.sha256(data).hexdigest())
    assert res.sha256 == hashlib.sha256(data).hexdigest()
    assert slot.read_bytes()[: len(data)] == data


def test_decompressed_hash_mismatch(tmp_path: Path) -> None:
    slot = make_slot(tmp_path)
    data = b"x" * 100_000
    comp = zstandard.ZstdCompressor().compress(data)
    with pytest.raises(SlotHashMismatch, match="unbootable"):
        write_slot(Trickle(comp), slot, compressed="zstd",  # type: ignore[arg-type]
                   expected_sha256=hashlib.sha256(b"y").hexdigest())


def test_source_error_mid_stream_surfaces(tmp_path: Path) -> None:
    slot = make_slot(tmp_path)
    with pytest.raises(ConnectionResetError):
        write_slot(Trickle(os.urandom(4 << 20), fail_at=2 << 20), slot)  # type: ignore[arg-type]


def test_declared_size_over_capacity_refused_before_writing(tmp_path: Path) -> None:
    slot = make_slot(tmp_path, 1 << 20)
    before = slot.read_bytes()
    with pytest.raises(SlotTooSmall, match="holds 1048576"):
        write_slot(Trickle(b"a" * 10), slot, expected_size=2 << 20)  # type: ignore[arg-type]
    assert slot.read_bytes() == before


def test_undeclared_overflow_stops_at_capacity(tmp_path: Path) -> None:
    slot = make_slot(tmp_path, 1 << 20)
    comp = zstandard.ZstdCompressor().compress(b"\0" * (3 << 20))
    with pytest.raises(SlotTooSmall, match="larger than slot"):
        write_slot(Trickle(comp), slot, compressed="zstd")  # type: ignore[arg-type]
    assert slot.stat().st_size == 1 << 20


def test_write_error_is_reported_with_offset(tmp_path: Path) -> None:
    with pytest.raises(SlotWriteError, match="cannot open slot"):
        write_slot(Trickle(b"abc"), tmp_path / "missing-dir" / "slot")  # type: ignore[arg-type]


def test_capacity_of_files(tmp_path: Path) -> None:
    assert slot_capacity(make_slot(tmp_path, 4096)) == 4096
    assert slot_capacity(tmp_path / "nope") is None


@pytest.mark.timeout(120)
@pytest.mark.parametrize("compressed", [None, "zstd"])
def test_many_buffers_in_flight_do_not_deadlock(tmp_path: Path, compressed: str | None) -> None:
    slot = make_slot(tmp_path, 16 << 20)
    data = os.urandom(12 << 20)  # more stored bytes than the whole buffer pool
    src = zstandard.ZstdCompressor(level=1).compress(data) if compressed else data
    res = write_slot(Trickle(src), slot, compressed=compressed)  # type: ignore[arg-type]
    assert res.size == len(data)
    assert hashlib.sha256(slot.read_bytes()[: len(data)]).digest() == hashlib.sha256(
        data).digest()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("compressed", [None, "zstd"])
def test_full_device_is_reported(compressed: str | None) -> None:
    data = os.urandom(10 << 20)
    src = zstandard.ZstdCompressor(level=1).compress(data) if compressed else data
    with pytest.raises(SlotWriteError, match="no space left"):
        write_slot(Trickle(src), "/dev/full", compressed=compressed, capacity=None)  # type: ignore[arg-type]


def test_writeback_starts_early_without_resume_points(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The slot is fsynced every SYNC_EVERY bytes while it is written (the kernel would
    otherwise hold every dirty page for the last fsync), whether or not the caller keeps
    resume points, and once more at the end."""
    import threading

    from ferry.daemon.install import slotwriter

    monkeypatch.setattr(slotwriter, "SYNC_EVERY", 1 << 20)
    slot = make_slot(tmp_path)
    fsynced = threading.Event()
    calls: list[int] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        calls.append(fd)
        real_fsync(fd)
        fsynced.set()

    monkeypatch.setattr(os, "fsync", fsync)

    class Gated(Trickle):
        """Holds back the rest of the image until the slot has been fsynced once."""

        def __init__(self, data: bytes) -> None:
            super().__init__(data)
            self.waited: bool | None = None

        def readinto(self, b: memoryview | bytearray) -> int:  # type: ignore[override]
            if self.pos >= 3 << 20 and self.waited is None:
                self.waited = fsynced.wait(30)
            return super().readinto(b)

    data = os.urandom(6 << 20)
    src = Gated(data)
    write_slot(src, slot, expected_size=len(data))  # type: ignore[arg-type]
    assert src.waited is True  # an fsync came while the image was still arriving
    assert len(calls) >= 2  # that one, and the final one
    assert slot.read_bytes()[: len(data)] == data
    points: list[tuple[int, int]] = []
    write_slot(Trickle(data), slot, expected_size=len(data),  # type: ignore[arg-type]
               on_synced=lambda stored, synced: points.append((stored, synced)))
    assert points and all(st == sl for st, sl in points)  # stored image: same offsets
    synced_at = [sl for _, sl in points]
    assert synced_at == sorted(synced_at) and synced_at[0] >= 1 << 20
    assert synced_at[-1] <= len(data)
