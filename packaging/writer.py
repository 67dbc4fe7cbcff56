"""Build a signed bundle without holding any image in memory.

Two passes per image: the first computes what sw-description must promise (sha256 and
size of the stored bytes, plus the cpio byte sum); when compressing, that pass writes the
compressed bytes to a temporary file next to the output (same filesystem, so no tmpfs
fills up) and hashes the original on the way. sw-description is then rendered and
signed, and the second pass streams everything into the archive, re-hashing each image so
a file that changed between the passes fails the build instead of producing a bundle that
every gateway would reject. A new keyring (``keyring=``) is checked and added last, named
and hashed under ``software.ferry.keyring`` (packaging/keyringupdate.py).
"""

from __future__ import annotations

import hashlib
import os
import struct
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from ferry.packaging import signature
from ferry.packaging.compression import CLI_TO_DESCRIPTION, compress_file
from ferry.packaging.cpio import CpioStreamWriter, bytesum, check_name
from ferry.packaging.description import (
    DESCRIPTION_NAME,
    ENVELOPE_NAME,
    FORMATS,
    SIGNATURE_NAME,
    Description,
    ImageEntry,
    TargetSpec,
    render_description,
)
from ferry.packaging.encryption import AesKey, encrypt_file, key_check, new_ivt
from ferry.packaging.errors import BundleCreateError, BundleError
from ferry.packaging.keyringupdate import keyring_member
from ferry.packaging.limits import NEWC_MAX_SIZE

if TYPE_CHECKING:
    from ferry.packaging.chunker import ChunkParams
    from ferry.packaging.cmsbuild import RawSigner
    from ferry.packaging.deltaref import DeltaRef
    from ferry.packaging.pkcs11 import TokenAesKey

CHUNK = 1 << 20
_SUFFIX = {"zstd": ".zst", "zlib": ".gz"}
ENCRYPTED_SUFFIX = ".enc"  # as swugenerator names encrypted members
MCUBOOT_MAGIC = 0x96F3B83D
ZIGBEE_OTA_MAGIC = 0x0BEEF11E


@dataclass(frozen=True)
class ImageInput:
    """One file to put in a bundle; ``target`` is None for the gateway rootfs."""

    path: Path
    compress: str | None  # "zstd" | "zlib" | None (sw-description spelling)
    target: TargetSpec | None = None
    device: str | None = None
    filename: str | None = None  # member name; default derived from the path
    delta: ChunkParams | None = None  # rootfs as a chunk store + index (deltabuild.py)


@dataclass
class _Prepared:
    entry: ImageEntry
    stored: Path  # the file whose bytes go into the archive
    check: int  # cpio byte sum
    temp: bool = False
    index: bytes | None = None  # the chunk index member of a delta rootfs


@dataclass(frozen=True)
class SigningKey:
    """A key file's private key, or a RawSigner whose key stays in a PKCS#11 token."""

    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | RawSigner
    cert: x509.Certificate
    chain: tuple[x509.Certificate, ...] = field(default_factory=tuple)
    pss: bool = False


def load_signing_key(
    key_path: str | Path, cert_path: str | Path | None, *, pss: bool = False
) -> SigningKey:
    """The private key and the PEM certificate file (signer first, then intermediates).

    ``key_path`` may be a ``pkcs11:`` URI (packaging/pkcs11.py): the token signs, and
    without ``cert_path`` the certificate comes from the token too."""
    certs: list[x509.Certificate] = []
    if cert_path is not None:
        try:
            certs = x509.load_pem_x509_certificates(Path(cert_path).read_bytes())
        except (OSError, ValueError) as err:
            raise BundleCreateError(f"cannot load certificate {cert_path}: {err}") from None
    from ferry.packaging.pkcs11 import is_pkcs11_uri, open_token_signer

    if is_pkcs11_uri(key_path):
        assert isinstance(key_path, str)

        signer, cert = open_token_signer(key_path, certs[0] if certs else None, pss=pss)
        return SigningKey(key=signer, cert=cert, chain=tuple(certs[1:]), pss=pss)
    if cert_path is None:
        raise BundleCreateError(f"give the signer certificate (--cert) for the key {key_path}")
    try:
        key = serialization.load_pem_private_key(Path(key_path).read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as err:
        raise BundleCreateError(f"cannot load private key {key_path}: {err}") from None
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise BundleCreateError(f"{key_path}: only RSA and EC keys can sign bundles")
    if certs[0].public_key() != key.public_key():
        raise BundleCreateError(f"{cert_path} does not match the private key {key_path}")
    return SigningKey(key=key, cert=certs[0], chain=tuple(certs[1:]), pss=pss)


def sign_description(text: bytes, signing: SigningKey) -> bytes:
    """CMS over sw-description: by ``cryptography`` for a key file, assembled around the
    token's signature otherwise (packaging/cmsbuild.py)."""
    if isinstance(signing.key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        return signature.sign(
            text, signing.key, signing.cert, extra_certs=signing.chain, pss=signing.pss
        )
    from ferry.packaging.cmsbuild import sign_external

    return sign_external(
        text, signing.key, signing.cert, extra_certs=signing.chain, pss=signing.pss
    )


def sniff_format(path: Path) -> tuple[str, str | None]:
    """Guess a target image format (and version) from its header: MCUboot, Zigbee OTA,
    DfuSe, else plain ``bin``. Saves the integrator from repeating what the file says."""
    with path.open("rb") as fh:
        head = fh.read(64)
    if len(head) >= 20 and struct.unpack_from("<I", head)[0] == MCUBOOT_MAGIC:
        major, minor, rev, build = struct.unpack_from("<BBHI", head, 20)
        version = f"{major}.{minor}.{rev}" + (f"+{build}" if build else "")
        return "mcuboot", version
    if len(head) >= 20 and struct.unpack_from("<I", head)[0] == ZIGBEE_OTA_MAGIC:
        return "zigbee-ota", f"0x{struct.unpack_from('<I', head, 14)[0]:08x}"
    if head.startswith(b"DfuSe"):
        return "dfuse", None
    if path.suffix == ".dfu":
        return "dfu", None
    return "bin", None


def sniff_selector(path: Path) -> dict[str, str]:
    """Selector keys a target image announces itself: a Zigbee OTA file names the
    manufacturer code and image type that nodes match against."""
    with path.open("rb") as fh:
        head = fh.read(20)
    if len(head) >= 20 and struct.unpack_from("<I", head)[0] == ZIGBEE_OTA_MAGIC:
        manufacturer, image_type = struct.unpack_from("<HH", head, 10)
        return {"manufacturer": f"0x{manufacturer:04x}", "image_type": f"0x{image_type:04x}"}
    return {}


def _hash_file(path: Path) -> tuple[str, int, int]:
    sha = hashlib.sha256()
    size = 0
    check = 0
    with path.open("rb") as fh:
        while chunk := fh.read(CHUNK):
            sha.update(chunk)
            size += len(chunk)
            check = bytesum(chunk, check)
    return sha.hexdigest(), size, check


class _HashingReader:
    """Hashes what a compressor reads from the original, so the original is read once."""

    def __init__(self, fh: BinaryIO) -> None:
        self._fh = fh
        self.sha = hashlib.sha256()
        self.size = 0

    def read(self, n: int = -1) -> bytes:
        chunk = self._fh.read(n)
        self.sha.update(chunk)
        self.size += len(chunk)
        return chunk


def _encrypt(stored: Path, temp: bool, workdir: Path, key: AesKey,
             ivt: bytes) -> tuple[Path, int, str]:
    """Encrypt ``stored`` (the original, or the compressed temp file, which is then
    removed) into a new temp file; returns it with the plaintext's size and sha256."""
    fd, tmp_name = tempfile.mkstemp(prefix=".ferry-", suffix=ENCRYPTED_SUFFIX, dir=workdir)
    out = Path(tmp_name)
    try:
        with stored.open("rb") as src, os.fdopen(fd, "wb") as dst:
            hashing = _HashingReader(src)
            encrypt_file(hashing, dst, key, ivt)  # type: ignore[arg-type]
    except BaseException:
        out.unlink(missing_ok=True)
        raise
    finally:
        if temp:
            stored.unlink(missing_ok=True)
    return out, hashing.size, hashing.sha.hexdigest()


def _prepare(item: ImageInput, workdir: Path, key: AesKey | None = None) -> _Prepared:
    path = item.path
    if not path.is_file():
        raise BundleCreateError(f"image {path} does not exist or is not a regular file")
    kind = item.compress
    name = item.filename or path.name + (_SUFFIX[kind] if kind else "") + (
        ENCRYPTED_SUFFIX if key is not None else "")
    try:
        check_name(name)
    except BundleError as err:
        raise BundleCreateError(f"cannot name image {path}: {err}") from None
    role = "rootfs" if item.target is None else "target"
    dec_size: int | None = None
    dec_sha: str | None = None
    stored = path
    temp = False
    index: bytes | None = None
    delta: DeltaRef | None = None
    if item.delta is not None and role == "rootfs":
        from ferry.packaging.deltabuild import delta_member

        if kind != "zstd":
            raise BundleCreateError("a delta rootfs is stored as zstd chunks; use --compress zstd")
        stored, built, delta = delta_member(path, item.delta, workdir, name)
        temp, index = True, built.index
        dec_size, dec_sha = built.image_size, built.image_sha256
    elif kind:
        fd, tmp_name = tempfile.mkstemp(prefix=".ferry-", suffix=_SUFFIX[kind], dir=workdir)
        stored = Path(tmp_name)
        temp = True
        try:
            with path.open("rb") as src, os.fdopen(fd, "wb") as dst:
                hashing = _HashingReader(src)
                compress_file(kind, hashing, dst)  # type: ignore[arg-type]
            dec_size, dec_sha = hashing.size, hashing.sha.hexdigest()
        except BaseException:
            stored.unlink(missing_ok=True)
            raise
    ivt: bytes | None = None
    if key is not None:
        # Compress first, encrypt second: SWUpdate decrypts, then decompresses. The
        # plaintext hash (decompressed-*) lets the gateway tell a wrong key from a good
        # one whatever the padding happens to look like.
        ivt = new_ivt()
        stored, plain_size, plain_sha = _encrypt(stored, temp, workdir, key, ivt)
        temp = True
        if dec_size is None:
            dec_size, dec_sha = plain_size, plain_sha
    sha, size, check = _hash_file(stored)
    if size > NEWC_MAX_SIZE:
        if temp:
            stored.unlink(missing_ok=True)
        raise BundleCreateError(
            f"image {path} is {size} bytes stored; a bundle member holds at most {NEWC_MAX_SIZE}"
        )
    entry = ImageEntry(
        filename=name,
        size=size,
        sha256=sha,
        compressed=kind,
        role=role,
        device=item.device,
        target=item.target,
        decompressed_size=dec_size,
        decompressed_sha256=dec_sha,
        delta=delta,
        encrypted=key is not None,
        ivt=ivt.hex() if ivt is not None else None,
        key_check=key_check(key) if key is not None else None,
    )
    return _Prepared(entry=entry, stored=stored, check=check, temp=temp, index=index)


def _copy_member(writer: CpioStreamWriter, out: BinaryIO, prep: _Prepared) -> None:
    entry = prep.entry
    writer.begin(entry.filename, entry.size, prep.check)
    sha = hashlib.sha256()
    size = 0
    with prep.stored.open("rb") as fh:
        while chunk := fh.read(CHUNK):
            sha.update(chunk)
            size += len(chunk)
            if size > entry.size:
                break
            writer.write(chunk)
    if size != entry.size or sha.hexdigest() != entry.sha256:
        raise BundleCreateError(f"{prep.stored} changed while the bundle was being built")
    writer.end(entry.size)


def create_bundle(
    output: str | Path,
    *,
    signing: SigningKey,
    version: str,
    compatible: Sequence[str],
    images: Sequence[ImageInput],
    mtime: int = 0,
    keyring: Path | None = None,
    keyring_version: int | None = None,
    encrypt_key: AesKey | TokenAesKey | None = None,
    envelope: bytes | None = None,
) -> Description:
    """Write a signed bundle to ``output`` (atomically: a temp file renamed into place).

    ``encrypt_key``: encrypt every image with AES-CBC as SWUpdate does (a random ivt
    per image, recorded in its entry); see packaging/encryption.py. ``envelope``: that
    key wrapped for recipients (packaging/envelope.py), written unsigned right after
    the signature as ``sw-description.key``."""
    if not version:
        raise BundleCreateError("a bundle needs a version (--version)")
    if not compatible:
        raise BundleCreateError("a bundle needs at least one --compatible hardware string")
    if (keyring is None) != (keyring_version is None):
        raise BundleCreateError("give --keyring and --keyring-version together")
    if not images and keyring is None:
        raise BundleCreateError(
            "a bundle needs a rootfs image or at least one --target (or a --keyring)")
    if encrypt_key is not None and not isinstance(encrypt_key, AesKey):
        raise BundleCreateError(
            "--encrypt-key takes SWUpdate's key file; a pkcs11: AES key decrypts on "
            "gateways only ([keyring] decryption_key)"
        )
    if sum(1 for i in images if i.target is None) > 1:
        raise BundleCreateError("a bundle carries at most one rootfs image")
    for item in images:
        if item.target is not None and item.target.format not in FORMATS:
            raise BundleCreateError(
                f"target {item.target.name!r}: format {item.target.format!r} is not one of "
                f"{', '.join(FORMATS)}"
            )
    out = Path(output)
    workdir = out.resolve().parent
    ordered = [i for i in images if i.target is None] + [i for i in images if i.target]
    prepared: list[_Prepared] = []
    tmp_out: Path | None = None
    try:
        for item in ordered:
            prepared.append(_prepare(item, workdir, encrypt_key))
        names = [p.entry.filename for p in prepared]
        new_keyring = None
        if keyring is not None and keyring_version is not None:
            new_keyring = keyring_member(Path(keyring), keyring_version)
            names.append(new_keyring[0].filename)
        dup = {n for n in names if names.count(n) > 1} | (
            set(names) & {DESCRIPTION_NAME, SIGNATURE_NAME}
        )
        if dup:
            raise BundleCreateError(f"two images would share the member name {sorted(dup)[0]!r}")
        desc = Description(
            version=version,
            compatible=tuple(compatible),
            images=tuple(p.entry for p in prepared) + (
                (new_keyring[0],) if new_keyring else ()),
            keyring_version=keyring_version if new_keyring else None,
        )
        text = render_description(desc)
        sig = sign_description(text, signing)
        fd, name = tempfile.mkstemp(prefix=".ferry-", suffix=".swu.part", dir=workdir)
        tmp_out = Path(name)
        with os.fdopen(fd, "wb") as fh:
            writer = CpioStreamWriter(fh, mtime=mtime)
            writer.add_bytes(DESCRIPTION_NAME, text)
            writer.add_bytes(SIGNATURE_NAME, sig)
            if envelope is not None:
                writer.add_bytes(ENVELOPE_NAME, envelope)
            for prep in prepared:
                if prep.index is not None and prep.entry.delta is not None:
                    writer.add_bytes(prep.entry.delta.index, prep.index)  # before its rootfs
                _copy_member(writer, fh, prep)
            if new_keyring is not None:
                writer.add_bytes(new_keyring[0].filename, new_keyring[1])
            writer.finish()
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp_out, 0o644)
        os.replace(tmp_out, out)
        tmp_out = None
        return desc
    finally:
        for prep in prepared:
            if prep.temp:
                prep.stored.unlink(missing_ok=True)
        if tmp_out is not None:
            tmp_out.unlink(missing_ok=True)


def compression_from_cli(value: str) -> str | None:
    try:
        return CLI_TO_DESCRIPTION[value]
    except KeyError:
        raise BundleCreateError(f"--compress {value!r}: use zstd, gzip or none") from None
