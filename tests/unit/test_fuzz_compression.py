"""Bounded fuzz run (CI) over decompression alone: mutated zstd frames (ferry's own frame
splitter in zstdframes.py) and gzip members, and random bytes, read through the capped
stream with read() and readinto(): success or a one-line BundleError that quotes no
payload bytes. Targets live in bench/fuzz.py; derandomized here so CI is deterministic.
"""

from __future__ import annotations

import io

from fuzz_campaign import fuzz
from hypothesis import given, settings

from ferry.packaging.compression import decompress_stream


def test_the_unbroken_images_decompress():
    """The mutation bases decode in full under the target's cap, so mutants probe the
    decoders and not only the first check."""
    sizes = []
    for kind, blob in fuzz.fixture().compressed:
        sizes.append(len(decompress_stream(kind, io.BytesIO(blob), max_output=64 << 10).read()))
    assert sizes == [24576, 24576, 480]


@settings(max_examples=400, deadline=None, derandomize=True, database=None)
@given(fuzz.TARGETS["decompress"].strategy)
def test_compressed_image_ends_in_data_or_one_line_error(item):
    fuzz.TARGETS["decompress"].run(item)
