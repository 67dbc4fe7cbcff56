"""One-pass, verify-first reader of a ferry/SWUpdate bundle.

Nothing from a payload is handed out before sw-description and its signature are read
and verified, and each image is handed out as a stream whose size and sha256 are checked
as its last bytes arrive: the consumer never sees the final chunk of an image that does
not match, so a slot written from it is never complete with bad data.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO, cast

from ferry.packaging.cpio import CpioHeader, CpioStreamReader
from ferry.packaging.description import (
    DESCRIPTION_NAME,
    SIGNATURE_NAME,
    Description,
    ImageEntry,
    parse_description,
)
from ferry.packaging.errors import (
    BadHeader,
    BundleError,
    HashMismatch,
    MissingMember,
    OverLimit,
    SizeMismatch,
    UnlistedMember,
    UnsignedBundle,
    WrongMemberOrder,
)
from ferry.packaging.keyring import Keyring
from ferry.packaging.limits import Limits
from ferry.packaging.signature import verify

CHUNK = 1 << 20


class ImageStream(io.RawIOBase):
    """The stored bytes of one image, checked against sw-description at their end."""

    def __init__(self, cpio: CpioStreamReader, entry: ImageEntry, absent: int = 0) -> None:
        self._cpio = cpio
        self.entry = entry
        # A resumed download leaves out the first ``absent`` stored bytes: the stored
        # sha256 cannot be computed then, and the decompressed-sha256 the slot writer
        # checks over the whole slot is what verifies the image (see images()).
        self._hash: Any = hashlib.sha256() if not absent else None
        self._done = False
        self.bytes_read = absent
        if absent:
            cpio.skip_absent(absent)
        if entry.size == 0:  # nothing to read: check the empty image's hash right away
            self._done = True
            self._check()

    def readable(self) -> bool:
        return True

    def verified_by_output(self) -> bool:
        """Leave the stored sha256 to the consumer's check of the decompressed output.

        A zstd image whose signed sw-description also carries its decompressed-sha256
        is proven by that hash over what the slot writer writes: the stored bytes are
        only ever used through the decompressor, whose output is checked in full before
        the slot may boot. Hashing the stored bytes as well proves nothing more (a
        resumed download already relies on this, see ``images``) and costs a second
        sha256 pass, about a third of the install's CPU per compressed byte. Size and
        cpio checksum are still checked here. Returns whether the hash was dropped:
        only before the first byte, and never for an encrypted image, whose ciphertext
        hash is what makes CBC without a MAC safe (packaging/encryption.py).
        """
        e = self.entry
        if self.bytes_read or e.encrypted or e.compressed != "zstd" \
                or not e.decompressed_sha256:
            return False
        self._hash = None
        return True

    @property
    def finished(self) -> bool:
        return self._done

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            return self.readall()
        if self._done or size == 0:
            return b""
        chunk = self._cpio.read_data(size)
        if self._hash is not None:
            self._hash.update(chunk)
        self.bytes_read += len(chunk)
        if self._cpio.remaining == 0:
            self._done = True
            self._check()
        return chunk

    def readinto(self, buf: memoryview | bytearray) -> int:  # type: ignore[override]
        """Fill the caller's buffer and hash it there: no bytes object, no copy.

        The bytes are in ``buf`` before they are checked, so a bad image's last chunk
        is withheld the only way a buffer can be: this raises instead of returning its
        count, and a caller must not use ``buf`` after an exception.
        """
        if self._done or len(buf) == 0:
            return 0
        view = memoryview(buf).cast("B")
        n = self._cpio.readinto_data(view)
        if self._hash is not None:
            self._hash.update(view[:n])
        self.bytes_read += n
        if self._cpio.remaining == 0:
            self._done = True
            self._check()
        return n

    def readall(self) -> bytes:
        parts = []
        while chunk := self.read(CHUNK):
            parts.append(chunk)
        return b"".join(parts)

    def _check(self) -> None:
        entry = self.entry
        got = self._hash.hexdigest() if self._hash is not None else entry.sha256
        if got != entry.sha256:
            raise HashMismatch(
                f"image {entry.filename!r}: sha256 {got[:16]}... does not match "
                f"sw-description {entry.sha256[:16]}...; the bundle is corrupt or tampered"
            )
        if not self._cpio.checksum_ok():
            raise BadHeader(f"image {entry.filename!r}: cpio checksum does not match its header")

    def drain(self) -> None:
        while self.read(CHUNK):
            pass


class BundleReader:
    """Reads and verifies sw-description on construction, then streams the images."""

    def __init__(
        self,
        stream: BinaryIO,
        keyring: Keyring | Callable[[bytes], Keyring],
        *,
        limits: Limits | None = None,
    ) -> None:
        """``keyring`` may be a function of the exact sw-description bytes: the gateway's
        trust store re-reads a rotation bundle under the keyring it was accepted with
        (ferry.daemon.install.trust)."""
        self.limits = limits or Limits()
        self._cpio = CpioStreamReader(stream, self.limits)
        self._started = False
        first = self._cpio.next_header()
        if first.name != DESCRIPTION_NAME:
            if first.is_trailer:
                raise MissingMember("bundle is an empty cpio archive; sw-description missing")
            raise WrongMemberOrder(
                f"first member is {first.name!r}; a bundle starts with sw-description"
            )
        description = self._cpio.read_member(self.limits.max_description_size, "sw-description")
        second = self._cpio.next_header()
        if second.name != SIGNATURE_NAME:
            raise UnsignedBundle(
                f"bundle is not signed: second member is {second.name!r}, not "
                "sw-description.sig; sign it with 'ferry bundle create --key/--cert'"
            )
        sig = self._cpio.read_member(self.limits.max_signature_size, "sw-description.sig")
        if not isinstance(keyring, Keyring):
            keyring = keyring(description)
        signer = verify(description, sig, keyring)
        self.signature: bytes = sig
        self.signer_info = signer  # every anchor the signature reached (k of n)
        self.signer: str = signer.subject
        self.raw_description: bytes = description
        self.description: Description = parse_description(description)
        # a delta rootfs's chunk index, read and checked right before its rootfs
        self.delta_index: bytes | None = None
        # the unsigned key envelope right after the signature (read_envelope())
        self.envelope: bytes | None = None
        self._peeked: CpioHeader | None = None
        self._envelope_read = False
        if len(self.description.images) > self.limits.max_images:
            raise OverLimit(
                f"sw-description lists {len(self.description.images)} images; the limit is "
                f"{self.limits.max_images}"
            )
        for entry in self.description.images:
            if entry.size > self.limits.max_member_size:
                raise OverLimit(
                    f"image {entry.filename!r} is {entry.size} bytes, over the limit of "
                    f"{self.limits.max_member_size}"
                )

    def read_envelope(self) -> bytes | None:
        """The key envelope member (``sw-description.key``, packaging/envelope.py) if the
        bundle has one, else None; call it before images(). It is NOT covered by the
        signature: only the signed aes-key-check makes the key it holds trustworthy."""
        from ferry.packaging.envelope import ENVELOPE_NAME, MAX_ENVELOPE_SIZE

        if self._envelope_read or self._started:
            return self.envelope
        self._envelope_read = True
        header = self._cpio.next_header(check_crc=self.limits.check_image_crc)
        if header.name != ENVELOPE_NAME:
            self._peeked = header  # the first image's (or the trailer): images() takes it
            return None
        self.envelope = self._cpio.read_member(MAX_ENVELOPE_SIZE, f"key envelope {ENVELOPE_NAME}")
        return self.envelope

    def _next_header(self, *, check_crc: bool = True) -> CpioHeader:
        header, self._peeked = self._peeked, None
        return header if header is not None else self._cpio.next_header(check_crc=check_crc)

    @property
    def offset(self) -> int:
        """Bytes consumed from the stream so far (for progress reporting)."""
        return self._cpio.offset

    def images(self, *, skip_first: int = 0) -> Iterator[tuple[ImageEntry, BinaryIO]]:
        """Yield (entry, stream) in sw-description order; read each stream to its end.

        ``skip_first``: the stream holds the bundle's head and then the first image's
        stored bytes from this offset on (a download resumed after a restart). Its
        stored sha256 cannot be checked then, so this is allowed only for a compressed
        image with a signed decompressed-sha256, which the caller must check over all
        of its output (the slot writer does).
        """
        if self._started:
            raise BundleError("BundleReader.images() can be iterated only once")
        self.read_envelope()
        self._started = True
        listed = {e.filename: i for i, e in enumerate(self.description.images)}
        previous: ImageStream | None = None
        for index, entry in enumerate(self.description.images):
            if previous is not None and not previous.finished:
                raise BundleError(
                    f"image {previous.entry.filename!r} was not read to its end before the next"
                )
            if entry.delta is not None:
                self.delta_index = self._read_delta_index(entry)
            header = self._next_header(check_crc=self.limits.check_image_crc)
            if header.is_trailer:
                raise MissingMember(
                    f"bundle ends without image {entry.filename!r} that sw-description lists"
                )
            if header.name != entry.filename:
                if header.name in (DESCRIPTION_NAME, SIGNATURE_NAME) or (
                    header.name in listed and listed[header.name] != index
                ):
                    raise WrongMemberOrder(
                        f"member {header.name!r} comes where sw-description lists "
                        f"{entry.filename!r}; images must follow sw-description's order"
                    )
                raise UnlistedMember(
                    f"member {header.name!r} is not listed in sw-description; refusing the bundle"
                )
            if header.size != entry.size:
                raise SizeMismatch(
                    f"image {entry.filename!r} is {header.size} bytes in the archive but "
                    f"{entry.size} in sw-description"
                )
            absent = skip_first if index == 0 else 0
            if absent and not (entry.compressed and entry.decompressed_sha256):
                raise BundleError(
                    f"cannot resume image {entry.filename!r} in the middle: it has no "
                    "decompressed-sha256 to check it by")
            if absent and entry.encrypted:
                # The ciphertext's sha256 is what makes CBC without a MAC safe (see
                # packaging/encryption.py): it cannot be checked from the middle.
                raise BundleError(
                    f"cannot resume encrypted image {entry.filename!r} in the middle; "
                    "it is downloaded again from its start")
            stream = ImageStream(self._cpio, entry, absent)
            previous = stream
            yield entry, cast(BinaryIO, stream)
        if previous is not None and not previous.finished:
            raise BundleError(f"image {previous.entry.filename!r} was not read to its end")
        tail = self._next_header()
        if not tail.is_trailer:
            if tail.name in listed or tail.name in (DESCRIPTION_NAME, SIGNATURE_NAME):
                raise WrongMemberOrder(f"member {tail.name!r} appears twice in the bundle")
            raise UnlistedMember(
                f"member {tail.name!r} is not listed in sw-description; refusing the bundle"
            )
        self._cpio.check_end()

    def _read_delta_index(self, entry: ImageEntry) -> bytes:
        """The chunk index member that comes right before a delta rootfs, checked
        against its signed sha256 and size (packaging/deltaref.py) before any use."""
        ref = entry.delta
        assert ref is not None
        header = self._next_header()
        if header.is_trailer:
            raise MissingMember(f"bundle ends without the chunk index {ref.index!r} that "
                                "sw-description lists")
        if header.name != ref.index:
            raise WrongMemberOrder(f"member {header.name!r} comes where sw-description lists "
                                   f"the chunk index {ref.index!r}")
        if header.size != ref.size:
            raise SizeMismatch(f"chunk index {ref.index!r} is {header.size} bytes in the "
                               f"archive but {ref.size} in sw-description")
        data = self._cpio.read_member(ref.size, f"chunk index {ref.index!r}")
        if hashlib.sha256(data).hexdigest() != ref.sha256:
            raise HashMismatch(f"chunk index {ref.index!r} does not match its sha256 in "
                               "sw-description; the bundle is corrupt or tampered")
        return data

    def verify_all(self) -> None:
        """Read every image to its end, checking everything (``ferry bundle verify``)."""
        for _entry, stream in self.images():
            while stream.read(CHUNK):
                pass


def read_unverified(
    stream: BinaryIO, *, limits: Limits | None = None
) -> tuple[Description, bytes, bytes]:
    """sw-description (parsed) and the raw signature WITHOUT checking trust: for display
    (``ferry bundle inspect`` without a keyring) only, never for installing."""
    cpio = CpioStreamReader(stream, limits or Limits())
    lim = cpio.limits
    first = cpio.next_header()
    if first.name != DESCRIPTION_NAME:
        raise WrongMemberOrder(
            f"first member is {first.name!r}; a bundle starts with sw-description"
        )
    description = cpio.read_member(lim.max_description_size, "sw-description")
    second = cpio.next_header()
    sig = b""
    if second.name == SIGNATURE_NAME:
        sig = cpio.read_member(lim.max_signature_size, "sw-description.sig")
    return parse_description(description), description, sig
