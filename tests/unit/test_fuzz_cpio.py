"""Bounded fuzz run (CI) over the cpio reader and the whole bundle reader with zstd/gzip
behind it: any input ends in success or a one-line FerryError, never another exception.

The targets and strategies live in bench/fuzz.py (its longer campaign uses fresh seeds);
here each runs a fixed number of derandomized examples, so CI is deterministic.
"""

from __future__ import annotations

import io

import pytest
from fuzz_campaign import fuzz
from hypothesis import given, settings

from ferry.packaging.errors import BadHeader
from ferry.packaging.reader import BundleReader


@settings(max_examples=400, deadline=None, derandomize=True, database=None)
@given(fuzz.TARGETS["cpio"].strategy)
def test_cpio_reader_ends_in_success_or_one_line_error(data):
    fuzz.TARGETS["cpio"].run(data)


@settings(max_examples=150, deadline=None, derandomize=True, database=None)
@given(fuzz.TARGETS["bundle"].strategy)
def test_signed_bundle_broken_after_its_head(data):
    fuzz.TARGETS["bundle"].run(data)


def test_the_unbroken_fixture_bundle_reads_completely():
    """The mutation base must itself be valid, or the bundle target tests nothing past
    the signature."""
    fx = fuzz.fixture()
    fuzz.TARGETS["bundle"].run(fx.bundle)
    reader = BundleReader(io.BytesIO(fx.bundle), fx.keyring)
    names = [entry.filename for entry, stream in reader.images() if stream.read() is not None]
    assert names == ["rootfs.img.zst", "mcu.bin.gz", "raw.bin"]


def test_a_failure_outside_ferry_errors_is_caught_by_the_property():
    """The property is not vacuous: a non-FerryError or a multi-line message fails it."""
    def multi_line() -> None:
        raise BadHeader("line one\nline two")

    with pytest.raises(AssertionError, match="not one line"):
        fuzz.expected(multi_line)
    with pytest.raises(KeyError):
        fuzz.expected(dict().__getitem__, "x")

    def quoting() -> None:
        raise BadHeader("no newc cpio magic at byte 0 (found b'root:$')")

    assert fuzz.expected(quoting) is None  # text formats may quote what they read
    with pytest.raises(AssertionError, match="quotes bytes"):
        fuzz.expected_binary(quoting)  # binary formats must not
