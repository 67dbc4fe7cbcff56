"""Chunk boundaries are a function of the bytes alone: the build host and the gateway
must cut the same image the same way, and unchanged content must cut the same way
after what precedes it moved, by whole blocks or by a few bytes (docs/bundle-format.md,
"Delta images")."""

from __future__ import annotations

import hashlib
import io
import random

import pytest

from ferry.packaging import chunker
from ferry.packaging.chunker import ChunkParamError, ChunkParams, iter_chunks

P = ChunkParams(avg=8 << 10)


def rand(seed: int, n: int) -> bytes:
    return random.Random(seed).randbytes(n)


def cut(data: bytes, params: ChunkParams = P) -> list[tuple[int, bytes]]:
    return list(iter_chunks(io.BytesIO(data), params))


def digests(chunks: list[tuple[int, bytes]]) -> list[bytes]:
    return [hashlib.sha256(c).digest() for _, c in chunks]


def test_chunks_cover_the_image_in_order_within_the_size_limits() -> None:
    data = rand(1, 1_200_000) + b"tail"
    chunks = cut(data)
    assert b"".join(c for _, c in chunks) == data
    pos = 0
    for off, c in chunks[:-1]:
        assert off == pos and P.min_size <= len(c) <= P.max_size
        pos += len(c)
    assert chunks[-1][1].endswith(b"tail")
    # about the average: the mask has log2(avg - min) bits
    assert P.avg * 0.6 < len(data) / len(chunks) < P.avg * 1.4


@pytest.mark.parametrize("read_size", [4096, 3 * 4096 + 5, 100_000, 4 << 20])
def test_same_bytes_same_chunks_whatever_the_read_size(read_size: int,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    data = rand(2, 700_000) + bytes(200_000) + rand(3, 30_001)
    expected = cut(data)
    monkeypatch.setattr(chunker, "READ_SIZE", read_size)
    assert cut(data) == expected


def test_known_boundaries_do_not_change() -> None:
    # pins the rule itself (tables, window, mask, limits): a change here moves every
    # boundary, and gateways in the field would stop finding the chunks a bundle names
    lengths = [len(c) for _, c in cut(rand(7, 600_000))]
    assert lengths[:12] == [4581, 32342, 9495, 16784, 11849, 6150, 3048, 2700, 2609, 3582,
                            2507, 3501]
    assert hashlib.sha256(repr(lengths).encode()).hexdigest()[:16] == "0084ea395a4bc4cd"


@pytest.mark.parametrize("inserted", [3, 37, 4096, 3 * 4096])
def test_inserted_bytes_leave_later_chunks_intact(inserted: int) -> None:
    old = rand(4, 1_000_000)
    new = old[:400_000] + rand(5, inserted) + old[400_000:]  # a file grew
    a, b = set(digests(cut(old))), digests(cut(new))
    # everything but the new bytes and the chunk or two around them is found again
    assert len([d for d in b if d not in a]) <= 2 + inserted // P.min_size


def test_a_changed_byte_changes_at_most_its_chunk_and_the_next() -> None:
    old = rand(6, 1_000_000)
    new = old[:500_000] + b"\x00" + old[500_001:]
    a, b = digests(cut(old)), digests(cut(new))
    assert len(set(b) - set(a)) <= 2


def test_runs_of_one_byte_are_max_size_chunks() -> None:
    for fill in (b"\x00", b"\xff"):
        chunks = cut(fill * (10 * P.max_size))
        assert [len(c) for _, c in chunks] == [P.max_size] * 10


def test_params_are_checked() -> None:
    for bad in (0, 512, 3000, 1 << 21):
        with pytest.raises(ChunkParamError):
            ChunkParams(avg=bad)
