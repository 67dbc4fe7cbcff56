"""``ferry bundle create|encrypt|verify|inspect|dev-pki``: build and check signed bundles.

Runs on a build host as well as on the gateway: it needs only ``ferry.packaging``.
"""

from __future__ import annotations

import argparse
import json
import sys
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any, BinaryIO


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "bundle",
        help="create, verify and inspect signed update bundles (.swu)",
        description="Create, verify and inspect signed ferry bundles (SWUpdate-compatible "
        ".swu files). See docs/bundle-format.md.",
    )
    bsub = parser.add_subparsers(dest="bundle_command", metavar="SUBCOMMAND")

    create = bsub.add_parser(
        "create",
        help="build a signed bundle",
        description="Build a signed bundle from a rootfs image and/or target firmware.",
    )
    create.add_argument(
        "--key",
        required=True,
        metavar="KEY.pem|pkcs11:URI",
        help="signer private key: a PEM file, or an RFC 7512 URI of a key in a PKCS#11 "
        "token, e.g. 'pkcs11:token=build;object=signer?module-path=/usr/lib/softhsm/"
        "libsofthsm2.so&pin-source=/run/pin' (docs/cli.md)",
    )
    create.add_argument(
        "--cert",
        metavar="CERT.pem",
        help="signer certificate (PEM; intermediates may follow it in the same file); "
        "with a pkcs11: key it may be left out to use the certificate on the token",
    )
    create.add_argument("--version", dest="bundle_version", metavar="V", help="bundle version")
    create.add_argument(
        "--compatible",
        action="append",
        default=[],
        metavar="HW",
        help="hardware compatibility string (repeatable)",
    )
    create.add_argument("--rootfs", metavar="IMG", help="gateway root filesystem image")
    create.add_argument(
        "--compress",
        choices=("zstd", "gzip", "none"),
        help="compression for every image (default: zstd, or the recipe's)",
    )
    create.add_argument(
        "--target",
        action="append",
        default=[],
        metavar="TRANSPORT:NAME=FILE",
        help="firmware for a device behind the gateway (repeatable)",
    )
    create.add_argument("--recipe", metavar="RECIPE.toml", help="bundle contents from a file")
    create.add_argument("--pss", action="store_true", help="sign with RSA-PSS (RSA keys)")
    create.add_argument(
        "--delta",
        action="store_true",
        help="store the rootfs as zstd chunks with a signed chunk index, so gateways fetch "
        "only the chunks their active slot lacks (docs/bundle-format.md, Delta images)",
    )
    create.add_argument(
        "--delta-chunk",
        type=int,
        default=16,
        metavar="KIB",
        help="average chunk size for --delta in KiB, a power of two (default 16)",
    )
    create.add_argument(
        "--keyring",
        dest="new_keyring",
        metavar="NEWKEYRING.pem",
        help="carry a new trust keyring (CA certificates, CRLs); gateways install it after "
        "verifying this bundle against their current one (docs/security.md)",
    )
    create.add_argument(
        "--keyring-version",
        type=int,
        metavar="N",
        help="version of --keyring; must be above the version in force on the gateways",
    )
    create.add_argument(
        "--encrypt-key",
        metavar="KEYFILE",
        help="encrypt every image with AES-CBC as SWUpdate does; KEYFILE holds "
        "'<key hex> <ivt hex>' (SWUpdate's -K file)",
    )
    create.add_argument(
        "--to",
        action="append",
        default=[],
        metavar="CERT.pem",
        help="encrypt every image and wrap the key for this recipient (RSA-OAEP or ECDH, "
        "CMS EnvelopedData in sw-description.key; repeatable); without --encrypt-key a "
        "fresh random key is used",
    )
    create.add_argument("-o", "--output", required=True, metavar="OUT.swu")
    create.set_defaults(func=_create)

    verify = bsub.add_parser(
        "verify",
        help="check a bundle completely (signature, chain, every image)",
        description="Check signature, signer chain, member order and every image hash. "
        "Exits 0 if the bundle is good, 1 with the reason on stderr otherwise.",
    )
    verify.add_argument("--keyring", required=True, metavar="CA.pem")
    verify.add_argument("bundle", metavar="BUNDLE", help="bundle file, or - for stdin")
    verify.set_defaults(func=_verify)

    inspect = bsub.add_parser(
        "inspect",
        help="show what a bundle contains",
        description="Print version, compatibility, signer and images. Reads only "
        "sw-description and its signature; with --keyring the signature is verified.",
    )
    inspect.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help="machine-readable output"
    )
    inspect.add_argument("--keyring", metavar="CA.pem", help="verify the signer against it")
    inspect.add_argument(
        "--delta-base",
        metavar="IMG",
        help="with --keyring: what a gateway whose active slot holds IMG would fetch "
        "of a delta rootfs (chunks present, bytes, requests)",
    )
    inspect.add_argument("bundle", metavar="BUNDLE", help="bundle file, or - for stdin")
    inspect.set_defaults(func=_inspect)

    cosign = bsub.add_parser(
        "cosign",
        help="add a signature to a bundle (k-of-n keyring changes)",
        description="Add a signature by another key to BUNDLE's sw-description.sig; "
        "nothing the signature covers changes. A keyring with ferry-keyring-threshold: k "
        "accepts a new keyring only signed under k of its anchors (docs/security.md).",
    )
    cosign.add_argument("--key", required=True, metavar="KEY.pem|pkcs11:URI",
                        help="the added signer's key (a file or a PKCS#11 token)")
    cosign.add_argument("--cert", required=True, metavar="CERT.pem",
                        help="its certificate (PEM; intermediates may follow)")
    cosign.add_argument("--pss", action="store_true", help="sign with RSA-PSS (RSA keys)")
    cosign.add_argument("-o", "--output", required=True, metavar="OUT.swu")
    cosign.add_argument("bundle", metavar="BUNDLE")
    cosign.set_defaults(func=_cosign)

    encrypt = bsub.add_parser(
        "encrypt",
        help="wrap an encrypted bundle's key for more recipients (no signer needed)",
        description="Write OUT: IN with its key envelope (sw-description.key) wrapped for "
        "more recipients. sw-description, its signature and every image stay byte for "
        "byte. The image key comes from a current recipient (--key/--cert) or from the "
        "AES key file (--encrypt-key); it is checked against the signed aes-key-check.",
    )
    encrypt.add_argument("--to", action="append", required=True, metavar="CERT.pem",
                         help="a recipient certificate to add (RSA or EC; repeatable)")
    encrypt.add_argument("--key", metavar="KEY.pem",
                         help="private key of a current recipient, to open the envelope")
    encrypt.add_argument("--cert", metavar="CERT.pem", help="that recipient's certificate")
    encrypt.add_argument("--encrypt-key", metavar="KEYFILE",
                         help="the bundle's AES key file instead of a recipient's key")
    encrypt.add_argument("--replace", action="store_true",
                         help="wrap for the --to certificates only, dropping the others")
    encrypt.add_argument("bundle", metavar="IN.swu")
    encrypt.add_argument("output", metavar="OUT.swu")
    encrypt.set_defaults(func=_encrypt)

    pki = bsub.add_parser(
        "dev-pki",
        help="make a development CA and signer (never for production)",
        description="Write ca.pem, ca.key, signer.pem and signer.key into DIR.",
    )
    pki.add_argument("--rsa", action="store_true", help="RSA-2048 instead of EC P-256")
    pki.add_argument("dir", metavar="DIR")
    pki.set_defaults(func=_dev_pki)

    def show_help(_args: argparse.Namespace) -> int:
        parser.print_help()
        return 2

    parser.set_defaults(func=show_help)


def _open(path: str) -> AbstractContextManager[BinaryIO]:
    from ferry.packaging.errors import BundleCreateError

    if path == "-":
        return nullcontext(sys.stdin.buffer)
    try:
        return open(path, "rb")
    except OSError as err:
        raise BundleCreateError(f"cannot open {path}: {err.strerror}") from None


def _create(args: argparse.Namespace) -> int:
    from ferry.packaging.errors import BundleCreateError
    from ferry.packaging.recipe import Recipe, load_recipe, recipe_images, target_input
    from ferry.packaging.writer import compression_from_cli, create_bundle, load_signing_key

    recipe = load_recipe(args.recipe) if args.recipe else Recipe()
    version = args.bundle_version or recipe.version
    if not version:
        raise BundleCreateError("give --version (or 'version' in the recipe)")
    compatible = args.compatible or recipe.compatible
    compress = compression_from_cli(args.compress or recipe.compress or "zstd")
    images = recipe_images(recipe, default_compress=compress, bundle_version=version)
    if args.rootfs:
        from ferry.packaging.writer import ImageInput

        images = [i for i in images if i.target is not None]
        images.insert(0, ImageInput(path=Path(args.rootfs), compress=compress))
    for spec in args.target:
        transport, sep1, rest = spec.partition(":")
        name, sep2, file = rest.partition("=")
        if not (sep1 and sep2 and transport and name and file):
            raise BundleCreateError(f"--target {spec!r}: expected TRANSPORT:NAME=FILE")
        images.append(
            target_input(transport, name, Path(file), compress=compress, bundle_version=version)
        )
    if args.delta:
        if args.encrypt_key or recipe.encrypt_key or args.to:
            raise BundleCreateError("--delta cannot be combined with encryption yet: the "
                                    "chunks are fetched and checked one by one")
        images = _with_delta(images, args.delta_chunk)
    signing = load_signing_key(args.key, args.cert, pss=args.pss)
    if (args.new_keyring is None) != (args.keyring_version is None):
        raise BundleCreateError("give --keyring and --keyring-version together")
    key_path = args.encrypt_key or recipe.encrypt_key
    aes = None
    if key_path:
        from ferry.packaging.encryption import load_key

        aes = load_key(key_path)
    envelope = None
    if args.to:
        from ferry.packaging.encryption import AesKey, new_ivt
        from ferry.packaging.envelope import load_certs, seal

        certs = load_certs(args.to)
        if aes is None:
            import os

            aes = AesKey(key=os.urandom(32), ivt=new_ivt())
        if not isinstance(aes, AesKey):
            raise BundleCreateError("--to wraps a key file's key; a pkcs11: AES key "
                                    "cannot leave its token")
        envelope = seal(aes, certs)
    desc = create_bundle(
        args.output, signing=signing, version=version, compatible=compatible, images=images,
        encrypt_key=aes, envelope=envelope,
        keyring=Path(args.new_keyring) if args.new_keyring else None,
        keyring_version=args.keyring_version,
    )
    how = ", encrypted (AES-CBC)" if aes is not None else ""
    if envelope is not None:
        how += f", key wrapped for {len(certs)} recipient(s)"
    if desc.keyring_version is not None:
        how += f", keyring version {desc.keyring_version}"
    print(f"wrote {args.output}: version {desc.version}, {len(desc.images)} image(s){how}")
    return 0


def _with_delta(images: list[Any], chunk_kib: int) -> list[Any]:
    import dataclasses

    from ferry.packaging.chunker import ChunkParamError, ChunkParams
    from ferry.packaging.errors import BundleCreateError

    try:
        params = ChunkParams(avg=chunk_kib << 10)
    except ChunkParamError as err:
        raise BundleCreateError(f"--delta-chunk {chunk_kib}: {err}") from None
    if not any(i.target is None for i in images):
        raise BundleCreateError("--delta needs a rootfs image (--rootfs)")
    return [dataclasses.replace(i, delta=params) if i.target is None else i for i in images]


def _encrypt(args: argparse.Namespace) -> int:
    from ferry.packaging.envelope import load_certs, load_recipient
    from ferry.packaging.errors import BundleCreateError
    from ferry.packaging.rewrap import rewrap_bundle

    if (args.key is None) != (args.cert is None):
        raise BundleCreateError("give --key and --cert together (a current recipient)")
    if args.key is not None and args.encrypt_key:
        raise BundleCreateError("give a recipient's --key/--cert or --encrypt-key, not both")
    if Path(args.bundle).resolve() == Path(args.output).resolve():
        raise BundleCreateError("OUT must differ from IN")
    certs = load_certs(args.to)
    me = load_recipient(args.key, args.cert) if args.key else None
    aes = None
    if args.encrypt_key:
        from ferry.packaging.encryption import AesKey, load_key

        loaded = load_key(args.encrypt_key)
        if not isinstance(loaded, AesKey):
            raise BundleCreateError("--encrypt-key: a pkcs11: AES key cannot leave its token")
        aes = loaded
    if not Path(args.bundle).is_file():
        raise BundleCreateError(f"{args.bundle}: not a file")
    names = rewrap_bundle(args.bundle, args.output, certs, me=me, key=aes,
                          replace=args.replace)
    print(f"wrote {args.output}: image key wrapped for {len(names)} recipient(s); "
          "sw-description and its signature unchanged")
    for name in names:
        print(f"  {name}")
    return 0


def _verify(args: argparse.Namespace) -> int:
    from ferry.packaging.keyring import load_keyring
    from ferry.packaging.reader import BundleReader

    keyring = load_keyring(args.keyring)
    with _open(args.bundle) as fh:
        reader = BundleReader(fh, keyring)
        reader.verify_all()
    desc = reader.description
    extra = f", carries keyring version {desc.keyring_version}" if desc.keyring_version else ""
    print(f"OK: version {desc.version}, {len(desc.images)} image(s), signed by {reader.signer}"
          f"{extra}")
    return 0


def _image_json(entry: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        "filename": entry.filename,
        "role": entry.role,
        "size": entry.size,
        "sha256": entry.sha256,
        "compression": entry.compressed or "none",
        "decompressed_size": entry.decompressed_size,
        "encrypted": entry.encrypted,
        "delta_index": entry.delta.index if entry.delta is not None else None,
        "device": entry.device,
        "target": None,
    }
    if entry.target is not None:
        t = entry.target
        out["target"] = {
            "transport": t.transport,
            "name": t.name,
            "format": t.format,
            "version": t.version,
            "selector": dict(t.selector),
        }
    return out


def _delta_estimate(args: argparse.Namespace) -> dict[str, Any] | None:
    """The delta plan a gateway holding --delta-base would make (daemon/install/delta)."""
    base = getattr(args, "delta_base", None)
    if not base:
        return None
    from ferry.daemon.install.delta import index_slot, make_plan
    from ferry.packaging.chunkindex import parse_index
    from ferry.packaging.errors import BundleCreateError
    from ferry.packaging.keyring import load_keyring
    from ferry.packaging.reader import BundleReader

    if not args.keyring:
        raise BundleCreateError("--delta-base needs --keyring: the chunk index is read "
                                "from a verified bundle only")
    if not Path(base).is_file():
        raise BundleCreateError(f"--delta-base {base}: not a file")
    with _open(args.bundle) as fh:
        reader = BundleReader(fh, load_keyring(args.keyring))
        rootfs = reader.description.rootfs()
        if rootfs is None or rootfs.delta is None:
            raise BundleCreateError("the bundle has no delta rootfs (ferry bundle create --delta)")
        for _entry, _stream in reader.images():
            break  # the index member comes right before the rootfs
    assert reader.delta_index is not None
    index = parse_index(reader.delta_index, stored_size=rootfs.size,
                        image_size=rootfs.decompressed_size)
    plan = make_plan(index, index_slot(base, index))
    return {"base": base, "chunks": index.count, "present": len(plan.local),
            "fetch_bytes": plan.fetch_bytes, "requests": plan.requests,
            "mode": "full" if plan.full else "delta", "member_size": rootfs.size}


def _recipients(path: str) -> list[str] | None:
    """Who the bundle's key envelope names (None: no envelope, or read from stdin)."""
    if path == "-":
        return None
    from ferry.packaging.envelope import recipients
    from ferry.packaging.rewrap import peek_envelope

    with _open(path) as fh:
        der = peek_envelope(fh)
    return recipients(der) if der is not None else None


def _inspect(args: argparse.Namespace) -> int:
    estimate = _delta_estimate(args)
    from ferry.packaging.keyring import load_keyring
    from ferry.packaging.reader import BundleReader, read_unverified
    from ferry.packaging.signature import embedded_signer

    signer: str | None
    with _open(args.bundle) as fh:
        if args.keyring:
            reader = BundleReader(fh, load_keyring(args.keyring))
            desc, signer, verified = reader.description, reader.signer, True
        else:
            desc, _raw, sig = read_unverified(fh)
            signer, verified = (embedded_signer(sig) if sig else None), False
    wrapped_for = _recipients(args.bundle) if any(e.encrypted for e in desc.images) else None
    if getattr(args, "json", False):
        doc = {
            "version": desc.version,
            "compatible": list(desc.compatible),
            "signer": signer,
            "signature_verified": verified,
            "keyring_version": desc.keyring_version,
            "images": [_image_json(e) for e in desc.images],
            "delta_estimate": estimate,
            "recipients": wrapped_for,
        }
        print(json.dumps(doc, indent=2))
        return 0
    print(f"version:    {desc.version}")
    print(f"compatible: {', '.join(desc.compatible) or '-'}")
    state = "verified" if verified else "NOT verified; pass --keyring to check"
    print(f"signer:     {signer or 'unsigned'} ({state})")
    if desc.keyring_version is not None:
        print(f"keyring:    new keyring version {desc.keyring_version}")
    if wrapped_for is not None:
        print(f"key:        wrapped for {len(wrapped_for)} recipient(s) in sw-description.key")
        for name in wrapped_for:
            print(f"              {name}")
    print("images:")
    for e in desc.images:
        if e.target is not None:
            t = e.target
            where = f"target {t.transport}:{t.name} ({t.format} {t.version})"
        elif e.role == "keyring":
            where = f"keyring version {desc.keyring_version}"
        else:
            where = "rootfs" + (f" -> {e.device}" if e.device else "")
        print(f"  {e.filename}")
        print(f"    {where}")
        enc = "  encrypted (AES-CBC)" if e.encrypted else ""
        print(f"    size {e.size}  compression {e.compressed or 'none'}{enc}")
        print(f"    sha256 {e.sha256}")
        if e.delta is not None:
            print(f"    delta  chunk index {e.delta.index} ({e.delta.size} bytes)")
        if e.delta is not None and estimate is not None:
            print(f"    against {estimate['base']}: {estimate['present']} of "
                  f"{estimate['chunks']} chunks present, fetch {estimate['fetch_bytes']} of "
                  f"{estimate['member_size']} bytes in {estimate['requests']} request(s) "
                  f"({estimate['mode']})")
    return 0


def _cosign(args: argparse.Namespace) -> int:
    from ferry.packaging.cosign import cosign_bundle
    from ferry.packaging.writer import load_signing_key, sign_description

    signing = load_signing_key(args.key, args.cert, pss=args.pss)
    count = cosign_bundle(Path(args.bundle), Path(args.output),
                          lambda text: sign_description(text, signing))
    print(f"wrote {args.output}: {count} signatures")
    return 0


def _dev_pki(args: argparse.Namespace) -> int:
    from ferry.packaging.devpki import write_dev_pki

    pki = write_dev_pki(args.dir, kind="rsa" if args.rsa else "ec")
    print(f"CA (keyring): {pki.ca_cert}\nsigner: --cert {pki.signer_cert} --key {pki.signer_key}")
    print("development keys only: never sign production bundles with them")
    return 0
