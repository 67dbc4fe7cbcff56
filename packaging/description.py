"""The sw-description model: what a bundle promises, bound by sha256 and size.

SWUpdate reads ``software.version``, ``software.hardware-compatibility`` and the
``software.images`` list; ferry keeps the gateway rootfs there so SWUpdate (and DDI
servers that parse .swu files) understand the bundle. Firmware for devices behind the
gateway lives under ``software.ferry.targets``, a group SWUpdate never looks at, so
SWUpdate neither installs nor requires those members. A new trust keyring rides the same
way, under ``software.ferry.keyring`` with its version (packaging/keyringupdate.py).
docs/bundle-format.md is the normative description of every key.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from ferry.packaging import libconfig
from ferry.packaging.cpio import check_name
from ferry.packaging.deltaref import KEY as DELTA_KEY
from ferry.packaging.deltaref import DeltaRef, delta_doc, parse_delta
from ferry.packaging.errors import BadDescription, BundleError, shown
from ferry.packaging.limits import NEWC_MAX_SIZE

DESCRIPTION_NAME = "sw-description"
SIGNATURE_NAME = "sw-description.sig"
ENVELOPE_NAME = "sw-description.key"  # the unsigned key envelope (packaging/envelope.py)
FORMATS = ("mcuboot", "raw", "dfu", "dfuse", "zigbee-ota", "bin")
COMPRESSIONS = ("zstd", "zlib")
_SHA256 = re.compile(r"[0-9a-fA-F]{64}")
_IVT = re.compile(r"[0-9a-fA-F]{32}")
# Keys SWUpdate would act on that ferry cannot honour: refuse rather than ignore them.
_UNSUPPORTED_SECTIONS = ("scripts", "files", "partitions", "bootenv", "uboot")
MAX_KEYRING_SIZE = 1 << 20  # a keyring member is read into memory: CA certificates + CRLs
MAX_KEYRING_VERSION = 2**31 - 1


@dataclass(frozen=True)
class TargetSpec:
    transport: str
    name: str
    format: str
    version: str
    selector: dict[str, str] = field(default_factory=dict, hash=False)


@dataclass(frozen=True)
class ImageEntry:
    filename: str
    size: int
    sha256: str  # hex of the STORED (possibly compressed) bytes, as SWUpdate checks it
    compressed: str | None  # "zstd" | "zlib" (a gzip stream) | None
    role: str  # "rootfs" | "target" | "keyring"
    device: str | None = None
    target: TargetSpec | None = None
    decompressed_size: int | None = None
    decompressed_sha256: str | None = None
    delta: DeltaRef | None = None  # rootfs only: its chunk index (packaging/deltaref.py)
    # AES-CBC as SWUpdate encrypts (packaging/encryption.py): sha256/size are of the
    # ciphertext; decompressed-* then describe the bytes after decryption and
    # decompression; ivt (32 hex digits) overrides the gateway key file's.
    encrypted: bool = False
    ivt: str | None = None
    # ferry's check value of the AES key (encryption.key_check; ignored by SWUpdate):
    # a gateway with another key refuses the bundle before touching a slot
    key_check: str | None = None


@dataclass(frozen=True)
class Description:
    version: str
    compatible: tuple[str, ...]
    images: tuple[ImageEntry, ...]
    keyring_version: int | None = None  # set iff an image has role "keyring"

    def keyring(self) -> ImageEntry | None:
        return next((i for i in self.images if i.role == "keyring"), None)

    def rootfs(self) -> ImageEntry | None:
        return next((i for i in self.images if i.role == "rootfs"), None)

    def targets(self) -> list[ImageEntry]:
        return [i for i in self.images if i.role == "target"]

    def image(self, filename: str) -> ImageEntry | None:
        return next((i for i in self.images if i.filename == filename), None)


# -- parsing ----------------------------------------------------------------------------
def _str(entry: dict[str, Any], key: str, where: str, *, required: bool = True) -> str | None:
    value = entry.get(key)
    if value is None:
        if required:
            raise BadDescription(f"sw-description: {where} has no {key!r}")
        return None
    if not isinstance(value, str):
        raise BadDescription(f"sw-description: {where}.{key} must be a string")
    return value


def _size(
    entry: dict[str, Any], key: str, where: str, *, required: bool, cap: int = NEWC_MAX_SIZE
) -> int | None:
    value = entry.get(key)
    if value is None:
        if required:
            raise BadDescription(
                f"sw-description: {where} has no {key!r} (ferry needs every image's size)"
            )
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= cap:
        raise BadDescription(f"sw-description: {where}.{key} must be an integer 0..{cap}")
    return value


def _sha(entry: dict[str, Any], key: str, where: str, *, required: bool) -> str | None:
    value = _str(entry, key, where, required=required)
    if value is None:
        return None
    if not _SHA256.fullmatch(value):
        raise BadDescription(f"sw-description: {where}.{key} is not 64 hex digits")
    return value.lower()


def _compression(entry: dict[str, Any], where: str) -> str | None:
    value = entry.get("compressed")
    if value is None or value is False:
        return None
    if value is True:  # SWUpdate's old spelling of zlib
        return "zlib"
    if value not in COMPRESSIONS:
        raise BadDescription(
            f"sw-description: {where}.compressed = {shown(value)}; ferry reads 'zstd' or 'zlib'"
        )
    return str(value)


def _image(entry: Any, where: str, role: str) -> ImageEntry:
    if not isinstance(entry, dict):
        raise BadDescription(f"sw-description: {where} must be a group {{ ... }}")
    filename = _str(entry, "filename", where)
    assert filename is not None
    try:
        check_name(filename)
    except BundleError as err:
        raise BadDescription(f"sw-description: {where}: {err}") from None
    if filename in (DESCRIPTION_NAME, SIGNATURE_NAME, ENVELOPE_NAME):
        raise BadDescription(f"sw-description: {where} uses the reserved name {shown(filename)}")
    size = _size(entry, "size", where, required=True)
    sha = _sha(entry, "sha256", where, required=True)
    assert size is not None and sha is not None
    encrypted, ivt = _encryption(entry, where, size)
    key_check = _str(entry, "aes-key-check", where, required=False)
    if key_check is not None and not _IVT.fullmatch(key_check):
        raise BadDescription(f"sw-description: {where}.aes-key-check is not 32 hex digits")
    target = None
    if role == "target":
        fmt = _str(entry, "format", where)
        if fmt not in FORMATS:
            raise BadDescription(
                f"sw-description: {where}.format = {shown(fmt)}; "
                f"expected one of {', '.join(FORMATS)}"
            )
        selector = entry.get("selector", {})
        if not isinstance(selector, dict) or not all(isinstance(v, str) for v in selector.values()):
            raise BadDescription(f"sw-description: {where}.selector must map names to strings")
        target = TargetSpec(
            transport=_str(entry, "transport", where) or "",
            name=_str(entry, "name", where) or "",
            format=fmt,
            version=_str(entry, "version", where) or "",
            selector=dict(selector),
        )
    return ImageEntry(
        filename=filename,
        size=size,
        sha256=sha,
        compressed=_compression(entry, where),
        role=role,
        device=_str(entry, "device", where, required=False),
        target=target,
        decompressed_size=_size(entry, "decompressed-size", where, required=False, cap=2**63 - 1),
        decompressed_sha256=_sha(entry, "decompressed-sha256", where, required=False),
        delta=parse_delta(entry, where, role=role, compressed=_compression(entry, where)),
        encrypted=encrypted,
        ivt=ivt,
        key_check=key_check.lower() if key_check is not None else None,
    )


def _encryption(entry: dict[str, Any], where: str, size: int) -> tuple[bool, str | None]:
    """``encrypted`` (a boolean) and ``ivt`` (32 hex digits), as SWUpdate reads them.
    AES-CBC ciphertext with PKCS#7 padding is a whole number of 16-byte blocks, at
    least one: any other signed size is refused before a byte is read."""
    value = entry.get("encrypted", False)
    if not isinstance(value, bool):
        raise BadDescription(f"sw-description: {where}.encrypted must be true or false")
    ivt = _str(entry, "ivt", where, required=False)
    if ivt is not None and not _IVT.fullmatch(ivt):
        raise BadDescription(f"sw-description: {where}.ivt is not 32 hex digits")
    if value and (size == 0 or size % 16):
        raise BadDescription(
            f"sw-description: {where} is encrypted but its size {size} is not a whole "
            "number of 16-byte AES blocks; the image is truncated or not AES-CBC")
    return value, ivt.lower() if ivt is not None else None


def _keyring(entry: Any) -> tuple[ImageEntry, int]:
    where = "software.ferry.keyring"
    if not isinstance(entry, dict):
        raise BadDescription(f"sw-description: {where} must be a group {{ ... }}")
    filename = _str(entry, "filename", where)
    assert filename is not None
    try:
        check_name(filename)
    except BundleError as err:
        raise BadDescription(f"sw-description: {where}: {err}") from None
    if filename in (DESCRIPTION_NAME, SIGNATURE_NAME, ENVELOPE_NAME):
        raise BadDescription(f"sw-description: {where} uses the reserved name {shown(filename)}")
    size = _size(entry, "size", where, required=True, cap=MAX_KEYRING_SIZE)
    sha = _sha(entry, "sha256", where, required=True)
    version = entry.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or not (
            1 <= version <= MAX_KEYRING_VERSION):
        raise BadDescription(
            f"sw-description: {where}.version must be an integer 1..{MAX_KEYRING_VERSION}")
    assert size is not None and sha is not None
    return ImageEntry(filename=filename, size=size, sha256=sha, compressed=None,
                      role="keyring"), version


def _list(value: Any, where: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise BadDescription(f"sw-description: {where} must be a list ( ... )")
    return value


def parse_description(data: bytes) -> Description:
    """Parse and validate sw-description bytes (call only after the signature checked)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise BadDescription("sw-description is not UTF-8 text") from None
    root = libconfig.loads(text)
    software = root.get("software")
    if not isinstance(software, dict):
        raise BadDescription("sw-description has no 'software' group")
    for key in _UNSUPPORTED_SECTIONS:
        if software.get(key):
            raise BadDescription(f"sw-description: software.{key} is not supported by ferry")
    version = _str(software, "version", "software")
    assert version is not None
    compat = software.get("hardware-compatibility", [])
    if not isinstance(compat, list) or not all(isinstance(c, str) for c in compat):
        raise BadDescription("sw-description: software.hardware-compatibility must be [strings]")
    images: list[ImageEntry] = []
    for i, entry in enumerate(_list(software.get("images"), "software.images")):
        images.append(_image(entry, f"software.images[{i}]", "rootfs"))
    if len(images) > 1:
        raise BadDescription(
            "sw-description: software.images lists more than one image; ferry installs one "
            "rootfs (put device firmware under software.ferry.targets)"
        )
    ferry = software.get("ferry", {})
    if not isinstance(ferry, dict):
        raise BadDescription("sw-description: software.ferry must be a group { ... }")
    for i, entry in enumerate(_list(ferry.get("targets"), "software.ferry.targets")):
        images.append(_image(entry, f"software.ferry.targets[{i}]", "target"))
    keyring_version = None
    if ferry.get("keyring") is not None:
        keyring_entry, keyring_version = _keyring(ferry["keyring"])
        images.append(keyring_entry)
    seen: set[str] = set()
    for image in images:
        if image.filename in seen:
            raise BadDescription(f"sw-description lists {shown(image.filename)} twice")
        seen.add(image.filename)
    for image in images:
        if image.delta is not None:
            if image.delta.index in seen | {DESCRIPTION_NAME, SIGNATURE_NAME, ENVELOPE_NAME}:
                raise BadDescription(f"sw-description: chunk index {shown(image.delta.index)} "
                                     "shares its name with another member")
            seen.add(image.delta.index)
    if not images:
        raise BadDescription("sw-description lists no images")
    return Description(version=version, compatible=tuple(compat), images=tuple(images),
                       keyring_version=keyring_version)


# -- emitting ---------------------------------------------------------------------------
def _image_doc(image: ImageEntry) -> dict[str, Any]:
    doc: dict[str, Any] = {"filename": image.filename}
    if image.role == "rootfs":
        doc["type"] = "raw"
        if image.device:
            doc["device"] = image.device
        doc["installed-directly"] = True
    else:
        assert image.target is not None
        spec = image.target
        doc.update(
            transport=spec.transport, name=spec.name, format=spec.format, version=spec.version
        )
        if spec.selector:
            doc["selector"] = dict(spec.selector)
    doc["sha256"] = image.sha256
    doc["size"] = image.size
    if image.compressed:
        doc["compressed"] = image.compressed
    if image.decompressed_size is not None:
        doc["decompressed-size"] = image.decompressed_size
    if image.decompressed_sha256 is not None:
        doc["decompressed-sha256"] = image.decompressed_sha256
    if image.delta is not None:
        doc[DELTA_KEY] = delta_doc(image.delta)
    if image.encrypted:
        doc["encrypted"] = True
        if image.ivt is not None:
            doc["ivt"] = image.ivt
        if image.key_check is not None:
            doc["aes-key-check"] = image.key_check
    return doc


def render_description(desc: Description) -> bytes:
    """sw-description text for ``desc``; parse_description(render(d)) == d."""
    software: dict[str, Any] = {
        "version": desc.version,
        "hardware-compatibility": libconfig.Array(desc.compatible),
    }
    rootfs = [i for i in desc.images if i.role == "rootfs"]
    targets = [i for i in desc.images if i.role == "target"]
    keyring = desc.keyring()
    if rootfs:
        software["images"] = [_image_doc(i) for i in rootfs]
    ferry: dict[str, Any] = {}
    if targets:
        ferry["targets"] = [_image_doc(i) for i in targets]
    if keyring is not None:
        assert desc.keyring_version is not None
        ferry["keyring"] = {"filename": keyring.filename, "version": desc.keyring_version,
                            "sha256": keyring.sha256, "size": keyring.size}
    if ferry:
        software["ferry"] = ferry
    return libconfig.dumps({"software": software}).encode()
