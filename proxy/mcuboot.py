"""MCUboot image format: header, TLV areas, and the checks ferry makes before sending.

Layout (mcu-tools/mcuboot ``image.h``): a 32-byte little-endian header padded to
``hdr_size``, the payload (``img_size`` bytes), an optional protected TLV area (magic
0x6908, counted in ``protect_tlv_size``) and the unprotected TLV area (magic 0x6907).
The SHA256 TLV covers header + payload + protected area; it is also the "hash" SMP's
image-state reports, so it is how ferry recognises an image on a device. Images padded
to the slot size (``imgtool --pad``) carry a trailer after the TLVs; it is kept and sent.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass, field
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
TLV_SEC_CNT = 0x50
SIGNATURE_TLVS = {TLV_RSA2048_PSS, TLV_ECDSA_SIG, TLV_RSA3072_PSS, TLV_ED25519}
TLV_NAMES = {
    TLV_KEYHASH: "KEYHASH", TLV_PUBKEY: "PUBKEY", TLV_SHA256: "SHA256",
    TLV_SHA384: "SHA384", TLV_SHA512: "SHA512", TLV_RSA2048_PSS: "RSA2048_PSS",
    TLV_ECDSA_SIG: "ECDSA_SIG", TLV_RSA3072_PSS: "RSA3072_PSS", TLV_ED25519: "ED25519",
    TLV_SEC_CNT: "SEC_CNT",
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
    """Parse and check the SHA256 TLV against the bytes; the image is refused otherwise."""
    image = image or parse(data)
    want = image.hash
    if want is None:
        raise ImageError("MCUboot image has no SHA256 TLV; ferry needs it to verify and to "
                         "recognise the image on the device (sign with imgtool)")
    if image.flags & (FLAG_ENCRYPTED_AES128 | FLAG_ENCRYPTED_AES256):
        # imgtool hashes the plaintext; only the device (holding the key) can check it.
        return image
    got = hashlib.sha256(data[: image.hashed_size]).digest()
    if got != want:
        raise ImageError(f"MCUboot image is corrupt: SHA256 TLV {want.hex()[:16]}... but the "
                         f"image hashes to {got.hex()[:16]}...; rebuild or re-download it")
    return image


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
