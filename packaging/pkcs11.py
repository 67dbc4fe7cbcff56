"""Keys in a PKCS#11 token: RFC 7512 URIs, finding the token and key, signing digests.

A build host's signing key (and a gateway's decryption key) may live in an HSM, a TPM
behind tpm2-pkcs11, or SoftHSM2 in tests; ferry then names it with a ``pkcs11:`` URI
instead of a file and the token does the private-key operation, so the key is never in
ferry's memory. The binding is python-pkcs11, an optional extra (``ferry-ota[pkcs11]``)
imported only when a URI is used: a build that signs with key files needs none of it.

Portable mechanisms only: the digest is computed here and the token signs it with
CKM_RSA_PKCS (over a DigestInfo), CKM_RSA_PKCS_PSS or CKM_ECDSA, which every token that
can sign at all implements, unlike the hash-and-sign combinations. A module is loaded
once per process (unloading and reloading SoftHSM2 crashes it) but initialized and
finalized per operation, so a token that is replugged (or a new SOFTHSM2_CONF) is seen
by the next one, and nothing stays logged in between.

The module comes from the URI's ``module-path`` (a file, or with ``module-name`` a
directory), else from ``$FERRY_PKCS11_MODULE``. The PIN comes from ``pin-value`` or
``pin-source`` (a file, as RFC 7512 suggests); neither is ever repeated in a message.
"""

from __future__ import annotations

import importlib
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote_to_bytes

from ferry.packaging.errors import BundleError

if TYPE_CHECKING:
    from cryptography import x509

    from ferry.packaging.cmsbuild import Scheme

SCHEME = "pkcs11:"
MODULE_ENV = "FERRY_PKCS11_MODULE"
_PATH_ATTRS = {
    "token", "manufacturer", "serial", "model", "library-manufacturer",
    "library-description", "library-version", "object", "type", "id", "slot-id",
    "slot-description", "slot-manufacturer",
}  # fmt: skip
_QUERY_ATTRS = {"pin-value", "pin-source", "module-name", "module-path"}
_SECRET = {"pin-value"}
# DigestInfo prefix for SHA-256 (RFC 8017 section 9.2, note 1): CKM_RSA_PKCS signs it raw
_SHA256_DIGEST_INFO = bytes.fromhex("3031300d060960864801650304020105000420")
_MODULES: dict[str, Any] = {}  # path -> pkcs11.lib, loaded once, never unloaded
_USERS: dict[str, int] = {}  # path -> open initialized_module spans
_MODULE_LOCK = threading.Lock()


class Pkcs11Error(BundleError):
    """A ``pkcs11:`` key cannot be used: bad URI, no binding, token, PIN or key."""


def is_pkcs11_uri(value: str | os.PathLike[str] | None) -> bool:
    return isinstance(value, str) and value[: len(SCHEME)].lower() == SCHEME


@dataclass(frozen=True)
class Pkcs11Uri:
    """A parsed RFC 7512 URI; values are percent-decoded (``id`` stays bytes)."""

    path: dict[str, str] = field(default_factory=dict)
    query: dict[str, str] = field(default_factory=dict)
    key_id: bytes | None = None

    def redacted(self) -> str:
        """The URI for messages: every attribute but the PIN value."""
        parts = [f"{k}={v}" for k, v in self.path.items()]
        if self.key_id is not None:
            parts.append("id=" + "".join(f"%{b:02x}" for b in self.key_id))
        query = [f"{k}={'***' if k in _SECRET else v}" for k, v in self.query.items()]
        return SCHEME + ";".join(parts) + ("?" + "&".join(query) if query else "")

    def pin(self) -> str | None:
        if "pin-value" in self.query:
            return self.query["pin-value"]
        source = self.query.get("pin-source")
        if source is None:
            return None
        path = source[len("file:"):] if source.startswith("file:") else source
        try:
            return Path(path).read_text().rstrip("\r\n")
        except (OSError, UnicodeDecodeError) as err:
            why = getattr(err, "strerror", None) or str(err)
            raise Pkcs11Error(f"cannot read the PIN from pin-source {path}: {why}") from None


def _decode(raw: str, what: str) -> bytes:
    if any(c in raw for c in " \t\r\n"):
        raise Pkcs11Error(f"PKCS#11 URI attribute {what} contains white space; percent-encode it")
    return unquote_to_bytes(raw)


def parse_uri(uri: str) -> Pkcs11Uri:
    """Parse ``pkcs11:path-attrs[?query-attrs]`` (RFC 7512 section 2.3)."""
    if not is_pkcs11_uri(uri):
        raise Pkcs11Error("a PKCS#11 key is named by a URI starting with 'pkcs11:'")
    body = uri[len(SCHEME):]
    path_part, _, query_part = body.partition("?")
    path: dict[str, str] = {}
    query: dict[str, str] = {}
    key_id: bytes | None = None
    for chunk, sep, known, into in (
        (path_part, ";", _PATH_ATTRS, path),
        (query_part, "&", _QUERY_ATTRS, query),
    ):
        for item in filter(None, chunk.split(sep)):
            name, eq, raw = item.partition("=")
            name = name.lower()
            if not eq or not name:
                # a query part may hold a stray piece of a PIN (an unencoded '&'): not shown
                shown = repr(item) if into is path else "a query attribute"
                raise Pkcs11Error(f"PKCS#11 URI: {shown} is not name=value")
            if name not in known:
                where = "path" if into is path else "query"
                raise Pkcs11Error(f"PKCS#11 URI: unknown {where} attribute {name!r}")
            if name in path or name in query or (name == "id" and key_id is not None):
                raise Pkcs11Error(f"PKCS#11 URI: attribute {name!r} given twice")
            value = _decode(raw, name)
            if name == "id":
                key_id = value
                continue
            try:
                into[name] = value.decode()
            except UnicodeDecodeError:
                raise Pkcs11Error(f"PKCS#11 URI: {name} is not UTF-8") from None
    if "pin-value" in query and "pin-source" in query:
        raise Pkcs11Error("PKCS#11 URI: give pin-value or pin-source, not both")
    if path.get("type", "private") not in ("private", "secret-key"):
        raise Pkcs11Error(f"PKCS#11 URI: type={path['type']} names no key ferry can use")
    return Pkcs11Uri(path=path, query=query, key_id=key_id)


def _binding() -> Any:
    """python-pkcs11, imported by name: it is an optional extra, so no static import
    ties it to every install (tests/unit/test_yocto_layer.py asks ferry-native for each
    module packaging/ imports; the binding is the integrator's choice there)."""
    try:
        pkcs11 = importlib.import_module("pkcs11")
    except ImportError:
        raise Pkcs11Error(
            "pkcs11: keys need python-pkcs11, which is not installed; "
            "pip install 'ferry-ota[pkcs11]'"
        ) from None
    return pkcs11


def module_path(uri: Pkcs11Uri) -> str:
    given = uri.query.get("module-path") or os.environ.get(MODULE_ENV)
    if not given:
        raise Pkcs11Error(
            f"{uri.redacted()}: which PKCS#11 module? add module-path=/path/to/module.so "
            f"to the URI or set {MODULE_ENV}"
        )
    path = Path(given)
    if path.is_dir():
        name = uri.query.get("module-name")
        if not name:
            raise Pkcs11Error(f"{uri.redacted()}: module-path is a directory; add module-name")
        for cand in (path / f"lib{name}.so", path / f"{name}.so", path / name):
            if cand.is_file():
                return str(cand)
        raise Pkcs11Error(f"{uri.redacted()}: no module {name!r} in {path}")
    if not path.is_file():
        raise Pkcs11Error(f"PKCS#11 module {path} does not exist")
    return str(path)


def _token_matches(token: Any, uri: Pkcs11Uri) -> bool:
    want = uri.path
    have = {
        "token": token.label,
        "manufacturer": token.manufacturer_id,
        "model": token.model,
        "serial": token.serial.decode(errors="replace").strip(),
        "slot-id": str(token.slot.slot_id),
    }
    return all(want[k] == v for k, v in have.items() if k in want)


@contextmanager
def initialized_module(path: str) -> Iterator[Any]:
    """The module at ``path``, C_Initialize'd while any block uses it and C_Finalize'd
    when the last one ends (a decrypting stream may outlive the call that opened it)."""
    p11 = _binding()
    with _MODULE_LOCK:
        lib = _MODULES.get(path)
        try:
            if lib is None:
                lib = _MODULES[path] = p11.lib(path)  # loads and initializes
            elif not _USERS.get(path):
                lib.initialize()
        except p11.exceptions.PKCS11Error as err:
            raise Pkcs11Error(f"cannot load PKCS#11 module {path}: {_why(err)}") from None
        _USERS[path] = _USERS.get(path, 0) + 1
    try:
        yield lib
    finally:
        with _MODULE_LOCK:
            _USERS[path] -= 1
            if not _USERS[path]:
                # a failed C_Finalize leaves nothing a next C_Initialize would not reset
                with suppress(p11.exceptions.PKCS11Error):
                    lib.finalize()


@contextmanager
def open_session(uri: Pkcs11Uri) -> Iterator[Any]:
    """A logged-in session on the one token the URI names; the module is finalized
    after it. Every binding error becomes one Pkcs11Error line."""
    p11 = _binding()
    path = module_path(uri)
    name = uri.path.get("token") or "the token"
    with initialized_module(path) as lib:
        try:
            tokens = [t for t in lib.get_tokens() if _token_matches(t, uri)]
        except p11.exceptions.PKCS11Error as err:
            raise Pkcs11Error(f"cannot list the tokens of {path}: {_why(err)}") from None
        if not tokens:
            raise Pkcs11Error(f"{uri.redacted()}: no such token in {path}")
        if len(tokens) > 1:
            labels = ", ".join(repr(t.label) for t in tokens)
            raise Pkcs11Error(f"{uri.redacted()}: several tokens match ({labels}); add token=")
        pin = uri.pin()
        try:
            session = tokens[0].open(user_pin=pin)
        except p11.exceptions.PinIncorrect:
            raise Pkcs11Error(f"token {name!r}: PIN incorrect") from None
        except p11.exceptions.PinLocked:
            raise Pkcs11Error(f"token {name!r}: the user PIN is locked") from None
        except p11.exceptions.PKCS11Error as err:
            raise Pkcs11Error(f"token {name!r}: cannot log in: {_why(err)}") from None
        try:
            yield session
        finally:
            session.close()


def _why(err: Exception) -> str:
    text = " ".join(str(err).split())
    return text or type(err).__name__


def find_key(session: Any, uri: Pkcs11Uri, object_class: Any) -> Any:
    """The one key of ``object_class`` that ``object=`` and ``id=`` select."""
    p11 = _binding()
    attrs: dict[Any, Any] = {p11.Attribute.CLASS: object_class}
    if "object" in uri.path:
        attrs[p11.Attribute.LABEL] = uri.path["object"]
    if uri.key_id is not None:
        attrs[p11.Attribute.ID] = uri.key_id
    try:
        found = list(session.get_objects(attrs))
    except p11.exceptions.PKCS11Error as err:
        raise Pkcs11Error(f"{uri.redacted()}: cannot search the token: {_why(err)}") from None
    kind = {
        p11.ObjectClass.PRIVATE_KEY: "private key",
        p11.ObjectClass.SECRET_KEY: "secret key",
        p11.ObjectClass.CERTIFICATE: "certificate",
    }.get(object_class, "object")
    if not found:
        hint = "" if uri.pin() is not None else " (no PIN given: add pin-value= or pin-source=)"
        raise Pkcs11Error(f"{uri.redacted()}: no {kind} on the token matches{hint}")
    if len(found) > 1:
        raise Pkcs11Error(f"{uri.redacted()}: {len(found)} {kind}s match; add object= or id=")
    return found[0]


def token_certificate(session: Any, uri: Pkcs11Uri) -> x509.Certificate:
    """The certificate stored beside the key (same ``id=``/``object=``)."""
    from cryptography import x509

    p11 = _binding()
    cert_obj = find_key(session, uri, p11.ObjectClass.CERTIFICATE)
    try:
        return x509.load_der_x509_certificate(cert_obj[p11.Attribute.VALUE])
    except ValueError as err:
        raise Pkcs11Error(f"{uri.redacted()}: the certificate on the token is bad: {err}") from None


def _der_ecdsa(raw: bytes) -> bytes:
    """PKCS#11 returns r || s; CMS wants ECDSA-Sig-Value (RFC 5753)."""
    from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

    half = len(raw) // 2
    return encode_dss_signature(int.from_bytes(raw[:half]), int.from_bytes(raw[half:]))


def sign_digest_in_session(session: Any, uri: Pkcs11Uri, digest: bytes, scheme: Scheme) -> bytes:
    p11 = _binding()
    key = find_key(session, uri, p11.ObjectClass.PRIVATE_KEY)
    try:
        if scheme == "pkcs1v15":
            return bytes(key.sign(_SHA256_DIGEST_INFO + digest, mechanism=p11.Mechanism.RSA_PKCS))
        if scheme == "pss":
            from ferry.packaging.cmsbuild import PSS_SALT

            params = (p11.Mechanism.SHA256, p11.MGF.SHA256, PSS_SALT)
            return bytes(key.sign(digest, mechanism=p11.Mechanism.RSA_PKCS_PSS,
                                  mechanism_param=params))
        return _der_ecdsa(bytes(key.sign(digest, mechanism=p11.Mechanism.ECDSA)))
    except p11.exceptions.PKCS11Error as err:
        raise Pkcs11Error(
            f"{uri.redacted()}: the token refused to sign ({scheme}): {_why(err)}"
        ) from None


@dataclass(frozen=True)
class TokenSigner:
    """A ``cmsbuild.RawSigner`` whose private key stays in the token."""

    uri: Pkcs11Uri

    def sign_digest(self, digest: bytes, scheme: Scheme) -> bytes:
        with open_session(self.uri) as session:
            return sign_digest_in_session(session, self.uri, digest, scheme)


def open_token_signer(
    uri_text: str, cert: x509.Certificate | None, *, pss: bool = False
) -> tuple[TokenSigner, x509.Certificate]:
    """Check the URI, PIN, key and certificate now, before any image is compressed, and
    return the signer with its certificate: ``cert`` if given, else the one on the token.

    One probe signature, verified under the certificate, proves that the key belongs to
    it and that the token does the mechanism: a mismatch is found in a second, not after
    compressing a rootfs."""
    import hashlib

    from ferry.packaging.certpolicy import describe
    from ferry.packaging.cmsbuild import check_signature, scheme_for

    uri = parse_uri(uri_text)
    p11 = _binding()
    with open_session(uri) as session:
        key = find_key(session, uri, p11.ObjectClass.PRIVATE_KEY)
        if cert is None:
            cert = token_certificate(session, uri)
        scheme = scheme_for(cert, pss)
        token_kind = {p11.KeyType.RSA: "RSA", p11.KeyType.EC: "EC"}.get(key.key_type)
        cert_kind = "EC" if scheme == "ecdsa" else "RSA"
        if token_kind != cert_kind:
            raise Pkcs11Error(
                f"{uri.redacted()}: the token's key is {token_kind or key.key_type.name}, "
                f"the certificate {describe(cert)} holds an {cert_kind} key"
            )
        probe = b"ferry: does this token key belong to the certificate?"
        sig = sign_digest_in_session(session, uri, hashlib.sha256(probe).digest(), scheme)
    check_signature(cert, scheme, sig, probe)
    return TokenSigner(uri), cert


# -- the gateway's AES key -----------------------------------------------------------------
@dataclass(frozen=True)
class TokenAesKey:
    """The gateway's bundle-decryption key (``[keyring] decryption_key = "pkcs11:..."``),
    an AES secret key that stays in the token; the token does the AES-CBC.

    ``check`` is the key's ``aes-key-check`` (encryption.key_check) computed inside the
    token with C_DigestKey, so a bundle made for another key is refused before a slot is
    touched, as with a key file; None when the token will not digest its key, and then
    ferry hashes the plaintext instead of trusting it bound. A token key has no key-file
    ivt: images must carry their own (ferry and swugenerator write one)."""

    uri: Pkcs11Uri
    check: str | None
    ivt: bytes | None = None

    def __repr__(self) -> str:
        return f"TokenAesKey({self.uri.redacted()})"

    def decryptor(self, iv: bytes | None) -> TokenCbcDecryptor:
        if iv is None:
            raise Pkcs11Error(
                "image has no ivt of its own and a pkcs11: key carries none (re-create "
                "the bundle with ferry or swugenerator, which write one per image)"
            )
        return TokenCbcDecryptor(self.uri, iv)


class TokenCbcDecryptor:
    """AES-CBC without padding by the token, shaped like ``cryptography``'s decryptor
    (``update_into``, ``finalize``) so encryption._Decrypting drives it unchanged.

    Each update is one C_DecryptInit/C_Decrypt over whole blocks, its IV the previous
    ciphertext block: CBC decryption needs nothing else from the call before, so no
    multi-part state lives in the token. The session (and the module's initialization)
    is held from the first block to ``finalize``, or until the stream is dropped."""

    def __init__(self, uri: Pkcs11Uri, iv: bytes) -> None:
        import weakref
        from contextlib import ExitStack

        p11 = _binding()
        self._uri = uri
        self._iv = bytes(iv)
        self._rest = b""
        stack = ExitStack()
        self._close = weakref.finalize(self, stack.close)
        try:
            session = stack.enter_context(open_session(uri))
            self._key = find_key(session, uri, p11.ObjectClass.SECRET_KEY)
        except BaseException:
            self._close()
            raise
        self._mech = p11.Mechanism.AES_CBC
        self._error = p11.exceptions.PKCS11Error

    def update_into(self, data: bytes | memoryview, out: memoryview | bytearray) -> int:
        buf = self._rest + bytes(data)
        n = len(buf) - len(buf) % 16
        self._rest = buf[n:]
        if not n:
            return 0
        try:
            plain = self._key.decrypt(buf[:n], mechanism=self._mech, mechanism_param=self._iv)
        except self._error as err:
            self._close()
            why = _why(err)
            raise Pkcs11Error(f"{self._uri.redacted()}: the token cannot decrypt: {why}") from None
        self._iv = buf[n - 16:n]
        out[:n] = plain
        return n

    def finalize(self) -> bytes:
        self._close()
        if self._rest:
            raise ValueError("the ciphertext does not end on a whole AES block")
        return b""


def load_token_aes_key(uri_text: str, check_label: bytes) -> TokenAesKey:
    """Log in, find the one AES secret key, and compute its key check in the token:
    SHA-256 over ``check_label`` and the key (encryption.key_check's definition, passed
    in so that this module does not import encryption, which imports it)."""
    uri = parse_uri(uri_text)
    if "pin-value" in uri.query:
        raise Pkcs11Error(
            "[keyring] decryption_key: give the PIN as pin-source=FILE (a root-only file), "
            "not pin-value=: ferry.toml is readable by local users and the key's URI "
            "appears in messages"
        )
    p11 = _binding()
    with open_session(uri) as session:
        key = find_key(session, uri, p11.ObjectClass.SECRET_KEY)
        if key.key_type != p11.KeyType.AES:
            raise Pkcs11Error(f"{uri.redacted()}: the secret key is not an AES key")
        try:
            digest = session.digest(iter([check_label, key]), mechanism=p11.Mechanism.SHA256)
        except p11.exceptions.PKCS11Error:
            check = None  # the token keeps even a digest of its key to itself
        else:
            check = bytes(digest)[:16].hex()  # as encryption.key_check
    return TokenAesKey(uri=uri, check=check)
