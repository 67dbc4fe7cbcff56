"""Bounded fuzz run (CI) over the DDI client's JSON handling: whatever JSON a server
sends (hawkBit's documented bodies with parts replaced or removed, or any JSON value),
parse_poll, parse_deployment and parse_cancel end in a dataclass or a one-line DdiError.
Targets live in bench/fuzz.py; derandomized here so CI is deterministic.
"""

from __future__ import annotations

from fuzz_campaign import fuzz
from hypothesis import given, settings

from ferry.errors import FerryError


def test_the_documented_bodies_parse():
    """The mutation bases are valid, so the mutants probe past the first check."""
    ddi = fuzz.ddi_module()
    poll = ddi.parse_poll(fuzz.POLL_BODY)
    assert poll.sleep == 300.0 and poll.deployment_href.endswith("/deploymentBase/7?c=1")
    dep = ddi.parse_deployment(fuzz.DEPLOYMENT_BODY)
    assert dep.chunks[0].artifacts[0].size == 1234
    assert ddi.parse_cancel(fuzz.CANCEL_BODY).stop_id == "7"
    assert issubclass(ddi.DdiError, FerryError)


# Found by the campaign and fixed in daemon/backend/ddi.py: a JSON value of the wrong
# type where a dict or string is expected raised AttributeError or TypeError instead of
# DdiError (config, polling, sleep, chunks, artifacts, metadata entries, hashes), and a
# DdiError quoted a whole server value (deployment.download) without cutting it.
@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(fuzz.TARGETS["ddi"].strategy)
def test_ddi_json_ends_in_a_dataclass_or_one_line_error(body):
    fuzz.TARGETS["ddi"].run(body)
