"""Size limits the bundle reader enforces before it trusts anything it reads.

They exist so a hostile or broken stream cannot make the reader allocate or wait without
bound: sw-description and its signature are read into memory (they must be, to be
verified), so they get small caps; images are streamed, so only their declared size is
capped (newc stores sizes in 8 hex digits, hence the 4 GiB ceiling).
"""

from __future__ import annotations

from dataclasses import dataclass

NEWC_MAX_SIZE = 0xFFFF_FFFF  # 8 hex digits: 4 GiB - 1 byte


@dataclass(frozen=True)
class Limits:
    max_member_size: int = NEWC_MAX_SIZE
    max_description_size: int = 1024 * 1024
    max_signature_size: int = 256 * 1024
    max_images: int = 256
    max_name_length: int = 255
    max_bundle_size: int | None = None  # None or 0: unlimited
    max_trailer_padding: int = 64 * 1024
    # The cpio byte sum of image members is redundant with their sha256 and costs more CPU
    # than the hash itself in Python; sw-description and its signature are always summed.
    check_image_crc: bool = False
    # Most bytes an image without a signed decompressed-size may decompress to (None or 0:
    # no cap). The reader does not decompress; consumers pass this to
    # compression.output_limit(), which prefers the image's own declared size.
    max_decompressed_size: int | None = None
