"""ferry's CBOR subset against cbor2 (an independent implementation)."""

from __future__ import annotations

from typing import Any

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ferry.proxy.smp import cbor

values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.binary(max_size=300) | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=5),
    max_leaves=20,
)


@settings(max_examples=200, deadline=None)
@given(values)
def test_roundtrip_both_ways(value: Any) -> None:
    assert cbor2.loads(cbor.dumps(value)) == value
    assert cbor.loads(cbor2.dumps(value)) == value


def test_indefinite_lengths_tags_and_floats() -> None:
    # {_ "a": [_ 1, 2], "b": (_ h'01', h'02')} plus a tagged int and a half float
    data = bytes.fromhex("bf6161" "9f0102ff" "6162" "5f41014102ff" "6163" "c1" "01"
                         "6164" "f93c00" "ff")
    assert cbor.loads(data) == {"a": [1, 2], "b": b"\x01\x02", "c": 1, "d": 1.0}


@pytest.mark.parametrize("bad", [b"\xa1\x61", b"\x5a\x00\x00\x00\x10", b"\xa0\x00", b"\xff"])
def test_malformed_raises(bad: bytes) -> None:
    with pytest.raises(cbor.CborError):
        cbor.loads(bad)
