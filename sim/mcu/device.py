"""The simulated MCU: an SMP server (OS and image groups) over an MCUboot-like two-slot
flash with swap on reset, test/confirm and revert.

Boot decision as MCUboot's (docs/design.md "New swaps"): secondary trailer magic with
image_ok unset -> TEST swap; with image_ok set -> PERM swap; primary in test mode
(copy_done set, image_ok unset) at the next reset -> REVERT. An image that "fails to
boot" (config) crashes before it can confirm itself, the watchdog resets, and MCUboot
reverts: the device comes back on its old image.

An image can also boot and still be broken (``app_unhealthy``): its SMP server runs
(echo, image state, reset all answer) but the application's own check fails, which is
what the application-defined health group (``health_group``, a user group from
``MGMT_GROUP_ID_PERUSER`` = 64 as ``mgmt_defines.h`` reserves) answers: an
``err: {group, rc}`` for v2 requests, and for v1 ones ``MGMT_ERR_EUNKNOWN``, as
``smp_translate_error_code`` gives for a group without a translation function
(``subsys/mgmt/mcumgr/smp/src/smp.c``). Such an image stays unconfirmed unless someone
confirms it, so a reset reverts it (MCUboot's REVERT, above); ``app_confirms`` models an
application that calls ``boot_write_img_confirmed()`` at start-up instead, after which
no reset brings the old image back.

Encrypted images (``McuConfig.enc_key``, ``encrypted``) are decrypted as MCUboot does at
swap time: slot 1 is validated by hashing header + decrypted payload + protected TLVs
(``bootutil_img_hash``; a key that does not load, or a bad hash, fails
``boot_validate_slot`` and slot 1 is erased), and the swap writes the plaintext to slot 0
(``boot_copy_region`` decrypts what comes from slot 1). The image going the other way is
re-encrypted with its own key and counter, which gives back exactly the bytes it
arrived as, so the simulator keeps those (``Slot.sealed``) and a revert decrypts them.

The SMP side follows Zephyr's mcumgr (paths in zephyrproject-rtos/zephyr):

- image state read/write: ``subsys/mgmt/mcumgr/grp/img_mgmt/src/img_mgmt_state.c``
  (``img_mgmt_state_read``: the active slot is ``confirmed`` unless the next boot
  reverts; the other slot is ``pending`` for a test, ``pending``+``permanent`` for a
  permanent swap, ``confirmed`` while a test image runs; ``img_mgmt_set_next_boot_slot``:
  testing the active slot, or changing anything while a test is pending, is refused);
- upload and erase: ``.../img_mgmt/src/img_mgmt.c`` and ``zephyr_img_mgmt.c``
  (``img_mgmt_upload_inspect``: no upload into a slot that is pending or holds the
  image to revert to, ``IMG_MGMT_ERR_NO_FREE_SLOT``; resume by ``sha``);
- reset: ``.../grp/os_mgmt/src/os_mgmt.c`` (``os_mgmt_reset`` answers at once and starts
  a timer of ``CONFIG_MCUMGR_GRP_OS_RESET_MS``, default 250 ms; the running image keeps
  answering until it fires); ``os_mgmt_mcumgr_params`` exists only with
  ``CONFIG_MCUMGR_GRP_OS_MCUMGR_PARAMS``, otherwise the command is ``MGMT_ERR_ENOTSUP``;
- error shapes: ``subsys/mgmt/mcumgr/smp/src/smp.c``: group errors go into the response
  as ``err: {group, rc}`` (``smp_add_cmd_err``) for SMP v2 requests; for v1 requests
  (and servers older than Zephyr 3.3, ``smp_v2=False``) they become a top-level ``rc``
  through ``img_mgmt_translate_error_code``; failures of the framework itself (unknown
  command, undecodable request) are a top-level ``rc`` in both versions.
"""

from __future__ import annotations

import hashlib
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import cbor2

from ferry.sim.mcu import encrypted as enc
from ferry.sim.mcu import image as img

# MGMT_ERR codes (include/zephyr/mgmt/mcumgr/mgmt/mgmt_defines.h, enum mcumgr_err_t)
EOK, EUNKNOWN, ENOMEM, EINVAL, ETIMEOUT, ENOENT, EBADSTATE, EMSGSIZE, ENOTSUP = range(9)

GROUP_IMAGE = 1
# enum img_mgmt_err_code_t (include/zephyr/mgmt/mcumgr/grp/img_mgmt/img_mgmt.h)
IMG_HASH_NOT_FOUND = 8
IMG_NO_FREE_SLOT = 9
IMG_INVALID_HASH = 24
IMG_CURRENT_VERSION_IS_NEWER = 27
IMG_IMAGE_ALREADY_PENDING = 28
IMG_INVALID_IMAGE_TOO_LARGE = 30
IMG_INVALID_IMAGE_DATA_OVERRUN = 31
IMG_SETTING_TEST_TO_ACTIVE_DENIED = 33

# img_mgmt_translate_error_code() in img_mgmt.c: what a v1 request (or an old server) sees
_IMG_TO_MGMT = {3: ENOENT, 4: ENOENT, 9: EBADSTATE, 27: EBADSTATE, 28: EBADSTATE,
                15: ENOMEM, 14: EINVAL, 19: EINVAL, 20: EINVAL, 21: EINVAL, 22: EINVAL,
                24: EINVAL, 25: EINVAL}


def translate_v1(group: int, rc: int) -> int:
    """``smp_translate_error_code``: a group code as the MGMT_ERR a v1 client gets."""
    if group == GROUP_IMAGE:
        return _IMG_TO_MGMT.get(rc, EUNKNOWN)
    return EUNKNOWN  # no translation function for the group (e.g. a user group)


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
    # the bootloader's decryption key (CONFIG_BOOT_ENCRYPTION_KEY_FILE): PEM private key
    # (EC P-256, X25519, RSA-2048) or a raw 16/32-byte AES-KW key; None: no MCUBOOT_ENC_IMAGES
    enc_key: bytes | None = None
    banner: bool = True  # console text at boot, as Zephyr prints
    supports_params: bool = True  # CONFIG_MCUMGR_GRP_OS_MCUMGR_PARAMS
    reset_delay: float = 0.25  # CONFIG_MCUMGR_GRP_OS_RESET_MS: old image answers meanwhile
    reenumerate: bool = False  # USB CDC-ACM: the port vanishes at reset and comes back
    reenumerate_seconds: float = 1.0  # how long the port is gone (host enumeration)
    smp_v2: bool = True  # Zephyr >= 3.3: v2 requests get ``err: {group, rc}``
    # images other than the one the MCU first booted run, answer SMP, but fail the
    # application's own check (the health group answers an error)
    app_unhealthy: bool = False
    health_group: int | None = 64  # the application's health group (None: no handler)
    health_command: int = 0
    health_rc: int = 1  # the application's error code when unhealthy
    app_confirms: bool = False  # the application confirms a test image itself at start


@dataclass
class Slot:
    data: bytes = b""
    magic: bool = False  # trailer magic written (swap requested / image valid marker)
    image_ok: bool = False
    copy_done: bool = False
    sealed: bytes = b""  # slot 0: the encrypted form of ``data``, as it arrived in slot 1

    def info(self, key: bytes | None) -> img.ImageInfo | None:
        """Header and TLVs as the SMP image list reads them (no decryption)."""
        return img.inspect(self.data, key) if self.data else None

    def validate(self, key: bytes | None, dec: enc.DeviceKey | None) -> img.ImageInfo | None:
        """``boot_validate_slot`` for slot 1: decrypts an encrypted image to hash it."""
        return img.inspect(self.data, key, dec, must_decrypt=True) if self.data else None

    def erase(self) -> None:
        self.data, self.magic, self.image_ok, self.copy_done = b"", False, False, False
        self.sealed = b""


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
    group_error: dict[tuple[int, int], int] = field(default_factory=dict)  # -> group rc
    ignore_reset: bool = False  # answers reset but never resets (a refusing reset hook)
    hold_reset_requests: int = 0  # the old image serves this many requests before it resets
    stuck_in_bootloader: bool = False  # after a reset it never answers again


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
        self.factory_hash = b""  # the image the MCU first booted: always healthy
        self.log: list[str] = []
        self.lock = threading.Lock()

    # -- bootloader -----------------------------------------------------------------------
    def boot(self) -> None:
        """What MCUboot does on reset, then the app either runs or crashes (revert)."""
        key = self.config.public_key_pem
        dec = enc.load_device_key(self.config.enc_key) if self.config.enc_key else None
        self.boots += 1
        for _ in range(3):  # a crashing test image costs one more reset
            swap = self._swap_type()
            if swap in ("test", "perm"):
                info = self.secondary.validate(key, dec)
                if info is None or not info.valid or info.non_bootable:
                    why = info.why if info else "none"
                    self.log.append(f"boot: secondary image invalid ({why}), erased")
                    self.secondary.erase()
                else:
                    new, old = self.secondary, self.primary
                    self.primary = Slot(info.plain, magic=True, image_ok=(swap == "perm"),
                                        copy_done=True,
                                        sealed=new.data if info.plain != new.data else b"")
                    self.secondary = Slot(old.sealed or old.data)
                    self.log.append(f"boot: swap {swap}"
                                    + (" (decrypted)" if info.plain != new.data else ""))
            elif swap == "revert":
                new, old = self.primary, self.secondary
                back = old.validate(key, dec)
                if back is None or not back.valid:  # it left slot 0 in clear (imgtool --clear)
                    back = old.info(key)
                plain = back.plain if back is not None and back.valid else old.data
                self.primary = Slot(plain, magic=True, image_ok=True, copy_done=True,
                                    sealed=old.data if plain != old.data else b"")
                self.secondary = Slot(new.sealed or new.data)
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
            if not self.factory_hash:
                self.factory_hash = info.hash
            if in_test and self.config.app_confirms:
                self.primary.image_ok = True  # boot_write_img_confirmed()
                self.log.append("app: confirmed itself")
            return

    def app_healthy(self) -> bool:
        """Whether the running application's own check passes (see ``app_unhealthy``)."""
        if not self.config.app_unhealthy:
            return True
        info = self.primary.info(self.config.public_key_pem)
        return info is not None and info.hash == self.factory_hash

    def _swap_type(self) -> str:
        if self.secondary.magic:
            return "perm" if self.secondary.image_ok else "test"
        if self.primary.magic and self.primary.copy_done and not self.primary.image_ok:
            return "revert"
        return "none"

    # -- SMP ------------------------------------------------------------------------------
    def handle(self, op: int, group: int, cmd: int, body: Any, version: int = 1
               ) -> tuple[dict[str, Any], bool]:
        """Response body, and whether the device schedules a reset after sending it.

        ``version`` is the request header's SMP version (0 = v1, 1 = v2); it decides the
        shape of group errors, as ``smp_handle_single_req`` does.
        """
        rc = self.faults.error_rc.get((group, cmd))
        if rc:
            return {"rc": rc}, False
        grc = self.faults.group_error.get((group, cmd))
        if grc:
            return self._group_error(version, group, grc), False
        if not isinstance(body, dict):
            return {"rc": EINVAL}, False
        write = op == 2
        if group == 0 and cmd == 0:
            return {"r": str(body.get("d", ""))}, False
        if group == 0 and cmd == 5 and write:
            return {}, True
        cfg = self.config
        if cfg.health_group is not None and (group, cmd) == (cfg.health_group,
                                                             cfg.health_command):
            if self.app_healthy():
                return {"status": "ok"}, False
            self.log.append("app: health check failed")
            return self._group_error(version, group, cfg.health_rc), False
        if group == 0 and cmd == 6 and not write and self.config.supports_params:
            return {"buf_size": self.config.buf_size, "buf_count": self.config.buf_count}, False
        if group == 1 and cmd == 0:
            if write:
                grc = self._state_write(body)
                if grc:
                    return self._group_error(version, GROUP_IMAGE, grc), False
            return {"images": self._images(), "splitStatus": 0}, False
        if group == 1 and cmd == 1 and write:
            rsp = self._upload(body, version)
            if self.config.smp_v2 and rsp.get("rc") == EOK:
                del rsp["rc"]  # "rc": 0 on success only with CONFIG_MCUMGR_SMP_LEGACY_RC_BEHAVIOUR
            return rsp, False
        if group == 1 and cmd == 5 and write:
            if self._slot_in_use(1):
                return self._group_error(version, GROUP_IMAGE, IMG_NO_FREE_SLOT), False
            self.secondary.erase()
            self.upload = None
            return {}, False
        return {"rc": ENOTSUP}, False

    def _group_error(self, version: int, group: int, rc: int) -> dict[str, Any]:
        if self.config.smp_v2 and version >= 1:
            return {"err": {"group": group, "rc": rc}}
        return {"rc": translate_v1(group, rc)}

    def _next_boot(self) -> tuple[int, str]:
        """(slot booted next, type) as ``img_mgmt_get_next_boot_slot``: normal/test/revert."""
        swap = self._swap_type()
        if swap == "test":
            return 1, "test"
        if swap == "perm":
            return 1, "normal"
        if swap == "revert":
            return 1, "revert"
        return 0, "normal"

    def _slot_in_use(self, slot: int) -> bool:
        """``img_mgmt_slot_in_use``: a slot that is pending, or holds the revert image."""
        nbs, kind = self._next_boot()
        if slot == nbs and kind in ("revert", "test"):
            return True
        if nbs != 0 and kind == "normal":
            return True
        return slot == 0

    def _images(self) -> list[dict[str, Any]]:
        """``img_mgmt_state_read`` for a single-image build (no ``image`` key)."""
        out = []
        key = self.config.public_key_pem
        nbs, kind = self._next_boot()
        flags = {0: {"active": True, "confirmed": kind != "revert"}, 1: {}}
        if nbs != 0:
            flags[1] = {"normal": {"pending": True, "permanent": True},
                        "revert": {"confirmed": True}, "test": {"pending": True}}[kind]
        for n, slot in ((0, self.primary), (1, self.secondary)):
            info = slot.info(key)
            if info is None:
                continue
            f = flags[n]
            out.append({"slot": n, "version": info.version_text, "hash": info.hash,
                        "bootable": not info.non_bootable,
                        "pending": f.get("pending", False),
                        "confirmed": f.get("confirmed", False),
                        "active": f.get("active", False),
                        "permanent": f.get("permanent", False)})
        return out

    def _state_write(self, body: dict[str, Any]) -> int:
        """``img_mgmt_state_write`` + ``img_mgmt_set_next_boot_slot``; an img_mgmt rc."""
        want = body.get("hash")
        confirm = bool(body.get("confirm", False))
        key = self.config.public_key_pem
        if want is None or want == b"":
            if not confirm:
                return IMG_INVALID_HASH  # a test without a hash
            slot = 0
        elif not isinstance(want, bytes) or len(want) != 32:
            return IMG_INVALID_HASH
        else:
            found = [n for n, s in ((0, self.primary), (1, self.secondary))
                     if (i := s.info(key)) is not None and i.hash == want]
            if not found:
                return IMG_HASH_NOT_FOUND
            slot = found[0]
        nbs, kind = self._next_boot()
        if not confirm and slot == 0:
            return IMG_SETTING_TEST_TO_ACTIVE_DENIED
        if kind == "test":
            return EOK if (not confirm and slot == nbs) else IMG_IMAGE_ALREADY_PENDING
        if kind == "normal":
            if confirm and slot == nbs:
                return EOK
            if (slot == 0 and nbs != 0) or (not confirm and slot != 0 and slot == nbs):
                return IMG_IMAGE_ALREADY_PENDING
        if kind == "revert":
            if confirm and slot == nbs:
                return EOK
            if not confirm:
                return IMG_IMAGE_ALREADY_PENDING
        if slot == 0:
            self.primary.image_ok = True  # boot_set_confirmed
            return EOK
        # boot_set_pending; like Zephyr, the app does not check signatures: MCUboot does
        self.secondary.magic = True
        self.secondary.image_ok = self.secondary.image_ok or confirm  # flash bits only clear
        return EOK

    def _upload(self, body: dict[str, Any], version: int = 1) -> dict[str, Any]:
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
            if self._slot_in_use(1):
                return self._group_error(version, GROUP_IMAGE, IMG_NO_FREE_SLOT)
            if length > cfg.slot_size:
                return self._group_error(version, GROUP_IMAGE, IMG_INVALID_IMAGE_TOO_LARGE)
            if (up is not None and sha and up.sha == sha and up.length == length
                    and 0 < up.off < length):
                self.log.append(f"upload: resume at {up.off}")
                return {"rc": EOK, "off": up.off}
            if body.get("upgrade") and not self._newer(data):
                return self._group_error(version, GROUP_IMAGE, IMG_CURRENT_VERSION_IS_NEWER)
            self.secondary.erase()
            up = self.upload = Upload(length=length, sha=sha, image=int(body.get("image", 0)))
        if up is None:  # e.g. the MCU reset mid-upload: Zephyr answers "start at 0"
            return {"rc": EOK, "off": 0}
        if off != up.off:
            return {"rc": EOK, "off": up.off}
        if up.off + len(data) > up.length:
            return self._group_error(version, GROUP_IMAGE, IMG_INVALID_IMAGE_DATA_OVERRUN)
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
