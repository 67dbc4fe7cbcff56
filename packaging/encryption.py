"""SWUpdate-compatible symmetric encryption of bundle images: AES-CBC with PKCS#7 padding.

SWUpdate (core/cpio_utils.c, ``__swupdate_copy``) hashes the member bytes *as stored*
(the ciphertext), then decrypts, then decompresses; so a build compresses first and
encrypts second, and ``sha256`` in sw-description is that of the ciphertext. An image's
own ``ivt`` (32 hex digits) overrides the key file's; ferry writes a fresh random one
per image, because CBC under one key and one IV shows which images share a prefix.

The key file is SWUpdate's (core/util.c ``load_decryption_key`` / ``set_aes_key``): two
whitespace-separated hex tokens, ``<key> <ivt>``; the key is 32, 48 or 64 hex digits
(AES-128/192/256, ferry writes 256) and the ivt 32.

Why CBC without a MAC is acceptable here (docs/security.md, "Encrypted images"): the
signed sw-description carries the ciphertext's sha256, and the bundle reader withholds
the last chunk of an image whose hash does not match, so the padding, the last block,
is checked only on ciphertext the signer made. Errors that depend on plaintext (padding,
decompression, size caps) are *sealed* (``open_plaintext``): the rest of the ciphertext
is read and its hash checked before such an error is raised, so tampered ciphertext
always ends in the same HashMismatch and never tells anyone how its plaintext looked.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, cast

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from ferry.packaging.description import ImageEntry
from ferry.packaging.errors import BundleError, HashMismatch, TruncatedBundle

if TYPE_CHECKING:  # a key in a PKCS#11 token (docs/security.md, "Keys in hardware")
    from ferry.packaging.pkcs11 import TokenAesKey

BLOCK = 16
CHUNK = 1 << 20
_HEX = frozenset("0123456789abcdefABCDEF")
_KEY_HEX_LENGTHS = (32, 48, 64)


class EncryptionKeyError(BundleError):
    """The AES key file cannot be read or is not in SWUpdate's ``<key> <ivt>`` form."""


class DecryptError(BundleError):
    """An image's plaintext could not be recovered: wrong key, or broken ciphertext.

    One message for every cause (length, padding): which one it was says nothing useful
    to an operator and, on a bundle whose hash was not checked, would be an oracle."""


@dataclass(frozen=True)
class AesKey:
    key: bytes  # 16, 24 or 32 bytes
    ivt: bytes  # 16 bytes: the IV for images whose entry has no ivt of its own

    def __repr__(self) -> str:  # never print key material into a log
        return f"AesKey(AES-{len(self.key) * 8}, ivt=...)"

    def decryptor(self, iv: bytes | None) -> Any:
        return Cipher(algorithms.AES(self.key), modes.CBC(iv or self.ivt)).decryptor()


def _hex(token: str, lengths: tuple[int, ...], what: str, where: str) -> bytes:
    if len(token) not in lengths or not set(token) <= _HEX:
        want = " or ".join(str(n) for n in lengths)
        raise EncryptionKeyError(f"{where}: the {what} must be {want} hex digits")
    return bytes.fromhex(token)


def parse_key(text: str, where: str = "key file") -> AesKey:
    """``<key hex> <ivt hex>`` as SWUpdate's ``-K`` file holds them (any whitespace)."""
    tokens = text.split()
    if any("=" in t for t in tokens):
        raise EncryptionKeyError(
            f"{where}: looks like a 'key=...'/'iv=...' file (swugenerator, openssl -P); "
            "give SWUpdate's -K format, '<key> <ivt>' as two hex tokens")
    if len(tokens) != 2:
        raise EncryptionKeyError(
            f"{where}: expected '<key> <ivt>' (two hex tokens, SWUpdate's -K format), "
            f"found {len(tokens)} token(s)")
    key = _hex(tokens[0], _KEY_HEX_LENGTHS, "key", where)
    ivt = _hex(tokens[1], (2 * BLOCK,), "ivt", where)
    return AesKey(key=key, ivt=ivt)


def load_key(path: str | Path) -> AesKey | TokenAesKey:
    """SWUpdate's key file, or a ``pkcs11:`` URI of an AES key in a token."""
    if str(path).startswith("pkcs11:"):
        from ferry.packaging.pkcs11 import load_token_aes_key

        return load_token_aes_key(str(path), _CHECK_LABEL)
    p = Path(path)
    try:
        text = p.read_text("ascii")
    except (OSError, UnicodeDecodeError) as err:
        reason = getattr(err, "strerror", None) or "not ASCII text"
        raise EncryptionKeyError(f"cannot read AES key file {p}: {reason}") from None
    return parse_key(text, str(p))


def parse_ivt(value: str, where: str) -> bytes:
    return _hex(value, (2 * BLOCK,), "ivt", where)


def new_ivt() -> bytes:
    return os.urandom(BLOCK)


_CHECK_LABEL = b"ferry aes-key-check v1\0"


def key_check(key: AesKey | TokenAesKey) -> str | None:
    """A check value of the key (not of its ivt), written as ``aes-key-check`` into each
    encrypted image's entry: 16 bytes of SHA-256 over a label and the key. It lets a
    gateway refuse a bundle made for another key before it touches a slot, and lets it
    trust the signed plaintext hash without hashing the plaintext again (the verified
    ciphertext, decrypted with the same key and the signed ivt, can only be the
    signer's plaintext). It reveals nothing a key search could not already test on the
    ciphertext's first block. None: a token key whose token will not digest it."""
    if not isinstance(key, AesKey):
        return key.check
    return hashlib.sha256(_CHECK_LABEL + key.key).hexdigest()[:32]


def check_key(entry: ImageEntry, key: AesKey | TokenAesKey) -> bool:
    """False when ``entry`` names a key check and ``key`` does not match it; True when it
    matches or the entry has none (bundles from other tools)."""
    ours = key_check(key)
    if entry.key_check is None or ours is None:
        return True
    return hmac.compare_digest(entry.key_check, ours)


def plaintext_is_bound(entry: ImageEntry, key: AesKey | TokenAesKey | None) -> bool:
    """True when the bytes an encrypted, uncompressed image decrypts to are fixed by
    what was verified: its ciphertext hash, its own signed ivt and a key whose check
    value matches; then its signed decompressed-sha256 holds without hashing again."""
    return (key is not None and entry.encrypted and not entry.compressed
            and entry.ivt is not None and entry.key_check is not None
            and entry.decompressed_sha256 is not None and key_check(key) is not None
            and check_key(entry, key))


def encrypted_size(plain: int) -> int:
    """Stored size of ``plain`` bytes after PKCS#7 padding (always 1..16 bytes more)."""
    return (plain // BLOCK + 1) * BLOCK


def encrypt_file(src: BinaryIO, dst: BinaryIO, key: AesKey, iv: bytes) -> int:
    """AES-CBC with PKCS#7 padding, chunk by chunk, as ``openssl enc -aes-256-cbc -K
    -iv -nosalt`` writes it; returns the bytes written."""
    enc = Cipher(algorithms.AES(key.key), modes.CBC(iv)).encryptor()
    buf = bytearray(CHUNK + BLOCK)
    total = 0
    fed = 0
    while chunk := src.read(CHUNK):
        fed += len(chunk)
        for off in range(0, len(chunk), CHUNK):
            n = enc.update_into(chunk[off:off + CHUNK], buf)
            dst.write(memoryview(buf)[:n])
            total += n
    pad = BLOCK - fed % BLOCK  # 1..16: a whole block of 16s when the input is aligned
    n = enc.update_into(bytes([pad]) * pad, buf)
    enc.finalize()
    dst.write(memoryview(buf)[:n])
    return total + n


class _Decrypting(io.RawIOBase):
    """The plaintext of ``raw`` (AES-CBC ciphertext with PKCS#7 padding), read lazily.

    The last plaintext block is held back until ``raw`` ends, then its padding is
    checked and removed. ``readinto`` decrypts straight into the caller's buffer.
    """

    def __init__(self, raw: BinaryIO, key: AesKey | TokenAesKey, iv: bytes | None,
                 what: str) -> None:  # fmt: skip
        super().__init__()
        self._raw = raw
        self._dec = key.decryptor(iv)  # cryptography's, or the token's (pkcs11.py)
        self._what = what
        self._in = bytearray(CHUNK)
        self._tail = b""  # the newest plaintext block, not yet released
        self._spill = b""  # plaintext that did not fit a small caller buffer
        self._eof = False
        self._fed = 0

    def readable(self) -> bool:
        return True

    def _fail(self) -> DecryptError:
        return DecryptError(
            f"{self._what}: cannot decrypt it: wrong AES key ([keyring] decryption_key), "
            "or the image was encrypted wrongly")

    def _finish(self, out: memoryview) -> int:
        self._eof = True
        try:
            self._dec.finalize()  # raises when a partial block is left over
        except ValueError:
            raise self._fail() from None
        tail = self._tail
        self._tail = b""
        if len(tail) != BLOCK or self._fed % BLOCK:
            raise self._fail()
        pad = tail[-1]
        good = 1 <= pad <= BLOCK and hmac.compare_digest(tail[-pad:], bytes([pad]) * pad)
        if not good:
            raise self._fail()
        keep = tail[: BLOCK - pad]
        n = min(len(keep), len(out))
        out[:n] = keep[:n]
        self._spill = keep[n:]
        return n

    def readinto(self, buf: memoryview | bytearray) -> int:  # type: ignore[override]
        out = memoryview(buf).cast("B")
        if not len(out):
            return 0
        if self._spill:
            n = min(len(self._spill), len(out))
            out[:n] = self._spill[:n]
            self._spill = self._spill[n:]
            return n
        if self._eof:
            return 0
        if len(out) < 4 * BLOCK:  # too small to decrypt into: a small bounce buffer, so
            tmp = bytearray(8 * BLOCK)  # what spills over stays a few blocks
            n = self.readinto(tmp)
            out_n = min(n, len(out))
            out[:out_n] = tmp[:out_n]
            self._spill = bytes(tmp[out_n:n])
            return out_n
        while True:
            # caller's buffer: [held block][new plaintext...]; update_into wants room for
            # its input plus a block less one byte
            room = len(out) - len(self._tail) - (BLOCK - 1)
            want = min(len(self._in), room)
            got = _readinto(self._raw, memoryview(self._in)[:want])
            if got == 0:
                return self._finish(out)
            self._fed += got
            held = len(self._tail)
            out[:held] = self._tail
            n = held + self._dec.update_into(memoryview(self._in)[:got], out[held:])
            if n <= BLOCK:  # not a whole new block yet: keep holding
                self._tail = bytes(out[:n])
                continue
            self._tail = bytes(out[n - BLOCK:n])
            return n - BLOCK

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            return self.readall()
        buf = bytearray(max(size, 4 * BLOCK))
        n = self.readinto(buf)
        if n > size:  # only when size < 4 blocks: keep the rest for the next read
            self._spill = bytes(buf[size:n]) + self._spill
            n = size
        return bytes(buf[:n])

    def readall(self) -> bytes:
        parts = []
        while chunk := self.read(CHUNK):
            parts.append(chunk)
        return b"".join(parts)


def _readinto(src: BinaryIO, view: memoryview) -> int:
    ri = getattr(src, "readinto", None)
    if ri is not None:
        return int(ri(view) or 0)
    data = src.read(len(view))
    view[: len(data)] = data
    return len(data)


def decrypt_stream(raw: BinaryIO, key: AesKey | TokenAesKey, ivt: bytes | None, *,
                   what: str = "image") -> BinaryIO:
    """A readable stream of the plaintext of ``raw``; ``ivt`` is the image's own (from
    sw-description), else the key file's is used, as SWUpdate does."""
    return cast(BinaryIO, _Decrypting(raw, key, ivt or key.ivt, what))


class _Sealed(io.RawIOBase):
    """Holds back plaintext-dependent errors until the ciphertext's hash is known.

    On a BundleError from the decrypted chain (bad padding, corrupt compressed data, a
    size cap), the rest of ``stored`` is read: if its sha256 fails, that HashMismatch
    (or TruncatedBundle) is what the caller sees, exactly as for a tampered image that
    is not encrypted; only authentic ciphertext lets the original error through.
    """

    def __init__(self, inner: BinaryIO, stored: BinaryIO) -> None:
        super().__init__()
        self._inner = inner
        self._stored = stored

    def readable(self) -> bool:
        return True

    def _seal(self, err: BundleError) -> BundleError:
        if isinstance(err, HashMismatch | TruncatedBundle):
            return err
        buf = bytearray(CHUNK)
        view = memoryview(buf)
        try:
            while _readinto(self._stored, view):
                pass
        except (HashMismatch, TruncatedBundle) as first:
            return first
        return err

    def readinto(self, buf: memoryview | bytearray) -> int:  # type: ignore[override]
        try:
            return _readinto(self._inner, memoryview(buf).cast("B"))
        except BundleError as err:
            sealed = self._seal(err)
            if sealed is err:
                raise
            raise sealed from None

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            size = CHUNK
        buf = bytearray(size)
        n = self.readinto(buf)
        return bytes(buf[:n])


def open_plaintext(stored: BinaryIO, key: AesKey | TokenAesKey, ivt: bytes | None, *,
                   decompress: Callable[[BinaryIO], BinaryIO] | None = None,
                   what: str = "image") -> BinaryIO:
    """The bytes an encrypted image installs: decrypt, then (optionally) decompress
    (``decompress`` builds that layer, with its size cap, on the decrypted stream),
    with plaintext-dependent errors sealed behind the stored hash (see ``_Sealed``)."""
    plain = decrypt_stream(stored, key, ivt, what=what)
    if decompress is not None:
        plain = decompress(plain)
    return cast(BinaryIO, _Sealed(plain, stored))


def open_image(entry: ImageEntry, stored: BinaryIO, key: AesKey | TokenAesKey | None, *,
               max_output: int | None = None, what: str = "image") -> BinaryIO:
    """The bytes an image installs, read from its ``stored`` stream: for an encrypted
    image decrypted, decompressed (capped at ``max_output``) and sealed; otherwise just
    ``decompress_stream``. An encrypted image without a key is a one-line error."""
    from ferry.packaging.compression import decompress_stream

    if not entry.encrypted:
        return decompress_stream(entry.compressed, stored, max_output=max_output, what=what)
    if key is None:
        raise EncryptionKeyError(
            f"image {entry.filename!r} is encrypted and no AES key is configured "
            "([keyring] decryption_key)")
    kind = entry.compressed
    ivt = parse_ivt(entry.ivt, f"image {entry.filename!r}") if entry.ivt else None
    return open_plaintext(
        stored, key, ivt, what=f"image {entry.filename!r}",
        decompress=lambda plain: decompress_stream(kind, plain, max_output=max_output,
                                                   what=what))
