"""A gateway's recipient key in a PKCS#11 token: the token unwraps the key envelope.

``[keyring] recipient_key = "pkcs11:..."`` keeps the gateway's RSA or EC private key in
its TPM or HSM (SoftHSM2 in tests); only the per-envelope secrets leave it:

- EC: C_DeriveKey with CKM_ECDH1_DERIVE (CKD_NULL) gives the raw shared secret Z of the
  envelope's ephemeral key and the gateway's, as an extractable generic secret; ferry
  runs the X9.63 KDF and the AES key unwrap (packaging/envelope.py). Z opens this one
  envelope and nothing else (the ephemeral key is fresh per envelope).
- RSA: CKM_RSA_PKCS_OAEP with the envelope's hash and MGF. Tokens that implement only
  SHA-1 OAEP (SoftHSM2 2.6 refuses SHA-256 parameters with CKR_ARGUMENTS_BAD) get the
  ciphertext through CKM_RSA_X_509 instead, and ferry removes the OAEP encoding itself
  (RFC 8017 section 7.1.2, with one error for every way it can be wrong).

On load, one probe proves the token key belongs to the certificate the envelopes name
(as open_token_signer's probe signature does for signing keys): a mismatch is found at
configuration time, not as "not a recipient" on every bundle.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric import padding as asym_padding

from ferry.packaging.pkcs11 import (
    Pkcs11Error,
    Pkcs11Uri,
    _binding,
    _why,
    find_key,
    open_session,
    parse_uri,
)


def _mechs(p11: Any, hash_name: str) -> tuple[Any, Any]:
    table = {"sha1": (p11.Mechanism.SHA_1, p11.MGF.SHA1),
             "sha224": (p11.Mechanism.SHA224, p11.MGF.SHA224),
             "sha256": (p11.Mechanism.SHA256, p11.MGF.SHA256),
             "sha384": (p11.Mechanism.SHA384, p11.MGF.SHA384),
             "sha512": (p11.Mechanism.SHA512, p11.MGF.SHA512)}
    return table[hash_name]


def _mgf1(seed: bytes, length: int, hash_name: str) -> bytes:
    out = b""
    counter = 0
    while len(out) < length:
        out += hashlib.new(hash_name, seed + counter.to_bytes(4, "big")).digest()
        counter += 1
    return out[:length]


def oaep_decode(em: bytes, k: int, hash_name: str, mgf_hash: str, label: bytes | None) -> bytes:
    """EME-OAEP decoding (RFC 8017 section 7.1.2, step 3) of a raw RSA result, with one
    error for every way it can fail (which check failed is not told): a ValueError,
    which packaging/envelope.py turns into its one-line "corrupt or tampered"."""
    h_len = hashlib.new(hash_name).digest_size
    em = em.rjust(k, b"\0")
    if len(em) != k or k < 2 * h_len + 2:
        raise ValueError("OAEP decoding failed")
    y, masked_seed, masked_db = em[0], em[1:1 + h_len], em[1 + h_len:]
    seed = bytes(a ^ b for a, b in zip(masked_seed, _mgf1(masked_db, h_len, mgf_hash),
                                       strict=True))
    db = bytes(a ^ b for a, b in zip(masked_db, _mgf1(seed, k - h_len - 1, mgf_hash),
                                     strict=True))
    good = hmac.compare_digest(db[:h_len], hashlib.new(hash_name, label or b"").digest())
    rest = db[h_len:]
    one = rest.find(b"\x01")
    good = good and y == 0 and one >= 0 and not any(rest[:max(one, 0)])
    if not good:
        raise ValueError("OAEP decoding failed")
    return rest[one + 1:]


@dataclass(frozen=True)
class TokenRecipientKey:
    """envelope.TokenKey for a private key in a token (each call one session). This
    module does not import envelope.py (which imports it lazily): errors in the data
    are ValueErrors that envelope.py words, errors of the token are Pkcs11Errors."""

    uri: Pkcs11Uri
    modulus_bytes: int = 0  # RSA only

    def __repr__(self) -> str:
        return f"TokenRecipientKey({self.uri.redacted()})"

    def _fail(self, what: str, err: Exception) -> Pkcs11Error:
        return Pkcs11Error(f"{self.uri.redacted()}: the token cannot {what}: {_why(err)}")

    def oaep_decrypt(self, ciphertext: bytes, hash_name: str, mgf_hash: str,
                     label: bytes | None) -> bytes:
        p11 = _binding()
        params = (_mechs(p11, hash_name)[0], _mechs(p11, mgf_hash)[1], label)
        with open_session(self.uri) as session:
            key = find_key(session, self.uri, p11.ObjectClass.PRIVATE_KEY)
            try:
                return bytes(key.decrypt(ciphertext, mechanism=p11.Mechanism.RSA_PKCS_OAEP,
                                         mechanism_param=params))
            except (p11.exceptions.ArgumentsBad, p11.exceptions.MechanismParamInvalid,
                    p11.exceptions.MechanismInvalid):
                pass  # the token's OAEP lacks this hash: raw RSA, OAEP decoded here
            except p11.exceptions.PKCS11Error:
                raise ValueError("the token's OAEP decryption failed") from None
            try:
                raw = bytes(key.decrypt(ciphertext, mechanism=p11.Mechanism.RSA_X_509))
            except p11.exceptions.PKCS11Error as err:
                raise self._fail("decrypt RSA-OAEP (nor raw RSA)", err) from None
        return oaep_decode(raw, self.modulus_bytes, hash_name, mgf_hash, label)

    def ecdh(self, point: bytes) -> bytes:
        p11 = _binding()
        with open_session(self.uri) as session:
            key = find_key(session, self.uri, p11.ObjectClass.PRIVATE_KEY)
            field_bytes = (len(point) - 1) // 2
            try:
                z = key.derive_key(
                    p11.KeyType.GENERIC_SECRET, 8 * field_bytes,
                    mechanism=p11.Mechanism.ECDH1_DERIVE,
                    mechanism_param=(p11.KDF.NULL, None, point),
                    template={p11.Attribute.SENSITIVE: False,
                              p11.Attribute.EXTRACTABLE: True, p11.Attribute.TOKEN: False})
                return bytes(z[p11.Attribute.VALUE])
            except p11.exceptions.PKCS11Error as err:
                raise self._fail("do ECDH", err) from None


def load_token_key(uri_text: str, cert: x509.Certificate) -> TokenRecipientKey:
    """The token key of ``uri_text`` as the recipient named by ``cert``, after a probe
    unwrap (RSA) or key agreement (EC) proved that they belong together."""
    uri = parse_uri(uri_text)
    if "pin-value" in uri.query:
        raise Pkcs11Error(
            "[keyring] recipient_key: give the PIN as pin-source=FILE (a root-only file), "
            "not pin-value=: ferry.toml is readable by local users")
    pub = cert.public_key()
    probe = os.urandom(32)
    if isinstance(pub, rsa.RSAPublicKey):
        key = TokenRecipientKey(uri, modulus_bytes=(pub.key_size + 7) // 8)
        wrapped = pub.encrypt(probe, asym_padding.OAEP(
            mgf=asym_padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None))
        try:
            ok = key.oaep_decrypt(wrapped, "sha256", "sha256", None) == probe
        except ValueError:
            ok = False
    elif isinstance(pub, ec.EllipticCurvePublicKey):
        key = TokenRecipientKey(uri)
        eph = ec.generate_private_key(pub.curve)
        point = eph.public_key().public_bytes(serialization.Encoding.X962,
                                              serialization.PublicFormat.UncompressedPoint)
        ok = hmac.compare_digest(key.ecdh(point), eph.exchange(ec.ECDH(), pub))
    else:
        raise Pkcs11Error("only RSA and EC certificates can be recipients")
    if not ok:
        raise Pkcs11Error(f"{uri.redacted()}: the token's key does not belong to the "
                          f"recipient certificate {cert.subject.rfc4514_string()}")
    return key
