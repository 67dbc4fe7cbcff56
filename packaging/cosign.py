"""``ferry bundle cosign``: one more signature on a bundle, nothing it signs touched.

The k-of-n rule for keyring changes (packaging/keyringupdate.py) needs one signature per
anchor, and the holders of those keys should not have to pass one private key around:
the bundle is built and signed once, then each further key holder adds a SignerInfo for
the same ``sw-description`` bytes (with its certificate and chain) to
``sw-description.sig``. The CMS result is one SignedData with several SignerInfos, as
``openssl cms -sign`` with several ``-signer`` makes and ``openssl cms -verify``
checks (every signer must verify). The archive is copied member by member with only the
signature replaced, so every image's bytes, size and hash stay as signed.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from asn1crypto import cms

from ferry.packaging.cpio import CpioStreamReader, CpioStreamWriter
from ferry.packaging.description import DESCRIPTION_NAME, SIGNATURE_NAME
from ferry.packaging.errors import BadSignature, BundleCreateError, WrongMemberOrder
from ferry.packaging.limits import Limits

CHUNK = 1 << 20


def add_signature(sig: bytes, added: bytes) -> bytes:
    """``sig`` (DER CMS SignedData) with the SignerInfos, certificates and digest
    algorithms of ``added`` (a signature of the same content) merged in."""
    try:
        old = cms.ContentInfo.load(sig)["content"]
        old.native  # noqa: B018 -- parse it all: garbage fails here
    except (ValueError, TypeError, KeyError) as err:
        detail = " ".join(str(err).split())[:200]
        raise BadSignature(f"sw-description.sig is not a DER CMS signature ({detail})") from None
    new = cms.ContentInfo.load(added)["content"]
    for info in old["signer_infos"]:
        if any(info["sid"].dump() == n["sid"].dump() for n in new["signer_infos"]):
            raise BundleCreateError("this signer has signed the bundle already")
    digests = list(old["digest_algorithms"])
    for algo in new["digest_algorithms"]:
        if all(algo.dump() != d.dump() for d in digests):
            digests.append(algo)
    certs = list(old["certificates"] or [])
    for c in new["certificates"] or []:
        if all(c.dump() != d.dump() for d in certs):
            certs.append(c)
    versions = {old["version"].native, new["version"].native}
    merged = cms.SignedData({
        "version": "v3" if "v3" in versions else "v1",
        "digest_algorithms": digests,
        "encap_content_info": old["encap_content_info"],
        "certificates": certs,
        "signer_infos": [*old["signer_infos"], *new["signer_infos"]],
    })
    return cms.ContentInfo({"content_type": "signed_data", "content": merged}).dump(force=True)


def cosign_bundle(source: Path, output: Path, sign: Callable[[bytes], bytes]) -> int:
    """Copy ``source`` to ``output`` (atomically) with the signature ``sign`` makes over
    its sw-description added (writer.sign_description: a key file or a PKCS#11 token);
    returns the number of SignerInfos now on it."""
    limits = Limits()
    workdir = output.resolve().parent
    fd, name = tempfile.mkstemp(prefix=".ferry-", suffix=".swu.part", dir=workdir)
    tmp: Path | None = Path(name)
    try:
        with open(source, "rb") as src, os.fdopen(fd, "wb") as out:
            cpio = CpioStreamReader(src, limits)
            if cpio.next_header().name != DESCRIPTION_NAME:
                raise WrongMemberOrder("first member is not sw-description; not a bundle")
            content = cpio.read_member(limits.max_description_size, DESCRIPTION_NAME)
            if cpio.next_header().name != SIGNATURE_NAME:
                raise WrongMemberOrder("bundle is not signed: nothing to add a signature to")
            sig = cpio.read_member(limits.max_signature_size, SIGNATURE_NAME)
            merged = add_signature(sig, sign(content))
            writer = CpioStreamWriter(out)
            writer.add_bytes(DESCRIPTION_NAME, content)
            writer.add_bytes(SIGNATURE_NAME, merged)
            while not (header := cpio.next_header()).is_trailer:
                writer.begin(header.name, header.size, header.check)
                while chunk := cpio.read_data(CHUNK):
                    writer.write(chunk)
                writer.end(header.size)
            cpio.check_end()
            writer.finish()
            out.flush()
            os.fsync(out.fileno())
        os.chmod(name, 0o644)
        os.replace(name, output)
        tmp = None
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
    return len(cms.ContentInfo.load(merged)["content"]["signer_infos"])
