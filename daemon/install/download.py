"""An HTTP(S) download as a plain non-seekable stream that survives dropped connections.

The bytes go straight to the bundle reader (no temp copy), so a dropped connection
must not restart the stream: the download reopens with ``Range: bytes=<offset>-`` and
``If-Range: <validator>`` and carries on where it stopped. A server that answers 200
to a Range request (ignores Range, or the bundle changed under us) is detected and
reported, never silently glued on.

Only http and https; redirects are followed by hand so that one to another scheme
(``file:``, ``ftp:``, or https -> http) is refused.

The backend's token travels by one mechanism on every path: :class:`OriginAuth`, a
``requests`` auth object that adds the header only to a URL on the backend's own
origin (scheme, host and port of ``[backend] url``). Redirects are followed here, hop
by hop, so it decides again for every hop: requests' own redirect handling only
strips a header on a host change and lets http -> https on the same host keep it,
which is not the origin rule. The DDI client (``ferry.daemon.backend.ddi``) uses the
same object for its API calls and its "download now, install later" downloads.
"""

from __future__ import annotations

import http.client
import io
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin, urlsplit

import requests
import requests.auth
import urllib3

from ferry.errors import FerryError


class DownloadError(FerryError):
    pass


class HttpStatusError(DownloadError):
    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class RangeNotSupported(DownloadError):
    pass


class BadScheme(DownloadError):
    pass


ALLOWED_SCHEMES = ("http", "https")
RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})


@dataclass(frozen=True)
class DownloadOptions:
    connect_timeout: float = 15.0
    stall_timeout: float = 60.0  # no byte for this long -> reconnect
    retries: int = 6  # consecutive failed attempts before giving up
    backoff: float = 1.0  # first delay, doubled each time, with full jitter
    backoff_max: float = 60.0
    ca_file: str | None = None
    client_cert: str | None = None
    client_key: str | None = None
    max_redirects: int = 5
    headers: tuple[tuple[str, str], ...] = ()
    # Credentials (the DDI TargetToken/GatewayToken) go only to this origin
    # ("https://host:port"): a redirect to a CDN or any other host never sees them.
    auth_header: tuple[str, str] | None = None
    auth_origin: str | None = None

    @property
    def auth(self) -> OriginAuth | None:
        """The one object that decides, per request, whether the credentials go along."""
        if self.auth_header is None or not self.auth_origin:
            return None
        return OriginAuth(self.auth_header[0], self.auth_header[1], self.auth_origin)


def origin(url: str) -> str:
    """scheme://host:port with the default port spelled out, for same-origin checks."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    port = parts.port or {"http": 80, "https": 443}.get(scheme, 0)
    return f"{scheme}://{(parts.hostname or '').lower()}:{port}"


class OriginAuth(requests.auth.AuthBase):
    """Add ``name: value`` to a request only when its URL is on ``origin_url``'s origin.

    Same origin means same scheme, host and port, so an https backend's token never
    goes over plain http, to another port of the same host, or to a look-alike host;
    a backend configured as http (a lab) gets it over http, on that origin only. Any
    header of that name already on a request for another origin is removed. The value
    never shows in ``repr`` (logs, tracebacks).
    """

    def __init__(self, name: str, value: str, origin_url: str) -> None:
        self.name = name
        self._value = value
        self.origin = origin(origin_url)

    def applies_to(self, url: str) -> bool:
        return origin(url) == self.origin

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        if r.url is not None and self.applies_to(r.url):
            r.headers[self.name] = self._value
        else:
            r.headers.pop(self.name, None)
        return r

    def __repr__(self) -> str:
        return f"OriginAuth({self.name}: <hidden> for {self.origin})"


def get_following_redirects(
    session: requests.Session, url: str, headers: dict[str, str], *,
    auth: OriginAuth | None, timeout: Any, verify: bool | str = True,
    cert: tuple[str, str] | str | None = None, max_redirects: int = 5,
) -> requests.Response:
    """GET ``url`` (streamed), following redirects by hand.

    Each hop gets the credentials only if :class:`OriginAuth` says so for that hop's
    URL; a redirect to a scheme other than http(s), or from https down to http, is
    refused (:class:`BadScheme`).
    """
    for _ in range(max_redirects + 1):
        resp = session.get(url, headers=headers, stream=True, allow_redirects=False,
                           verify=verify, cert=cert, timeout=timeout, auth=auth)
        if resp.is_redirect:
            location = resp.headers.get("Location", "")
            resp.close()
            nxt = urljoin(url, location)
            old, new = urlsplit(url).scheme.lower(), urlsplit(nxt).scheme.lower()
            if new not in ALLOWED_SCHEMES or (old == "https" and new != "https"):
                raise BadScheme(
                    f"refusing redirect from {url} to {nxt}: scheme {new!r} not allowed")
            url = nxt
            continue
        return resp
    raise DownloadError(f"too many redirects for {url}")


def check_scheme(url: str) -> None:
    scheme = urlsplit(url).scheme.lower()
    if scheme not in ALLOWED_SCHEMES:
        raise BadScheme(f"refusing {scheme or 'schemeless'} URL {url!r}: only http and https")


class HttpStream(io.RawIOBase):
    """``readinto`` over one resource, resuming by Range after any transport failure.

    ``on_offset(offset, validator)`` is called after each reconnect and every
    ``report_every`` bytes so the journal can keep where we are.
    """

    def __init__(
        self,
        url: str,
        options: DownloadOptions | None = None,
        *,
        session: requests.Session | None = None,
        on_offset: Callable[[int, str | None], None] | None = None,
        report_every: int = 16 << 20,
        sleep: Callable[[float], None] = time.sleep,
        start_offset: int = 0,
        validator: str | None = None,
    ) -> None:
        """``start_offset``/``validator``: continue a download an earlier process began
        (the journal kept both); the server must answer 206 for that validator."""
        super().__init__()
        check_scheme(url)
        self.url = url
        self.opts = options or DownloadOptions()
        self.session = session or requests.Session()
        self.offset = start_offset
        self.size: int | None = None
        self.validator: str | None = validator
        self.reconnects = 0
        self._on_offset = on_offset
        self._report_every = report_every
        self._next_report = report_every
        self._sleep = sleep
        self._resp: requests.Response | None = None
        self._fp: Any = None
        self._eof = False
        self._connect_with_retries(first=True)

    # io.RawIOBase ------------------------------------------------------------

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        if self._eof or len(b) == 0:
            return 0
        failures = 0
        while True:
            try:
                if self._fp is None:
                    self._connect()
                n = int(self._fp.readinto(b) or 0)
                if n == 0 and self.size is not None and self.offset < self.size:
                    raise DownloadError(
                        f"connection closed after {self.offset} of {self.size} bytes")
            except HttpStatusError:
                raise
            except RangeNotSupported:
                raise
            except (OSError, requests.RequestException, http.client.HTTPException,
                    urllib3.exceptions.HTTPError, DownloadError, ValueError) as exc:
                self._drop()
                failures += 1
                if failures > self.opts.retries:
                    raise DownloadError(
                        f"download of {self.url} failed after {failures} attempts at byte "
                        f"{self.offset}: {_why(exc)}") from exc
                self._backoff(failures)
                continue
            if n == 0:
                self._eof = True
                self._drop()
                return 0
            self.offset += n
            if self._on_offset is not None and self.offset >= self._next_report:
                self._next_report = self.offset + self._report_every
                self._on_offset(self.offset, self.validator)
            return n

    def close(self) -> None:
        self._drop()
        super().close()

    # connection handling ---------------------------------------------------------

    def _backoff(self, attempt: int) -> None:
        cap = min(self.opts.backoff_max, self.opts.backoff * (2 ** (attempt - 1)))
        self._sleep(random.uniform(cap / 2, cap))  # jitter, never zero

    def _drop(self) -> None:
        if self._resp is not None:
            self._resp.close()
        self._resp = None
        self._fp = None

    def _connect_with_retries(self, first: bool) -> None:
        failures = 0
        while True:
            try:
                self._connect()
                return
            except (HttpStatusError, RangeNotSupported, BadScheme):
                raise
            except (OSError, requests.RequestException) as exc:
                failures += 1
                if failures > self.opts.retries:
                    raise DownloadError(
                        f"cannot download {self.url} after {failures} attempts: {_why(exc)}"
                    ) from exc
                self._backoff(failures)

    def _request(self, url: str, headers: dict[str, str]) -> requests.Response:
        verify: bool | str = self.opts.ca_file or True
        cert: tuple[str, str] | str | None = None
        if self.opts.client_cert:
            cert = ((self.opts.client_cert, self.opts.client_key) if self.opts.client_key
                    else self.opts.client_cert)
        try:
            return get_following_redirects(
                self.session, url, headers, auth=self.opts.auth, verify=verify, cert=cert,
                timeout=(self.opts.connect_timeout, self.opts.stall_timeout),
                max_redirects=self.opts.max_redirects)
        except BadScheme:
            raise
        except DownloadError:
            raise DownloadError(f"too many redirects for {self.url}") from None

    def _connect(self) -> None:
        headers = {"Accept-Encoding": "identity", **dict(self.opts.headers)}
        resuming = self.offset > 0
        if resuming:
            headers["Range"] = f"bytes={self.offset}-"
            if self.validator:
                headers["If-Range"] = self.validator
        resp = self._request(self.url, headers)
        status = resp.status_code
        if status >= 400:
            resp.close()
            reason = resp.reason or ""
            err = HttpStatusError(f"HTTP {status} {reason} for {self.url}".rstrip(), status)
            if status in RETRY_STATUS:
                raise requests.HTTPError(str(err))
            raise err
        if resuming:
            if status != 206:
                resp.close()
                if self.validator and _validator(resp) not in (None, self.validator):
                    raise RangeNotSupported(
                        f"{self.url} changed on the server during the download "
                        f"(validator {self.validator} -> {_validator(resp)}); start again")
                raise RangeNotSupported(
                    f"{self.url}: server answered {status} to a Range request, so the "
                    f"download cannot resume at byte {self.offset}; use a server with "
                    "Range support")
            content_range = resp.headers.get("Content-Range", "")
            start = _content_range_start(content_range)
            total = content_range.rpartition("/")[2]
            if self.size is None and total.isdigit():
                self.size = int(total)
            if start != self.offset:
                resp.close()
                raise RangeNotSupported(
                    f"{self.url}: server resumed at byte {start}, asked for {self.offset}")
            self.reconnects += 1
        else:
            if status != 200:
                resp.close()
                raise HttpStatusError(f"HTTP {status} for {self.url}: expected 200", status)
            length = resp.headers.get("Content-Length")
            self.size = int(length) if length and length.isdigit() else None
            self.validator = _validator(resp)
        self._resp = resp
        raw = resp.raw
        # http.client's readinto fills our buffer directly (no intermediate bytes) and
        # raises IncompleteRead when the body is cut short.
        self._fp = getattr(raw, "_fp", None) or raw
        if self._on_offset is not None and resuming:
            self._on_offset(self.offset, self.validator)


def _validator(resp: requests.Response) -> str | None:
    etag = resp.headers.get("ETag")
    if etag and not etag.startswith("W/"):  # If-Range needs a strong validator
        return etag
    lm = resp.headers.get("Last-Modified")
    return lm or None


def _content_range_start(value: str) -> int | None:
    # "bytes 100-199/200"
    try:
        unit, _, rest = value.partition(" ")
        if unit.strip().lower() != "bytes":
            return None
        return int(rest.split("-", 1)[0])
    except ValueError:
        return None


def _why(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    if isinstance(exc, requests.exceptions.SSLError):
        if "CERTIFICATE_VERIFY_FAILED" in text:
            return "TLS certificate verify failed (is [backend] ca_file the server's CA?)"
        return ("TLS handshake failed (does the server want a client certificate? "
                "[backend] client_cert/client_key)")
    if isinstance(exc, requests.ConnectTimeout):
        return "connect timeout"
    if isinstance(exc, requests.ReadTimeout | TimeoutError):
        return "stalled (no data within the stall timeout)"
    if isinstance(exc, requests.ConnectionError) and "Caused by" in text:
        text = "connection failed: " + text.split("Caused by", 1)[1].strip(" ()")
    if len(text) > 160:
        text = text[:157] + "..."
    return text


class _Handover(Exception):
    """Queued by the read-ahead thread after its last buffer, once it has stepped aside."""


class Prefetch(io.RawIOBase):
    """Reads ahead of the consumer in its own thread, until the consumer reads ahead itself.

    Receiving from the socket then overlaps with what the consumer does with the bytes
    (the bundle reader's sha256 and copies), which otherwise share one thread. A few
    small buffers are enough: the point is overlap, not a big cache.

    A consumer that asks for half a buffer or more at a time is the slot writer, whose
    own pool of buffers is filled by a thread of its own: a second read-ahead there only
    copies every byte once more (``QueueReader.readinto``, 7 % of ferryd's GIL-held
    samples over 256 MiB installs) and adds two queue hand-overs per buffer. So at the
    first such read this thread stops after the buffers it already holds (they are
    consumed first, in order) and the reads go straight into the consumer's buffer.
    """

    def __init__(self, raw: io.RawIOBase, *, chunk: int = 512 << 10, depth: int = 1) -> None:
        super().__init__()
        import queue
        import threading

        from ferry.daemon.install.bufqueue import QueueReader

        self._raw = raw
        self._big = chunk // 2  # a read this large comes from a consumer with its own pool
        self._direct = False
        self._full: queue.Queue[object] = queue.Queue()
        self._free: queue.Queue[bytearray] = queue.Queue()
        for _ in range(depth + 1):
            self._free.put(bytearray(chunk))
        self._reader = QueueReader(self._full, self._free.put)
        self._stop = threading.Event()
        self._step_aside = threading.Event()
        self._thread = threading.Thread(target=self._run, name="download", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import queue

        from ferry.daemon.install.bufqueue import EOF

        try:
            while not self._stop.is_set():
                if self._step_aside.is_set():
                    self._full.put(_Handover())
                    return
                try:
                    buf = self._free.get(timeout=0.2)
                except queue.Empty:
                    continue
                if self._step_aside.is_set():
                    self._full.put(_Handover())
                    return
                n = self._raw.readinto(buf) or 0
                if n == 0:
                    self._full.put(EOF)
                    return
                self._full.put((buf, n))
        except BaseException as exc:  # handed to the consumer, in order
            self._full.put(exc)

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        if self._direct:
            return int(self._raw.readinto(b) or 0)
        if len(b) >= self._big:
            self._step_aside.set()
        try:
            return self._reader.readinto(b)
        except _Handover:
            # every byte the thread read has been consumed; it has ended
            self._thread.join()
            self._direct = True
            return int(self._raw.readinto(b) or 0)

    def close(self) -> None:
        self._stop.set()
        self._raw.close()
        super().close()
