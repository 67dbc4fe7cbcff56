"""Bounded fuzz run (CI) over the CMS signature parser: verify() ends in success or a
one-line BundleError, and embedded_signer() (display only) never raises at all.
Targets live in bench/fuzz.py; derandomized here so CI is deterministic.
"""

from __future__ import annotations

import pytest
from fuzz_campaign import fuzz
from hypothesis import given, settings

from ferry.packaging import signature
from ferry.packaging.errors import BadSignature

# Mutated certificates carry negative serials now and then; cryptography warns about them.
pytestmark = pytest.mark.filterwarnings(
    "ignore::cryptography.utils.CryptographyDeprecationWarning"
)


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(fuzz.TARGETS["cms"].strategy)
def test_signature_ends_in_success_or_one_line_error(sig):
    fuzz.TARGETS["cms"].run(sig)


def test_certificate_with_a_bad_version_is_handled():
    """Found by the campaign: x509.InvalidVersion (not a ValueError) escaped
    embedded_signer() and reached verify()'s generic catch-all."""
    fx = fuzz.fixture()
    good = fx.signatures[0]
    version_v3 = bytes.fromhex("a003020102")
    assert version_v3 in good
    bad = good.replace(version_v3, bytes.fromhex("a003020142"), 1)
    assert signature.embedded_signer(bad) is None
    with pytest.raises(BadSignature, match="malformed certificate"):
        signature.verify(fx.content, bad, fx.keyring, now=fuzz.NOW)


def test_der_error_details_are_cut_to_one_short_line():
    """Found by the campaign: asn1crypto's error text (hundreds of characters, with
    newlines) went into the message whole."""
    # a length field of 127 bytes: asn1crypto quotes the 306-digit number it asked for
    huge_length = bytes([0x30, 0xFF]) + b"\xff" * 127 + b"\x02\x01\x01"
    with pytest.raises(BadSignature, match="not a DER CMS signature") as info:
        signature.verify(b"x", huge_length, fuzz.fixture().keyring)
    assert "\n" not in str(info.value) and len(str(info.value)) < 300
