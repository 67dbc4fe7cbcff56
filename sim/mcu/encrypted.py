"""MCUboot's encrypted images, as the simulated bootloader decrypts them at swap time.

Written from mcu-tools/mcuboot, not from ferry's parser (see the package docstring):

- ``boot/bootutil/include/bootutil/image.h``: header flags ``IMAGE_F_ENCRYPTED_AES128``
  (0x04) / ``AES256`` (0x08); the key travels in one TLV, ``IMAGE_TLV_ENC_RSA2048``
  (0x30), ``ENC_KW`` (0x31), ``ENC_EC256`` (0x32), ``ENC_X25519`` (0x33);
- ``boot/bootutil/include/bootutil/enc_key_public.h``: the TLV's size and layout for each
  (ECIES: ephemeral public key, then HMAC tag, then the encrypted AES key);
- ``boot/bootutil/src/encrypted.c`` (``boot_enc_load``, ``boot_enc_decrypt``,
  ``boot_encrypt``) and, split from it in newer trees, ``encrypt_ec256.c``,
  ``encrypt_x25519.c``, ``encrypt_rsa.c``, ``encrypt_kw.c``, ``encrypt_misc.c``
  (``expand_secret``: HKDF-SHA256 with no salt and info ``MCUBoot_ECIES_v1`` over the
  ECDH secret gives the AES key then the HMAC key; ``HMAC_key``: HMAC-SHA256 of the
  encrypted key must equal the tag; ``decrypt_ciphered_key``: AES-CTR, zero counter);
  RSA: OAEP with SHA-256 (``mbedtls_rsa_rsaes_oaep_decrypt``); KW: RFC 3394 unwrap;
- ``boot/bootutil/src/bootutil_img_hash.c``: only the payload between header and TLVs is
  encrypted, with AES-CTR whose counter is the 16-byte block number from the start of
  the payload (``boot_encrypt``: ``nonce[12..15] = off >> 4``); the SHA256 TLV is over
  header + PLAINTEXT payload + protected TLVs.

A MCUboot build supports one key exchange (``MCUBOOT_ENCRYPT_RSA``/``KW``/``EC256``/
``X25519``), fixed by its key (``CONFIG_BOOT_ENCRYPTION_KEY_FILE``); ``boot_enc_load``
looks only for that TLV, so an image wrapped for another exchange, or for another key,
does not load, and ``boot_validate_slot`` erases slot 1. The AES size is a build option
(``MCUBOOT_AES_256``) too; the simulator takes it from the image's header flag.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

F_AES128 = 0x04
F_AES256 = 0x08
ENC_RSA2048, ENC_KW, ENC_EC256, ENC_X25519, ENC_X25519_SHA512 = 0x30, 0x31, 0x32, 0x33, 0x34
INFO = b"MCUBoot_ECIES_v1"


class DecryptError(Exception):
    """The bootloader cannot load the image's AES key (what ``boot_enc_load`` < 0 means)."""


@dataclass(frozen=True)
class DeviceKey:
    """The private key compiled into the simulated MCUboot, and the TLV it expects."""

    tlv: int
    key: Any  # a cryptography private key, or the raw KEK bytes for AES-KW

    @property
    def name(self) -> str:
        return {ENC_RSA2048: "rsa2048", ENC_KW: "aes-kw", ENC_EC256: "ec256",
                ENC_X25519: "x25519", ENC_X25519_SHA512: "x25519-sha512"}[self.tlv]


def load_device_key(material: bytes, *, hmac_sha512: bool = False) -> DeviceKey:
    """A PEM private key (imgtool keygen -t ecdsa-p256 / x25519 / rsa-2048) or a raw
    16- or 32-byte key-encryption key for AES-KW."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa, x25519

    if len(material) in (16, 32) and not material.startswith(b"-----"):
        return DeviceKey(ENC_KW, bytes(material))
    key = serialization.load_pem_private_key(material, password=None)
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1":
        return DeviceKey(ENC_EC256, key)
    if isinstance(key, x25519.X25519PrivateKey):
        return DeviceKey(ENC_X25519_SHA512 if hmac_sha512 else ENC_X25519, key)
    if isinstance(key, rsa.RSAPrivateKey) and key.key_size == 2048:
        return DeviceKey(ENC_RSA2048, key)
    raise ValueError(f"MCUboot has no encryption with a {type(key).__name__} "
                     "(EC P-256, X25519, RSA-2048, or a raw AES-KW key)")


def is_encrypted(data: bytes) -> bool:
    """The header's ``IMAGE_F_ENCRYPTED_*`` flag: what ``MUST_DECRYPT`` tests in slot 1."""
    return len(data) >= 20 and bool(struct.unpack_from("<I", data, 16)[0]
                                    & (F_AES128 | F_AES256))


def unseal(data: bytes, tlvs: dict[int, bytes], device: DeviceKey) -> bytes:
    """The image with its payload decrypted (header and TLVs as they are)."""
    hdr_size, _prot, img_size, flags = struct.unpack_from("<HHII", data, 8)
    key_len = 32 if flags & F_AES256 else 16
    wrapped = tlvs.get(device.tlv)
    if wrapped is None:
        raise DecryptError(f"no ENC TLV {device.tlv:#x} ({device.name}) for this device's key")
    aes_key = _unwrap(device, wrapped, key_len)
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    # boot_encrypt: counter block = 12 zero bytes + big-endian block number from payload start
    dec = Cipher(algorithms.AES(aes_key), modes.CTR(bytes(16))).decryptor()
    body = dec.update(data[hdr_size : hdr_size + img_size]) + dec.finalize()
    return data[:hdr_size] + body + data[hdr_size + img_size :]


def _unwrap(device: DeviceKey, wrapped: bytes, key_len: int) -> bytes:
    if device.tlv == ENC_KW:
        return _kw(device.key, wrapped, key_len)
    if device.tlv == ENC_RSA2048:
        return _rsa(device.key, wrapped, key_len)
    return _ecies(device, wrapped, key_len)


def _kw(kek: bytes, wrapped: bytes, key_len: int) -> bytes:
    from cryptography.hazmat.primitives.keywrap import InvalidUnwrap, aes_key_unwrap

    if len(wrapped) != key_len + 8:  # TLV_ENC_KW_SZ
        raise DecryptError(f"ENC_KW TLV is {len(wrapped)} bytes, expected {key_len + 8}")
    try:
        return aes_key_unwrap(kek, wrapped)
    except InvalidUnwrap:
        raise DecryptError("AES-KW unwrap failed (integrity check value): "
                           "wrapped for another key") from None


def _rsa(key: Any, wrapped: bytes, key_len: int) -> bytes:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    if len(wrapped) != 256:
        raise DecryptError(f"ENC_RSA2048 TLV is {len(wrapped)} bytes, expected 256")
    try:
        plain: bytes = key.decrypt(wrapped, padding.OAEP(
            mgf=padding.MGF1(algorithm=hashes.SHA256()), algorithm=hashes.SHA256(), label=None))
    except ValueError:
        raise DecryptError("RSA-OAEP decryption failed: another key") from None
    if len(plain) != key_len:
        raise DecryptError(f"RSA-OAEP gave a {len(plain)}-byte key, expected {key_len}")
    return plain


def _ecies(device: DeviceKey, wrapped: bytes, key_len: int) -> bytes:
    from cryptography.hazmat.primitives import hashes, hmac
    from cryptography.hazmat.primitives.asymmetric import ec, x25519
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    sha512 = device.tlv == ENC_X25519_SHA512
    digest: hashes.HashAlgorithm = hashes.SHA512() if sha512 else hashes.SHA256()
    pub_len = 65 if device.tlv == ENC_EC256 else 32
    tag_len = digest.digest_size
    if len(wrapped) != pub_len + tag_len + key_len:
        raise DecryptError(f"ENC TLV is {len(wrapped)} bytes, expected "
                           f"{pub_len + tag_len + key_len} ({device.name}, AES-{key_len * 8})")
    pub, tag, cipherkey = (wrapped[:pub_len], wrapped[pub_len : pub_len + tag_len],
                           wrapped[pub_len + tag_len :])
    try:
        if device.tlv == ENC_EC256:
            if pub[0] != 0x04:  # encrypted.c: "is EC point uncompressed?"
                raise DecryptError("ECIES-P256 point is not uncompressed")
            peer = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), pub)
            shared = device.key.exchange(ec.ECDH(), peer)
        else:
            shared = device.key.exchange(x25519.X25519PublicKey.from_public_bytes(pub))
    except ValueError:
        raise DecryptError(f"{device.name}: the ephemeral public key is invalid") from None
    derived = HKDF(algorithm=digest, length=key_len + tag_len, salt=None,
                   info=INFO).derive(shared)
    mac = hmac.HMAC(derived[key_len:], digest)
    mac.update(cipherkey)
    try:
        mac.verify(tag)  # HMAC_key: constant-time compare
    except Exception:
        raise DecryptError(f"{device.name}: HMAC of the wrapped key does not match: "
                           "encrypted for another key") from None
    dec = Cipher(algorithms.AES(derived[:key_len]), modes.CTR(bytes(16))).decryptor()
    return dec.update(cipherkey) + dec.finalize()
