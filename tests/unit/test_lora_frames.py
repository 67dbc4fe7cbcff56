"""Frames byte for byte against the TS003/TS004/TS005 tables (expected bytes by hand)."""

from __future__ import annotations

import pytest

from ferry.proxy.lora import clocksync, fragmentation, multicast, package
from ferry.proxy.lora.errors import FrameError


def test_frag_session_setup_req_layout():
    req = fragmentation.FragSessionSetup(
        frag_index=1, nb_frag=258, frag_size=50, padding=7, descriptor=0x01020304,
        mc_group_mask=0b0101, frag_algo=0, block_ack_delay=3)
    # CID 02 | FragSession: bits 5:4 FragIndex=1, bits 3:0 mask=0101 -> 0x15
    # | NbFrag 258 LE 02 01 | FragSize 0x32 | Control: FragAlgo 0 <<3, BlockAckDelay 3 -> 03
    # | Padding 07 | Descriptor LE 04 03 02 01
    assert fragmentation.frag_session_setup_req(req) == bytes(
        [0x02, 0x15, 0x02, 0x01, 0x32, 0x03, 0x07, 0x04, 0x03, 0x02, 0x01])
    assert len(fragmentation.frag_session_setup_req(req)) == 1 + 10


def test_data_fragment_index_and_n():
    # Index&N LE: bits 15:14 FragIndex 2, bits 13:0 N 5 -> 0x8005 -> 05 80
    assert fragmentation.data_fragment(2, 5, b"\xaa\xbb") == bytes([0x08, 0x05, 0x80, 0xAA, 0xBB])
    assert fragmentation.data_fragment(3, 16383, b"") == bytes([0x08, 0xFF, 0xFF])
    assert fragmentation.data_fragment(0, 1, b"x") == bytes([0x08, 0x01, 0x00]) + b"x"
    with pytest.raises(ValueError):
        fragmentation.data_fragment(0, 0, b"x")  # N starts at 1
    with pytest.raises(ValueError):
        fragmentation.data_fragment(4, 1, b"x")


def test_status_and_delete_req():
    # bit0 Participants, bits 2:1 FragIndex
    assert fragmentation.frag_session_status_req(1, all_participants=True) == bytes([0x01, 0x03])
    assert fragmentation.frag_session_status_req(3, all_participants=False) == bytes([0x01, 0x06])
    assert fragmentation.frag_session_delete_req(2) == bytes([0x03, 0x02])
    assert package.package_version_req() == bytes([0x00])


def test_ts004_answers():
    # FragSessionStatusAns: index 1, last N 300 -> 0x412C LE 2C 41, lost 7, MatrixError
    # FragSessionSetupAns: 0x44 -> index 1, FragIndex unsupported
    # FragSessionDeleteAns: 0x06 -> index 2, no such session; PackageVersionAns 3, 1
    got = fragmentation.parse_uplink(bytes([0x01, 0x2C, 0x41, 0x07, 0x01, 0x02, 0x44,
                                            0x03, 0x06, 0x00, 0x03, 0x01]))
    assert got == [
        fragmentation.FragSessionStatusAns(1, 300, 7, True),
        fragmentation.FragSessionSetupAns(1, False, False, True, False),
        fragmentation.FragSessionDeleteAns(2, True),
        fragmentation.PackageVersionAns(3, 1),
    ]
    assert fragmentation.parse_uplink(bytes([0x02, 0x80]))[0].ok  # type: ignore[union-attr]
    with pytest.raises(FrameError):
        fragmentation.parse_uplink(bytes([0x01, 0x2C]))
    with pytest.raises(FrameError):
        fragmentation.parse_uplink(bytes([0x7F]))


def test_mc_group_setup_req_layout():
    req = multicast.McGroupSetup(group_id=2, mc_addr=0xA1B2C3D4,
                                 mc_key_encrypted=bytes(range(0xF0, 0x100)),
                                 min_fcnt=5, max_fcnt=0x01000000)
    expected = bytes([0x02, 0x02, 0xD4, 0xC3, 0xB2, 0xA1]) + bytes(range(0xF0, 0x100)) + bytes(
        [0x05, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01])
    assert multicast.mc_group_setup_req(req) == expected
    assert len(expected) == 1 + 29


def test_mc_class_c_session_req_layout():
    req = multicast.McClassCSession(group_id=1, session_time=0x12345678, timeout_exp=12,
                                    frequency_hz=869_525_000, dr=5)
    # 869525000 / 100 = 8695250 = 0x84ADD2 -> D2 AD 84
    assert multicast.mc_class_c_session_req(req) == bytes(
        [0x04, 0x01, 0x78, 0x56, 0x34, 0x12, 0x0C, 0xD2, 0xAD, 0x84, 0x05])
    with pytest.raises(ValueError):
        multicast.mc_class_c_session_req(multicast.McClassCSession(0, 0, 16, 869_525_000, 5))


def test_ts005_answers():
    got = multicast.parse_uplink(bytes([0x02, 0x01, 0x04, 0x03, 0x0A, 0x00, 0x00,
                                        0x04, 0x14, 0x02, 0x06, 0x00, 0x02, 0x01]))
    assert got == [
        multicast.McGroupSetupAns(1, False),
        multicast.McClassCSessionAns(3, False, False, False, 10),
        multicast.McClassCSessionAns(0, True, False, True, None),
        multicast.McGroupSetupAns(2, True),
        multicast.PackageVersionAns(2, 1),
    ]
    assert multicast.mc_group_delete_req(3) == bytes([0x03, 0x03])


def test_ts003_frames():
    # AppTimeAns: int32 correction -5 LE fb ff ff ff, TokenAns 3
    assert clocksync.app_time_ans(-5, 3) == bytes([0x01, 0xFB, 0xFF, 0xFF, 0xFF, 0x03])
    assert clocksync.force_device_resync_req(2) == bytes([0x03, 0x02])
    assert clocksync.device_app_time_periodicity_req(4) == bytes([0x02, 0x04])
    # AppTimeReq: DeviceTime 0x12345678 LE, Param bit4 AnsRequired + token 3
    (req,) = clocksync.parse_uplink(bytes([0x01, 0x78, 0x56, 0x34, 0x12, 0x13]))
    assert req == clocksync.AppTimeReq(0x12345678, 3, True)
    assert clocksync.answer(req, 0x12345678 + 42.4) == bytes([0x01, 42, 0, 0, 0, 0x03])


def test_gps_epoch():
    # 2026-01-01T00:00:00Z = unix 1767225600; GPS = unix - 315964800 + 18
    assert clocksync.unix_to_gps(1767225600) == 1767225600 - 315964800 + 18
    assert clocksync.gps_to_unix(clocksync.unix_to_gps(1.5e9)) == 1.5e9


def test_multicast_keys_round_trip_through_node_side_encrypt():
    """Server encrypts McKey with AES-decrypt so the node recovers it with AES-encrypt."""
    gen_app_key = bytes.fromhex("000102030405060708090a0b0c0d0e0f")
    root = multicast.mc_root_key(gen_app_key)
    assert root == multicast.aes128_encrypt(gen_app_key, bytes(16))
    assert multicast.mc_root_key(gen_app_key, lorawan_1_1=True) == multicast.aes128_encrypt(
        gen_app_key, b"\x20" + bytes(15))
    ke = multicast.mc_ke_key(root)
    mc_key = bytes(range(16, 32))
    sent = multicast.encrypt_mc_key(ke, mc_key)
    assert sent != mc_key
    assert multicast.aes128_encrypt(ke, sent) == mc_key
    app = multicast.mc_app_s_key(mc_key, 0x01020304)
    assert app == multicast.aes128_encrypt(mc_key, bytes([1, 4, 3, 2, 1]) + bytes(11))
    assert multicast.mc_net_s_key(mc_key, 0x01020304) == multicast.aes128_encrypt(
        mc_key, bytes([2, 4, 3, 2, 1]) + bytes(11))


def test_ts004_v2_setup_carries_session_cnt_mic_and_ack_reception():
    s = fragmentation.FragSessionSetup(1, 0x0102, 0x30, 5, 0x0A0B0C0D, 0b0001, 0, 3,
                                       version=2, session_cnt=0x1234, mic=0xA1B2C3D4)
    # CID, FragSession (index 1 << 4 | mask 1), NbFrag LE, FragSize, Control
    # (AckReception 0x40 | algo 0 | BlockAckDelay 3), Padding, Descriptor LE,
    # SessionCnt LE, MIC LE: 17 bytes as STM32CubeWL's v2 parser reads them
    assert fragmentation.frag_session_setup_req(s) == bytes.fromhex(
        "02 11 0201 30 43 05 0d0c0b0a 3412 d4c3b2a1")
    v1 = fragmentation.FragSessionSetup(1, 0x0102, 0x30, 5, 0x0A0B0C0D, 0b0001, 0, 3)
    assert fragmentation.frag_session_setup_req(v1) == bytes.fromhex(
        "02 11 0201 30 03 05 0d0c0b0a")
    with pytest.raises(ValueError):
        fragmentation.frag_session_setup_req(
            fragmentation.FragSessionSetup(0, 1, 1, 0, version=3))


def test_ts004_v2_answers_and_block_received():
    # SetupAns 0x52: index 1, replay (bit 4), not enough memory (bit 1)
    # FragDataBlockReceivedReq 04 06: index 2, MIC error (bit 2)
    got = fragmentation.parse_uplink(bytes([0x02, 0x52, 0x04, 0x06, 0x00, 0x03, 0x02]))
    assert got == [
        fragmentation.FragSessionSetupAns(1, False, True, False, False, True),
        fragmentation.FragDataBlockReceivedReq(2, True),
        fragmentation.PackageVersionAns(3, 2),
    ]
    ans = got[0]
    assert isinstance(ans, fragmentation.FragSessionSetupAns)
    assert not ans.ok and any("memory" in p for p in ans.problems())
    assert any("SessionCnt" in p for p in ans.problems())
    assert fragmentation.frag_data_block_received_ans(2) == bytes([0x04, 0x02])


def test_data_block_mic_depends_on_every_b0_field():
    key = bytes(range(16))
    block = b"firmware" * 10
    base = fragmentation.data_block_mic(key, block, 1, 0, 0)
    assert 0 <= base < 2**32
    assert base != fragmentation.data_block_mic(key, block, 2, 0, 0)
    assert base != fragmentation.data_block_mic(key, block, 1, 1, 0)
    assert base != fragmentation.data_block_mic(key, block, 1, 0, 7)
    assert base != fragmentation.data_block_mic(key, block[:-1], 1, 0, 0)
    assert base != fragmentation.data_block_mic(bytes(16), block, 1, 0, 0)
