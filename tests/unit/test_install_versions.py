from __future__ import annotations

import pytest

from ferry.daemon.versions import BadVersion, compare, parse_version


@pytest.mark.parametrize(("a", "b", "want"), [
    ("1.2.3", "1.2.3", 0), ("1.2", "1.2.0", 0), ("v1.2.3", "1.2.3", 0),
    ("1.2.10", "1.2.9", 1), ("2.0.0", "10.0.0", -1), ("1.0.0-rc1", "1.0.0", -1),
    ("1.0.0-rc2", "1.0.0-rc10", -1), ("1.0.0-alpha", "1.0.0-beta", -1),
    ("2024.05.1", "2024.5.0", 1), ("1.0.0+build7", "1.0.0+build9", 0),
])
def test_compare(a: str, b: str, want: int) -> None:
    assert compare(a, b) == want
    assert compare(b, a) == -want


@pytest.mark.parametrize("bad", ["", "latest", "1..2", "1.x"])
def test_garbage_is_refused(bad: str) -> None:
    with pytest.raises(BadVersion, match="not of the form"):
        parse_version(bad)
