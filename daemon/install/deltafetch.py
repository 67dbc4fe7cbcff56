"""Byte ranges of one bundle URL over one kept-alive connection, for delta installs.

Every request names the bundle's validator (``If-Range``): a bundle republished between
two requests makes the server answer 200 with the whole new file, which is refused
instead of mixing chunks of two bundles (the chunk hashes would catch it too, one
chunk later). The DDI token rules are the downloader's: the same ``OriginAuth`` decides
for every request and every redirect hop (download.get_following_redirects).

A dropped connection or a 5xx/429 answer is retried with the downloader's backoff, the
range reopened at the first byte not yet received, up to ``retries`` failures in a row.
"""

from __future__ import annotations

import http.client
import random
import time
from collections.abc import Callable
from typing import Any

import requests
import urllib3

from ferry.daemon.install.download import (
    RETRY_STATUS,
    DownloadError,
    DownloadOptions,
    HttpStatusError,
    RangeNotSupported,
    get_following_redirects,
)

REQUEST_OVERHEAD = 400  # bytes a ranged request and its response headers cost, about


class RangeFetcher:
    """``get(start, length)`` returns exactly those bytes of the bundle at ``url``."""

    def __init__(self, url: str, options: DownloadOptions | None, *,
                 validator: str | None, session: requests.Session | None = None,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.url = url
        self.opts = options or DownloadOptions()
        self.validator = validator
        self.session = session or requests.Session()
        self.requests = 0
        self.bytes = 0  # body bytes received
        self._sleep = sleep

    def _open(self, start: int, end: int) -> requests.Response:
        headers = {"Accept-Encoding": "identity", "Range": f"bytes={start}-{end}",
                   **dict(self.opts.headers)}
        if self.validator:
            headers["If-Range"] = self.validator
        verify: bool | str = self.opts.ca_file or True
        cert: tuple[str, str] | str | None = None
        if self.opts.client_cert:
            cert = ((self.opts.client_cert, self.opts.client_key) if self.opts.client_key
                    else self.opts.client_cert)
        self.requests += 1
        resp = get_following_redirects(
            self.session, self.url, headers, auth=self.opts.auth, verify=verify, cert=cert,
            timeout=(self.opts.connect_timeout, self.opts.stall_timeout),
            max_redirects=self.opts.max_redirects)
        status = resp.status_code
        if status >= 400:
            resp.close()
            err = HttpStatusError(f"HTTP {status} {resp.reason or ''} for {self.url}".rstrip(),
                                  status)
            if status in RETRY_STATUS:
                raise requests.HTTPError(str(err))
            raise err
        if status != 206:
            resp.close()
            raise RangeNotSupported(
                f"{self.url}: server answered {status} to a Range request for bytes "
                f"{start}-{end} (the bundle changed, or the server ignores Range)")
        got = resp.headers.get("Content-Range", "")
        if not got.lower().startswith(f"bytes {start}-"):
            resp.close()
            raise RangeNotSupported(f"{self.url}: asked for bytes {start}-{end}, server sent "
                                    f"{got[:60] or 'no Content-Range'}")
        return resp

    def ranges(self, start: int, end: int) -> Any:
        """Yield the bytes ``start``..``end`` (inclusive) in pieces as they arrive; the
        consumer's ``send`` is not used. Resumes inside the range after a failure."""
        pos = start
        failures = 0
        while pos <= end:
            try:
                resp = self._open(pos, end)
                whole = resp.headers.get("Content-Length") == str(end - pos + 1)
                try:
                    raw = resp.raw
                    while pos <= end:
                        data = raw.read(min(1 << 20, end - pos + 1))
                        if not data:
                            raise DownloadError(f"connection closed at byte {pos} of range "
                                                f"{start}-{end}")
                        pos += len(data)
                        self.bytes += len(data)
                        failures = 0
                        yield data
                    # the body is complete: let the connection go back to the pool
                    # (requests closes it otherwise) for the next range
                    resp._content_consumed = whole  # type: ignore[attr-defined]
                finally:
                    resp.close()
            except (HttpStatusError, RangeNotSupported):
                raise
            except (OSError, requests.RequestException, http.client.HTTPException,
                    urllib3.exceptions.HTTPError, DownloadError) as exc:
                failures += 1
                if failures > self.opts.retries:
                    raise DownloadError(
                        f"range {pos}-{end} of {self.url} failed after {failures} attempts: "
                        f"{str(exc)[:120] or type(exc).__name__}") from exc
                cap = min(self.opts.backoff_max, self.opts.backoff * (2 ** (failures - 1)))
                self._sleep(random.uniform(cap / 2, cap))

    def get(self, start: int, length: int) -> bytes:
        return b"".join(self.ranges(start, start + length - 1))

    def close(self) -> None:
        self.session.close()
