"""TS005 Remote Multicast Setup v1 (FPort 200): group setup, class C sessions, keys.

Key derivation follows TS005 and LoRaMac-node's secure element: a node *recovers* McKey
with AES **encrypt** (``McKey = aes128_encrypt(McKEKey, McKey_encrypted)``) so that it
only needs the encrypt primitive; the server therefore produces McKey_encrypted with
AES **decrypt**. (The shared reference notes write the node side as a decrypt; the
implementations do not, and interoperating with them is what matters.)
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from ferry.proxy.lora.package import PackageVersionAns, Parser, parse_commands

PORT = 200
PACKAGE_IDENTIFIER = 2
PACKAGE_VERSION = 1

CID_MC_GROUP_STATUS = 0x01
CID_MC_GROUP_SETUP = 0x02
CID_MC_GROUP_DELETE = 0x03
CID_MC_CLASS_C_SESSION = 0x04


# --- keys --------------------------------------------------------------------------


def _check(name: str, key: bytes) -> None:
    if len(key) != 16:
        raise ValueError(f"{name} must be 16 bytes, got {len(key)}")


def aes128_encrypt(key: bytes, block: bytes) -> bytes:
    _check("key", key)
    enc = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
    return enc.update(block) + enc.finalize()


def aes128_decrypt(key: bytes, block: bytes) -> bytes:
    _check("key", key)
    dec = Cipher(algorithms.AES(key), modes.ECB()).decryptor()
    return dec.update(block) + dec.finalize()


def mc_root_key(key: bytes, *, lorawan_1_1: bool = False) -> bytes:
    """McRootKey: from GenAppKey on LoRaWAN 1.0.x, from AppKey (0x20 block) on 1.1."""
    block = bytes([0x20]) + bytes(15) if lorawan_1_1 else bytes(16)
    return aes128_encrypt(key, block)


def mc_ke_key(root_key: bytes) -> bytes:
    return aes128_encrypt(root_key, bytes(16))


def encrypt_mc_key(ke_key: bytes, mc_key: bytes) -> bytes:
    """McKey_encrypted for McGroupSetupReq (server side: AES decrypt, see module doc)."""
    _check("McKey", mc_key)
    return aes128_decrypt(ke_key, mc_key)


def _session_key(prefix: int, mc_key: bytes, mc_addr: int) -> bytes:
    return aes128_encrypt(mc_key, bytes([prefix]) + struct.pack("<I", mc_addr) + bytes(11))


def mc_app_s_key(mc_key: bytes, mc_addr: int) -> bytes:
    return _session_key(0x01, mc_key, mc_addr)


def mc_net_s_key(mc_key: bytes, mc_addr: int) -> bytes:
    return _session_key(0x02, mc_key, mc_addr)


# --- downlink frames ---------------------------------------------------------------


def _gid(group_id: int) -> int:
    if not 0 <= group_id <= 3:
        raise ValueError("McGroupID is 2 bits (0..3)")
    return group_id


@dataclass(frozen=True)
class McGroupSetup:
    group_id: int
    mc_addr: int
    mc_key_encrypted: bytes
    min_fcnt: int
    max_fcnt: int


def mc_group_setup_req(s: McGroupSetup) -> bytes:
    _check("McKey_encrypted", s.mc_key_encrypted)
    return (struct.pack("<BBI", CID_MC_GROUP_SETUP, _gid(s.group_id), s.mc_addr)
            + s.mc_key_encrypted + struct.pack("<II", s.min_fcnt, s.max_fcnt))


def mc_group_delete_req(group_id: int) -> bytes:
    return bytes([CID_MC_GROUP_DELETE, _gid(group_id)])


@dataclass(frozen=True)
class McClassCSession:
    group_id: int
    session_time: int  # start, seconds since the GPS epoch (mod 2^32)
    timeout_exp: int  # the session lasts 2**timeout_exp seconds
    frequency_hz: int
    dr: int


def mc_class_c_session_req(s: McClassCSession) -> bytes:
    if not 0 <= s.timeout_exp <= 15:
        raise ValueError("SessionTimeOut is 4 bits (2^0..2^15 s)")
    if s.frequency_hz % 100:
        raise ValueError("DLFrequency is sent in steps of 100 Hz")
    freq = s.frequency_hz // 100
    return (struct.pack("<BBIB", CID_MC_CLASS_C_SESSION, _gid(s.group_id),
                        s.session_time & 0xFFFFFFFF, s.timeout_exp)
            + freq.to_bytes(3, "little") + bytes([s.dr]))


# --- uplink answers ----------------------------------------------------------------


@dataclass(frozen=True)
class McGroupSetupAns:
    group_id: int
    id_error: bool


@dataclass(frozen=True)
class McGroupDeleteAns:
    group_id: int
    undefined: bool


@dataclass(frozen=True)
class McClassCSessionAns:
    group_id: int
    dr_error: bool
    freq_error: bool
    undefined: bool
    time_to_start: int | None  # seconds, present only when no error bit is set

    @property
    def ok(self) -> bool:
        return not (self.dr_error or self.freq_error or self.undefined)


Answer = PackageVersionAns | McGroupSetupAns | McGroupDeleteAns | McClassCSessionAns


def _group_ans(kind: type[McGroupSetupAns] | type[McGroupDeleteAns]) -> Parser:
    def parse(p: bytes, i: int) -> tuple[Any, int]:
        return kind(p[i + 1] & 3, bool(p[i + 1] & 4)), 2
    return parse


def _class_c_ans(p: bytes, i: int) -> tuple[McClassCSessionAns, int]:
    b = p[i + 1]
    if b & 0x1C:  # an error: no time to start
        return McClassCSessionAns(b & 3, bool(b & 4), bool(b & 8), bool(b & 16), None), 2
    if i + 5 > len(p):
        raise IndexError
    tts = int.from_bytes(p[i + 2:i + 5], "little")
    return McClassCSessionAns(b & 3, bool(b & 4), bool(b & 8), bool(b & 16), tts), 5


def parse_uplink(payload: bytes) -> list[Answer]:
    return parse_commands(payload, {CID_MC_GROUP_SETUP: _group_ans(McGroupSetupAns),
                                    CID_MC_GROUP_DELETE: _group_ans(McGroupDeleteAns),
                                    CID_MC_CLASS_C_SESSION: _class_c_ans}, "TS005")
