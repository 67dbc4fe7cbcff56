"""Write a rootfs image as a delta-capable member: one zstd frame per chunk, plus its index.

The member is still an ordinary zstd stream (concatenated frames are one stream to
every decoder), so a gateway without the base image, SWUpdate and ``zstd -d`` install it
as a whole, and only a gateway that holds most of the chunks in its active slot fetches
less. Each chunk is compressed on its own, without a dictionary: the device must be able
to decompress any chunk it fetched without the ones before it.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import zstandard

from ferry.packaging.chunker import ChunkParams, iter_chunks
from ferry.packaging.chunkindex import encode_index
from ferry.packaging.deltaref import DeltaRef

LEVEL = 19  # compression is paid once on the build host, every byte saved on every link


@dataclass(frozen=True)
class DeltaBuild:
    index: bytes  # the stored index member
    image_size: int
    image_sha256: str
    chunks: int


def write_chunk_store(src: BinaryIO, dst: BinaryIO, params: ChunkParams, *,
                      level: int = LEVEL) -> DeltaBuild:
    """Cut ``src`` into chunks, write each as one zstd frame to ``dst``, return the index."""
    cctx = zstandard.ZstdCompressor(level=level, write_checksum=False,
                                    write_content_size=True)
    whole = hashlib.sha256()
    entries: list[tuple[int, int, bytes]] = []
    size = 0
    for _offset, data in iter_chunks(src, params):
        whole.update(data)
        size += len(data)
        frame = cctx.compress(data)
        dst.write(frame)
        entries.append((len(data), len(frame), hashlib.sha256(data).digest()))
    return DeltaBuild(index=encode_index(params, size, entries), image_size=size,
                      image_sha256=whole.hexdigest(), chunks=len(entries))


INDEX_SUFFIX = ".cidx"


def delta_member(path: Path, params: ChunkParams, workdir: Path, member: str,
                 ) -> tuple[Path, DeltaBuild, DeltaRef]:
    """The chunk store of ``path`` in a temp file in ``workdir`` (the writer's pass 1),
    its build result and the signed reference to its index member (``member`` + .cidx)."""
    fd, tmp_name = tempfile.mkstemp(prefix=".ferry-", suffix=".zst", dir=workdir)
    stored = Path(tmp_name)
    try:
        with path.open("rb") as src, os.fdopen(fd, "wb") as dst:
            built = write_chunk_store(src, dst, params)
    except BaseException:
        stored.unlink(missing_ok=True)
        raise
    ref = DeltaRef(index=member + INDEX_SUFFIX, sha256=hashlib.sha256(built.index).hexdigest(),
                   size=len(built.index))
    return stored, built, ref
