"""The simulated node answers as LoRaMac-node / STM32CubeWL do (LmhpFragmentation.c).

Frames here are written by hand from the byte layouts, so these tests pin the node's
behaviour, not ferry's reading of it: NbFragReceived is the last index, MissingFrag counts
lost DATA fragments and never drops on recovery, Participants = 0 silences nodes that
lost nothing, a finished decoder freezes the index, MatrixError past FRAG_MAX_REDUNDANCY,
the stock build's "not enough memory", and v2's SessionCnt, MIC and
FragDataBlockReceivedReq.
"""

from __future__ import annotations

import random
import struct

from cryptography.hazmat.primitives import cmac
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from ferry.sim.lora.decoder import STOCK, Limits, matrix_row
from ferry.sim.lora.node import Node

KEY = bytes(range(16))


def node(version: int = 1, limits: Limits | None = None) -> Node:
    return Node("0102030405060708", KEY, rng=random.Random(1), ts004_version=version,
                limits=limits or Limits())


def setup_v1(nb: int, size: int, pad: int = 0, idx: int = 0, control: int = 0) -> bytes:
    return struct.pack("<BBHBBBI", 0x02, (idx << 4) | 1, nb, size, control, pad, 0)


def frag(n: int, payload: bytes, idx: int = 0) -> bytes:
    return struct.pack("<BH", 0x08, (idx << 14) | n) + payload


def parity(blocks: list[bytes], n: int) -> bytes:
    """Parity fragment N > M by XOR of the rows the node's own line generator names."""
    m = len(blocks)
    line = matrix_row(n - m, m)
    acc = bytearray(len(blocks[0]))
    for c in range(m):
        if line >> c & 1:
            acc = bytearray(a ^ b for a, b in zip(acc, blocks[c], strict=True))
    return bytes(acc)


def status(nd: Node, everyone: bool = True, idx: int = 0) -> bytes | None:
    out = nd.downlink(201, bytes([0x01, (idx << 1) | int(everyone)]), 0.0)
    return out[0][2] if out else None


def test_index_and_lost_data_fragments():
    nd = node()
    assert nd.downlink(201, setup_v1(10, 4), 0.0)[0][2] == bytes([0x02, 0x00])
    blocks = [bytes([i] * 4) for i in range(10)]
    for n in (1, 2, 4, 5, 7):  # 3 and 6 lost
        nd.downlink(201, frag(n, blocks[n - 1]), 0.0)
    # 01 | N=7 LE with FragIndex in bits 7:6 of the 2nd byte | lost 2 | MatrixError 0
    assert status(nd) == bytes([0x01, 7, 0x00, 2, 0])
    # the node has not counted 8..10 yet: nothing after them arrived
    for n in range(11, 40):
        nd.downlink(201, frag(n, parity(blocks, n)), 0.0)
        if nd.image is not None:
            break
    assert nd.image == b"".join(blocks)
    got = status(nd)
    assert got is not None
    last = got[1] | (got[2] & 0x3F) << 8
    assert got[3] == 5  # 3, 6, 8, 9, 10: still counted after recovery
    frozen = last
    for n in range(last + 1, last + 20):
        nd.downlink(201, frag(n, parity(blocks, n)), 0.0)
    got = status(nd)
    assert got is not None and got[1] | (got[2] & 0x3F) << 8 == frozen  # decoder stopped


def test_participants_zero_only_nodes_that_lost_data_answer():
    lossless, lossy = node(), node()
    blocks = [bytes([i] * 4) for i in range(4)]
    for nd, sent in ((lossless, (1, 2, 3, 4, 5)), (lossy, (1, 3, 4, 5))):
        nd.downlink(201, setup_v1(4, 4), 0.0)
        for n in sent:
            nd.downlink(201, frag(n, blocks[n - 1] if n <= 4 else parity(blocks, n)), 0.0)
    assert status(lossless, everyone=False) is None
    assert status(lossless, everyone=True) is not None
    assert status(lossy, everyone=False) == bytes([0x01, 5, 0, 1, 0])


def test_answers_are_delayed_by_block_ack_delay():
    nd = node()
    nd.downlink(201, setup_v1(4, 4, control=2), 0.0)  # BlockAckDelay 2: 3 s + up to 64 s
    delays = [nd.downlink(201, bytes([0x01, 0x01]), 0.0)[0][0] for _ in range(50)]
    assert all(3.0 <= d <= 3.0 + 64 for d in delays) and max(delays) > 20


def test_stock_build_refuses_what_it_cannot_hold():
    nd = node(limits=STOCK)
    assert nd.downlink(201, setup_v1(21, 50), 0.0)[0][2] == bytes([0x02, 0x00])
    assert nd.downlink(201, setup_v1(22, 50), 0.0)[0][2] == bytes([0x02, 0x02])
    assert nd.downlink(201, setup_v1(21, 51), 0.0)[0][2] == bytes([0x02, 0x02])
    assert nd.downlink(201, setup_v1(429, 239, idx=1), 0.0)[0][2] == bytes([0x02, 0x42])


def test_more_lost_than_max_redundancy_is_finished_with_matrix_error():
    nd = node(limits=STOCK)
    blocks = [bytes([i] * 50) for i in range(20)]
    nd.downlink(201, setup_v1(20, 50), 0.0)
    for n in range(7, 21):  # 1..6 lost: 6 > FRAG_MAX_REDUNDANCY 5
        nd.downlink(201, frag(n, blocks[n - 1]), 0.0)
    for n in range(21, 60):
        nd.downlink(201, frag(n, parity(blocks, n)), 0.0)
    assert nd.image is None
    assert status(nd) == bytes([0x01, 21, 0, 6, 1])  # finished at N = 21, MatrixError


def test_missing_frag_is_the_u16_written_into_one_byte():
    nd = node()
    nd.downlink(201, setup_v1(400, 1), 0.0)
    nd.downlink(201, frag(301, b"\x00"), 0.0)  # 1..300 lost
    got = status(nd)
    assert got is not None and got[3] == 300 & 0xFF  # LmhpFragmentation.c truncates


def _mic(key: bytes, block: bytes, cnt: int, idx: int, descriptor: int) -> int:
    e = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
    dbk = e.update(bytes([0x30]) + bytes(15)) + e.finalize()
    c = cmac.CMAC(algorithms.AES(dbk))
    c.update(struct.pack("<BHBIII", 0x49, cnt, idx, descriptor, 0, len(block)) + block)
    return int.from_bytes(c.finalize()[:4], "little")


def setup_v2(nb: int, size: int, cnt: int, mic: int) -> bytes:
    return setup_v1(nb, size, control=0x40) + struct.pack("<HI", cnt, mic)


def test_v2_block_received_with_mic_and_resend_until_answered():
    nd = node(version=2)
    assert nd.downlink(201, b"\x00", 0.0)[0][2] == bytes([0x00, 3, 2])
    blocks = [bytes([i] * 4) for i in range(4)]
    data = b"".join(blocks)
    assert nd.downlink(201, setup_v2(4, 4, 5, _mic(KEY, data, 5, 0, 0)), 0.0)[0][2] == b"\x02\x00"
    out = []
    for n in (1, 2, 4, 5, 6, 7, 8, 9):
        out += nd.downlink(201, frag(n, blocks[n - 1] if n <= 4 else parity(blocks, n)), 0.0)
        if out:
            break
    assert nd.image == data
    assert len(out) > 1 and {u[2] for u in out} == {bytes([0x04, 0x00])}  # MIC good
    assert out[1][0] - out[0][0] == 1.5  # resent every 1.5 s
    assert nd.block_req_wanted(0)
    nd.downlink(201, bytes([0x04, 0x00]), 0.0)  # FragDataBlockReceivedAns
    assert not nd.block_req_wanted(0)
    # SessionCnt 5 received data: 5 again is a replay, 6 is fine
    assert nd.downlink(201, setup_v2(4, 4, 5, 0), 0.0)[0][2] == bytes([0x02, 0x10])
    assert nd.downlink(201, setup_v2(4, 4, 6, 0), 0.0)[0][2] == bytes([0x02, 0x00])


def test_v2_wrong_mic_is_reported():
    nd = node(version=2)
    blocks = [bytes([i] * 4) for i in range(2)]
    nd.downlink(201, setup_v2(2, 4, 1, 0xDEADBEEF), 0.0)
    nd.downlink(201, frag(1, blocks[0]), 0.0)
    out = nd.downlink(201, frag(2, blocks[1]), 0.0)
    out += nd.downlink(201, frag(3, parity(blocks, 3)), 0.0)
    assert out and out[0][2] == bytes([0x04, 0x04])


def test_class_c_session_in_the_past_is_answered_with_bit_4():
    nd = node()
    setup = bytes([0x02, 0x00]) + bytes(4) + bytes(16) + bytes(4) + b"\xff" * 4
    nd.downlink(200, setup, 0.0)
    now_gps = int(nd.gps(1_790_000_000.0))

    def class_c(start: int) -> bytes:
        return (bytes([0x04, 0x00]) + start.to_bytes(4, "little") + bytes([8])
                + (869_525_000 // 100).to_bytes(3, "little") + bytes([5]))

    late = nd.downlink(200, class_c(now_gps - 5), 1_790_000_000.0)[0][2]
    assert late == bytes([0x04, 0x10])  # no time-to-start: LmhpRemoteMcastSetup.c
    ok = nd.downlink(200, class_c(now_gps + 100), 1_790_000_000.0)[0][2]
    assert ok == bytes([0x04, 0x00]) + (100).to_bytes(3, "little")
