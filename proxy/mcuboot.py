"""MCUboot image format: header, TLV areas, and the checks ferry makes before sending.

Layout (mcu-tools/mcuboot ``image.h``): a 32-byte little-endian header padded to
``hdr_size``, the payload (``img_size`` bytes), an optional protected TLV area (magic
0x6908, counted in ``protect_tlv_size``) and the unprotected TLV area (magic 0x6907).
The SHA256 TLV covers header + payload + protected area; it is also the "hash" SMP's
image-state reports, so it is how ferry recognises an image on a device. Images padded
to the slot size (``imgtool --pad``) carry a trailer after the TLVs; it is kept and sent.

Encrypted images (``imgtool sign --encrypt``) travel untouched: the header flag
``IMAGE_F_ENCRYPTED_AES128``/``AES256`` says the payload is AES-CTR ciphertext, and one
ENC TLV (``IMAGE_TLV_ENC_RSA2048``, ``_KW``, ``_EC256``, ``_X25519``; mcu-tools/mcuboot
``boot/bootutil/include/bootutil/image.h``) carries the AES key wrapped for the device's
key. The SHA256 TLV and the signature are over the PLAINTEXT (imgtool hashes before it
encrypts; MCUboot decrypts while hashing slot 1, ``bootutil_img_hash``), so ferry, which
holds no device key, cannot check them: it checks the header, the TLV areas and the ENC
TLV's size (``enc_key_public.h``), says ``hash_checked: false``, and leaves the rest to
MCUboot at boot. The bundle's sha256 of the file (ciphertext) is still checked upstream.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass, field, replace
from functools import total_ordering

from ferry.errors import FerryError

IMAGE_MAGIC = 0x96F3B83D
IMAGE_MAGIC_V1 = 0x96F3B83C
TLV_INFO_MAGIC = 0x6907
TLV_PROT_INFO_MAGIC = 0x6908
HEADER = struct.Struct("<IIHHII BBHI I")

TLV_KEYHASH = 0x01
TLV_PUBKEY = 0x02
TLV_SHA256 = 0x10
TLV_SHA384 = 0x11
TLV_SHA512 = 0x12
TLV_RSA2048_PSS = 0x20
TLV_ECDSA_SIG = 0x22
TLV_RSA3072_PSS = 0x23
TLV_ED25519 = 0x24
TLV_ENC_RSA2048 = 0x30
TLV_ENC_KW = 0x31
TLV_ENC_EC256 = 0x32
TLV_ENC_X25519 = 0x33
TLV_ENC_X25519_SHA512 = 0x34  # imgtool --hmac-sha 512 (MCUBOOT_HMAC_SHA512)
TLV_SEC_CNT = 0x50
SIGNATURE_TLVS = {TLV_RSA2048_PSS, TLV_ECDSA_SIG, TLV_RSA3072_PSS, TLV_ED25519}
TLV_NAMES = {
    TLV_KEYHASH: "KEYHASH", TLV_PUBKEY: "PUBKEY", TLV_SHA256: "SHA256",
    TLV_SHA384: "SHA384", TLV_SHA512: "SHA512", TLV_RSA2048_PSS: "RSA2048_PSS",
    TLV_ECDSA_SIG: "ECDSA_SIG", TLV_RSA3072_PSS: "RSA3072_PSS", TLV_ED25519: "ED25519",
    TLV_SEC_CNT: "SEC_CNT", TLV_ENC_RSA2048: "ENC_RSA2048", TLV_ENC_KW: "ENC_KW",
    TLV_ENC_EC256: "ENC_EC256", TLV_ENC_X25519: "ENC_X25519",
    TLV_ENC_X25519_SHA512: "ENC_X25519_SHA512",
}
# ENC TLV -> (short name, its size for a 16- or 32-byte AES key) as enc_key_public.h
# sizes them: RSA-OAEP-2048 output; AES-KW adds 8; ECIES = ephemeral public key (65 for
# an uncompressed P-256 point, 32 for X25519) + HMAC tag (32, or 64 with SHA-512) + key.
ENC_TLVS: dict[int, tuple[str, dict[int, int]]] = {
    TLV_ENC_RSA2048: ("rsa2048", {16: 256, 32: 256}),
    TLV_ENC_KW: ("aes-kw", {16: 24, 32: 40}),
    TLV_ENC_EC256: ("ec256", {16: 65 + 32 + 16, 32: 65 + 32 + 32}),
    TLV_ENC_X25519: ("x25519", {16: 32 + 32 + 16, 32: 32 + 32 + 32}),
    TLV_ENC_X25519_SHA512: ("x25519-sha512", {16: 32 + 64 + 16, 32: 32 + 64 + 32}),
}

FLAG_PIC = 0x1
FLAG_ENCRYPTED_AES128 = 0x4
FLAG_ENCRYPTED_AES256 = 0x8
FLAG_NON_BOOTABLE = 0x10
FLAG_RAM_LOAD = 0x20
FLAG_ROM_FIXED = 0x100


class ImageError(FerryError):
    """The file is not a usable MCUboot image."""


@total_ordering
@dataclass(frozen=True)
class Version:
    major: int
    minor: int
    revision: int
    build: int = 0

    @classmethod
    def parse(cls, text: str) -> Version:
        """'1.2.3', '1.2.3+4' (imgtool) or '1.2.3.4' (Zephyr's SMP image list)."""
        main, _, build = text.strip().partition("+")
        parts = main.split(".")
        try:
            nums = [int(p) for p in parts]
            if build:
                nums = nums[:3] + [0] * (3 - len(nums[:3])) + [int(build)]
        except ValueError:
            raise ImageError(f"version {text!r} is not of the form X.Y.Z[+B]") from None
        if not 1 <= len(nums) <= 4:
            raise ImageError(f"version {text!r} is not of the form X.Y.Z[+B]")
        nums += [0] * (4 - len(nums))
        return cls(*nums)

    def key(self) -> tuple[int, int, int, int]:
        return (self.major, self.minor, self.revision, self.build)

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, Version):
            return NotImplemented
        return self.key() < other.key()

    def __str__(self) -> str:
        base = f"{self.major}.{self.minor}.{self.revision}"
        return f"{base}+{self.build}" if self.build else base


@dataclass(frozen=True)
class Tlv:
    type: int
    value: bytes
    protected: bool


@dataclass(frozen=True)
class McubootImage:
    load_addr: int
    hdr_size: int
    protect_tlv_size: int
    img_size: int
    flags: int
    version: Version
    tlvs: tuple[Tlv, ...]
    tlv_end: int  # offset just past the unprotected TLV area
    file_size: int
    legacy_magic: bool = False
    problems: tuple[str, ...] = field(default=())
    hash_checked: bool = False  # verify_hash compared the SHA256 TLV with the bytes
    payload_in_clear: bool = False  # encrypted flag, but the bytes hash as plaintext

    def tlv(self, tlv_type: int) -> bytes | None:
        for t in self.tlvs:
            if t.type == tlv_type:
                return t.value
        return None

    @property
    def hash(self) -> bytes | None:
        """The SHA256 TLV: what SMP image-state reports for this image."""
        return self.tlv(TLV_SHA256)

    @property
    def signature_types(self) -> list[str]:
        return [TLV_NAMES.get(t.type, hex(t.type)) for t in self.tlvs if t.type in SIGNATURE_TLVS]

    @property
    def hashed_size(self) -> int:
        return self.hdr_size + self.img_size + self.protect_tlv_size

    @property
    def aes_bits(self) -> int | None:
        """128 or 256 when the header says the payload is encrypted, else None."""
        if self.flags & FLAG_ENCRYPTED_AES256:
            return 256
        if self.flags & FLAG_ENCRYPTED_AES128:
            return 128
        return None

    @property
    def enc_tlv(self) -> Tlv | None:
        """The TLV carrying the wrapped AES key (the first one, as MCUboot's iterator)."""
        return next((t for t in self.tlvs if t.type in ENC_TLVS), None)

    @property
    def encrypted(self) -> str:
        """``"aes128 (ec256)"`` for an encrypted image, ``""`` for a plain one."""
        bits = self.aes_bits
        if bits is None:
            return ""
        enc = self.enc_tlv
        return f"aes{bits} ({ENC_TLVS[enc.type][0] if enc else 'no ENC TLV'})"

    def summary(self) -> dict[str, str]:
        """What a flash result says about the image: ``encrypted`` and ``hash_checked``.

        ``hash_checked: false`` means ferry could not compare the SHA256 TLV with the
        bytes (encrypted payload): only the device, holding the key, can."""
        text = self.encrypted
        if text and self.payload_in_clear:
            text += ", payload in clear (imgtool --clear)"
        return {"encrypted": text or "no", "hash_checked": str(self.hash_checked).lower()}


def _read_tlv_area(data: bytes, off: int, magic: int, protected: bool) -> tuple[list[Tlv], int]:
    if off + 4 > len(data):
        raise ImageError(f"MCUboot TLV area at {off:#x} runs past the end of the file")
    it_magic, total = struct.unpack_from("<HH", data, off)
    if it_magic != magic:
        raise ImageError(f"MCUboot TLV area at {off:#x} has magic {it_magic:#06x}, "
                         f"expected {magic:#06x}")
    end = off + total
    if total < 4 or end > len(data):
        raise ImageError(f"MCUboot TLV area at {off:#x} claims {total} bytes, file too short")
    tlvs = []
    pos = off + 4
    while pos < end:
        if pos + 4 > end:
            raise ImageError("MCUboot TLV entry header runs past its area")
        t, length = struct.unpack_from("<HH", data, pos)
        pos += 4
        if pos + length > end:
            raise ImageError(f"MCUboot TLV {t:#x} of {length} bytes runs past its area")
        tlvs.append(Tlv(t, bytes(data[pos : pos + length]), protected))
        pos += length
    return tlvs, end


def parse(data: bytes) -> McubootImage:
    """Parse header and TLVs; raise ImageError if the file is not an MCUboot image."""
    if len(data) < 32:
        raise ImageError(f"file of {len(data)} bytes is too short for an MCUboot header")
    (magic, load_addr, hdr_size, protect_tlv_size, img_size, flags,
     major, minor, revision, build, _pad) = HEADER.unpack_from(data)
    if magic not in (IMAGE_MAGIC, IMAGE_MAGIC_V1):
        raise ImageError(f"not an MCUboot image: magic {magic:#010x}, expected "
                         f"{IMAGE_MAGIC:#010x} (sign it with imgtool)")
    if hdr_size < 32:
        raise ImageError(f"MCUboot header size {hdr_size} is below 32")
    tlv_off = hdr_size + img_size
    if tlv_off > len(data):
        raise ImageError(f"MCUboot image claims {img_size} payload bytes after a {hdr_size}-byte "
                         f"header, but the file has only {len(data)} bytes (truncated?)")
    tlvs: list[Tlv] = []
    if protect_tlv_size:
        prot, prot_end = _read_tlv_area(data, tlv_off, TLV_PROT_INFO_MAGIC, True)
        if prot_end - tlv_off != protect_tlv_size:
            raise ImageError("MCUboot protected TLV area size disagrees with the header")
        tlvs += prot
        tlv_off = prot_end
    unprot, end = _read_tlv_area(data, tlv_off, TLV_INFO_MAGIC, False)
    tlvs += unprot
    return McubootImage(
        load_addr=load_addr, hdr_size=hdr_size, protect_tlv_size=protect_tlv_size,
        img_size=img_size, flags=flags, version=Version(major, minor, revision, build),
        tlvs=tuple(tlvs), tlv_end=end, file_size=len(data),
        legacy_magic=magic == IMAGE_MAGIC_V1,
    )


def verify_hash(data: bytes, image: McubootImage | None = None) -> McubootImage:
    """Parse and check the SHA256 TLV against the bytes; the image is refused otherwise.

    An encrypted image cannot be checked this way (its TLV hashes the plaintext): it
    comes back with ``hash_checked`` false after the checks ``_check_encrypted`` makes."""
    image = image or parse(data)
    want = image.hash
    if want is None:
        raise ImageError("MCUboot image has no SHA256 TLV; ferry needs it to verify and to "
                         "recognise the image on the device (sign with imgtool)")
    got = hashlib.sha256(data[: image.hashed_size]).digest()
    if image.aes_bits is not None:
        return _check_encrypted(image, got == want)
    if got != want:
        raise ImageError(f"MCUboot image is corrupt: SHA256 TLV {want.hex()[:16]}... but the "
                         f"image hashes to {got.hex()[:16]}...; rebuild or re-download it")
    return replace(image, hash_checked=True)


def _check_encrypted(image: McubootImage, hashes_as_is: bool) -> McubootImage:
    """An encrypted image: check what can be checked without the device's key.

    imgtool hashes the plaintext, so the SHA256 TLV cannot match the ciphertext; if it
    does, the payload is in clear (``imgtool --clear``, meant for the primary slot):
    a device built without encryption boots it, one with encryption would decrypt
    plaintext and refuse it, so ferry passes it on and says so."""
    if image.flags & FLAG_ENCRYPTED_AES128 and image.flags & FLAG_ENCRYPTED_AES256:
        raise ImageError("MCUboot header says the image is encrypted with both AES-128 and "
                         "AES-256 (flags 0x4 and 0x8); re-sign it with imgtool")
    if hashes_as_is:
        return replace(image, hash_checked=True, payload_in_clear=True)
    bits = image.aes_bits
    assert bits is not None
    enc = image.enc_tlv
    if enc is None:
        raise ImageError(f"MCUboot image is encrypted (AES-{bits}) but carries no ENC TLV "
                         "(0x30-0x34) with its key: no device can decrypt it; re-sign it "
                         "with imgtool --encrypt")
    name, sizes = ENC_TLVS[enc.type]
    want = sizes[bits // 8]
    if len(enc.value) != want:
        raise ImageError(f"MCUboot ENC TLV {TLV_NAMES[enc.type]} is {len(enc.value)} bytes, "
                         f"MCUboot expects {want} for AES-{bits} ({name}); the image is "
                         "damaged or made by an incompatible tool")
    return replace(image, hash_checked=False)


def verify_signature(data: bytes, public_key_pem: bytes, image: McubootImage | None = None) -> None:
    """Check the signature TLV with a PEM public key (EC P-256 or ed25519), as MCUboot does."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519

    image = verify_hash(data, image)
    digest = image.hash
    assert digest is not None
    key = serialization.load_pem_public_key(public_key_pem)
    der = key.public_bytes(serialization.Encoding.DER,
                           serialization.PublicFormat.SubjectPublicKeyInfo)
    keyhash = image.tlv(TLV_KEYHASH)
    if keyhash is not None and keyhash != hashlib.sha256(der).digest():
        raise ImageError("MCUboot image was signed with another key (KEYHASH differs)")
    try:
        if isinstance(key, ec.EllipticCurvePublicKey):
            sig = image.tlv(TLV_ECDSA_SIG)
            if sig is None:
                raise ImageError("MCUboot image has no ECDSA_SIG TLV for an EC key")
            from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
            key.verify(sig, digest, ec.ECDSA(Prehashed(hashes.SHA256())))
        elif isinstance(key, ed25519.Ed25519PublicKey):
            sig = image.tlv(TLV_ED25519)
            if sig is None:
                raise ImageError("MCUboot image has no ED25519 TLV for an ed25519 key")
            key.verify(sig, digest)
        else:
            raise ImageError(f"unsupported public key type {type(key).__name__}")
    except InvalidSignature:
        raise ImageError("MCUboot image signature does not verify") from None
