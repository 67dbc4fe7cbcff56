"""``ferry bundle create --recipe RECIPE.toml``: a bundle's contents written down once,
so an image build (Yocto, CI) does not repeat long command lines. Paths are relative to
the recipe file; command-line options override the recipe's top-level values.

    version = "1.4.0"
    compatible = ["acme-gw-rev2"]
    compress = "zstd"                 # zstd | gzip | none; default for every image
    encrypt_key = "aes.key"           # optional: SWUpdate's '<key> <ivt>' file; encrypts
                                      # every image (packaging/encryption.py)
    [rootfs]
    file = "rootfs.ext4"
    device = "/dev/mmcblk0p2"         # optional: what SWUpdate would write to
    [[target]]
    transport = "smp-serial"
    name = "sensor-mcu"
    file = "zephyr.signed.bin"
    format = "mcuboot"                # optional: sniffed from the file
    version = "1.2.3"                 # optional: sniffed (MCUboot, Zigbee OTA) or bundle's
    compress = "none"
    selector = { image_id = "0" }
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ferry.packaging.description import TargetSpec
from ferry.packaging.errors import BundleCreateError
from ferry.packaging.writer import ImageInput, compression_from_cli, sniff_format, sniff_selector

_TOP = {"version", "compatible", "compress", "encrypt_key", "rootfs", "target"}
_ROOTFS = {"file", "device", "compress", "filename"}
_TARGET = {"transport", "name", "file", "format", "version", "compress", "selector", "filename"}


@dataclass
class Recipe:
    version: str | None = None
    compatible: list[str] = field(default_factory=list)
    compress: str | None = None  # CLI spelling: zstd | gzip | none
    rootfs: dict[str, Any] | None = None
    targets: list[dict[str, Any]] = field(default_factory=list)
    base: Path = Path()
    encrypt_key: Path | None = None  # resolved against the recipe's directory


def _check_keys(table: dict[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise BundleCreateError(f"recipe {where}: unknown key {unknown[0]!r}")


def load_recipe(path: str | Path) -> Recipe:
    p = Path(path)
    try:
        doc = tomllib.loads(p.read_text())
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise BundleCreateError(f"cannot read recipe {p}: {err}") from None
    _check_keys(doc, _TOP, str(p))
    compat = doc.get("compatible", [])
    if isinstance(compat, str):
        compat = [compat]
    rootfs = doc.get("rootfs")
    if rootfs is not None:
        _check_keys(rootfs, _ROOTFS, f"{p} [rootfs]")
        if "file" not in rootfs:
            raise BundleCreateError(f"recipe {p} [rootfs]: 'file' is required")
    targets = doc.get("target", [])
    for i, t in enumerate(targets):
        _check_keys(t, _TARGET, f"{p} [[target]] #{i + 1}")
        for key in ("transport", "name", "file"):
            if key not in t:
                raise BundleCreateError(f"recipe {p} [[target]] #{i + 1}: {key!r} is required")
    return Recipe(
        version=doc.get("version"),
        compatible=list(compat),
        compress=doc.get("compress"),
        rootfs=rootfs,
        targets=list(targets),
        base=p.resolve().parent,
        encrypt_key=_encrypt_key(doc, p),
    )


def _encrypt_key(doc: dict[str, Any], p: Path) -> Path | None:
    value = doc.get("encrypt_key")
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise BundleCreateError(f"recipe {p}: 'encrypt_key' must be a path string")
    return p.resolve().parent / value


def target_input(
    transport: str,
    name: str,
    path: Path,
    *,
    compress: str | None,
    bundle_version: str,
    fmt: str | None = None,
    version: str | None = None,
    selector: dict[str, str] | None = None,
    filename: str | None = None,
) -> ImageInput:
    """An ImageInput for a target, filling format and version from the file if not given."""
    if not path.is_file():
        raise BundleCreateError(f"target {transport}:{name}: {path} is not a file")
    sniffed_fmt, sniffed_version = sniff_format(path)
    spec = TargetSpec(
        transport=transport,
        name=name,
        format=fmt or sniffed_fmt,
        version=version or sniffed_version or bundle_version,
        selector={str(k): str(v) for k, v in (selector or sniff_selector(path)).items()},
    )
    return ImageInput(path=path, compress=compress, target=spec, filename=filename)


def recipe_images(
    recipe: Recipe, *, default_compress: str | None, bundle_version: str
) -> list[ImageInput]:
    def comp(table: dict[str, Any]) -> str | None:
        value = table.get("compress")
        return default_compress if value is None else compression_from_cli(value)

    out: list[ImageInput] = []
    if recipe.rootfs is not None:
        r = recipe.rootfs
        out.append(
            ImageInput(
                path=recipe.base / r["file"],
                compress=comp(r),
                device=r.get("device"),
                filename=r.get("filename"),
            )
        )
    for t in recipe.targets:
        out.append(
            target_input(
                t["transport"],
                t["name"],
                recipe.base / t["file"],
                compress=comp(t),
                bundle_version=bundle_version,
                fmt=t.get("format"),
                version=t.get("version"),
                selector=t.get("selector"),
                filename=t.get("filename"),
            )
        )
    return out
