"""Chunk boundaries are a function of the bytes alone: the build host and the gateway
must cut the same image the same way, and unchanged content must cut the same way
after what precedes it moved by whole blocks (docs/bundle-format.md, "Delta images")."""

from __future__ import annotations

import hashlib
import io
import random

import pytest

from ferry.packaging import chunker
from ferry.packaging.chunker import BLOCK, ChunkParamError, ChunkParams, iter_chunks


def blocks(seed: int, n: int) -> bytes:
    rng = random.Random(seed)
    return rng.randbytes(n * BLOCK)


def cut(data: bytes, params: ChunkParams | None = None) -> list[tuple[int, bytes]]:
    return list(iter_chunks(io.BytesIO(data), params or ChunkParams()))


def digests(chunks: list[tuple[int, bytes]]) -> list[bytes]:
    return [hashlib.sha256(c).digest() for _, c in chunks]


def test_chunks_cover_the_image_in_order_on_block_boundaries() -> None:
    data = blocks(1, 300) + b"tail"
    chunks = cut(data)
    assert b"".join(c for _, c in chunks) == data
    p = ChunkParams()
    pos = 0
    for off, c in chunks[:-1]:
        assert off == pos and len(c) % BLOCK == 0
        assert p.min_blocks * BLOCK <= len(c) <= p.max_chunk
        pos += len(c)
    assert chunks[-1][1].endswith(b"tail")


@pytest.mark.parametrize("read_size", [BLOCK, 3 * BLOCK + 5, 64 << 10, 4 << 20])
def test_same_bytes_same_chunks_whatever_the_read_size(read_size: int,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    data = blocks(2, 500) + bytes(40 * BLOCK) + blocks(3, 7)
    expected = cut(data)
    monkeypatch.setattr(chunker, "READ_SIZE", read_size)
    assert cut(data) == expected


def test_known_boundaries_do_not_change() -> None:
    # pins the rule itself: a different CRC, spread or run count would move these, and
    # every gateway in the field would stop finding the chunks a new bundle names
    lengths = [len(c) // BLOCK for _, c in cut(blocks(7, 200))]
    assert lengths[:12] == [3, 5, 6, 7, 16, 4, 6, 7, 5, 5, 2, 4]
    assert hashlib.sha256(repr(lengths).encode()).hexdigest()[:16] == "3108d8d93d48d103"


def test_inserted_blocks_leave_later_chunks_intact() -> None:
    old = blocks(4, 400)
    new = old[:100 * BLOCK] + blocks(5, 3) + old[100 * BLOCK:]  # a file grew by 3 blocks
    a, b = set(digests(cut(old))), digests(cut(new))
    shared = [d for d in b if d in a]
    # everything but the chunks around the insertion is found again
    assert len(shared) >= len(b) - 3


def test_a_changed_block_changes_at_most_its_chunk_and_the_next() -> None:
    old = blocks(6, 400)
    mid = 200 * BLOCK
    new = old[:mid] + bytes(BLOCK) + old[mid + BLOCK:]
    a, b = digests(cut(old)), digests(cut(new))
    assert len(set(b) - set(a)) <= 2


def test_zero_runs_are_max_size_chunks() -> None:
    p = ChunkParams(avg_blocks=4)
    chunks = cut(bytes(64 * BLOCK), p)
    assert {len(c) for _, c in chunks} <= {p.min_blocks * BLOCK, p.max_chunk}


def test_params_are_checked() -> None:
    with pytest.raises(ChunkParamError):
        ChunkParams(avg_blocks=0)
    with pytest.raises(ChunkParamError):
        ChunkParams(block=512)
