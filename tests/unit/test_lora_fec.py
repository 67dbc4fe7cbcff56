"""TS004 FragAlgo 0: the published test vector, padding, and recovery at the expected cost.

The decoder used here is the simulated node's (ferry.sim.lora.decoder), written
separately from ferry's encoder; the two meeting on the reference vector and on random
loss is the evidence that ferry's parity is the reference code's.
"""

from __future__ import annotations

import random
import statistics

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ferry.proxy.lora.errors import ImageTooLarge
from ferry.proxy.lora.fragmentation import Encoder, encode, parity_line, split_blocks
from ferry.proxy.lora.scheduler import plan
from ferry.sim.lora.decoder import Limits, RefDecoder, matrix_row


def BlockDecoder(m: int, size: int, padding: int) -> RefDecoder:
    """The node's FragDecoder.c model with no build limits."""
    return RefDecoder(m, size, padding, Limits())


def _add(dec: RefDecoder, n: int, frag: bytes) -> None:
    if not dec.rebuilt:  # LmhpFragmentation.c stops feeding a finished decoder
        dec.process(n, frag)


def test_published_vector_brocaar_encode_test():
    # brocaar/lorawan applayer/fragmentation/encode_test.go: data 0..99, FragSize 10,
    # redundancy 10.
    frags = encode(bytes(range(100)), 10, 10)
    assert len(frags) == 20
    assert frags[:10] == [bytes(range(i, i + 10)) for i in range(0, 100, 10)]
    assert frags[10] == bytes.fromhex("26 26 22 22 2e 2e 22 22 26 26")
    assert frags[19] == bytes.fromhex("22 23 24 25 26 27 18 19 0a 0b")


def test_lines_repeat_columns_and_power_of_two_modulus():
    # floor(M/2) draws with repeats: some lines of M = 10 have fewer than 5 ones
    weights = [bin(parity_line(n, 10)).count("1") for n in range(1, 200)]
    assert max(weights) <= 5
    assert sum(w < 5 for w in weights) > 50
    for n in range(1, 50):
        assert parity_line(n, 16) < (1 << 16)  # never a column >= M, though x mod 17


@pytest.mark.parametrize("m", [1, 2, 3, 7, 10, 16, 64, 100, 429, 1000])
def test_node_decoder_lines_equal_encoder_lines(m):
    for n in range(1, 40):
        assert matrix_row(n, m) == parity_line(n, m)


def test_padding_fills_the_last_fragment_with_zeros():
    blocks, padding = split_blocks(bytes(range(1, 96)), 10)
    assert (len(blocks), padding) == (10, 5)
    assert blocks[-1] == bytes([91, 92, 93, 94, 95, 0, 0, 0, 0, 0])
    enc = Encoder(bytes(range(1, 96)), 10)
    assert enc.m * enc.frag_size - enc.padding == 95


def test_too_many_fragments_is_a_clear_error():
    with pytest.raises(ImageTooLarge, match="data rate"):
        Encoder(bytes(16383 * 10), 10)


def test_decoder_rebuilds_from_parity_only_and_strips_padding():
    data = random.Random(5).randbytes(997)
    enc = Encoder(data, 50)
    dec = BlockDecoder(enc.m, 50, enc.padding)
    n = enc.m + 1
    while not dec.rebuilt:
        _add(dec, n, enc.fragment(n))
        n += 1
    assert dec.block() == data


def _sent_until_complete(enc: Encoder, frags: list[bytes], p: float, seed: int) -> tuple[int, int]:
    rng = random.Random(seed)
    dec = BlockDecoder(enc.m, enc.frag_size, enc.padding)
    received = 0
    for n, frag in enumerate(frags, 1):
        if rng.random() < p:
            continue
        received += 1
        _add(dec, n, frag)
        if dec.rebuilt:
            return n, received
    raise AssertionError(f"seed {seed}: not complete after {len(frags)} fragments")


@pytest.mark.parametrize("p", [0.05, 0.10, 0.20])
def test_recovery_needs_about_m_over_1_minus_p(p):
    """Over many seeds a node completes once it has about M (+ a few) fragments."""
    m, size = 100, 20
    data = random.Random(1).randbytes(m * size - 7)
    enc = Encoder(data, size)
    frags = [enc.fragment(n) for n in range(1, 3 * m)]
    sent, excess = [], []
    for seed in range(200):
        s, r = _sent_until_complete(enc, frags, p, seed)
        sent.append(s / (m / (1 - p)))
        excess.append(r - m)
    excess.sort()
    sent.sort()
    assert min(excess) >= 0  # nobody decodes from fewer than M
    assert statistics.median(excess) <= 3
    assert excess[int(0.95 * len(excess))] <= 8
    assert max(excess) <= 25
    assert 0.95 <= statistics.median(sent) <= 1.05
    assert sent[int(0.95 * len(sent))] <= 1.15


@settings(max_examples=60, deadline=None)
@given(data=st.binary(min_size=2, max_size=600), size=st.integers(1, 64),
       seed=st.integers(0, 2**32 - 1), p=st.floats(0.0, 0.6))
def test_any_block_any_loss_pattern_rebuilds(data, size, seed, p):
    size = min(size, max(1, (len(data) + 1) // 2))  # M >= 2: see the next test
    enc = Encoder(data, size)
    dec = BlockDecoder(enc.m, size, enc.padding)
    rng = random.Random(seed)
    n = 0
    while not dec.rebuilt:
        n += 1
        assert n < enc.m * 20 + 50, "decoder never completed"
        if rng.random() >= p:
            _add(dec, n, enc.fragment(n))
    assert dec.block() == data


def test_one_fragment_blocks_are_planned_as_two():
    # floor(M/2) draws: the reference generator gives M = 1 no parity at all
    assert all(parity_line(n, 1) == 0 for n in range(1, 20))
    p = plan(200, 5, 0.1)
    assert (p.m, p.frag_size, p.padding) == (2, 100, 0)
    assert plan(201, 5, 0.1).m == 2
    assert plan(1, 5, 0.1).m == 1
