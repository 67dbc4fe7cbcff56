"""Re-wrap a bundle's image key for more recipients without the signer
(``ferry bundle encrypt --to CERT.pem... IN OUT``).

The key envelope (packaging/envelope.py) is the one member the signature does not
cover, so replacing it leaves ``sw-description`` and ``sw-description.sig`` byte for
byte as they were, and every image too: OUT is IN with one member inserted or
swapped, copied as raw byte ranges. Who may add recipients is decided here: only
someone who can already open the image key, with a current recipient's key (the
envelope is opened, the content-encryption key wrapped again for the new certificates)
or with the AES key file itself. Either way the key is checked against the
``aes-key-check`` of every encrypted image before OUT is written, so a re-wrap can
never hand a fleet a key that does not open the bundle.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from cryptography import x509

from ferry.packaging.cpio import CpioStreamReader, bytesum, data_padding, encode_header
from ferry.packaging.description import (
    DESCRIPTION_NAME,
    ENVELOPE_NAME,
    SIGNATURE_NAME,
    Description,
    parse_description,
)
from ferry.packaging.encryption import AesKey, check_key
from ferry.packaging.envelope import (
    MAX_ENVELOPE_SIZE,
    EnvelopeError,
    Recipient,
    add_recipients,
    open_envelope,
    recipients,
    seal,
)
from ferry.packaging.errors import BundleCreateError, UnsignedBundle, WrongMemberOrder
from ferry.packaging.limits import Limits

CHUNK = 1 << 20
_CPIO_BLOCK = 512  # what CpioStreamWriter.finish pads the archive to
_TRAILER_LEN = len(encode_header("TRAILER!!!", 0, 0, ino=0))


@dataclass(frozen=True)
class _Layout:
    """Where IN's members are: the envelope goes in at ``insert_at`` and IN resumes at
    ``resume_at`` (after an old envelope, if there was one)."""

    description: Description
    sig_mtime: int
    old_envelope: bytes | None
    insert_at: int
    resume_at: int
    trailer_end: int


def _layout(path: Path) -> _Layout:
    with path.open("rb") as fh:
        cpio = CpioStreamReader(fh, Limits())
        first = cpio.next_header()
        if first.name != DESCRIPTION_NAME:
            raise WrongMemberOrder(f"{path}: first member is {first.name!r}; not a bundle")
        text = cpio.read_member(Limits().max_description_size, "sw-description")
        second = cpio.next_header()
        if second.name != SIGNATURE_NAME:
            raise UnsignedBundle(f"{path}: bundle is not signed; nothing to re-wrap")
        cpio.read_member(Limits().max_signature_size, "sw-description.sig")
        header = cpio.next_header(check_crc=False)
        insert_at = header.offset
        old: bytes | None = None
        if header.name == ENVELOPE_NAME:
            old = cpio.read_member(MAX_ENVELOPE_SIZE, f"key envelope {ENVELOPE_NAME}")
            header = cpio.next_header(check_crc=False)
        resume_at = header.offset
        while not header.is_trailer:
            while cpio.read_data(CHUNK):
                pass
            header = cpio.next_header(check_crc=False)
        return _Layout(description=parse_description(text), sig_mtime=second.mtime,
                       old_envelope=old, insert_at=insert_at, resume_at=resume_at,
                       trailer_end=header.offset + _TRAILER_LEN)


def _check_key(desc: Description, key: AesKey, source: str) -> None:
    encrypted = [e for e in desc.images if e.encrypted]
    if not encrypted:
        raise BundleCreateError("the bundle has no encrypted images; build it with "
                                "'ferry bundle create --to' or '--encrypt-key'")
    for entry in encrypted:
        if not check_key(entry, key):
            raise BundleCreateError(
                f"the key from {source} does not match the aes-key-check of image "
                f"{entry.filename!r}; it is not this bundle's key")


def peek_envelope(stream: BinaryIO) -> bytes | None:
    """The key envelope member of a bundle, WITHOUT checking anything it is next to:
    for display (``ferry bundle inspect``) only. None when the bundle has none."""
    cpio = CpioStreamReader(stream, Limits())
    lim = cpio.limits
    for name, cap in ((DESCRIPTION_NAME, lim.max_description_size),
                      (SIGNATURE_NAME, lim.max_signature_size)):
        if cpio.next_header().name != name:
            return None
        cpio.read_member(cap, name)
    if cpio.next_header(check_crc=False).name != ENVELOPE_NAME:
        return None
    return cpio.read_member(MAX_ENVELOPE_SIZE, f"key envelope {ENVELOPE_NAME}")


def new_envelope(old: bytes | None, desc: Description, certs: Sequence[x509.Certificate],
                 *, me: Recipient | None, key: AesKey | None, replace: bool) -> bytes:
    """The envelope OUT gets: IN's with ``certs`` added (``old``, opened by ``me``), or, with
    ``replace``, a fresh one for ``certs`` only; the image key comes from ``me`` (through
    the old envelope) or from ``key`` (the AES key file)."""
    if me is not None:
        if old is None:
            raise BundleCreateError("the bundle has no key envelope to open with --key; "
                                    "give its AES key file with --encrypt-key")
        image_key = open_envelope(old, me)
        _check_key(desc, image_key, f"{ENVELOPE_NAME} (opened by --key)")
        if replace:
            return seal(image_key, certs)
        return add_recipients(old, me, certs)
    if key is None:
        raise BundleCreateError("give a current recipient's --key and --cert, or the AES "
                                "key file (--encrypt-key): re-wrapping needs the image key")
    _check_key(desc, key, "--encrypt-key")
    if old is not None and not replace:
        raise BundleCreateError(
            "the bundle already has a key envelope; --encrypt-key cannot keep its "
            "recipients (their wrapped keys need a recipient's --key): give --replace to "
            "wrap for the --to certificates only, or a recipient's --key")
    return seal(key, certs)


def rewrap_bundle(src: str | Path, out: str | Path, certs: Sequence[x509.Certificate], *,
                  me: Recipient | None = None, key: AesKey | None = None,
                  replace: bool = False) -> list[str]:
    """Write OUT: IN with its key envelope replaced (see module docstring); returns the
    recipients of the new envelope."""
    src, out = Path(src), Path(out)
    layout = _layout(src)
    envelope = new_envelope(layout.old_envelope, layout.description, certs, me=me, key=key,
                            replace=replace)
    if len(envelope) > MAX_ENVELOPE_SIZE:
        raise EnvelopeError(f"the key envelope would be {len(envelope)} bytes, over the "
                            f"limit of {MAX_ENVELOPE_SIZE}: too many recipients")
    member = (encode_header(ENVELOPE_NAME, len(envelope), bytesum(envelope), ino=0x7FFF,
                            mtime=layout.sig_mtime) + envelope + data_padding(len(envelope)))
    fd, name = tempfile.mkstemp(prefix=".ferry-", suffix=".swu.part",
                                dir=out.resolve().parent)
    tmp: Path | None = Path(name)
    try:
        with src.open("rb") as fin, os.fdopen(fd, "wb") as fout:
            _copy(fin, fout, 0, layout.insert_at)
            fout.write(member)
            _copy(fin, fout, layout.resume_at, layout.trailer_end)
            fout.write(b"\0" * (-fout.tell() % _CPIO_BLOCK))
            fout.flush()
            os.fsync(fout.fileno())
        assert tmp is not None
        os.chmod(tmp, 0o644)
        os.replace(tmp, out)
        tmp = None
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
    return recipients(envelope)


def _copy(src: BinaryIO, dst: BinaryIO, start: int, end: int) -> None:
    src.seek(start)
    left = end - start
    while left > 0:
        chunk = src.read(min(CHUNK, left))
        if not chunk:
            raise BundleCreateError("the bundle changed while it was being re-wrapped")
        dst.write(chunk)
        left -= len(chunk)
