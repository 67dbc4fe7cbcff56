"""The booted slot's chunk index, computed while the gateway is idle.

A delta install needs to know which chunks of the new image the active slot already
holds. When a delta install wrote the slot, the bundle's own index says so
(deltacache). Otherwise (the slot came from a full install, or a delta bundle with
other chunk parameters) the install used to read and cut the whole active slot first:
seconds of CPU on the install's critical path, before the first byte is fetched
(bench/delta.py, "active slot read and cut": 1.21 of the link's limit at 256 MiB
against 0.98 with a kept index).

So ferryd, once it has resumed whatever a reboot interrupted, starts this module in a
process of its own under ``SCHED_IDLE`` (it runs only when nothing else wants the CPU)
for the booted slot when that slot has a verified record (ferry wrote it and checked
its hash) and no kept index for that image yet. It cuts the slot with the default
chunk parameters (the ones ``ferry bundle create --delta`` uses unless told otherwise),
hashes each chunk and keeps the result through deltacache, tagged with the record's
image sha256. Like every kept index it is a hint: used only while the record names the
same image and the parameters match the bundle's, and every chunk copied by its
offsets is hashed again before use (delta.py). A crash or a power cut in the middle
leaves no file (written whole and renamed); a delta install that starts first simply
cuts the slot itself, as before.

    python3 -m ferry.daemon.install.deltaindexer --config /etc/ferry/ferry.toml
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import logging
import os
import subprocess
import sys
from collections.abc import Sequence
from typing import Any, BinaryIO, cast

from ferry.daemon.config import Config
from ferry.errors import FerryError
from ferry.packaging.chunker import ChunkParams, iter_chunks
from ferry.packaging.chunkindex import encode_index

log = logging.getLogger(__name__)


def index_image(device: str, size: int, params: ChunkParams) -> bytes:
    """The chunk index of the first ``size`` bytes of ``device`` (stored sizes are the
    chunk lengths: a local slot has no compressed form)."""
    entries: list[tuple[int, int, bytes]] = []
    with open(device, "rb", buffering=0) as fh:
        for _offset, data in iter_chunks(cast(BinaryIO, fh), params, limit=size):
            entries.append((len(data), len(data), hashlib.sha256(data).digest()))
    return encode_index(params, sum(e[0] for e in entries), entries)


def wanted(config: Config, bootloader: Any) -> tuple[str, str, int, str] | None:
    """(slot name, device, size, image sha256) when the booted slot has a verified record
    and no kept index for that image; None otherwise."""
    from ferry.daemon.install import deltacache
    from ferry.daemon.install.deltahead import delta_base

    base = delta_base(config, bootloader)
    if base is None:
        return None
    device, size, name, sha = base
    if deltacache.kept_for(config, name, sha):
        return None
    return name, str(device), size, sha


def schedule(config: Config, bootloader: Any) -> subprocess.Popen[bytes] | None:
    """Start the indexer for the booted slot when it is wanted; never raises (a missing
    index costs the next delta install a read of the slot, nothing else)."""
    try:
        job = wanted(config, bootloader)
    except (FerryError, OSError) as err:
        log.warning("not indexing the booted slot: %s", err)
        return None
    if job is None or config.path is None:
        return None
    name, device, size, _sha = job
    log.info("indexing slot %s (%s, %d bytes) at idle priority for the next delta install",
             name, device, size)
    try:
        return subprocess.Popen(
            [sys.executable, "-m", "ferry.daemon.install.deltaindexer",
             "--config", str(config.path)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, start_new_session=True)
    except OSError as err:
        log.warning("cannot start the slot indexer: %s", err)
        return None


def _idle() -> None:
    """Run only when the CPU has nothing else to do (and so never slow ferryd)."""
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):
        with contextlib.suppress(OSError):
            os.nice(19)


def main(argv: Sequence[str] | None = None) -> int:
    from ferry.daemon.boot.bootloader import make_bootloader
    from ferry.daemon.config import DEFAULT_PATH, load_config
    from ferry.daemon.install import deltacache

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--config", default=str(DEFAULT_PATH))
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="ferry-indexer: %(message)s")
    _idle()
    try:
        config = load_config(args.config)
        job = wanted(config, make_bootloader(config, warn=False))
        if job is None:
            return 0
        name, device, size, sha = job
        index = index_image(device, size, ChunkParams())
    except (FerryError, OSError) as err:
        log.warning("cannot index the booted slot: %s", err)
        return 1
    deltacache.save(config, name, sha, index)
    log.info("slot %s indexed: %d bytes", name, size)
    return 0


if __name__ == "__main__":
    sys.exit(main())
