"""One simulated class A/C LoRaWAN node running the three FUOTA packages.

It parses the downlinks itself (byte layouts from the TS003/TS004/TS005 tables),
derives its multicast keys with its own AES calls, keeps its own clock (offset from
the network's until TS003 corrects it) and rebuilds the image with its own decoder.
The node never reads a clock: every event carries the simulated time it happens at.
"""

from __future__ import annotations

import random
import struct
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from ferry.sim.lora.decoder import BlockDecoder

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
    frag: dict[int, tuple[int, BlockDecoder]] = field(default_factory=dict)  # idx -> (mask, dec)
    image: bytes | None = None
    log: list[str] = field(default_factory=list)
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
                out.append((0.0, 200, bytes([0x00, 2, 1])))
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
                if status & 0x1C:
                    out.append((0.0, 200, bytes([0x04, status])))
                else:
                    self.sessions[gid] = ClassC(start, 1 << tmo, freq, dr)
                    tts = max(0, start - int(self.gps(at)))
                    out.append((0.0, 200, bytes([0x04, status]) + tts.to_bytes(3, "little")))
                i += 11
            else:
                self.log.append(f"TS005 bad command {p[i:].hex()}")
                break
        return out

    def _frag(self, p: bytes, at: float) -> list[tuple[float, int, bytes]]:
        if p and p[0] == 0x08:
            self._fragment(p, at)
            return []
        out: list[tuple[float, int, bytes]] = []
        i = 0
        while i < len(p):
            cid = p[i]
            if cid == 0x00:
                out.append((0.0, 201, bytes([0x00, 3, 1])))
                i += 1
            elif cid == 0x02 and i + 11 <= len(p):
                sess = p[i + 1]
                idx = (sess >> 4) & 3
                nb = int.from_bytes(p[i + 2 : i + 4], "little")
                size = p[i + 4]
                algo = (p[i + 5] >> 3) & 7
                pad = p[i + 6]
                status = idx << 6
                if algo != 0:
                    status |= 1
                if nb == 0 or size == 0 or pad >= size:
                    status |= 8
                if status & 0x0F == 0:
                    self.frag[idx] = (sess & 0x0F, BlockDecoder(nb, size, pad))
                    self.image = None
                out.append((0.0, 201, bytes([0x02, status])))
                i += 11
            elif cid == 0x01:
                b = p[i + 1]
                idx = (b >> 1) & 3
                everyone = bool(b & 1)
                entry = self.frag.get(idx)
                if entry is not None:
                    dec = entry[1]
                    if everyone or dec.missing > 0:
                        delay = self.rng.uniform(0, self.ack_spread)
                        ri = (idx << 14) | min(len(dec.received), 0x3FFF)
                        out.append((delay, 201, bytes([0x01]) + ri.to_bytes(2, "little")
                                    + bytes([min(dec.missing, 255), 0])))
                i += 2
            elif cid == 0x03:
                idx = p[i + 1] & 3
                gone = self.frag.pop(idx, None) is None
                out.append((0.0, 201, bytes([0x03, idx | (4 if gone else 0)])))
                i += 2
            else:
                self.log.append(f"TS004 bad command {p[i:].hex()}")
                break
        return out

    def listening(self, group_id: int, at: float) -> bool:
        s = self.sessions.get(group_id)
        if s is None:
            return False
        now = self.gps(at)
        return s.start_gps + self.join_delay <= now < s.start_gps + s.timeout_s

    def _fragment(self, p: bytes, at: float) -> None:
        if len(p) < 3:
            return
        word = int.from_bytes(p[1:3], "little")
        idx, n = word >> 14, word & 0x3FFF
        entry = self.frag.get(idx)
        if entry is None:
            return
        dec = entry[1]
        if dec.add(n, p[3:]) and dec.complete:
            self.image = dec.block()
