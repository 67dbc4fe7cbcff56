"""The simulated MCU: an SMP server (OS and image groups) over an MCUboot-like two-slot
flash with swap on reset, test/confirm and revert.

Boot decision as MCUboot's (docs/design.md "New swaps"): secondary trailer magic with
image_ok unset -> TEST swap; with image_ok set -> PERM swap; primary in test mode
(copy_done set, image_ok unset) at the next reset -> REVERT. An image that "fails to
boot" (config) crashes before it can confirm itself, the watchdog resets, and MCUboot
reverts: the device comes back on its old image.
"""

from __future__ import annotations

import hashlib
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import cbor2

from ferry.sim.mcu import image as img

# MGMT_ERR codes
EOK, EUNKNOWN, ENOMEM, EINVAL, ETIMEOUT, ENOENT, EBADSTATE, EMSGSIZE, ENOTSUP = range(9)


@dataclass
class McuConfig:
    baud: int | None = 115200  # None: no throttling (unit tests)
    buf_size: int = 2048  # advertised MCUmgr buffer (decoded frame incl. len + CRC)
    buf_count: int = 4
    slot_size: int = 0x40000
    sector_size: int = 4096
    erase_ms_per_sector: float = 20.0  # STM32/nRF-class internal flash
    write_us_per_byte: float = 2.0
    boot_seconds: float = 0.3
    fails_to_boot: bool = False  # new (test) images crash before confirming
    public_key_pem: bytes | None = None  # boot check verifies signatures when set
    banner: bool = True  # console text at boot, as Zephyr prints
    supports_params: bool = True


@dataclass
class Slot:
    data: bytes = b""
    magic: bool = False  # trailer magic written (swap requested / image valid marker)
    image_ok: bool = False
    copy_done: bool = False

    def info(self, key: bytes | None) -> img.ImageInfo | None:
        return img.inspect(self.data, key) if self.data else None

    def erase(self) -> None:
        self.data, self.magic, self.image_ok, self.copy_done = b"", False, False, False


@dataclass
class Upload:
    length: int = 0
    sha: bytes = b""
    off: int = 0
    buf: bytearray = field(default_factory=bytearray)
    erased: set[int] = field(default_factory=set)
    image: int = 0


@dataclass
class Faults:
    """Knobs tests turn to misbehave on purpose."""

    silent_from_offset: int | None = None  # stop answering once the upload reaches this
    silent_seconds: float = 0.0  # ...for this long (then answer again)
    garbage: bool = False  # console text between response frames
    bad_crc: int = 0  # corrupt the CRC of the next N responses
    cut: int = 0  # cut the next N responses short
    error_rc: dict[tuple[int, int], int] = field(default_factory=dict)  # (group, cmd) -> rc


class McuDevice:
    """State and SMP command handling; ``link.SimMcu`` carries the bytes."""

    def __init__(self, config: McuConfig | None = None, *, running: bytes | None = None) -> None:
        self.config = config or McuConfig()
        self.primary = Slot()
        self.secondary = Slot()
        if running is not None:
            self.primary = Slot(data=running, magic=True, image_ok=True)
        self.upload: Upload | None = None
        self.faults = Faults()
        self.silent_until = 0.0
        self.boots = 0
        self.bricked = False
        self.log: list[str] = []
        self.lock = threading.Lock()

    # -- bootloader -----------------------------------------------------------------------
    def boot(self) -> None:
        """What MCUboot does on reset, then the app either runs or crashes (revert)."""
        key = self.config.public_key_pem
        self.boots += 1
        for _ in range(3):  # a crashing test image costs one more reset
            swap = self._swap_type()
            if swap in ("test", "perm"):
                info = self.secondary.info(key)
                if info is None or not info.valid or info.non_bootable:
                    why = info.why if info else "none"
                    self.log.append(f"boot: secondary image invalid ({why}), erased")
                    self.secondary.erase()
                else:
                    new, old = self.secondary, self.primary
                    self.primary = Slot(new.data, magic=True, image_ok=(swap == "perm"),
                                        copy_done=True)
                    self.secondary = Slot(old.data)
                    self.log.append(f"boot: swap {swap}")
            elif swap == "revert":
                new, old = self.primary, self.secondary
                self.primary = Slot(old.data, magic=True, image_ok=True, copy_done=True)
                self.secondary = Slot(new.data)
                self.log.append("boot: revert")
            info = self.primary.info(key)
            if info is None or not info.valid:
                self.bricked = True
                self.log.append("boot: no valid image in primary; staying in bootloader")
                return
            self.bricked = False
            in_test = self.primary.copy_done and not self.primary.image_ok
            if in_test and self.config.fails_to_boot:
                self.log.append("app: crashed before confirming; watchdog reset")
                continue
            return

    def _swap_type(self) -> str:
        if self.secondary.magic:
            return "perm" if self.secondary.image_ok else "test"
        if self.primary.magic and self.primary.copy_done and not self.primary.image_ok:
            return "revert"
        return "none"

    # -- SMP ------------------------------------------------------------------------------
    def handle(self, op: int, group: int, cmd: int, body: Any) -> tuple[dict[str, Any], bool]:
        """Response body, and whether the device resets after sending it."""
        rc = self.faults.error_rc.get((group, cmd))
        if rc:
            return {"rc": rc}, False
        if not isinstance(body, dict):
            return {"rc": EINVAL}, False
        write = op == 2
        if group == 0 and cmd == 0:
            return {"r": str(body.get("d", ""))}, False
        if group == 0 and cmd == 5 and write:
            return {}, True
        if group == 0 and cmd == 6 and not write and self.config.supports_params:
            return {"buf_size": self.config.buf_size, "buf_count": self.config.buf_count}, False
        if group == 1 and cmd == 0:
            if write:
                rc = self._state_write(body)
                if rc:
                    return {"rc": rc}, False
            return {"images": self._images(), "splitStatus": 0}, False
        if group == 1 and cmd == 1 and write:
            return self._upload(body), False
        if group == 1 and cmd == 5 and write:
            if self.secondary.magic:
                return {"rc": EBADSTATE}, False
            self.secondary.erase()
            self.upload = None
            return {}, False
        return {"rc": ENOTSUP}, False

    def _images(self) -> list[dict[str, Any]]:
        out = []
        key = self.config.public_key_pem
        for n, slot in ((0, self.primary), (1, self.secondary)):
            info = slot.info(key)
            if info is None:
                continue
            entry: dict[str, Any] = {"image": 0, "slot": n, "version": info.version_text,
                                     "hash": info.hash, "bootable": not info.non_bootable}
            if n == 0:
                entry["active"] = True
                entry["confirmed"] = slot.image_ok or not slot.copy_done
            else:
                entry["pending"] = slot.magic
                entry["permanent"] = slot.magic and slot.image_ok
            out.append(entry)
        return out

    def _state_write(self, body: dict[str, Any]) -> int:
        want = body.get("hash")
        confirm = bool(body.get("confirm", False))
        key = self.config.public_key_pem
        prim, sec = self.primary.info(key), self.secondary.info(key)
        if want is None or (prim is not None and want == prim.hash):
            if not confirm:
                return EINVAL if want is None else EOK  # testing the running image: no-op
            self.primary.image_ok = True
            return EOK
        if sec is None or want != sec.hash:
            return ENOENT
        # Like Zephyr, the app does not check signatures here: MCUboot does, at boot.
        self.secondary.magic = True
        self.secondary.image_ok = self.secondary.image_ok or confirm  # flash bits only clear
        return EOK

    def _upload(self, body: dict[str, Any]) -> dict[str, Any]:
        off, data = body.get("off"), body.get("data")
        if not isinstance(off, int) or not isinstance(data, bytes):
            return {"rc": EINVAL}
        cfg = self.config
        up = self.upload
        if off == 0:
            length = body.get("len")
            sha = body.get("sha", b"") or b""
            if not isinstance(length, int) or length <= 0:
                return {"rc": EINVAL}
            if length > cfg.slot_size:
                return {"rc": EINVAL, "rsn": "image larger than the slot"}
            if self.secondary.magic:
                return {"rc": EBADSTATE, "rsn": "secondary slot is pending"}
            if (up is not None and sha and up.sha == sha and up.length == length
                    and 0 < up.off < length):
                self.log.append(f"upload: resume at {up.off}")
                return {"rc": EOK, "off": up.off}
            if body.get("upgrade") and not self._newer(data):
                return {"rc": EBADSTATE, "rsn": "not newer than the running image"}
            self.secondary.erase()
            up = self.upload = Upload(length=length, sha=sha, image=int(body.get("image", 0)))
        if up is None:  # e.g. the MCU reset mid-upload: Zephyr answers "start at 0"
            return {"rc": EOK, "off": 0}
        if off != up.off:
            return {"rc": EOK, "off": up.off}
        if up.off + len(data) > up.length:
            return {"rc": EINVAL, "rsn": "data past the announced length"}
        self._flash_time(up, up.off, len(data))
        up.buf += data
        up.off += len(data)
        rsp: dict[str, Any] = {"rc": EOK, "off": up.off}
        if up.off == up.length:
            blob = bytes(up.buf)
            match = not up.sha or hashlib.sha256(blob).digest() == up.sha
            if up.sha:
                rsp["match"] = match
            if match:
                magic, ok = img.trailer_flags(blob, cfg.slot_size)
                self.secondary = Slot(blob, magic=magic, image_ok=ok)
            self.upload = None
        return rsp

    def _newer(self, first_chunk: bytes) -> bool:
        """``upgrade: true`` as Zephyr: only a newer major.minor.revision is accepted."""
        cur = self.primary.info(None)
        if len(first_chunk) < 28 or cur is None:
            return True
        major, minor, rev = struct.unpack_from("<BBH", first_chunk, 20)
        return (major, minor, rev) > cur.version[:3]

    def _flash_time(self, up: Upload, off: int, n: int) -> None:
        if self.config.baud is None:
            return
        cfg = self.config
        cost = n * cfg.write_us_per_byte / 1e6
        for sector in range(off // cfg.sector_size, (off + n - 1) // cfg.sector_size + 1):
            if sector not in up.erased:
                up.erased.add(sector)
                cost += cfg.erase_ms_per_sector / 1e3
        if cost > 0:
            time.sleep(cost)

    def banner(self) -> bytes:
        if not self.config.banner:
            return b""
        running = self.primary.info(self.config.public_key_pem)
        ver = running.version_text if running else "?"
        return (b"*** Booting MCUboot ***\r\nI: Starting swap using scratch algorithm.\r\n"
                + f"*** Booting Zephyr OS (sim) app {ver} ***\r\n".encode())


def encode_body(body: dict[str, Any]) -> bytes:
    return cbor2.dumps(body)


def decode_body(raw: bytes) -> Any:
    return cbor2.loads(raw) if raw else {}
