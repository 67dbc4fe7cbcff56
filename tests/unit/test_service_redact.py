"""What every local user sees of URLs on ferryd's bus: no credentials, query or fragment
(issue #16, GetStatus)."""

from __future__ import annotations

import pytest

from ferry.daemon.service import redact


@pytest.mark.parametrize("url, shown", [
    ("https://user:pa55@hawkbit.example:8443/a/b.swu?sig=XYZ#f",
     "https://hawkbit.example:8443/a/b.swu"),
    ("http://token@10.0.0.1/x", "http://10.0.0.1/x"),
    ("https://[fe80::1]:8080/p?q=1", "https://[fe80::1]:8080/p"),
    ("https://s3.example/b?X-Amz-Credential=AKIA&X-Amz-Signature=f00", "https://s3.example/b"),
    ("https://plain.example/bundle.swu", "https://plain.example/bundle.swu"),
])
def test_strip_url(url: str, shown: str) -> None:
    assert redact.strip_url(url) == shown


def test_urls_inside_error_messages_are_stripped_in_place() -> None:
    error = ("download of 'https://u:secret@cdn.example/gw.swu?token=abc' failed: "
             "HTTPSConnectionPool(host='cdn.example'): Max retries (url: "
             "https://u:secret@cdn.example/gw.swu?token=abc)")
    out = redact.text(error)
    assert "secret" not in out and "token=abc" not in out
    assert out.startswith("download of 'https://cdn.example/gw.swu' failed: ")
    assert out.endswith("(url: https://cdn.example/gw.swu)")


def test_text_without_urls_is_untouched() -> None:
    for plain in ("", "slot B: hash mismatch", "key=value?x", "see ferry status"):
        assert redact.text(plain) == plain


def test_a_url_that_cannot_be_parsed_shows_only_its_scheme() -> None:
    assert redact.text("got http://u:p@[::1 bad") == "got http://[redacted] bad"


def test_deep_walks_keys_lists_and_nested_dicts() -> None:
    doc = {"install": {"last": {"source": "http://a:b@h/x?y", "id": 3,
                                "info": {"resume_failed": "ftp://a:b@h/z"}}},
           "targets": [{"message": "from http://h/f#tok"}], "ok": True, "n": None}
    assert redact.deep(doc) == {
        "install": {"last": {"source": "http://h/x", "id": 3,
                             "info": {"resume_failed": "ftp://h/z"}}},
        "targets": [{"message": "from http://h/f"}], "ok": True, "n": None}
