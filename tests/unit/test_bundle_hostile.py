"""Hostile sw-description on the unverified path (issue 16, item 5).

``ferry bundle inspect`` without a keyring parses sw-description before anything vouches
for it, so every input must end in a one-line BadDescription: deep nesting, huge numbers,
huge strings, endless lists. Each case here raised RecursionError or ValueError (or was
accepted) before the parser had bounds.
"""

from __future__ import annotations

import io

import pytest

from ferry.daemon.cli.main import main
from ferry.packaging import libconfig
from ferry.packaging.cpio import CpioStreamWriter
from ferry.packaging.description import parse_description
from ferry.packaging.errors import BadDescription
from ferry.packaging.reader import read_unverified

SHA = "ab" * 32


def bundle_with(description: bytes) -> bytes:
    out = io.BytesIO()
    writer = CpioStreamWriter(out)
    writer.add_bytes("sw-description", description)
    writer.add_bytes("sw-description.sig", b"not checked on this path")
    writer.finish()
    return out.getvalue()


def one_line_refusal(text: str, match: str) -> str:
    with pytest.raises(BadDescription, match=match) as info:
        read_unverified(io.BytesIO(bundle_with(text.encode())))
    message = str(info.value)
    assert "\n" not in message and len(message) < 200, message
    return message


@pytest.mark.parametrize("opener,closer", [("(", ")"), ("[", "]"), ("{ a = ", "}")])
def test_fifty_thousand_nested_brackets(opener, closer):
    depth = 50_000
    one_line_refusal(f"a = {opener * depth}1{closer * depth};", "nested more than 32 levels")


def test_nesting_at_the_bound_still_parses():
    depth = libconfig.MAX_DEPTH
    doc = libconfig.loads("a = " + "(" * depth + "1" + ")" * depth + ";")
    value = doc["a"]
    for _ in range(depth):
        value = value[0]
    assert value == 1
    with pytest.raises(BadDescription, match="nested"):
        libconfig.loads("a = " + "(" * (depth + 1) + "1" + ")" * (depth + 1) + ";")


@pytest.mark.parametrize("literal", ["9" * 5000, "-" + "9" * 5000, "0x" + "F" * 5000])
def test_five_thousand_digit_integer(literal):
    one_line_refusal(f"a = {literal};", "integer of 50")


@pytest.mark.parametrize("literal,value", [
    ("9223372036854775807L", 2**63 - 1),
    ("-9223372036854775808", -(2**63)),
    ("0xFFFFFFFFFFFFFFFF", 2**64 - 1),
])  # fmt: skip
def test_sixty_four_bit_integers_are_read(literal, value):
    assert libconfig.loads(f"a = {literal};")["a"] == value


@pytest.mark.parametrize("literal", ["9223372036854775808", "0x10000000000000000"])
def test_integers_past_sixty_four_bits_are_refused(literal):
    with pytest.raises(BadDescription, match="does not fit in 64 bits"):
        libconfig.loads(f"a = {literal};")


def test_long_float_literal_is_refused():
    one_line_refusal("a = 1." + "5" * 5000 + ";", "number of 5002 characters")


def test_huge_strings_are_refused_also_when_split_into_adjacent_literals():
    big = "x" * (libconfig.MAX_STRING + 1)
    one_line_refusal(f'a = "{big}";', "string longer than 65536")
    half = "y" * (libconfig.MAX_STRING // 2 + 1)
    one_line_refusal(f'a = "{half}" "{half}";', "string longer than 65536")
    assert len(libconfig.loads(f'a = "{"z" * libconfig.MAX_STRING}";')["a"]) == 65536


def test_element_count_is_bounded():
    many = ",".join(["1"] * (libconfig.MAX_ELEMENTS + 1))
    one_line_refusal(f"a = [{many}];", "more than 100000 settings")
    settings = "".join(f"s{i}=1;" for i in range(libconfig.MAX_ELEMENTS + 1))
    one_line_refusal(settings, "more than 100000 settings")


def test_escaped_newline_gives_a_one_line_message():
    one_line_refusal('a = "x\\\ny";', "bad escape")


def test_hostile_values_are_cut_in_messages():
    name = "n" * 60_000 + "/x"
    doc = (
        'software = { version = "1"; images = ( { filename = "' + name + '"; '
        f'size = 1; sha256 = "{SHA}"; }} ); }};'
    )
    message = one_line_refusal(doc, "contains '/'")
    assert "..." in message
    fmt = "f" * 60_000
    doc = (
        'software = { version = "1"; ferry = { targets = ( { filename = "a.bin"; size = 1; '
        f'sha256 = "{SHA}"; transport = "smp-serial"; name = "m"; version = "1"; '
        f'format = "{fmt}"; }} ); }}; }};'
    )
    one_line_refusal(doc, "format = 'fff")
    with pytest.raises(BadDescription) as info:
        libconfig.loads("a = " + "1" * 30 + " " + "z" * 50_000)
    assert len(str(info.value)) < 200


def test_parse_description_refuses_the_same_without_a_bundle():
    with pytest.raises(BadDescription, match="nested"):
        parse_description(b"software = " + b"{ a = " * 50_000 + b"1" + b"}" * 50_000)


def test_ferry_bundle_inspect_prints_one_line(tmp_path, capsys):
    path = tmp_path / "deep.swu"
    path.write_bytes(bundle_with(b"a = " + b"(" * 50_000 + b";"))
    code = main(["bundle", "inspect", str(path)])
    err = capsys.readouterr().err.strip()
    assert code != 0
    assert "nested more than 32 levels" in err and "\n" not in err and "Traceback" not in err


@pytest.mark.parametrize("text,match", [
    ("a = [ { } ];", "holds only scalars"),
    ("a = [ (1) ];", "holds only scalars"),
    ("a = [ [1] ];", "holds only scalars"),
    ('a = [ 1, "x" ];', "mixes int and str"),
])  # fmt: skip
def test_arrays_hold_scalars_of_one_type_as_libconfig_requires(text, match):
    """Found by the fuzz campaign: arrays of groups parsed, then could not be written
    back (TypeError from dumps); libconfig's own grammar refuses them."""
    with pytest.raises(BadDescription, match=match):
        libconfig.loads(text)
    assert libconfig.loads("a = [1, 2L, 0x3];")["a"] == [1, 2, 3]


def test_errors_about_a_file_that_is_not_a_bundle_do_not_quote_its_bytes():
    """issue 16: no message quotes payload bytes; offsets say where instead."""
    from ferry.packaging.compression import decompress_stream
    from ferry.packaging.errors import BundleError

    secret = b"root:$6$saltsalt$hashhashhash:19000:0:99999:7:::\n"
    with pytest.raises(BundleError) as info:
        read_unverified(io.BytesIO(secret))
    assert "root" not in str(info.value) and "byte 0" in str(info.value)
    header = bytearray(bundle_with(b"a = 1;")[:110])
    header[54:62] = b"root:$6$"  # the filesize field
    with pytest.raises(BundleError) as info:
        read_unverified(io.BytesIO(bytes(header)))
    assert "root" not in str(info.value) and "filesize is not hex" in str(info.value)
    with pytest.raises(BundleError) as info:
        decompress_stream("zstd", io.BytesIO(secret)).read()
    message = str(info.value)
    assert "root" not in message and "726f6f74" not in message and "746f6f72" not in message
    with pytest.raises(BundleError, match="not a gzip stream") as info:
        decompress_stream("zlib", io.BytesIO(secret)).read()
    assert "b'" not in str(info.value)
