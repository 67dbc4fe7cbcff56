"""SMP serial framing, checked against the spec's example, the `smp` package's encoder and
the simulator's independent implementation."""

from __future__ import annotations

import base64

from hypothesis import given, settings
from hypothesis import strategies as st

from ferry.proxy.smp import framing
from ferry.sim.mcu import wire


def test_crc_is_xmodem() -> None:
    assert framing.crc16(b"123456789") == 0x31C3  # CRC-16/XMODEM check value
    assert wire.crc_xmodem(b"123456789") == 0x31C3


def test_spec_example() -> None:
    # smp.packet docs: encode(b"Hello, world!") -> 06 09 "AA9IZWxsbywgd29ybGQhet4=" 0a
    assert framing.encode(b"Hello, world!") == b"\x06\x09AA9IZWxsbywgd29ybGQhet4=\n"


def test_lines_respect_127_bytes_and_markers() -> None:
    wire_bytes = framing.encode(bytes(range(256)) * 8)
    lines = wire_bytes.split(b"\n")[:-1]
    assert len(lines) > 5
    assert lines[0].startswith(b"\x06\x09")
    assert all(line.startswith(b"\x04\x14") for line in lines[1:])
    assert max(len(line) + 1 for line in lines) == 127
    assert framing.wire_size(len(bytes(range(256)) * 8)) == len(wire_bytes)


def test_matches_smp_package_encoder() -> None:
    from smp import packet as smppacket

    data = bytes(range(200)) * 3
    theirs = b"".join(smppacket.encode(data, line_length=128))
    assert framing.encode(data) == theirs


def test_decoder_skips_console_text_and_reports_damage() -> None:
    dec = framing.Decoder()
    good = framing.encode(b"\x00" * 8 + b"\xa0")
    bad = bytearray(framing.encode(b"\x01" * 8 + b"\xa0"))
    raw = bytearray(base64.b64decode(bytes(bad[2:-1])))
    raw[-1] ^= 0xFF
    bad_crc = b"\x06\x09" + base64.b64encode(bytes(raw)) + b"\n"
    cut = framing.encode(b"\x02" * 300)[:140] + b"\n"  # first line and a bit, then nothing
    stream = b"boot banner\r\n" + bad_crc + b"noise" + cut + good + b"\x04\x14Zm9v\n"
    out = []
    for i in range(0, len(stream), 7):  # arbitrary chunking, as a port delivers
        out += dec.feed(stream[i : i + 7])
    assert out == [b"\x00" * 8 + b"\xa0"]
    assert any("CRC" in e for e in dec.errors)
    assert any("cut off" in e or "base64" in e for e in dec.errors)
    assert dec.noise_bytes > 0


@settings(max_examples=60, deadline=None)
@given(st.binary(min_size=8, max_size=3000), st.integers(min_value=8, max_value=127))
def test_roundtrip_with_simulator(packet: bytes, line: int) -> None:
    # ferry -> device
    asm = wire.LineAssembler(max_frame=4096)
    assert asm.push(framing.encode(packet, line_limit=max(line, 8))) == [packet]
    # device -> ferry
    dec = framing.Decoder()
    assert dec.feed(wire.frame_lines(packet)) == [packet]


def test_oversized_length_is_dropped() -> None:
    dec = framing.Decoder(max_frame=100)
    assert dec.feed(framing.encode(b"\x00" * 200)) == []
    assert dec.errors and "out of range" in dec.errors[0]
