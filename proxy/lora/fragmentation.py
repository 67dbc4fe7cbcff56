"""TS004 Fragmented Data Block Transport v1 and v2 (FPort 201): frames and the FragAlgo 0 FEC.

The parity generator is the reference one (LoRaMac-node ``FragDecoder.c``
``FragGetParityMatrixRow``/``FragPrbs23``, brocaar/lorawan, Zephyr): the line for on-air
index N > M is ``line(N - M, M)`` seeded with ``1 + 1001 * n`` and drawing exactly
floor(M/2) columns from a PRBS-23, repeats included. The PRBS step is
``(x >> 1) + (feedback << 22)``: an ADD, which differs from an OR once the seed passes
2^23 (every line n >= 8384), so a ``|`` here would build parity a node decodes into a
corrupted block. Anything else (seeding with N, counting distinct columns) does not
interoperate either, which is why the published test vector is checked in the tests.

v2 (TS004-2.0.0, as STM32CubeWL's ``LmhpFragmentation.c`` and Semtech's LoRa Basics
Modem implement it) adds SessionCnt (u16) and a data-block MIC (u32) to
FragSessionSetupReq, the AckReception bit (Control bit 6), a SessionCnt-replay bit (4) in
FragSessionSetupAns, and FragDataBlockReceivedReq/Ans (CID 0x04): the node says, with
the MIC verdict, that it has rebuilt the block. FragSessionStatusAns keeps the v1 layout.

Lines and fragment payloads are Python ints used as bit sets: XOR of a 239-byte fragment
is one big-int operation, which keeps a 100 KiB session cheap in pure Python.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from cryptography.hazmat.primitives import cmac
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from ferry.proxy.lora.errors import ImageTooLarge
from ferry.proxy.lora.package import PackageVersionAns, parse_commands

PORT = 201
PACKAGE_IDENTIFIER = 3
PACKAGE_VERSION = 1
SUPPORTED_VERSIONS = (1, 2)

CID_FRAG_SESSION_STATUS = 0x01
CID_FRAG_SESSION_SETUP = 0x02
CID_FRAG_SESSION_DELETE = 0x03
CID_FRAG_DATA_BLOCK_RECEIVED = 0x04  # v2: Req is the node's uplink, Ans the server's answer
CID_DATA_FRAGMENT = 0x08

MAX_N = (1 << 14) - 1  # N is 14 bits and starts at 1
FRAG_ALGO_XOR = 0


# --- FEC -------------------------------------------------------------------------


def _prbs23(x: int) -> int:
    # an ADD, as FragPrbs23 does: bit 22 of x >> 1 is set once x >= 2^23
    return (x >> 1) + (((x ^ (x >> 5)) & 1) << 22)


def parity_line(n: int, m: int) -> int:
    """Bit set of the uncoded fragments XORed into parity line n (1-based) of M."""
    if n < 1 or m < 1:
        raise ValueError("parity line n and M start at 1")
    mm = 1 if m & (m - 1) == 0 else 0
    x = 1 + 1001 * n
    line = 0
    for _ in range(m // 2):
        r = 1 << 16
        while r >= m:
            x = _prbs23(x)
            r = x % (m + mm)
        line |= 1 << r
    return line


def split_blocks(data: bytes, frag_size: int) -> tuple[list[bytes], int]:
    """The uncoded fragments B1..BM and the padding (zero bytes added to the last)."""
    if frag_size < 1:
        raise ValueError("fragment size must be at least 1 byte")
    if not data:
        raise ValueError("cannot fragment an empty image")
    m = -(-len(data) // frag_size)
    padding = m * frag_size - len(data)
    padded = data + bytes(padding)
    return [padded[i * frag_size : (i + 1) * frag_size] for i in range(m)], padding


class Encoder:
    """Fragments for one data block: uncoded first (N = 1..M), then parity (N > M)."""

    def __init__(self, data: bytes, frag_size: int) -> None:
        blocks, self.padding = split_blocks(data, frag_size)
        self.frag_size = frag_size
        self.m = len(blocks)
        if self.m >= MAX_N:
            raise ImageTooLarge(
                f"{len(data)} bytes need {self.m} fragments of {frag_size} bytes, more than "
                f"TS004's {MAX_N}; use a faster data rate (bigger fragments) or a smaller image"
            )
        self._blocks = [int.from_bytes(b, "little") for b in blocks]
        self._raw = blocks

    def fragment(self, n: int) -> bytes:
        """Payload of on-air fragment N (1-based)."""
        if n < 1 or n > MAX_N:
            raise ValueError(f"fragment index {n} outside 1..{MAX_N}")
        if n <= self.m:
            return self._raw[n - 1]
        line = parity_line(n - self.m, self.m)
        acc = 0
        while line:
            low = line & -line
            acc ^= self._blocks[low.bit_length() - 1]
            line ^= low
        return acc.to_bytes(self.frag_size, "little")


def encode(data: bytes, frag_size: int, redundancy: int) -> list[bytes]:
    """All M uncoded then `redundancy` parity fragment payloads (brocaar's Encode)."""
    enc = Encoder(data, frag_size)
    return [enc.fragment(n) for n in range(1, enc.m + redundancy + 1)]


# --- downlink frames ---------------------------------------------------------------


def _index(frag_index: int) -> int:
    if not 0 <= frag_index <= 3:
        raise ValueError("FragIndex is 2 bits (0..3)")
    return frag_index


@dataclass(frozen=True)
class FragSessionSetup:
    frag_index: int
    nb_frag: int
    frag_size: int
    padding: int
    descriptor: int = 0
    mc_group_mask: int = 0b0001
    frag_algo: int = FRAG_ALGO_XOR
    block_ack_delay: int = 0
    version: int = 1
    session_cnt: int = 0  # v2 only: must exceed the last one the node accepted
    mic: int = 0  # v2 only: data_block_mic() of the whole block for this node
    ack_reception: bool = True  # v2 only: node sends FragDataBlockReceivedReq when done


def frag_session_setup_req(s: FragSessionSetup) -> bytes:
    """10 bytes after the CID in v1; v2 appends SessionCnt (u16) and MIC (u32)."""
    if s.version not in SUPPORTED_VERSIONS:
        raise ValueError(f"TS004 version {s.version} is not supported (1 or 2)")
    session = (_index(s.frag_index) << 4) | (s.mc_group_mask & 0x0F)
    control = ((s.frag_algo & 0x07) << 3) | (s.block_ack_delay & 0x07)
    if s.version == 2 and s.ack_reception:
        control |= 0x40
    out = struct.pack(
        "<BBHBBBI", CID_FRAG_SESSION_SETUP, session, s.nb_frag, s.frag_size, control,
        s.padding, s.descriptor,
    )
    if s.version == 2:
        if not 0 <= s.session_cnt <= 0xFFFF:
            raise ValueError("SessionCnt is 16 bits")
        out += struct.pack("<HI", s.session_cnt, s.mic & 0xFFFFFFFF)
    return out


def data_block_int_key(root_key: bytes) -> bytes:
    """DataBlockIntKey = aes128_encrypt(AppKey/GenAppKey, 0x30 | 0^15).

    As LoRaMacCrypto.c ``LoRaMacCryptoDeriveLifeTimeKey(DATABLOCK_INT_KEY)`` derives it
    from APP_KEY (the key ferry calls the device's root key).
    """
    enc = Cipher(algorithms.AES(root_key), modes.ECB()).encryptor()
    return enc.update(bytes([0x30]) + bytes(15)) + enc.finalize()


def data_block_mic(root_key: bytes, block: bytes, session_cnt: int, frag_index: int,
                   descriptor: int) -> int:
    """TS004 v2 data block MIC: first 4 bytes of AES-CMAC(DataBlockIntKey, B0 | block), LE.

    B0 = 0x49 | SessionCnt u16 | FragIndex | Descriptor u32 | 0x00000000 | length u32, as
    LoRaMacCrypto.c ``PrepareB0ForDataBlock``; ``block`` is the data without padding.
    """
    b0 = struct.pack("<BHBIII", 0x49, session_cnt & 0xFFFF, frag_index & 0xFF,
                     descriptor & 0xFFFFFFFF, 0, len(block))
    c = cmac.CMAC(algorithms.AES(data_block_int_key(root_key)))
    c.update(b0 + block)
    return int.from_bytes(c.finalize()[:4], "little")


def frag_data_block_received_ans(frag_index: int) -> bytes:
    """v2: the server's acknowledgement; the node resends its Req until it hears this."""
    return bytes([CID_FRAG_DATA_BLOCK_RECEIVED, _index(frag_index)])


def frag_session_status_req(frag_index: int, *, all_participants: bool) -> bytes:
    return bytes([CID_FRAG_SESSION_STATUS, (_index(frag_index) << 1) | int(all_participants)])


def frag_session_delete_req(frag_index: int) -> bytes:
    return bytes([CID_FRAG_SESSION_DELETE, _index(frag_index)])


def data_fragment(frag_index: int, n: int, payload: bytes) -> bytes:
    """DataFragment: alone in its message, Index&N little-endian, then the payload."""
    if not 1 <= n <= MAX_N:
        raise ValueError(f"N must be in 1..{MAX_N}")
    return struct.pack("<BH", CID_DATA_FRAGMENT, (_index(frag_index) << 14) | n) + payload


# --- uplink answers ----------------------------------------------------------------


@dataclass(frozen=True)
class FragSessionSetupAns:
    frag_index: int
    encoding_unsupported: bool
    not_enough_memory: bool
    index_unsupported: bool
    wrong_descriptor: bool
    session_cnt_replay: bool = False  # v2 bit 4

    @property
    def ok(self) -> bool:
        return not self.problems()

    def problems(self) -> list[str]:
        out = []
        if self.encoding_unsupported:
            out.append("FragAlgo (XOR FEC) unsupported")
        if self.not_enough_memory:
            out.append("not enough memory for the session (the block, the fragment size or "
                       "the number of fragments is over the node's build limits)")
        if self.index_unsupported:
            out.append(f"FragIndex {self.frag_index} unsupported")
        if self.wrong_descriptor:
            out.append("wrong Descriptor")
        if self.session_cnt_replay:
            out.append("SessionCnt not above the last one it accepted (replay)")
        return out


@dataclass(frozen=True)
class FragSessionStatusAns:
    """What a reference node reports (LoRaMac-node LmhpFragmentation.c + FragDecoder.c).

    ``last_index`` is FragNbRx: the index N of the last fragment the node processed, NOT a
    count; it stops moving once the decoder has finished. ``missing`` is FragNbLost: DATA
    fragments (N <= M) the node never heard, counted when a later one arrives; parity
    recovery does not lower it; the reference writes the u16 into one byte.
    ``matrix_error``: the node lost more data fragments than its FRAG_MAX_REDUNDANCY and
    gave up ("finished" with MatrixError).
    """

    frag_index: int
    last_index: int
    missing: int
    matrix_error: bool


@dataclass(frozen=True)
class FragDataBlockReceivedReq:
    """v2: the node rebuilt the block; ``mic_error`` if its MIC did not match."""

    frag_index: int
    mic_error: bool


@dataclass(frozen=True)
class FragSessionDeleteAns:
    frag_index: int
    no_session: bool


Answer = (PackageVersionAns | FragSessionSetupAns | FragSessionStatusAns | FragSessionDeleteAns
          | FragDataBlockReceivedReq)


def _status_ans(p: bytes, i: int) -> tuple[FragSessionStatusAns, int]:
    (ri,) = struct.unpack_from("<H", p, i + 1)
    return FragSessionStatusAns(ri >> 14, ri & 0x3FFF, p[i + 3], bool(p[i + 4] & 1)), 5


def _setup_ans(p: bytes, i: int) -> tuple[FragSessionSetupAns, int]:
    b = p[i + 1]
    return FragSessionSetupAns(b >> 6, bool(b & 1), bool(b & 2), bool(b & 4), bool(b & 8),
                               bool(b & 16)), 2


def _block_received_req(p: bytes, i: int) -> tuple[FragDataBlockReceivedReq, int]:
    return FragDataBlockReceivedReq(p[i + 1] & 3, bool(p[i + 1] & 4)), 2


def _delete_ans(p: bytes, i: int) -> tuple[FragSessionDeleteAns, int]:
    return FragSessionDeleteAns(p[i + 1] & 3, bool(p[i + 1] & 4)), 2


def parse_uplink(payload: bytes) -> list[Answer]:
    """Every answer in one port-201 uplink (commands are concatenated CID + payload)."""
    return parse_commands(payload, {CID_FRAG_SESSION_STATUS: _status_ans,
                                    CID_FRAG_SESSION_SETUP: _setup_ans,
                                    CID_FRAG_SESSION_DELETE: _delete_ans,
                                    CID_FRAG_DATA_BLOCK_RECEIVED: _block_received_req},
                          "TS004")
