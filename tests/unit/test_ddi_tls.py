"""The DDI client over HTTPS with a private CA, and with mTLS (client certificate)."""

from __future__ import annotations

import datetime as dt
import ipaddress
import ssl
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ferry.daemon.backend import ddi

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from ddi_server import DdiFixture, validate_exchange


def _cert(cn, key, issuer=None, *, ca=False, server=False):
    now = dt.datetime.now(dt.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    b = (x509.CertificateBuilder().subject_name(name)
         .issuer_name(issuer[0].subject if issuer else name)
         .public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(now - dt.timedelta(minutes=5))
         .not_valid_after(now + dt.timedelta(days=1))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if server:
        b = b.add_extension(x509.SubjectAlternativeName(
            [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        b = b.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
    elif not ca:
        b = b.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), False)
    return b.sign(issuer[1] if issuer else key, hashes.SHA256())


def _write(path, cert, key=None):
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    if key is not None:
        path.with_suffix(".key").write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()))
    return path


@pytest.fixture
def pki(tmp_path):
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert("ddi test CA", ca_key, ca=True)
    srv_key = ec.generate_private_key(ec.SECP256R1())
    srv = _cert("127.0.0.1", srv_key, (ca, ca_key), server=True)
    dev_key = ec.generate_private_key(ec.SECP256R1())
    dev = _cert("gw1", dev_key, (ca, ca_key))
    return {"ca": _write(tmp_path / "ca.pem", ca),
            "server": _write(tmp_path / "server.pem", srv, srv_key),
            "device": _write(tmp_path / "device.pem", dev, dev_key)}


def _server(pki, *, mtls):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(pki["server"], pki["server"].with_suffix(".key"))
    if mtls:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(pki["ca"])
    return DdiFixture(controller_id="gw1").start(ctx)


def test_https_with_private_ca(pki):
    s = _server(pki, mtls=False)
    try:
        c = ddi.DdiClient(ddi.DdiSettings(url=s.url, controller_id="gw1",
                                          ca_file=str(pki["ca"])),
                          on_exchange=validate_exchange)
        assert c.poll().sleep == 1.0
        untrusting = ddi.DdiClient(ddi.DdiSettings(url=s.url, controller_id="gw1",
                                                   ca_file=str(pki["device"])))
        with pytest.raises(ddi.DdiError, match="cannot reach"):
            untrusting.poll()
    finally:
        s.stop()


def test_mtls_client_certificate(pki):
    s = _server(pki, mtls=True)
    try:
        c = ddi.DdiClient(ddi.DdiSettings(
            url=s.url, controller_id="gw1", ca_file=str(pki["ca"]),
            client_cert=str(pki["device"]), client_key=str(pki["device"].with_suffix(".key"))),
            on_exchange=validate_exchange)
        c.poll()
        c.put_config_data({"ferry.overall": "ok"})
        assert s.config_data == {"ferry.overall": "ok"}
        subjects = [dict(x[0] for x in cert["subject"]) for cert in s.client_certs if cert]
        assert subjects and subjects[-1]["commonName"] == "gw1"
        anonymous = ddi.DdiClient(ddi.DdiSettings(url=s.url, controller_id="gw1",
                                                  ca_file=str(pki["ca"])))
        with pytest.raises(ddi.DdiError, match="cannot reach"):
            anonymous.poll()
    finally:
        s.stop()
