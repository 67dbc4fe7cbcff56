"""Bounded fuzz run (CI) over the libconfig parser and the sw-description model: any text
ends in a document or a one-line BadDescription; a parsed document survives dumps/loads
unchanged. Targets live in bench/fuzz.py; derandomized here so CI is deterministic.
"""

from __future__ import annotations

from fuzz_campaign import fuzz
from hypothesis import given, settings

from ferry.packaging import libconfig


@settings(max_examples=400, deadline=None, derandomize=True, database=None)
@given(fuzz.TARGETS["libconfig"].strategy)
def test_libconfig_text_ends_in_a_document_or_one_line_error(text):
    fuzz.TARGETS["libconfig"].run(text)


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(fuzz.TARGETS["description"].strategy)
def test_description_bytes_end_in_a_model_or_one_line_error(data):
    fuzz.TARGETS["description"].run(data)


def test_infinite_floats_round_trip():
    """Found by the campaign: 1e999 parsed to inf, and dumps wrote 'inf', which no
    libconfig reads back."""
    doc = libconfig.loads("a = 1e999; b = [-1e999];")
    assert libconfig.loads(libconfig.dumps(doc)) == doc
