"""HttpStream against a local server that misbehaves on purpose."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from install_http import Server

from ferry.daemon.install.download import (
    BadScheme,
    DownloadError,
    DownloadOptions,
    HttpStatusError,
    HttpStream,
    RangeNotSupported,
)

FAST = DownloadOptions(retries=3, backoff=0.01, backoff_max=0.02, stall_timeout=2,
                       connect_timeout=5)


def _no_sleep(_s: float) -> None:
    pass


def _read_all(stream: HttpStream) -> bytes:
    out = bytearray()
    buf = bytearray(1 << 16)
    while n := stream.readinto(buf):
        out += buf[:n]
    return bytes(out)


@pytest.fixture
def payload(tmp_path: Path) -> Path:
    p = tmp_path / "bundle.swu"
    p.write_bytes(os.urandom(600_000))
    return p


def test_plain_download_keeps_validator(payload: Path) -> None:
    with Server(payload) as srv:
        s = HttpStream(srv.url, FAST, sleep=_no_sleep)
        assert _read_all(s) == payload.read_bytes()
        assert s.size == 600_000
        assert s.validator == '"v1"'
        assert s.reconnects == 0


def test_dropped_connection_resumes_with_range_and_if_range(payload: Path) -> None:
    offsets: list[tuple[int, str | None]] = []
    with Server(payload) as srv:
        srv.mode = "drop-once"
        srv.cut_at = 123_457
        s = HttpStream(srv.url, FAST, sleep=_no_sleep,
                       on_offset=lambda o, v: offsets.append((o, v)))
        data = _read_all(s)
    assert hashlib.sha256(data).digest() == hashlib.sha256(payload.read_bytes()).digest()
    assert s.reconnects == 1
    second = srv.requests[1][1]
    assert second["Range"] == "bytes=123457-"
    assert second["If-Range"] == '"v1"'
    assert offsets[0] == (123_457, '"v1"')  # the journal hears where we resumed


def test_server_ignoring_range_is_detected(payload: Path) -> None:
    with Server(payload) as srv:
        srv.script = ["drop-once", "ignore-range"]
        srv.cut_at = 50_000
        s = HttpStream(srv.url, FAST, sleep=_no_sleep)
        with pytest.raises(RangeNotSupported, match="answered 200 to a Range request"):
            _read_all(s)
        assert s.offset == 50_000


def test_changed_bundle_during_resume_is_refused(payload: Path) -> None:
    with Server(payload) as srv:
        srv.mode = "drop-once"
        srv.cut_at = 10_000
        s = HttpStream(srv.url, FAST, sleep=_no_sleep)
        srv.etag = '"v2"'  # If-Range no longer matches: server sends the whole new file
        with pytest.raises(RangeNotSupported, match="changed on the server"):
            _read_all(s)


def test_404_is_immediate_and_clear(payload: Path) -> None:
    with Server(payload) as srv:
        srv.mode = "status:404"
        with pytest.raises(HttpStatusError, match="HTTP 404") as ei:
            HttpStream(srv.url, FAST, sleep=_no_sleep)
        assert ei.value.status == 404
        assert len(srv.requests) == 1  # no pointless retries


def test_500_is_retried_then_reported(payload: Path) -> None:
    sleeps: list[float] = []
    with Server(payload) as srv:
        srv.mode = "status:500"
        with pytest.raises(DownloadError, match=r"after 4 attempts.*HTTP 500"):
            HttpStream(srv.url, FAST, sleep=sleeps.append)
        assert len(srv.requests) == 4
    assert len(sleeps) == 3 and all(s > 0 for s in sleeps)  # backoff with jitter


def test_stalled_server_hits_stall_timeout(payload: Path) -> None:
    opts = DownloadOptions(retries=1, backoff=0.01, stall_timeout=0.5)
    with Server(payload) as srv:
        srv.mode = "slow"
        srv.stall = 5
        s = HttpStream(srv.url, opts, sleep=_no_sleep)
        with pytest.raises(DownloadError, match=r"stalled|timed out"):
            _read_all(s)


def test_truncated_responses_resume_until_complete(payload: Path) -> None:
    with Server(payload) as srv:
        srv.mode = "truncate"
        srv.cut_at = 100_000
        s = HttpStream(srv.url, FAST, sleep=_no_sleep)
        assert _read_all(s) == payload.read_bytes()
        assert s.reconnects == 5


def test_truncated_then_gone_fails_after_retries(payload: Path) -> None:
    with Server(payload) as srv:
        srv.script = ["truncate"]
        srv.mode = "status:503"
        srv.cut_at = 1000
        s = HttpStream(srv.url, FAST, sleep=_no_sleep)
        with pytest.raises(DownloadError, match="failed after 4 attempts at byte 1000"):
            _read_all(s)


def test_redirect_to_other_scheme_is_refused(payload: Path) -> None:
    with Server(payload) as srv:
        srv.mode = "redirect:file:///etc/passwd"
        with pytest.raises(BadScheme, match="file"):
            HttpStream(srv.url, FAST, sleep=_no_sleep)


def test_redirect_within_http_is_followed(payload: Path) -> None:
    with Server(payload) as real, Server(payload) as hop:
        hop.mode = f"redirect:{real.url}"
        s = HttpStream(hop.url, FAST, sleep=_no_sleep)
        assert _read_all(s) == payload.read_bytes()


def test_token_goes_to_the_backend_origin_only(payload: Path) -> None:
    """The DDI token rides along to the backend's own host (and on every hop that stays
    there), never to another origin: not on a redirect to a CDN, not on a plain URL."""
    import dataclasses

    with Server(payload) as backend, Server(payload) as cdn:
        base = backend.url.rsplit("/", 1)[0]
        opts = dataclasses.replace(FAST, auth_header=("Authorization", "TargetToken t0k"),
                                   auth_origin=base + "/DEFAULT")
        assert _read_all(HttpStream(backend.url, opts, sleep=_no_sleep)) == \
            payload.read_bytes()
        backend.script = [f"redirect:{cdn.url}"]
        assert _read_all(HttpStream(backend.url, opts, sleep=_no_sleep)) == \
            payload.read_bytes()
        _read_all(HttpStream(cdn.url, opts, sleep=_no_sleep))
    sent = [h.get("Authorization") for _, h in backend.requests]
    assert sent == ["TargetToken t0k", "TargetToken t0k"]
    assert [h.get("Authorization") for _, h in cdn.requests] == [None, None]


def test_origin_compares_scheme_host_and_port() -> None:
    from ferry.daemon.install.download import origin

    assert origin("https://HAWKBIT.example/DEFAULT/x") == "https://hawkbit.example:443"
    assert origin("https://hawkbit.example:443/") == origin("https://hawkbit.example/a")
    assert origin("http://hawkbit.example/") != origin("https://hawkbit.example/")
    assert origin("https://hawkbit.example:8443/") != origin("https://hawkbit.example/")
    assert origin("https://hawkbit.example.evil.com/") != origin("https://hawkbit.example/")


def test_only_http_and_https() -> None:
    with pytest.raises(BadScheme, match="only http and https"):
        HttpStream("ftp://127.0.0.1/x.swu", FAST)


def _tls_files(d: Path) -> dict[str, Path]:
    """A CA, a server cert for 127.0.0.1 and a client cert, all from that CA."""
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = dt.datetime.now(dt.UTC)

    def cert(cn: str, key: ec.EllipticCurvePrivateKey, issuer: tuple[x509.Certificate,
             ec.EllipticCurvePrivateKey] | None, **ext: object) -> x509.Certificate:
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
        b = (x509.CertificateBuilder().subject_name(name)
             .issuer_name(issuer[0].subject if issuer else name)
             .public_key(key.public_key()).serial_number(x509.random_serial_number())
             .not_valid_before(now - dt.timedelta(days=1))
             .not_valid_after(now + dt.timedelta(days=1)))
        b = b.add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), True)
        if "san" in ext:
            b = b.add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        if "eku" in ext:
            b = b.add_extension(x509.ExtendedKeyUsage([ext["eku"]]), False)  # type: ignore[list-item]
        return b.sign(issuer[1] if issuer else key, hashes.SHA256())

    out: dict[str, Path] = {}
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = cert("test CA", ca_key, None)
    for name, kw in (("server", {"san": 1, "eku": ExtendedKeyUsageOID.SERVER_AUTH}),
                     ("client", {"eku": ExtendedKeyUsageOID.CLIENT_AUTH})):
        key = ec.generate_private_key(ec.SECP256R1())
        c = cert(name, key, (ca, ca_key), **kw)
        out[f"{name}.crt"] = d / f"{name}.crt"
        out[f"{name}.key"] = d / f"{name}.key"
        out[f"{name}.crt"].write_bytes(c.public_bytes(serialization.Encoding.PEM))
        out[f"{name}.key"].write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()))
    out["ca.crt"] = d / "ca.crt"
    out["ca.crt"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    return out


def test_mutual_tls(payload: Path, tmp_path: Path) -> None:
    import ssl

    f = _tls_files(tmp_path)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(f["server.crt"], f["server.key"])
    ctx.load_verify_locations(f["ca.crt"])
    ctx.verify_mode = ssl.CERT_REQUIRED  # the gateway must show its client certificate
    with Server(payload) as srv:
        srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
        url = srv.url.replace("http://", "https://")
        ok = DownloadOptions(retries=0, ca_file=str(f["ca.crt"]),
                             client_cert=str(f["client.crt"]), client_key=str(f["client.key"]))
        assert _read_all(HttpStream(url, ok, sleep=_no_sleep)) == payload.read_bytes()
        no_client = DownloadOptions(retries=0, ca_file=str(f["ca.crt"]))
        with pytest.raises(DownloadError):  # TLS alert at handshake or first read
            _read_all(HttpStream(url, no_client, sleep=_no_sleep))
        untrusted = DownloadOptions(retries=0, client_cert=str(f["client.crt"]),
                                    client_key=str(f["client.key"]))
        with pytest.raises(DownloadError, match="TLS certificate verify failed"):
            HttpStream(url, untrusted, sleep=_no_sleep)
