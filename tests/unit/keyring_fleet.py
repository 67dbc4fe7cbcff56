"""A fleet with two CAs, for the keyring rotation tests: the gateway's factory keyring
is CA 1 (stated version 1, pki/ca.pem); CA 2 is a second dev PKI. Bundles that carry a
keyring are built with the real writer (``create_bundle(keyring=...)``)."""

from __future__ import annotations

from pathlib import Path

from install_gateway import Gateway, make_gateway

from ferry.packaging.description import TargetSpec
from ferry.packaging.devpki import DevPki, write_dev_pki
from ferry.packaging.writer import ImageInput, create_bundle, load_signing_key


def make_fleet_gateway(root: Path, **kw: object) -> tuple[Gateway, DevPki]:
    """A gateway whose factory keyring is CA 1 at version 1, and CA 2's PKI."""
    gw = make_gateway(root, **kw)  # type: ignore[arg-type]
    ca1 = gw.pki_dir / "ca.pem"
    ca1.write_bytes(b"# factory keyring\nferry-keyring-version: 1\n" + ca1.read_bytes())
    return gw, write_dev_pki(root / "pki2")


def keyring_file(path: Path, *pems: Path, extra: bytes = b"") -> Path:
    path.write_bytes(b"".join(p.read_bytes() for p in pems) + extra)
    return path


def bundle(out: Path, pki_dir: Path, *, version: str = "1.0.1",
           keyring: Path | None = None, keyring_version: int | None = None,
           image: bytes | None = None, target: bytes | None = None) -> Path:
    """Signed by ``pki_dir``'s signer; a rootfs, a target, a keyring, or any mix."""
    work = out.parent / (out.name + ".d")
    work.mkdir(parents=True, exist_ok=True)
    images = []
    if image is not None:
        (work / "rootfs.img").write_bytes(image)
        images.append(ImageInput(path=work / "rootfs.img", compress=None,
                                 filename="rootfs.img"))
    if target is not None:
        (work / "mcu.bin").write_bytes(target)
        spec = TargetSpec(transport="smp-serial", name="mcu", format="bin", version="5.0.0")
        images.append(ImageInput(path=work / "mcu.bin", compress=None, target=spec,
                                 filename="mcu.bin"))
    signing = load_signing_key(pki_dir / "signer.key", pki_dir / "signer.pem")
    create_bundle(out, signing=signing, version=version, compatible=["test-gw"],
                  images=images, keyring=keyring, keyring_version=keyring_version)
    return out
