"""What the simulated bootloader knows about MCUboot images: enough to validate and boot.

Independent of ferry.proxy.mcuboot on purpose (see the package docstring). An encrypted
image in slot 1 is decrypted while it is validated (``encrypted``), as MCUboot's
``bootutil_img_hash`` does; the SMP image list reads only its header and TLVs, which
are in clear, as Zephyr's ``img_mgmt`` does.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

from ferry.sim.mcu import encrypted

MAGIC = 0x96F3B83D
TRAILER_MAGIC = bytes.fromhex("77c295f360d2ef7f3552500f2cb67980")


@dataclass
class ImageInfo:
    version: tuple[int, int, int, int]
    hash: bytes  # the SHA256 TLV value
    valid: bool  # hash (and signature, if a key is configured) checks out
    why: str = ""
    non_bootable: bool = False
    encrypted: bool = False  # header flag IMAGE_F_ENCRYPTED_AES128/256
    plain: bytes = b""  # the image with its payload decrypted (valid images only)

    @property
    def version_text(self) -> str:
        major, minor, rev, build = self.version
        text = f"{major}.{minor}.{rev}"
        return f"{text}.{build}" if build else text


def inspect(data: bytes, public_key_pem: bytes | None = None,
            decrypt_with: encrypted.DeviceKey | None = None,
            must_decrypt: bool = False) -> ImageInfo | None:
    """None when the bytes are not an MCUboot image at all.

    ``must_decrypt``: the image lies in slot 1, where MCUboot's ``MUST_DECRYPT`` holds
    for an encrypted header; it then decrypts with ``decrypt_with`` (the build's key),
    and a build without one (no ``MCUBOOT_ENC_IMAGES``) hashes the ciphertext as it is,
    which cannot match. In slot 0 an image is plaintext whatever its flags say."""
    if len(data) < 32:
        return None
    magic, _load, hdr, prot, size, flags, a, b, c, d = struct.unpack_from("<IIHHIIBBHI", data)
    if magic != MAGIC:
        return None
    version = (a, b, c, d)
    info = ImageInfo(version=version, hash=b"", valid=False, non_bootable=bool(flags & 0x10),
                     encrypted=encrypted.is_encrypted(data))
    end = hdr + size + prot
    pos = hdr + size
    tlvs: dict[int, bytes] = {}
    try:
        for area_magic in ((0x6908,) if prot else ()) + (0x6907,):
            got, total = struct.unpack_from("<HH", data, pos)
            if got != area_magic:
                info.why = "TLV area magic"
                return info
            stop = pos + total
            pos += 4
            while pos < stop:
                t, ln = struct.unpack_from("<HH", data, pos)
                tlvs.setdefault(t, data[pos + 4 : pos + 4 + ln])
                pos += 4 + ln
    except struct.error:
        info.why = "truncated TLVs"
        return info
    info.hash = tlvs.get(0x10, b"")
    plain = data
    if must_decrypt and info.encrypted and decrypt_with is not None:
        try:
            plain = encrypted.unseal(data, tlvs, decrypt_with)
        except encrypted.DecryptError as err:
            info.why = f"encryption key not loaded: {err}"
            return info
    if len(info.hash) != 32 or hashlib.sha256(plain[:end]).digest() != info.hash:
        info.why = "SHA256 mismatch" + (" (encrypted image, no key in this build)"
                                        if must_decrypt and info.encrypted
                                        and decrypt_with is None else "")
        return info
    if public_key_pem is not None and not _signature_ok(public_key_pem, info.hash, tlvs):
        info.why = "bad signature"
        return info
    info.valid = True
    info.plain = plain
    return info


def _signature_ok(pem: bytes, digest: bytes, tlvs: dict[int, bytes]) -> bool:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa, utils

    key = serialization.load_pem_public_key(pem)
    try:
        if isinstance(key, rsa.RSAPublicKey) and 0x20 in tlvs:
            # image_rsa.c: RSASSA-PSS over the hash, MGF1-SHA256, 32-byte salt
            key.verify(tlvs[0x20], digest, padding.PSS(mgf=padding.MGF1(hashes.SHA256()),
                                                       salt_length=32),
                       utils.Prehashed(hashes.SHA256()))
            return True
        if isinstance(key, ed25519.Ed25519PublicKey) and 0x24 in tlvs:
            key.verify(tlvs[0x24], digest)
            return True
        if isinstance(key, ec.EllipticCurvePublicKey) and 0x22 in tlvs:
            key.verify(tlvs[0x22], digest, ec.ECDSA(utils.Prehashed(hashes.SHA256())))
            return True
    except InvalidSignature:
        return False
    return False


def trailer_flags(data: bytes, slot_size: int) -> tuple[bool, bool]:
    """(magic, image_ok) baked into an image padded to the slot (imgtool --pad/--confirm)."""
    if len(data) != slot_size or data[-16:] != TRAILER_MAGIC:
        return False, False
    return True, data[-24] == 0x01


def build(version: tuple[int, int, int, int], payload: bytes, hdr_size: int = 0x200,
          flags: int = 0) -> bytes:
    """An unsigned image with a SHA256 TLV: what a dev build without a key looks like.

    ``flags`` 0x10 is ``IMAGE_F_NON_BOOTABLE``: MCUboot refuses to boot such an image."""
    header = struct.pack("<IIHHIIBBHII", MAGIC, 0, hdr_size, 0, len(payload), flags, *version,
                         0)
    body = header.ljust(hdr_size, b"\0") + payload
    digest = hashlib.sha256(body).digest()
    tlv = struct.pack("<HH", 0x6907, 4 + 4 + 32) + struct.pack("<HH", 0x10, 32) + digest
    return body + tlv
