"""Slot re-hash benchmark: what `ferry mark active` adds before it boots a slot.

    .venv/bin/python bench/rehash.py            # a 1 GiB "slot"
    .venv/bin/python bench/rehash.py --quick    # 128 MiB

The limit is `openssl dgst -sha256` over the same file in the same run (a re-hash must read and
hash every byte once); the ratio is ferry's speed divided by openssl's, median of
interleaved rounds. The file is written first, so both read it from the page cache: the
number is the hashing cost, not the disk (on a gateway the eMMC read rate is the
bound). Peak RSS of the re-hash child (ru_maxrss) must not grow with the slot.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MiB = 1 << 20
CHILD = ("import sys; from ferry.daemon.boot.slotrecord import rehash; "
         "print(rehash(sys.argv[1], int(sys.argv[2]))[0])")


def timed(argv: list[str]) -> tuple[float, float, str]:
    """(wall seconds, peak RSS MiB, stdout) of one child."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _pid, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    out = proc.stdout.read().decode() if proc.stdout else ""
    if os.waitstatus_to_exitcode(status) != 0:
        err = proc.stderr.read().decode() if proc.stderr else ""
        raise SystemExit(f"{argv[:3]}... failed: {err.strip()}")
    return wall, usage.ru_maxrss / 1024, out.split()[0] if out.split() else ""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    size = (128 if args.quick else 1024) * MiB
    tool = shutil.which("openssl")
    if tool is None:
        raise SystemExit("openssl missing (Debian package openssl)")
    with tempfile.TemporaryDirectory() as tmp:
        slot = Path(tmp) / "slot.img"
        with open(slot, "wb") as f:
            block = os.urandom(4 * MiB)
            for _ in range(size // len(block)):
                f.write(block)
        ours, theirs, rss = [], [], []
        for _ in range(args.rounds):
            t, r, digest = timed([sys.executable, "-c", CHILD, str(slot), str(size)])
            ours.append(t)
            rss.append(r)
            t2, _, ref = timed([tool, "dgst", "-sha256", "-r", str(slot)])
            theirs.append(t2)
            if digest != ref:
                raise SystemExit(f"digest differs: ferry {digest}, openssl {ref}")
    ferry_rate = size / statistics.median(ours) / MiB
    limit_rate = size / statistics.median(theirs) / MiB
    print(f"re-hash of {size // MiB} MiB: ferry {ferry_rate:.0f} MiB/s (includes Python "
          f"start-up), openssl {limit_rate:.0f} MiB/s, ratio {ferry_rate / limit_rate:.2f}; "
          f"peak RSS {max(rss):.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
