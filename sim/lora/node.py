"""One simulated class A/C LoRaWAN node running the three FUOTA packages.

It parses the downlinks itself (byte layouts from the TS003/TS004/TS005 tables),
derives its multicast keys with its own AES calls, keeps its own clock (offset from
the network's until TS003 corrects it) and rebuilds the image with its own decoder.
The node never reads a clock: every event carries the simulated time it happens at.

TS005 and TS003 follow LoRaMac-node's ``LmhpRemoteMcastSetup.c`` and ``LmhpClockSync.c``
(same directory): McGroupSetupAns bit 2 on a failed setup; McClassCSessionAns with the
time to start, or bit 4 (McGroupUndefined) also when SessionTime is already past on the
node's clock, which the reference reports that way; AppTimeReq with a 4-bit token and
AnsRequired.

The fragmentation package answers as the reference node stack does, from
LoRaMac-node ``src/apps/LoRaMac/common/LmHandler/packages/LmhpFragmentation.c`` (v1)
and STM32CubeWL's ``LmhpFragmentation.c``, derived from it (v1 and v2, chosen at build
time by LORAWAN_PACKAGES_VERSION; ``ts004_version`` here):

- PackageVersionAns says package 3 version ``ts004_version``.
- FragSessionSetupReq: 10 bytes after the CID in v1, 16 in v2 (SessionCnt u16, MIC u32;
  Control bit 6 AckReception). Status bit 0 FragAlgo != 0; bit 1 "not enough memory" when
  NbFrag > FRAG_MAX_NB, FragSize > FRAG_MAX_SIZE or NbFrag·FragSize > their product
  (``limits``; ``decoder.STOCK`` is the shipped 21 / 50 / 5); bits 7:6 FragIndex; v2 bit 4
  when SessionCnt is not above the one of the last session that received data.
  Wrong Descriptor (bit 3) is never set: the reference has it commented out.
- FragSessionStatusReq: answered only if Participants = 1 or FragNbLost > 0, after
  ``3 s + rand(0..1)·2^(BlockAckDelay+4) s``, as ``01 | FragNbRx & 0xFF |
  FragIndex << 6 | FragNbRx >> 8 & 0x3F | FragNbLost (u16 written into one byte) |
  MatrixError`` (the same layout in v2). FragNbRx is the last index processed.
- DataFragment: fed to ``decoder.RefDecoder`` (FragDecoder.c) while the session is
  ongoing; once finished the decoder is not called again, so FragNbRx freezes.
- v2 with AckReception: on finishing, FragDataBlockReceivedReq ``04 | FragIndex | 0x04 if
  the MIC (AES-CMAC with DataBlockIntKey = aes128(AppKey, 0x30|0…), B0 = 0x49 |
  SessionCnt | FragIndex | Descriptor | 0 | size) does not match``, resent every 1.5 s
  (``block_req_period``) until FragDataBlockReceivedAns (``04 | FragIndex``) arrives.
"""

from __future__ import annotations

import random
import struct
from dataclasses import dataclass, field

from cryptography.hazmat.primitives import cmac
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from ferry.sim.lora.decoder import FINISHED, ONGOING, Limits, RefDecoder

GPS_OFFSET = 315964800 - 18  # unix - GPS_OFFSET = GPS seconds


def _aes(key: bytes, block: bytes) -> bytes:
    e = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
    return e.update(block) + e.finalize()


@dataclass
class McGroup:
    addr: int
    app_s_key: bytes
    net_s_key: bytes
    min_fcnt: int
    max_fcnt: int


@dataclass
class ClassC:
    start_gps: int
    timeout_s: int
    freq_hz: int
    dr: int


@dataclass
class FragSession:
    mask: int
    nb: int
    size: int
    padding: int
    block_ack_delay: int
    descriptor: int
    dec: RefDecoder
    session_cnt: int = 0
    mic: int = 0
    ack_reception: bool = False
    status: int = ONGOING  # FragDecoderProcessStatus
    active: bool = True


@dataclass
class Node:
    dev_eui: str
    gen_app_key: bytes
    clock_offset: float = 0.0  # node time minus network time, seconds
    lorawan_1_1: bool = False
    join_delay: float = 0.0  # late joiner: listens this long after the window opens
    ack_spread: float = 16.0  # status answers spread over 2^(BlockAckDelay+4) s
    rng: random.Random = field(default_factory=random.Random)
    groups: dict[int, McGroup] = field(default_factory=dict)
    sessions: dict[int, ClassC] = field(default_factory=dict)
    frag: dict[int, FragSession] = field(default_factory=dict)  # FragIndex -> session
    ts004_version: int = 1  # LORAWAN_PACKAGES_VERSION of the build
    limits: Limits = field(default_factory=Limits)
    block_req_period: float = 1.5  # STM32CubeWL resends FragDataBlockReceivedReq this often
    block_req_pending: int | None = None  # FragIndex awaiting FragDataBlockReceivedAns
    session_cnt_prev: dict[int, int] = field(default_factory=dict)
    image: bytes | None = None
    log: list[str] = field(default_factory=list)
    # the fragment index N the decoder finished on, per FragIndex: ground truth that a
    # real node never reports (TS004 v1 has no "done"), for benches and tests to hold
    # ferry's completion rule against
    finished_at: dict[int, int] = field(default_factory=dict)
    synced: bool = False
    token: int = 0
    resync_left: int = 0

    def gps(self, at: float) -> float:
        return at + self.clock_offset - GPS_OFFSET

    # -- keys (TS005 §key derivation, node side) ------------------------------------

    def _mc_ke_key(self) -> bytes:
        first = 0x20 if self.lorawan_1_1 else 0x00
        root = _aes(self.gen_app_key, bytes([first]) + bytes(15))
        return _aes(root, bytes(16))

    # -- downlinks: return a list of (delay_s, port, payload) uplinks ----------------

    def downlink(self, port: int, payload: bytes, at: float) -> list[tuple[float, int, bytes]]:
        if port == 202:
            return self._clock(payload, at)
        if port == 200:
            return self._multicast(payload, at)
        if port == 201:
            return self._frag(payload, at)
        return []

    def _clock(self, p: bytes, at: float) -> list[tuple[float, int, bytes]]:
        out: list[tuple[float, int, bytes]] = []
        i = 0
        while i < len(p):
            cid = p[i]
            if cid == 0x03:  # ForceDeviceResyncReq: NbTransmissions in bits 2:0
                # the next transmission follows the answer to this one (RX1 + a second)
                self.resync_left = max(1, p[i + 1] & 7) - 1
                out.append((0.0, 202, self._app_time_req(at)))
                i += 2
            elif cid == 0x01:  # AppTimeAns: int32 correction, token
                (corr,) = struct.unpack("<i", p[i + 1 : i + 5])
                if (p[i + 5] & 0x0F) == self.token:
                    self.clock_offset += corr
                    self.synced = True
                    self.token = (self.token + 1) & 0x0F
                if self.resync_left > 0:
                    self.resync_left -= 1
                    out.append((1.0, 202, self._app_time_req(at + 1.0)))
                i += 6
            elif cid == 0x02:
                out.append((0.0, 202, bytes([0x02, 0]) + (int(self.gps(at)) & 0xFFFFFFFF)
                            .to_bytes(4, "little")))
                i += 2
            else:
                self.log.append(f"TS003 unknown CID {cid}")
                break
        return out

    def _app_time_req(self, at: float) -> bytes:
        t = int(self.gps(at)) & 0xFFFFFFFF
        return bytes([0x01]) + t.to_bytes(4, "little") + bytes([0x10 | self.token])

    def _multicast(self, p: bytes, at: float) -> list[tuple[float, int, bytes]]:
        out: list[tuple[float, int, bytes]] = []
        i = 0
        while i < len(p):
            cid = p[i]
            if cid == 0x00:
                out.append((0.0, 200, bytes([0x00, 2, self.ts004_version])))
                i += 1
            elif cid == 0x02 and i + 30 <= len(p):
                gid = p[i + 1] & 3
                addr = int.from_bytes(p[i + 2 : i + 6], "little")
                mc_key = _aes(self._mc_ke_key(), p[i + 6 : i + 22])
                fmin = int.from_bytes(p[i + 22 : i + 26], "little")
                fmax = int.from_bytes(p[i + 26 : i + 30], "little")
                tail = addr.to_bytes(4, "little") + bytes(11)
                self.groups[gid] = McGroup(addr, _aes(mc_key, b"\x01" + tail),
                                           _aes(mc_key, b"\x02" + tail), fmin, fmax)
                out.append((0.0, 200, bytes([0x02, gid])))
                i += 30
            elif cid == 0x03:
                gid = p[i + 1] & 3
                gone = self.groups.pop(gid, None) is None
                out.append((0.0, 200, bytes([0x03, gid | (4 if gone else 0)])))
                i += 2
            elif cid == 0x04 and i + 11 <= len(p):
                gid = p[i + 1] & 3
                start = int.from_bytes(p[i + 2 : i + 6], "little")
                tmo = p[i + 6] & 0x0F
                freq = int.from_bytes(p[i + 7 : i + 10], "little") * 100
                dr = p[i + 10]
                status = gid
                if gid not in self.groups:
                    status |= 0x10
                if dr > 7:
                    status |= 0x04
                if not 863_000_000 <= freq <= 870_000_000:
                    status |= 0x08
                tts = start - int(self.gps(at))
                if not status & 0x1C and tts <= 0:
                    status |= 0x10  # LmhpRemoteMcastSetup.c: SessionTime already past
                if status & 0x1C:
                    out.append((0.0, 200, bytes([0x04, status])))
                else:
                    self.sessions[gid] = ClassC(start, 1 << tmo, freq, dr)
                    out.append((0.0, 200, bytes([0x04, status]) + tts.to_bytes(3, "little")))
                i += 11
            else:
                self.log.append(f"TS005 bad command {p[i:].hex()}")
                break
        return out

    def _frag(self, p: bytes, at: float) -> list[tuple[float, int, bytes]]:
        out: list[tuple[float, int, bytes]] = []
        i = 0
        v2 = self.ts004_version == 2
        while i < len(p):
            cid = p[i]
            if cid == 0x08:  # DataFragment: alone in its message
                return out + self._fragment(p[i:], at)
            if cid == 0x00:
                out.append((3.0, 201, bytes([0x00, 3, self.ts004_version])))
                i += 1
            elif cid == 0x02 and i + (17 if v2 else 11) <= len(p):
                out.append((3.0, 201, bytes([0x02, self._setup(p[i + 1:i + (17 if v2 else 11)])])))
                i += 17 if v2 else 11
            elif cid == 0x01 and i + 2 <= len(p):
                b = p[i + 1]
                idx = (b >> 1) & 3
                everyone = bool(b & 1)
                s = self.frag.get(idx)
                dec = s.dec if s else None
                lost = dec.lost if dec else 0
                if everyone or lost > 0:
                    rx = dec.nb_rx if dec else 0
                    bad = s.block_ack_delay if s else 0
                    delay = 3.0 + self.rng.randint(0, 1000) / 1000 * (1 << (bad + 4))
                    out.append((delay, 201, bytes([
                        0x01, rx & 0xFF, ((idx << 6) | ((rx >> 8) & 0x3F)) & 0xFF,
                        lost & 0xFF, int(dec.matrix_error) if dec else 0])))
                i += 2
            elif cid == 0x03 and i + 2 <= len(p):
                idx = p[i + 1] & 3
                s = self.frag.get(idx)
                gone = s is None or not s.active
                if s is not None:
                    s.active = False
                out.append((3.0, 201, bytes([0x03, idx | (4 if gone else 0)])))
                i += 2
            elif cid == 0x04 and v2 and i + 2 <= len(p):  # FragDataBlockReceivedAns
                if self.block_req_pending == (p[i + 1] & 3):
                    self.block_req_pending = None
                i += 2
            else:
                self.log.append(f"TS004 bad command {p[i:].hex()}")
                break
        return out

    def _setup(self, b: bytes) -> int:
        sess = b[0]
        idx = (sess >> 4) & 3
        nb = int.from_bytes(b[1:3], "little")
        size = b[3]
        control = b[4]
        pad = b[5]
        descriptor = int.from_bytes(b[6:10], "little")
        status = (idx << 6) & 0xC0
        if (control >> 3) & 7:
            status |= 0x01  # encoding unsupported
        lim = self.limits
        if ((lim.max_nb is not None and nb > lim.max_nb)
                or (lim.max_size is not None and size > lim.max_size)
                or (lim.max_nb is not None and lim.max_size is not None
                    and nb * size > lim.max_nb * lim.max_size)):
            status |= 0x02  # not enough memory
        cnt, mic = 0, 0
        if self.ts004_version == 2:
            cnt = int.from_bytes(b[10:12], "little")
            mic = int.from_bytes(b[12:16], "little")
            if self.session_cnt_prev.get(idx, -1) >= cnt:
                status |= 0x10  # SessionCnt replay
        if status & (0x1F if self.ts004_version == 2 else 0x0F) == 0:
            self.frag[idx] = FragSession(sess & 0x0F, nb, size, pad, control & 7, descriptor,
                                         RefDecoder(nb, size, pad, lim), cnt, mic,
                                         self.ts004_version == 2 and bool(control & 0x40))
            self.image = None
        return status

    def _mic_ok(self, s: FragSession, idx: int, block: bytes) -> bool:
        key = _aes(self.gen_app_key, bytes([0x30]) + bytes(15))
        b0 = (bytes([0x49]) + s.session_cnt.to_bytes(2, "little") + bytes([idx])
              + s.descriptor.to_bytes(4, "little") + bytes(4) + len(block).to_bytes(4, "little"))
        c = cmac.CMAC(algorithms.AES(key))
        c.update(b0 + block)
        return int.from_bytes(c.finalize()[:4], "little") == s.mic

    def block_req_wanted(self, idx: int) -> bool:
        """The network asks before delivering a resend: still unanswered?"""
        return self.block_req_pending == idx

    def listening(self, group_id: int, at: float) -> bool:
        s = self.sessions.get(group_id)
        if s is None:
            return False
        now = self.gps(at)
        return s.start_gps + self.join_delay <= now < s.start_gps + s.timeout_s

    def _fragment(self, p: bytes, at: float) -> list[tuple[float, int, bytes]]:
        if len(p) < 3:
            return []
        word = int.from_bytes(p[1:3], "little")
        idx, n = word >> 14, word & 0x3FFF
        s = self.frag.get(idx)
        if s is None or not s.active or s.status != ONGOING:
            return []
        s.status = s.dec.process(n, p[3:3 + s.size])
        if self.ts004_version == 2:
            self.session_cnt_prev[idx] = s.session_cnt
        if s.status < FINISHED:
            return []
        self.finished_at.setdefault(idx, n)
        block = s.dec.block()
        if s.dec.rebuilt:
            self.image = block
        if not s.ack_reception:
            return []
        status = idx | (0 if s.dec.rebuilt and self._mic_ok(s, idx, block) else 0x04)
        self.block_req_pending = idx
        req = bytes([0x04, status])
        first = 3.0 + self.rng.randint(0, 1000) / 1000 * (1 << (s.block_ack_delay + 4))
        return [(first + k * self.block_req_period, 201, req) for k in range(200)]
