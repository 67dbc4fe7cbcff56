"""Parity lines over TS004's whole index range, against the specification's pseudo-code.

TS004 §"Fragmentation algorithm" (FragAlgo 0) gives the line generator as pseudo-code:

    prbs23(x): b0 = x & 1; b1 = (x & 32) / 32; return floor(x / 2) + ((b0 xor b1) * 2^22)
    matrix_line(N, M): m = 1 if M is a power of two else 0; x = 1 + 1001 * N
        repeat floor(M/2) times: r = 2^16; while r >= M: x = prbs23(x); r = x mod (M + m)
                                 C[r] = 1

``spec_line`` below is that text in arithmetic (division and multiplication, not the
shifts ferry uses), written here and not imported from ferry or the simulator. The
line's seed passes 2^23 at n = 8384; a generator that ORs the feedback bit in instead of
adding it agrees below that and differs on about a third of the lines above (those whose
first draws carry into bit 23), which is the bug this file pins down.
"""

from __future__ import annotations

import random

import pytest

from ferry.proxy.lora.fragmentation import Encoder, parity_line
from ferry.sim.lora.decoder import Limits, RefDecoder

TS004_MAX_N = 16383


def spec_prbs23(x: int) -> int:
    b0 = x % 2
    b1 = (x % 64) // 32
    return x // 2 + (b0 ^ b1) * 2**22


def spec_line(n: int, m: int) -> set[int]:
    power_of_two = any(m == 2**k for k in range(15))
    mm = 1 if power_of_two else 0
    x = 1 + 1001 * n
    cols: set[int] = set()
    for _ in range(m // 2):
        r = 2**16
        while r >= m:
            x = spec_prbs23(x)
            r = x % (m + mm)
        cols.add(r)
    return cols


def as_set(line: int) -> set[int]:
    return {c for c in range(line.bit_length()) if line >> c & 1}


@pytest.mark.parametrize("m", [3, 10, 16])
def test_every_line_of_the_index_range_matches_the_spec(m):
    for n in range(1, TS004_MAX_N + 1):
        assert as_set(parity_line(n, m)) == spec_line(n, m), f"line {n} of M = {m}"


def test_large_block_lines_match_around_and_above_the_seed_overflow():
    # M = 1000 is the 48,000 B at DR0 (FragSize 48); lines from 8384 on are
    # what a high-loss plan for it sends
    for n in [1, 2, 8382, 8383, 8384, 8385, 9000, 12345, 16383 - 1000]:
        assert as_set(parity_line(n, 1000)) == spec_line(n, 1000), n


def test_an_or_generator_differs_from_line_8384_on():
    def or_line(n: int, m: int) -> set[int]:
        x, cols = 1 + 1001 * n, set()
        for _ in range(m // 2):
            r = 1 << 16
            while r >= m:
                x = (x >> 1) | (((x ^ (x >> 5)) & 1) << 22)
                r = x % m
            cols.add(r)
        return cols

    assert all(or_line(n, 10) == spec_line(n, 10) for n in range(1, 8384))
    differ = [n for n in range(8384, 8684) if or_line(n, 10) != spec_line(n, 10)]
    # about a third of the lines above (those whose early draws carry into bit 23)
    assert differ[0] == 8384 and 80 < len(differ) < 200


def test_node_rebuilds_a_block_from_lines_above_8384_only():
    """Every data fragment lost; only parity lines n >= 8384 heard: the node's FragDecoder
    model (written apart from the encoder) must rebuild the exact block."""
    m, size = 120, 4
    data = random.Random(7).randbytes(m * size - 3)
    enc = Encoder(data, size)
    dec = RefDecoder(enc.m, size, enc.padding, Limits())
    n = enc.m + 8384
    while not dec.rebuilt:
        assert n < enc.m + 8384 + 10 * m, "never rebuilt"
        dec.process(n, enc.fragment(n))
        n += 1
    assert dec.lost == m and not dec.matrix_error
    assert dec.block() == data
