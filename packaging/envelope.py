"""The image key wrapped for recipients: a CMS EnvelopedData (RFC 5652) member.

A fleet should not share one AES key file: a key pulled off one gateway would open every
bundle. So the image key (SWUpdate's ``<key hex> <ivt hex>`` text, exactly what
``swupdate -K`` reads) is the *content* of an EnvelopedData whose content-encryption key
is wrapped once per recipient certificate:

- RSA: KeyTransRecipientInfo, id-RSAES-OAEP with SHA-256 and MGF1-SHA-256 (RFC 8017,
  parameters as RFC 4055); ferry reads OAEP with any SHA-1/SHA-2 hash. PKCS#1 v1.5 key
  transport (openssl's default) is refused: it is the padding-oracle one.
- EC: KeyAgreeRecipientInfo, ephemeral-static ECDH, dhSinglePass-stdDH-sha256kdf-scheme
  (RFC 5753 section 7.1.4: ANSI X9.63 KDF over ECC-CMS-SharedInfo) with id-aes256-wrap
  (RFC 3394); ferry reads the sha1/sha224/sha256/sha384/sha512 KDF schemes and the
  128/192/256-bit AES wraps, as ``openssl cms -encrypt`` writes them.
- content: AES-256-CBC with PKCS#7 padding (ferry reads AES-128/192/256-CBC).
- recipients are named by issuer and serial number (openssl's default), or by subject
  key identifier (``openssl cms -keyid``).

The member lives *outside* the signed sw-description (docs/bundle-format.md, "Key
envelope"), so recipients can be added without the signer; the signed ``aes-key-check``
of each image is what binds the images to the key, so a swapped envelope can only make
decryption fail, never make a gateway install something unsigned.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol

from asn1crypto import cms, core
from asn1crypto import x509 as asn1_x509
from asn1crypto.keys import PublicKeyInfo
from cryptography import x509
from cryptography.exceptions import InvalidKey
from cryptography.hazmat.primitives import hashes, padding, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric import padding as asym_padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.x963kdf import X963KDF
from cryptography.hazmat.primitives.keywrap import (
    InvalidUnwrap,
    aes_key_unwrap,
    aes_key_wrap,
)

from ferry.packaging.description import ENVELOPE_NAME
from ferry.packaging.encryption import AesKey, EncryptionKeyError, parse_key
from ferry.packaging.errors import BundleError

MAX_ENVELOPE_SIZE = 256 * 1024  # ~600 RSA-2048 or ~1300 P-256 recipients

_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "sha1": hashes.SHA1, "sha224": hashes.SHA224, "sha256": hashes.SHA256,
    "sha384": hashes.SHA384, "sha512": hashes.SHA512,
}
# dhSinglePass-stdDH-*kdf-scheme (RFC 5753 section 7.1.4, SEC 1); cofactor DH is the
# same computation on the prime-order NIST curves
_KDF_SCHEMES = {
    "1.3.133.16.840.63.0.2": "sha1", "1.3.132.1.11.0": "sha224",
    "1.3.132.1.11.1": "sha256", "1.3.132.1.11.2": "sha384", "1.3.132.1.11.3": "sha512",
    "1.3.133.16.840.63.0.3": "sha1", "1.3.132.1.14.0": "sha224",
    "1.3.132.1.14.1": "sha256", "1.3.132.1.14.2": "sha384", "1.3.132.1.14.3": "sha512",
}
STD_DH_SHA256 = "1.3.132.1.11.1"
_WRAP_BITS = {"aes128_wrap": 128, "aes192_wrap": 192, "aes256_wrap": 256}
_CBC_BITS = {"aes128_cbc": 128, "aes192_cbc": 192, "aes256_cbc": 256}


class EnvelopeError(BundleError):
    """The key envelope is malformed, or this gateway's key cannot open it."""


class NoRecipient(EnvelopeError):
    """The envelope is wrapped for other recipients; the message names each of them."""


class _EccCmsSharedInfo(core.Sequence):
    """ECC-CMS-SharedInfo (RFC 5753 section 7.2): the X9.63 KDF's SharedInfo."""

    _fields: ClassVar[list[tuple[Any, ...]]] = [
        ("key_info", cms.KeyEncryptionAlgorithm),
        ("entity_u_info", core.OctetString, {"explicit": 0, "optional": True}),
        ("supp_pub_info", core.OctetString, {"explicit": 2}),
    ]


class TokenKey(Protocol):
    """A recipient's private key that stays in a PKCS#11 token (envelope_token.py)."""

    def oaep_decrypt(self, ciphertext: bytes, hash_name: str, mgf_hash: str,
                     label: bytes | None) -> bytes: ...

    def ecdh(self, point: bytes) -> bytes: ...


@dataclass(frozen=True)
class Recipient:
    """A private key and its certificate: who can open an envelope."""

    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | TokenKey
    cert: x509.Certificate

    def __repr__(self) -> str:  # never print key material into a log
        return f"Recipient({self.cert.subject.rfc4514_string()})"


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as err:
        raise EnvelopeError(f"cannot read {what} {path}: {err.strerror}") from None


def load_certs(paths: Sequence[str | Path]) -> list[x509.Certificate]:
    """Recipient certificates (PEM, several per file allowed), RSA or EC only."""
    certs: list[x509.Certificate] = []
    for p in paths:
        try:
            found = x509.load_pem_x509_certificates(_read(Path(p), "certificate"))
        except ValueError:
            raise EnvelopeError(f"{p}: not a PEM certificate") from None
        for cert in found:
            if not isinstance(cert.public_key(), rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
                raise EnvelopeError(f"{p}: only RSA and EC certificates can be recipients")
        certs.extend(found)
    if not certs:
        raise EnvelopeError("give at least one recipient certificate (--to CERT.pem)")
    return certs


def load_recipient(key_path: str | Path, cert_path: str | Path) -> Recipient:
    """A recipient key file and the certificate it belongs to (checked to match)."""
    if str(key_path).startswith("pkcs11:"):  # the token unwraps (envelope_token.py)
        from ferry.packaging.envelope_token import load_token_key

        cert = load_certs([cert_path])[0]
        return Recipient(key=load_token_key(str(key_path), cert), cert=cert)
    try:
        key = serialization.load_pem_private_key(_read(Path(key_path), "key"), password=None)
    except (ValueError, TypeError):
        raise EnvelopeError(f"{key_path}: not an unencrypted PEM private key") from None
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise EnvelopeError(f"{key_path}: only RSA and EC keys can be recipients")
    cert = load_certs([cert_path])[0]
    if cert.public_key() != key.public_key():
        raise EnvelopeError(f"{cert_path} does not belong to the key {key_path}")
    return Recipient(key=key, cert=cert)


# -- identifying recipients ---------------------------------------------------------------
def _asn1_cert(cert: x509.Certificate) -> asn1_x509.Certificate:
    return asn1_x509.Certificate.load(cert.public_bytes(serialization.Encoding.DER))


def _ski(cert: x509.Certificate) -> bytes:
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
        return ext.value.digest
    except x509.ExtensionNotFound:
        return x509.SubjectKeyIdentifier.from_public_key(cert.public_key()).digest


def _ias(cert: x509.Certificate) -> cms.IssuerAndSerialNumber:
    a = _asn1_cert(cert)
    return cms.IssuerAndSerialNumber({"issuer": a.issuer, "serial_number": a.serial_number})


def _matches(rid: core.Choice, cert: x509.Certificate) -> bool:
    if rid.name == "issuer_and_serial_number":
        a = _asn1_cert(cert)
        ias = rid.chosen
        return bool(ias["serial_number"].native == a.serial_number
                    and ias["issuer"] == a.issuer)
    if rid.name == "subject_key_identifier":
        return hmac.compare_digest(rid.chosen.native, _ski(cert))
    if rid.name == "r_key_id":
        return hmac.compare_digest(rid.chosen["subject_key_identifier"].native, _ski(cert))
    return False


def _describe(rid: core.Choice, kind: str) -> str:
    if rid.name == "issuer_and_serial_number":
        ias = rid.chosen
        return (f"{kind} issuer '{ias['issuer'].human_friendly}' serial "
                f"{ias['serial_number'].native:#x}")
    ski = rid.chosen.native if rid.name == "subject_key_identifier" else (
        rid.chosen["subject_key_identifier"].native)
    return f"{kind} subject key id {ski.hex(':')}"


def _rids(info: cms.RecipientInfo) -> list[tuple[core.Choice, str]]:
    if info.name == "ktri":
        return [(info.chosen["rid"], "RSA")]
    if info.name == "kari":
        return [(rek["rid"], "EC") for rek in info.chosen["recipient_encrypted_keys"]]
    return []


def _parse(der: bytes) -> cms.EnvelopedData:
    try:
        info = cms.ContentInfo.load(der, strict=True)
        if info["content_type"].native != "enveloped_data":
            raise EnvelopeError(f"{ENVELOPE_NAME} is a CMS {info['content_type'].native}, "
                                "not EnvelopedData")
        env = info["content"]
        env.native  # noqa: B018 -- parse every field now, not at first use
        return env
    except EnvelopeError:
        raise
    except Exception:  # asn1crypto raises ValueError, TypeError, KeyError...
        raise EnvelopeError(f"{ENVELOPE_NAME} is not a well-formed CMS EnvelopedData; "
                            "the bundle's key envelope is corrupt or tampered") from None


def recipients(der: bytes) -> list[str]:
    """Who can open the envelope: one line per recipient (issuer + serial, or SKI)."""
    env = _parse(der)
    out: list[str] = []
    for info in env["recipient_infos"]:
        rids = _rids(info)
        out.extend(_describe(rid, kind) for rid, kind in rids)
        if not rids:
            out.append(f"an unsupported {info.name} recipient")
    return out


# -- sealing ------------------------------------------------------------------------------
def _ktri(cert: x509.Certificate, cek: bytes) -> cms.RecipientInfo:
    pub = cert.public_key()
    assert isinstance(pub, rsa.RSAPublicKey)
    wrapped = pub.encrypt(cek, asym_padding.OAEP(
        mgf=asym_padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None))
    params = {"hash_algorithm": {"algorithm": "sha256"},
              "mask_gen_algorithm": {"algorithm": "mgf1",
                                     "parameters": {"algorithm": "sha256"}}}
    return cms.RecipientInfo({"ktri": {
        "version": "v0",
        "rid": {"issuer_and_serial_number": _ias(cert)},
        "key_encryption_algorithm": {"algorithm": "rsaes_oaep", "parameters": params},
        "encrypted_key": wrapped,
    }})


def _kek(shared: bytes, wrap: cms.KeyEncryptionAlgorithm, hash_name: str,
         ukm: bytes | None) -> bytes:
    bits = _WRAP_BITS[wrap["algorithm"].native]
    info = _EccCmsSharedInfo({"key_info": wrap, "supp_pub_info": bits.to_bytes(4, "big")})
    if ukm is not None:
        info["entity_u_info"] = ukm
    return X963KDF(_HASHES[hash_name](), bits // 8, info.dump()).derive(shared)


def _kari(cert: x509.Certificate, cek: bytes) -> cms.RecipientInfo:
    pub = cert.public_key()
    assert isinstance(pub, ec.EllipticCurvePublicKey)
    eph = ec.generate_private_key(pub.curve)
    shared = eph.exchange(ec.ECDH(), pub)
    wrap = cms.KeyEncryptionAlgorithm({"algorithm": "aes256_wrap"})
    wrapped = aes_key_wrap(_kek(shared, wrap, "sha256", None), cek)
    point = eph.public_key().public_bytes(serialization.Encoding.X962,
                                          serialization.PublicFormat.UncompressedPoint)
    return cms.RecipientInfo({"kari": {
        "version": "v3",
        "originator": {"originator_key": PublicKeyInfo({
            "algorithm": {"algorithm": "ec"}, "public_key": point})},
        "key_encryption_algorithm": {"algorithm": STD_DH_SHA256, "parameters": wrap},
        "recipient_encrypted_keys": [{
            "rid": {"issuer_and_serial_number": _ias(cert)}, "encrypted_key": wrapped}],
    }})


def _wrap_for(cert: x509.Certificate, cek: bytes) -> cms.RecipientInfo:
    if isinstance(cert.public_key(), rsa.RSAPublicKey):
        return _ktri(cert, cek)
    return _kari(cert, cek)


def _version(infos: Sequence[cms.RecipientInfo]) -> str:
    """RFC 5652 section 6.1: v0 only when every recipient is a v0 ktri, else v2."""
    v0 = all(i.name == "ktri" and i.chosen["version"].native == "v0" for i in infos)
    return "v0" if v0 else "v2"


def _content_info(infos: list[cms.RecipientInfo], eci: cms.EncryptedContentInfo) -> bytes:
    env = cms.EnvelopedData({"version": _version(infos), "recipient_infos": infos,
                             "encrypted_content_info": eci})
    return bytes(cms.ContentInfo({"content_type": "enveloped_data", "content": env}).dump())


def key_text(key: AesKey) -> bytes:
    """The envelope's content: SWUpdate's key file, so ``openssl cms -decrypt`` output
    is what ``swupdate -K`` reads."""
    return f"{key.key.hex()} {key.ivt.hex()}\n".encode("ascii")


def seal(key: AesKey, certs: Sequence[x509.Certificate]) -> bytes:
    """A DER ContentInfo holding ``key`` wrapped for each of ``certs``."""
    if not certs:
        raise EnvelopeError("give at least one recipient certificate (--to CERT.pem)")
    cek, iv = os.urandom(32), os.urandom(16)
    padder = padding.PKCS7(128).padder()
    plain = padder.update(key_text(key)) + padder.finalize()
    enc = Cipher(algorithms.AES(cek), modes.CBC(iv)).encryptor()
    eci = cms.EncryptedContentInfo({
        "content_type": "data",
        "content_encryption_algorithm": {"algorithm": "aes256_cbc", "parameters": iv},
        "encrypted_content": enc.update(plain) + enc.finalize(),
    })
    return _content_info([_wrap_for(c, cek) for c in certs], eci)


# -- opening ------------------------------------------------------------------------------
def _unwrap_ktri(ktri: cms.KeyTransRecipientInfo, key: rsa.RSAPrivateKey | TokenKey) -> bytes:
    alg = ktri["key_encryption_algorithm"]
    if alg["algorithm"].native != "rsaes_oaep":
        raise EnvelopeError(
            f"{ENVELOPE_NAME}: RSA recipient uses {alg['algorithm'].native}, not RSA-OAEP; "
            "ferry refuses PKCS#1 v1.5 key transport (openssl cms: -keyopt "
            "rsa_padding_mode:oaep)")
    params = alg["parameters"]
    hash_name = params["hash_algorithm"]["algorithm"].native
    mgf_hash = params["mask_gen_algorithm"]["parameters"]["algorithm"].native
    label = params["p_source_algorithm"]["parameters"].native or None
    if hash_name not in _HASHES or mgf_hash not in _HASHES:
        raise EnvelopeError(f"{ENVELOPE_NAME}: RSA-OAEP with {hash_name}/{mgf_hash} is "
                            "not supported")
    wrapped = bytes(ktri["encrypted_key"].native)
    if not isinstance(key, rsa.RSAPrivateKey):
        return key.oaep_decrypt(wrapped, hash_name, mgf_hash, label)
    return key.decrypt(wrapped, asym_padding.OAEP(
        mgf=asym_padding.MGF1(_HASHES[mgf_hash]()), algorithm=_HASHES[hash_name](),
        label=label))


def _unwrap_kari(kari: cms.KeyAgreeRecipientInfo, rek: cms.RecipientEncryptedKey,
                 key: ec.EllipticCurvePrivateKey | TokenKey, curve: ec.EllipticCurve) -> bytes:
    alg = kari["key_encryption_algorithm"]
    oid = alg["algorithm"].dotted
    if oid not in _KDF_SCHEMES:
        raise EnvelopeError(f"{ENVELOPE_NAME}: EC recipient uses key agreement {oid}, not "
                            "an ECDH dhSinglePass scheme ferry reads")
    wrap = cms.KeyEncryptionAlgorithm.load(alg["parameters"].dump())
    if wrap["algorithm"].native not in _WRAP_BITS:
        raise EnvelopeError(f"{ENVELOPE_NAME}: EC recipient wraps with "
                            f"{wrap['algorithm'].native}, not AES key wrap")
    originator = kari["originator"]
    if originator.name != "originator_key":
        raise EnvelopeError(f"{ENVELOPE_NAME}: EC recipient without an ephemeral "
                            "originator key (static-static ECDH is not supported)")
    point = bytes(originator.chosen["public_key"].native)
    eph = ec.EllipticCurvePublicKey.from_encoded_point(curve, point)  # on the curve?
    if isinstance(key, ec.EllipticCurvePrivateKey):
        shared = key.exchange(ec.ECDH(), eph)
    else:
        shared = key.ecdh(eph.public_bytes(serialization.Encoding.X962,
                                           serialization.PublicFormat.UncompressedPoint))
    ukm = kari["ukm"].native if kari["ukm"].native is not None else None
    kek = _kek(shared, wrap, _KDF_SCHEMES[oid], ukm)
    return aes_key_unwrap(kek, bytes(rek["encrypted_key"].native))


def _cek(env: cms.EnvelopedData, me: Recipient) -> bytes | None:
    """The content-encryption key from the first recipient entry that names ``me``."""
    pub = me.cert.public_key()
    for info in env["recipient_infos"]:
        if (info.name == "ktri" and isinstance(pub, rsa.RSAPublicKey)
                and not isinstance(me.key, ec.EllipticCurvePrivateKey)
                and _matches(info.chosen["rid"], me.cert)):
            return _unwrap_ktri(info.chosen, me.key)
        if (info.name == "kari" and isinstance(pub, ec.EllipticCurvePublicKey)
                and not isinstance(me.key, rsa.RSAPrivateKey)):
            for rek in info.chosen["recipient_encrypted_keys"]:
                if _matches(rek["rid"], me.cert):
                    return _unwrap_kari(info.chosen, rek, me.key, pub.curve)
    return None


def _decrypt_content(eci: cms.EncryptedContentInfo, cek: bytes) -> bytes:
    alg = eci["content_encryption_algorithm"]
    name = alg["algorithm"].native
    if name not in _CBC_BITS or len(cek) * 8 != _CBC_BITS[name]:
        raise EnvelopeError(f"{ENVELOPE_NAME}: content encrypted with {name}; ferry reads "
                            "AES-CBC")
    iv = bytes(alg["parameters"].native)
    dec = Cipher(algorithms.AES(cek), modes.CBC(iv)).decryptor()
    plain = dec.update(bytes(eci["encrypted_content"].native or b"")) + dec.finalize()
    unpad = padding.PKCS7(128).unpadder()
    return unpad.update(plain) + unpad.finalize()


def _open_cek(env: cms.EnvelopedData, me: Recipient) -> bytes:
    try:
        cek = _cek(env, me)
    except EnvelopeError:
        raise
    except (ValueError, TypeError, KeyError, InvalidUnwrap, InvalidKey):
        raise EnvelopeError(f"{ENVELOPE_NAME}: cannot unwrap the key for "
                            f"{me.cert.subject.rfc4514_string()}; the envelope is corrupt "
                            "or tampered") from None
    if cek is None:
        need = "; ".join(recipients_of(env)) or "nobody"
        raise NoRecipient(
            f"bundle's image key is not wrapped for this key's certificate "
            f"({me.cert.subject.rfc4514_string()}); it would need the key of one of its "
            f"{len(recipients_of(env))} recipient(s): {need}")
    return cek


def recipients_of(env: cms.EnvelopedData) -> list[str]:
    return [_describe(rid, kind) for info in env["recipient_infos"]
            for rid, kind in _rids(info)]


def open_envelope(der: bytes, me: Recipient) -> AesKey:
    """The image key in ``der``, unwrapped with ``me``'s key; NoRecipient (naming every
    recipient the envelope has) when ``me`` is not one of them."""
    env = _parse(der)
    cek = _open_cek(env, me)
    try:
        text = _decrypt_content(env["encrypted_content_info"], cek)
        return parse_key(text.decode("ascii"), ENVELOPE_NAME)
    except EnvelopeError:
        raise
    except (ValueError, TypeError, UnicodeDecodeError, EncryptionKeyError):
        raise EnvelopeError(f"{ENVELOPE_NAME}: its content does not decrypt to a key; "
                            "the envelope is corrupt or tampered") from None


def add_recipients(der: bytes, me: Recipient, certs: Sequence[x509.Certificate]) -> bytes:
    """``der`` with ``certs`` added as recipients: ``me`` (a current recipient) unwraps
    the content-encryption key, which is wrapped again for each new certificate. The
    existing recipient entries and the encrypted content are kept byte for byte; a
    certificate that already is a recipient is not added twice."""
    env = _parse(der)
    cek = _open_cek(env, me)
    open_envelope(der, me)  # the content must decrypt too, before anyone relies on it
    infos = list(env["recipient_infos"])
    for cert in certs:
        if not any(_matches(rid, cert) for info in infos for rid, _k in _rids(info)):
            infos.append(_wrap_for(cert, cek))
    return _content_info(infos, env["encrypted_content_info"])
