"""Fuzz campaign over the parsers that read untrusted bytes: the cpio reader (and the whole
bundle reader with decompression behind it), zstd frames and gzip alone, the libconfig
parser with the sw-description model, the CMS signature parser and the DDI JSON handling.

    .venv/bin/python bench/fuzz.py                    # 60 s per target
    .venv/bin/python bench/fuzz.py --seconds 300 cms  # one target, longer
    .venv/bin/python bench/fuzz.py --list

The property, for every target and every input: the call ends in success or in a
FerryError whose message is one line (no newline, at most MAX_MESSAGE characters, and
for the binary formats no bytes repr of the payload); any
other exception is a failure, and so is an input that runs longer than HANG_SECONDS (a
hang). The campaign does not stop at a failure: it counts inputs tried, groups failures
by exception type and the innermost ferry frame, and prints one example per group.

The same targets run in CI as a bounded, derandomized hypothesis run
(tests/unit/test_fuzz_*.py import TARGETS from here): a fixed number of examples each, so
CI is deterministic; this script is the longer campaign with fresh seeds per batch.

Strategies mix three sources so the parsers are reached past their first check: plain
random bytes or text, inputs built from the format's own grammar, and byte mutations
of a valid input (a signed bundle, a real CMS signature, hawkBit's documented bodies).
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import hashlib
import io
import json
import random
import re
import signal
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st

from ferry.errors import FerryError
from ferry.packaging import devpki, libconfig, signature
from ferry.packaging.compression import compress_file, decompress_stream, output_limit
from ferry.packaging.cpio import (
    TRAILER,
    CpioStreamReader,
    CpioStreamWriter,
    bytesum,
    data_padding,
    encode_header,
)
from ferry.packaging.description import (
    Description,
    ImageEntry,
    TargetSpec,
    parse_description,
    render_description,
)
from ferry.packaging.errors import BadDescription
from ferry.packaging.keyring import Keyring
from ferry.packaging.limits import Limits
from ferry.packaging.reader import BundleReader, read_unverified

MAX_MESSAGE = 500  # characters: a one-line error, not a dump of the input
HANG_SECONDS = 10.0  # one input; the largest here parses in milliseconds
NOW = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)  # fixed: validity checks do not drift


_BYTES_REPR = re.compile(r"(?:^|[\s(\[=,:])b['\"]")


class Hang(BaseException):
    """Raised by the alarm; a BaseException so no ``except Exception`` under test eats it."""


def one_line(err: FerryError, *, quotes_text: bool = True) -> None:
    """The message rule. ``quotes_text=False`` for binary formats (cpio, CMS, compressed
    images), whose messages name offsets and fields and must never carry a bytes repr
    of the payload; text formats (libconfig, DDI JSON) quote a cut token on purpose."""
    message = str(err)
    if not message or "\n" in message or "\r" in message or len(message) > MAX_MESSAGE:
        raise AssertionError(
            f"{type(err).__name__} message is not one line of at most {MAX_MESSAGE} "
            f"characters ({len(message)}): {message[:200]!r}"
        )
    text_format = isinstance(err, BadDescription)  # sw-description inside a binary bundle
    if not quotes_text and not text_format and _BYTES_REPR.search(message):
        raise AssertionError(f"{type(err).__name__} message quotes bytes: {message[:200]!r}")


def expected(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``fn(*args)``, or None when it raised a FerryError with a one-line message.
    Anything else propagates: that is a finding."""
    try:
        return fn(*args, **kwargs)
    except FerryError as err:
        one_line(err)
        return None


def expected_binary(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``expected`` for a binary format: its message must not quote payload bytes."""
    try:
        return fn(*args, **kwargs)
    except FerryError as err:
        one_line(err, quotes_text=False)
        return None


@dataclass(frozen=True)
class Target:
    name: str
    what: str
    strategy: st.SearchStrategy[Any]
    run: Callable[[Any], None]


def mutate(data: bytes, ops: list[tuple[int, float, int, bytes]]) -> bytes:
    """Apply (kind, where 0..1, length, bytes) edits: overwrite, flip, insert, delete, cut."""
    out = bytearray(data)
    for kind, where, length, payload in ops:
        pos = int(where * len(out)) if out else 0
        if kind == 0 and payload:
            out[pos : pos + len(payload)] = payload
        elif kind == 1 and out:
            out[min(pos, len(out) - 1)] ^= 1 << (length % 8)
        elif kind == 2:
            out[pos:pos] = payload
        elif kind == 3:
            del out[pos : pos + length]
        elif kind == 4:
            del out[pos:]
    return bytes(out)


MUTATIONS = st.lists(
    st.tuples(st.integers(0, 4), st.floats(0, 1), st.integers(0, 64), st.binary(max_size=12)),
    max_size=5,
)
HEXISH = st.text(alphabet="0123456789abcdefABCDEFxX -", min_size=8, max_size=8)
SAFE_TEXT = st.characters(exclude_categories=["Cs"])


# -- a valid signed bundle to mutate ---------------------------------------------------
@dataclass(frozen=True)
class Fixture:
    keyring: Keyring
    bundle: bytes
    head: int  # offset of the first image header: mutations past it keep the signature
    description: bytes
    signatures: tuple[bytes, ...]
    content: bytes  # what the signatures sign
    compressed: tuple[tuple[str, bytes], ...]  # (kind, stored bytes) of the images


def _compressed(kind: str, data: bytes) -> bytes:
    out = io.BytesIO()
    compress_file(kind, io.BytesIO(data), out)
    return out.getvalue()


@functools.cache
def fixture() -> Fixture:
    ca_key = devpki.new_key("ec")
    ca = devpki.make_cert("fuzz CA", ca_key, ca=True, not_before=NOW - dt.timedelta(days=1))
    ikey = devpki.new_key("ec")
    inter = devpki.make_cert("fuzz intermediate", ikey, issuer=(ca, ca_key), ca=True,
                             path_length=0, not_before=NOW - dt.timedelta(days=1))
    key = devpki.new_key("ec")
    cert = devpki.make_cert("fuzz signer", key, issuer=(inter, ikey),
                            not_before=NOW - dt.timedelta(days=1))
    rsa_key = devpki.new_key("rsa")
    rsa_cert = devpki.make_cert("fuzz rsa signer", rsa_key, issuer=(ca, ca_key),
                                not_before=NOW - dt.timedelta(days=1))
    rootfs = bytes(range(256)) * 64 + b"\0" * 8192
    mcu = b"\x3d\xb8\xf3\x96firmware" * 40
    members = [
        ("rootfs.img.zst", _compressed("zstd", rootfs), "zstd", rootfs, "rootfs", None),
        ("mcu.bin.gz", _compressed("gzip", mcu), "zlib", mcu, "target",
         TargetSpec("smp-serial", "sensor", "bin", "1.2", {"board": "r2"})),
        ("raw.bin", mcu[:100], None, mcu[:100], "target",
         TargetSpec("zigbee", "bulb", "zigbee-ota", "3", {})),
    ]
    entries = tuple(
        ImageEntry(name, len(stored), hashlib.sha256(stored).hexdigest(), comp, role,
                   target=spec,
                   decompressed_size=len(plain) if comp else None,
                   decompressed_sha256=hashlib.sha256(plain).hexdigest() if comp else None)
        for name, stored, comp, plain, role, spec in members
    )
    text = render_description(Description("1.0.0", ("gw-rev2",), entries))
    sig = signature.sign(text, key, cert, extra_certs=[inter])
    out = io.BytesIO()
    writer = CpioStreamWriter(out)
    writer.add_bytes("sw-description", text)
    writer.add_bytes("sw-description.sig", sig)
    head = writer.offset
    for name, stored, *_ in members:
        writer.add_bytes(name, stored)
    writer.finish()
    signatures = (
        sig,
        signature.sign(text, rsa_key, rsa_cert),
        signature.sign(text, rsa_key, rsa_cert, pss=True),
    )
    # two zstd frames (a resume point between them) and a gzip member
    frames = _compressed("zstd", rootfs[:5000]) + _compressed("zstd", rootfs[5000:])
    compressed = (("zstd", members[0][1]), ("zstd", frames), ("zlib", members[1][1]))
    return Fixture(Keyring.from_pem(devpki.cert_pem(ca)), out.getvalue(), head, text,
                   signatures, text, compressed)


# -- cpio ------------------------------------------------------------------------------
MEMBER_NAMES = st.one_of(
    st.sampled_from(["sw-description", "sw-description.sig", "rootfs.img", TRAILER,
                     "../etc/shadow", "a/b", ".", "..", "x" * 300, "a\\b", "\x01"]),
    st.text(SAFE_TEXT, max_size=12),
)


@st.composite
def cpio_archives(draw: st.DrawFn) -> bytes:
    """newc/crc archives from real headers, then broken: fields, sums, padding, cuts."""
    out = bytearray()
    for ino, (name, data) in enumerate(
        draw(st.lists(st.tuples(MEMBER_NAMES, st.binary(max_size=300)), max_size=5))
    ):
        check = bytesum(data) if draw(st.booleans()) else draw(st.integers(0, 2**32 - 1))
        out += encode_header(name, len(data), check, ino=ino) + data + data_padding(len(data))
    if draw(st.booleans()):
        out += encode_header(TRAILER, 0, 0, ino=99)
    out += b"\0" * draw(st.integers(0, 600))
    for _ in range(draw(st.integers(0, 3))):  # corrupt a header field in place
        if out:
            pos = draw(st.integers(0, len(out) - 1))
            out[pos : pos + 8] = draw(HEXISH).encode()
    return mutate(bytes(out), draw(MUTATIONS))


def run_cpio(data: bytes) -> None:
    limits = Limits(max_bundle_size=1 << 20)
    reader = CpioStreamReader(io.BytesIO(data), limits)

    def walk() -> None:
        for _ in range(64):
            header = reader.next_header(check_crc=True)
            if header.is_trailer:
                reader.check_end()
                return
            if header.name == "sw-description":
                reader.read_member(limits.max_description_size, "sw-description")
            else:
                while reader.read_data(97):
                    pass

    expected_binary(walk)
    expected_binary(read_unverified, io.BytesIO(data), limits=limits)
    expected_binary(BundleReader, io.BytesIO(data), fixture().keyring, limits=limits)


# -- the whole bundle: signed head kept, images and archive after it broken ---------------
@st.composite
def signed_bundles(draw: st.DrawFn) -> bytes:
    fx = fixture()
    if draw(st.integers(0, 9)) == 0:  # now and then, break the signed head too
        return mutate(fx.bundle, draw(MUTATIONS))
    tail = mutate(fx.bundle[fx.head :], draw(MUTATIONS))
    return fx.bundle[: fx.head] + tail


def run_bundle(data: bytes) -> None:
    def read_all() -> None:
        reader = BundleReader(io.BytesIO(data), fixture().keyring,
                              limits=Limits(max_decompressed_size=1 << 20))
        for entry, stored in reader.images():
            cap = output_limit(entry.decompressed_size, reader.limits.max_decompressed_size)
            plain = decompress_stream(entry.compressed, stored, max_output=cap,
                                      what=f"image {entry.filename!r}")
            buf = bytearray(4096)
            while plain.readinto(buf):  # type: ignore[attr-defined]
                pass
            while stored.read(4096):
                pass

    expected_binary(read_all)


# -- decompression alone: zstd frames and gzip, capped --------------------------------
@st.composite
def compressed_images(draw: st.DrawFn) -> tuple[str, bytes]:
    if draw(st.integers(0, 4)) == 0:
        return draw(st.sampled_from(["zstd", "zlib"])), draw(st.binary(max_size=400))
    kind, blob = draw(st.sampled_from(fixture().compressed))
    return kind, mutate(blob, draw(MUTATIONS))


def run_decompress(item: tuple[str, bytes]) -> None:
    kind, blob = item

    def drain(use_readinto: bool) -> None:
        frames: list[tuple[int, int]] = []
        plain = decompress_stream(kind, io.BytesIO(blob), max_output=64 << 10,
                                  on_frame=(lambda c, d: frames.append((c, d)))
                                  if kind == "zstd" else None)
        buf = bytearray(3000)
        while plain.readinto(buf) if use_readinto else plain.read(3000):  # type: ignore[attr-defined]
            pass

    expected_binary(drain, True)
    expected_binary(drain, False)


# -- libconfig and the sw-description model --------------------------------------------
_NUMBERS = st.one_of(
    st.integers(-(2**70), 2**70).map(str),
    st.integers(0, 2**70).map(lambda n: f"0x{n:X}"),
    st.integers(-(2**40), 2**40).map(lambda n: f"{n}L"),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    st.sampled_from(["1e999", "-1e999", ".5", "5.", "1e", "0x", "1.5e-3", "9" * 30]),
)
_STRINGS = st.text(SAFE_TEXT, max_size=30).map(libconfig._quote) | st.sampled_from(
    ['"\\x41"', '"\\q"', '"\\', '"unterminated', '"a" "b"', '"\\x4"', '"\\\n"']
)
_NAMES = st.sampled_from(["software", "version", "images", "filename", "size", "sha256",
                          "compressed", "ferry", "targets", "selector", "true", "a", "*x"])
_PUNCT = st.sampled_from([*"=:;,{}()[]", "@include", "#c\n", "//c\n", "/* c */", "/*"])


def _scalar_text() -> st.SearchStrategy[str]:
    return _NUMBERS | _STRINGS | st.sampled_from(["true", "false", "TRUE"])


LIBCONFIG_VALUES = st.recursive(
    _scalar_text(),
    lambda kids: (
        st.lists(kids, max_size=4).map(lambda v: "(" + ", ".join(v) + ")")
        | st.lists(_scalar_text() | kids, max_size=4).map(lambda v: "[" + ", ".join(v) + "]")
        | st.lists(st.tuples(_NAMES, kids), max_size=4).map(
            lambda s: "{ " + " ".join(f"{n} = {v};" for n, v in s) + " }")
    ),
    max_leaves=25,
)


@st.composite
def libconfig_texts(draw: st.DrawFn) -> str:
    kind = draw(st.integers(0, 3))
    if kind == 0:
        return draw(st.text(SAFE_TEXT, max_size=300))
    if kind == 1:  # token soup
        parts = draw(st.lists(_NAMES | _PUNCT | _scalar_text(), max_size=40))
        return " ".join(parts)
    if kind == 2:  # grammatical documents
        settings_ = draw(st.lists(st.tuples(_NAMES, LIBCONFIG_VALUES), max_size=4))
        return "\n".join(f"{n} = {v};" for n, v in settings_)
    # a valid sw-description, mutated
    text = fixture().description.decode()
    return mutate(text.encode(), draw(MUTATIONS)).decode("utf-8", "replace")


def run_libconfig(text: str) -> None:
    doc = expected(libconfig.loads, text)
    if doc is not None:
        again = libconfig.loads(libconfig.dumps(doc))
        if again != doc:
            raise AssertionError(f"dumps/loads round trip changed the document: {doc!r:.200}")
    expected(parse_description, text.encode())


def run_description_bytes(data: bytes) -> None:
    expected(parse_description, data)


# -- CMS -------------------------------------------------------------------------------
def _tlv(tag: int, body: bytes) -> bytes:
    n = len(body)
    if n < 0x80:
        return bytes([tag, n]) + body
    size = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(size)]) + size + body


_SIGNED_DATA_OID = bytes.fromhex("06092a864886f70d010702")
DER_SOUP = st.recursive(
    st.tuples(st.sampled_from([0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x0C, 0x13, 0x17, 0x18]),
              st.binary(max_size=16)).map(lambda t: _tlv(*t)),
    lambda kids: st.tuples(st.sampled_from([0x30, 0x31, 0xA0, 0xA1, 0xA3, 0x80]),
                           st.lists(kids, max_size=4)).map(
        lambda t: _tlv(t[0], b"".join(t[1]))),
    max_leaves=30,
)


@st.composite
def cms_signatures(draw: st.DrawFn) -> bytes:
    kind = draw(st.integers(0, 3))
    if kind == 0:
        return draw(st.binary(max_size=600))
    if kind == 1:  # a ContentInfo(signedData) shell around random DER
        return _tlv(0x30, _SIGNED_DATA_OID + _tlv(0xA0, draw(DER_SOUP)))
    sigs = fixture().signatures
    return mutate(sigs[draw(st.integers(0, len(sigs) - 1))], draw(MUTATIONS))


def run_cms(sig: bytes) -> None:
    fx = fixture()
    expected_binary(signature.verify, fx.content, sig, fx.keyring, now=NOW)
    who = signature.embedded_signer(sig)  # for display: must never raise at all
    if who is not None and not isinstance(who, str):
        raise AssertionError(f"embedded_signer returned {type(who).__name__}")


# -- DDI JSON --------------------------------------------------------------------------
def ddi_module() -> Any:
    """The DDI client module (imported late: the packaging targets do not need it)."""
    from ferry.daemon.backend import ddi

    return ddi


# Bodies as hawkBit's DDI documentation shows them (docs/backend.md cites the API).
POLL_BODY: dict[str, Any] = {
    "config": {"polling": {"sleep": "00:05:00"}},
    "_links": {
        "deploymentBase": {"href": "https://hb/DEFAULT/controller/v1/gw/deploymentBase/7?c=1"},
        "cancelAction": {"href": "https://hb/DEFAULT/controller/v1/gw/cancelAction/9"},
        "configData": {"href": "https://hb/DEFAULT/controller/v1/gw/configData"},
        "installedBase": {"href": "https://hb/DEFAULT/controller/v1/gw/installedBase/5"},
    },
}
DEPLOYMENT_BODY: dict[str, Any] = {
    "id": "7",
    "deployment": {
        "download": "forced",
        "update": "attempt",
        "maintenanceWindow": "available",
        "chunks": [{
            "part": "os",
            "version": "1.0.0",
            "name": "gateway",
            "metadata": [{"key": "k", "value": "v"}],
            "artifacts": [{
                "filename": "gw.swu",
                "hashes": {"sha1": "a" * 40, "md5": "b" * 32, "sha256": "c" * 64},
                "size": 1234,
                "_links": {
                    "download": {"href": "https://hb/DEFAULT/controller/v1/gw/softwaremodules/1/artifacts/gw.swu"},
                    "download-http": {"href": "http://hb/DEFAULT/controller/v1/gw/softwaremodules/1/artifacts/gw.swu"},
                },
            }],
        }],
    },
}
CANCEL_BODY: dict[str, Any] = {"id": "9", "cancelAction": {"stopId": "7"}}
_DDI_KEYS = sorted({"config", "polling", "sleep", "_links", "href", "deploymentBase",
                    "cancelAction", "stopId", "id", "deployment", "download", "update",
                    "chunks", "artifacts", "filename", "size", "hashes", "sha256",
                    "metadata", "key", "value", "part", "name", "version",
                    "maintenanceWindow", "download-http"})
JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**80), 2**80) | st.floats()
    | st.text(SAFE_TEXT, max_size=20) | st.sampled_from(["00:05:00", "99:99:99", "forced"]),
    lambda kids: st.lists(kids, max_size=4)
    | st.dictionaries(st.sampled_from(_DDI_KEYS) | st.text(SAFE_TEXT, max_size=8), kids,
                      max_size=5),
    max_leaves=30,
)


def _paths(doc: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield prefix
    if isinstance(doc, dict):
        for k, v in doc.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            yield from _paths(v, (*prefix, i))


@st.composite
def ddi_bodies(draw: st.DrawFn) -> Any:
    if draw(st.integers(0, 3)) == 0:
        return draw(JSON)
    doc = json.loads(json.dumps(draw(st.sampled_from([POLL_BODY, DEPLOYMENT_BODY, CANCEL_BODY]))))
    for _ in range(draw(st.integers(1, 4))):
        paths = [p for p in _paths(doc) if p]
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent = doc
        for step in path[:-1]:
            parent = parent[step]
        if draw(st.booleans()) and isinstance(parent, dict):
            del parent[path[-1]]
        else:
            parent[path[-1]] = draw(JSON)
    return doc


def run_ddi(body: Any) -> None:
    ddi = ddi_module()
    poll = expected(ddi.parse_poll, body)
    if poll is not None:
        _ = poll.action_id
    expected(ddi.parse_deployment, body)
    expected(ddi.parse_cancel, body)


TARGETS: dict[str, Target] = {
    t.name: t
    for t in (
        Target("cpio", "newc/crc headers and members (CpioStreamReader, read_unverified)",
               st.one_of(st.binary(max_size=800), cpio_archives()), run_cpio),
        Target("bundle", "a signed bundle broken after its head: reader, hashes, zstd/gzip",
               signed_bundles(), run_bundle),
        Target("decompress", "zstd frames and gzip alone, capped at 64 KiB, read and readinto",
               compressed_images(), run_decompress),
        Target("libconfig", "libconfig text: loads, dumps round trip, parse_description",
               libconfig_texts(), run_libconfig),
        Target("description", "sw-description as raw bytes (not UTF-8 too)",
               st.binary(max_size=400), run_description_bytes),
        Target("cms", "sw-description.sig: verify() and embedded_signer()",
               cms_signatures(), run_cms),
        Target("ddi", "DDI JSON: parse_poll, parse_deployment, parse_cancel",
               ddi_bodies(), run_ddi),
    )
}


# -- the campaign ----------------------------------------------------------------------
@contextmanager
def alarm(seconds: float) -> Iterator[None]:
    def fire(_sig: int, _frame: Any) -> None:
        raise Hang(f"input ran longer than {seconds} s")

    old = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def _where(err: BaseException) -> str:
    """The innermost frame in ferry's code: what groups failures into one finding."""
    frames = traceback.extract_tb(err.__traceback__)
    ours = [f for f in frames if "/bench/" not in f.filename
            and ("ferry" in f.filename or "/work/" in f.filename)]
    pick = ours or frames  # else the property itself (a message that is not one line)
    if not pick:
        return "?"
    return "/".join(pick[-1].filename.rsplit("/", 2)[-2:]) + f":{pick[-1].lineno}"


@dataclass
class Result:
    tried: int = 0
    failures: int = 0
    kinds: dict[str, tuple[str, str]] | None = None  # signature -> (error, example)


def campaign(target: Target, seconds: float, batch: int = 200, seed: int = 0) -> Result:
    result = Result(kinds={})
    assert result.kinds is not None
    kinds = result.kinds

    def prop(value: Any) -> None:
        result.tried += 1
        try:
            with alarm(HANG_SECONDS):
                target.run(value)
        except (Exception, Hang) as err:  # every exception but a FerryError is a finding
            result.failures += 1
            key = f"{type(err).__name__} at {_where(err)}"
            if key not in kinds:
                kinds[key] = (" ".join(str(err).split())[:160], repr(value)[:240])

    rng = random.Random(seed)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        run = settings(max_examples=batch, deadline=None, database=None, derandomize=False,
                       phases=[Phase.generate], suppress_health_check=list(HealthCheck))(
            given(target.strategy)(prop))
        hypothesis_seed(rng.getrandbits(64))(run)()
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("targets", nargs="*", help="targets to run (default: all)")
    parser.add_argument("--seconds", type=float, default=60.0, help="per target")
    parser.add_argument("--seed", type=int, default=int(time.time()))
    parser.add_argument("--list", action="store_true")
    args = parser.parse_args(argv)
    if args.list:
        for t in TARGETS.values():
            print(f"{t.name:12} {t.what}")
        return 0
    names = args.targets or list(TARGETS)
    unknown = [n for n in names if n not in TARGETS]
    if unknown:
        parser.error(f"unknown target(s) {', '.join(unknown)}; see --list")
    fixture()  # keys are made once, outside the timed runs
    print(f"fuzz: {args.seconds:g} s per target, seed {args.seed}, hang limit {HANG_SECONDS:g} s")
    total_failures = 0
    for name in names:
        started = time.monotonic()
        res = campaign(TARGETS[name], args.seconds, seed=args.seed)
        spent = time.monotonic() - started
        kinds = res.kinds or {}
        print(f"{name:12} inputs tried {res.tried:7d} ({res.tried / spent:6.0f}/s)  "
              f"failures {res.failures:5d}  distinct {len(kinds)}", flush=True)
        for key, (error, example) in kinds.items():
            print(f"    {key}: {error}\n        example: {example}")
        total_failures += res.failures
    return 1 if total_failures else 0


if __name__ == "__main__":
    sys.exit(main())
