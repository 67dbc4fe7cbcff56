"""A SoftHSM2 token in a temp dir, with signing keys the way an integrator provisions them.

Debian's softhsm2 is the token and ``softhsm2-util`` the provisioning tool, so the
token, its object store and the import path are the real ones, not ferry's reading of
PKCS#11. Two ways a key reaches a token are covered:

- imported: an RSA key made on the host, imported with ``softhsm2-util --import`` (as
  when a key held in escrow is loaded into a new HSM); its certificate stays a file;
- generated: an EC P-256 key pair generated inside the token (python-pkcs11), its public
  key certified by the test CA, and the certificate stored on the token beside it, so
  ``--key pkcs11:...`` needs no ``--cert``.

The gateway side gets AES-256 secret keys (``aes-gw``, ``aes-other``), created sensitive
and not extractable, as a gateway's bundle key is provisioned: the token decrypts, and
not even the test can read the key back.

SOFTHSM2_CONF is set in the process environment for the token's lifetime: ferry
initializes and finalizes the module per operation (packaging/pkcs11.py), and each
initialization reads this configuration; the fixture goes through the same helper, as
a second load of SoftHSM2 after an unload crashes it.
"""

from __future__ import annotations

import datetime as dt
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ferry.packaging.devpki import DevPki, write_dev_pki
from ferry.packaging.pkcs11 import initialized_module

MODULE = "/usr/lib/softhsm/libsofthsm2.so"
AES_GW = bytes(range(32))  # = test_bundle_encrypt.KEY's key: bundles made with that file
AES_OTHER = bytes(32)
TOKEN = "ferry-build"
PIN = "1234"
SO_PIN = "87654321"


@dataclass(frozen=True)
class Token:
    root: Path
    conf: Path
    rsa: DevPki  # CA (keyring), RSA signer: key imported into the token, cert a file
    ec_cert: Path  # EC signer generated in the token, cert also stored on it
    pin_file: Path

    def uri(self, obj: str, *, pin: str | None = PIN, extra: str = "") -> str:
        query = f"module-path={MODULE}"
        if pin is not None:
            query += f"&pin-value={pin}"
        return f"pkcs11:token={TOKEN};object={obj}{extra}?{query}"

    def key_uri(self, obj: str) -> str:
        """A gateway key's URI, as in ferry.toml: the PIN from a file."""
        return f"pkcs11:token={TOKEN};object={obj}?module-path={MODULE}&pin-source={self.pin_file}"


def _util(conf: Path, *args: str) -> None:
    env = dict(os.environ, SOFTHSM2_CONF=str(conf))
    subprocess.run(["softhsm2-util", *args], env=env, check=True, capture_output=True)


def _generate_ec(root: Path, pki: DevPki) -> Path:
    """EC P-256 key pair generated in the token; the CA certifies its public key."""
    import pkcs11
    from pkcs11.util.ec import encode_ec_public_key, encode_named_curve_parameters

    with initialized_module(MODULE) as lib:
        token = lib.get_token(token_label=TOKEN)
        with token.open(user_pin=PIN, rw=True) as session:
            params = session.create_domain_parameters(
                pkcs11.KeyType.EC,
                {pkcs11.Attribute.EC_PARAMS: encode_named_curve_parameters("secp256r1")},
                local=True,
            )
            public, _private = params.generate_keypair(
                store=True, label="ec-signer", id=b"\x02"
            )
            pub = serialization.load_der_public_key(encode_ec_public_key(public))
            assert isinstance(pub, ec.EllipticCurvePublicKey)
            cert = _certify(pub, pki)
            der = cert.public_bytes(serialization.Encoding.DER)
            session.create_object(
                {
                    pkcs11.Attribute.CLASS: pkcs11.ObjectClass.CERTIFICATE,
                    pkcs11.Attribute.CERTIFICATE_TYPE: pkcs11.CertificateType.X_509,
                    pkcs11.Attribute.TOKEN: True,
                    pkcs11.Attribute.LABEL: "ec-signer",
                    pkcs11.Attribute.ID: b"\x02",
                    pkcs11.Attribute.SUBJECT: cert.subject.public_bytes(),
                    pkcs11.Attribute.VALUE: der,
                }
            )
    path = root / "ec-signer.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def _import_aes(label: str, key_id: bytes, value: bytes) -> None:
    import pkcs11
    from pkcs11 import Attribute as A

    with initialized_module(MODULE) as lib:
        token = lib.get_token(token_label=TOKEN)
        with token.open(user_pin=PIN, rw=True) as session:
            session.create_object(
                {
                    A.CLASS: pkcs11.ObjectClass.SECRET_KEY,
                    A.KEY_TYPE: pkcs11.KeyType.AES,
                    A.VALUE: value,
                    A.TOKEN: True,
                    A.LABEL: label,
                    A.ID: key_id,
                    A.SENSITIVE: True,
                    A.EXTRACTABLE: False,
                    A.DECRYPT: True,
                    A.ENCRYPT: False,
                }
            )


def _certify(public: ec.EllipticCurvePublicKey, pki: DevPki) -> x509.Certificate:
    ca_cert = x509.load_pem_x509_certificate(pki.ca_cert.read_bytes())
    ca_key = serialization.load_pem_private_key(pki.ca_key.read_bytes(), password=None)
    now = dt.datetime.now(dt.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ferry token signer")])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(ca_cert.subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.EMAIL_PROTECTION, ExtendedKeyUsageOID.CODE_SIGNING]
            ),
            critical=False,
        )
    )
    return builder.sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]


@contextmanager
def softhsm_token(root: Path) -> Iterator[Token]:
    """A fresh token in ``root``; SOFTHSM2_CONF points at it until the block ends."""
    tokens = root / "tokens"
    tokens.mkdir(parents=True)
    conf = root / "softhsm2.conf"
    conf.write_text(
        f"directories.tokendir = {tokens}\nobjectstore.backend = file\nlog.level = ERROR\n"
    )
    old = os.environ.get("SOFTHSM2_CONF")
    os.environ["SOFTHSM2_CONF"] = str(conf)
    try:
        _util(conf, "--init-token", "--free", "--label", TOKEN, "--pin", PIN,
              "--so-pin", SO_PIN)  # fmt: skip
        pki = write_dev_pki(root / "pki", kind="rsa")
        pkcs8 = root / "rsa-signer.p8"
        key = serialization.load_pem_private_key(pki.signer_key.read_bytes(), password=None)
        pkcs8.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        _util(conf, "--import", str(pkcs8), "--token", TOKEN, "--label", "rsa-signer",
              "--id", "01", "--pin", PIN)  # fmt: skip
        pkcs8.unlink()
        ec_cert = _generate_ec(root, pki)
        _import_aes("aes-gw", b"\x10", AES_GW)
        _import_aes("aes-other", b"\x11", AES_OTHER)
        pin_file = root / "pin"
        pin_file.write_text(PIN + "\n")
        yield Token(root=root, conf=conf, rsa=pki, ec_cert=ec_cert, pin_file=pin_file)
    finally:
        if old is None:
            os.environ.pop("SOFTHSM2_CONF", None)
        else:
            os.environ["SOFTHSM2_CONF"] = old
