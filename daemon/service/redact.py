"""URLs as ferryd shows them on the bus: no credentials, no query string, no fragment.

``GetStatus``, ``ListTargets`` and the properties are open to every local user, and the
last deployment's source URL or an error quoting it can carry ``user:password@`` or a
pre-signed query (``?X-Amz-Signature=...``, ``?token=...``). Everyone on the bus gets the
same stripped form, root and group ``ferry`` included: ``LastError`` and the
``PropertiesChanged`` / ``TargetChanged`` signals reach every listener at once, so a
per-caller view could not cover them, and whoever needs the whole URL can read the
journal as root (``ferry --config /etc/ferry/ferry.toml status``).

Every string is scanned, not only the fields named ``source``: error messages quote
URLs too (a download error, a DDI link).
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

# scheme://, then anything up to whitespace, a quote or an angle bracket (how URLs end
# inside messages and reprs)
_URL = re.compile(r"\b[A-Za-z][A-Za-z0-9+.\-]{0,15}://[^\s'\"<>]*")


def strip_url(url: str) -> str:
    """``scheme://host[:port]/path``: user info, query and fragment dropped."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:  # not a URL we can take apart: show only its scheme
        return url.split("://", 1)[0] + "://[redacted]"
    if ":" in host:
        host = f"[{host}]"  # IPv6 literal
    netloc = f"{host}:{port}" if port is not None else host
    return f"{parts.scheme}://{netloc}{parts.path}"


def _trailing(url: str) -> int:
    """How many characters at the end of a match are the sentence's, not the URL's:
    "(see http://h/x)." ends the URL before ")."."""
    n = len(url)
    while n:
        c = url[n - 1]
        if c in ".,;:!?" or (c == ")" and url[:n].count(")") > url[:n].count("(")) or (
                c == "]" and url[:n].count("]") > url[:n].count("[")):
            n -= 1
            continue
        break
    return len(url) - n


def _replace(match: re.Match[str]) -> str:
    url = match.group(0)
    cut = _trailing(url)
    return strip_url(url[:len(url) - cut]) + url[len(url) - cut:]


def text(value: str) -> str:
    """``value`` with every URL in it stripped."""
    if "://" not in value:
        return value
    return _URL.sub(_replace, value)


def deep(value: Any) -> Any:
    """A JSON-like structure with every string (keys included) passed through ``text``."""
    if isinstance(value, str):
        return text(value)
    if isinstance(value, dict):
        return {deep(k): deep(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [deep(v) for v in value]
    return value
