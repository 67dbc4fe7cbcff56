"""How much parity a small block really needs: a seeded Monte-Carlo run of the reference code.

For large M the parity lines mix floor(M/2) of M columns and behave like a random code,
so M·p/(1−p) + 3·sqrt(M·p) + 2 holds the 95 % target. For small M they do not: at
M = 5 each line draws two columns (often the same one twice), so a lost fragment is
recovered only by a line that holds it next to a fragment the node has; the tail is
long (up to 7 extra frames at p95 for M ≈ 5). So for M <= SMALL_M ferry plays the
broadcast over the real parity lines (``fragmentation.parity_line``) with independent
loss p, many times with a fixed seed, and takes the 95th percentile of the extra
fragments a node needed to reach rank M. Deterministic, cached, a few ms per (M, p).

This decides the GF(2) rank exactly as a node's decoder does (LoRaMac-node
``FragDecoder.c``: a block is rebuilt when the received lines span all M columns); the
simulated nodes in ``ferry.sim.lora`` check it independently.
"""

from __future__ import annotations

import functools
import math
import random

from ferry.proxy.lora.fragmentation import parity_line

SMALL_M = 100
TRIALS = 1000
TARGET = 0.97


@functools.lru_cache(maxsize=64)
def _lines(m: int, count: int) -> tuple[int, ...]:
    return tuple(parity_line(n, m) for n in range(1, count + 1))


def extra_needed(m: int, loss: float, rng: random.Random, lines: tuple[int, ...]) -> int:
    """Fragments beyond M one node with independent loss needed (len(lines) + 1: never)."""
    pivots: dict[int, int] = {}
    for n in range(1, m + len(lines) + 1):
        if rng.random() < loss:
            continue
        row = (1 << (n - 1)) if n <= m else lines[n - m - 1]
        while row:
            top = row.bit_length() - 1
            have = pivots.get(top)
            if have is None:
                pivots[top] = row
                break
            row ^= have
        if len(pivots) == m:
            return n - m
    return len(lines) + 1


@functools.lru_cache(maxsize=512)
def needed_p95(m: int, loss: float) -> int:
    """Parity fragments after M that let 95 % of nodes with loss p rebuild the block."""
    if m < 2:
        return 0
    p = min(max(loss, 0.0), 0.9)
    cap = math.ceil(4 * m / (1 - p)) + 40
    lines = _lines(m, cap)
    rng = random.Random(m * 1000 + round(p * 1000))
    runs = sorted(extra_needed(m, p, rng, lines) for _ in range(TRIALS))
    return min(runs[math.ceil(TARGET * TRIALS) - 1], cap)
