"""A simulated U-Boot for ``ferry demo`` and tests: one boot over a file-backed env.

It does what a real U-Boot does with ferry's boot scripts
(yocto-layer/meta-ferry/recipes-bsp/u-boot/files/boot-*.cmd): load the env copy U-Boot
would load, count the boot (BOOTCOUNT_ENV), run the scheme's decision, ``saveenv`` the
way U-Boot saves, and hand the kernel its command line.

It deliberately has its own small env reader and writer and does not import
ferry.daemon's codec: the two are written from U-Boot's sources independently, so each
checks the other (and the QEMU tests check both against a real U-Boot).
"""

from __future__ import annotations

import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

SCRIPT_DEFAULT_ATTEMPTS = 3  # what the boot scripts set when a counter is missing


@dataclass(frozen=True)
class Area:
    path: Path
    offset: int
    size: int


@dataclass
class BootResult:
    slot: str | None  # None: U-Boot found no valid env (default env, stuck at the prompt)
    cmdline: str
    rolled_back: bool = False
    reset_attempts: bool = False
    saves: int = 0


def read_areas(fw_env_config: str | Path) -> list[Area]:
    cfg = Path(fw_env_config)
    areas = []
    for line in cfg.read_text().splitlines():
        words = line.split("#")[0].split()
        if len(words) >= 3:
            p = Path(words[0])
            areas.append(Area(p if p.is_absolute() else cfg.parent / p,
                              int(words[1], 0), int(words[2], 0)))
    return areas


class SimEnv:
    """The env as U-Boot holds it in RAM between load and saveenv."""

    def __init__(self, areas: list[Area], flags: str) -> None:
        self.areas = areas
        self.flags = flags
        self.redundant = len(areas) == 2
        self.vars: dict[str, str] = {}
        self.current = 0
        self.flag = 0
        self.saves = 0

    def _raw(self, area: Area) -> bytes:
        with open(area.path, "rb") as f:
            f.seek(area.offset)
            return f.read(area.size)

    def _parse(self, raw: bytes) -> tuple[bool, int, dict[str, str]]:
        head = 5 if self.redundant else 4
        if len(raw) < head:
            return False, 0, {}
        crc = struct.unpack("<I", raw[:4])[0]
        flag = raw[4] if self.redundant else 0
        body = raw[head:]
        if zlib.crc32(body) != crc:
            return False, flag, {}
        out = {}
        for item in body.split(b"\0"):
            if not item:
                break
            k, _, v = item.decode("utf-8", "surrogateescape").partition("=")
            out[k] = v
        return True, flag, out

    def load(self) -> bool:
        parsed = [self._parse(self._raw(a)) for a in self.areas]
        ok = [p[0] for p in parsed]
        if not any(ok):
            return False
        if len(parsed) == 1 or not all(ok):
            pick = ok.index(True)
        else:
            f1, f2 = parsed[0][1], parsed[1][1]
            if self.flags == "boolean":  # env/flash.c
                pick = 0 if (f1, f2) == (1, 0) or f1 == f2 or f1 == 255 else 1
            else:  # env/common.c: a serial number that wraps
                if f1 == 255 and f2 == 0:
                    pick = 1
                elif f2 == 255 and f1 == 0:
                    pick = 0
                else:
                    pick = 0 if f1 >= f2 else 1
        self.current, self.flag, self.vars = pick, parsed[pick][1], parsed[pick][2]
        return True

    def save(self) -> None:
        """saveenv: the other copy, then (NOR) retire the old one."""
        body = b"".join(f"{k}={v}".encode("utf-8", "surrogateescape") + b"\0"
                        for k, v in sorted(self.vars.items())) + b"\0"
        head = 5 if self.redundant else 4
        size = self.areas[0].size
        body += b"\0" * (size - head - len(body))
        if not self.redundant:
            self._put(self.areas[0], 0, struct.pack("<I", zlib.crc32(body)) + body)
            self.saves += 1
            return
        target = 1 - self.current
        new_flag = 1 if self.flags == "boolean" else (self.flag + 1) & 0xFF
        self._put(self.areas[target], 0,
                  struct.pack("<IB", zlib.crc32(body), new_flag) + body)
        if self.flags == "boolean":
            self._put(self.areas[self.current], 4, b"\0")
        self.current, self.flag = target, new_flag
        self.saves += 1

    @staticmethod
    def _put(area: Area, at: int, data: bytes) -> None:
        fd = os.open(area.path, os.O_WRONLY)
        try:
            os.pwrite(fd, data, area.offset + at)
            os.fsync(fd)
        finally:
            os.close(fd)

    def num(self, name: str, base: int = 10) -> int:
        try:
            return int(self.vars.get(name, "") or "0", base)
        except ValueError:
            return 0


def _bootchooser(env: SimEnv) -> BootResult:
    v = env.vars
    if not v.get("BOOT_ORDER"):
        v["BOOT_ORDER"] = "A B"
    for s in ("A", "B"):
        if not v.get(f"BOOT_{s}_LEFT"):
            v[f"BOOT_{s}_LEFT"] = str(SCRIPT_DEFAULT_ATTEMPTS)
    chosen = None
    for s in v["BOOT_ORDER"].split():
        if s in ("A", "B") and env.num(f"BOOT_{s}_LEFT") > 0:
            v[f"BOOT_{s}_LEFT"] = format(env.num(f"BOOT_{s}_LEFT", 16) - 1, "x")  # setexpr
            chosen = s
            break
    if chosen is None:
        v["BOOT_A_LEFT"] = v["BOOT_B_LEFT"] = str(SCRIPT_DEFAULT_ATTEMPTS)
        env.save()
        return BootResult(None, "", reset_attempts=True, saves=env.saves)
    v["ferry_saveenv_canary"] = "1"
    env.save()
    return BootResult(chosen, f"rauc.slot={chosen} ferry.slot={chosen}", saves=env.saves)


def _count_boot(env: SimEnv) -> None:
    """U-Boot's own boot counter (common/bootcount.c + drivers/bootcount/bootcount_env.c),
    before bootcmd, whatever the boot script."""
    v = env.vars
    upgrade = env.num("upgrade_available") != 0
    count = (env.num("bootcount") if upgrade else 0) + 1
    v["bootcount"] = str(count)  # in RAM always; saved only while upgrading
    if upgrade:
        env.save()


def _bootcount(env: SimEnv) -> BootResult:
    v = env.vars
    if not v.get("ferry_boot_part"):
        v["ferry_boot_part"] = "A"
    rolled = False
    limit = env.num("bootlimit")
    if v.get("upgrade_available") == "1" and v.get("bootcount") and env.num("bootcount") > limit:
        part = v["ferry_boot_part"]
        v["ferry_failed_part"] = part
        prev = v.get("ferry_prev_part", "")
        v["ferry_boot_part"] = prev if prev and prev != part else ("B" if part == "A" else "A")
        v["upgrade_available"] = "0"
        v["bootcount"] = "0"
        v["ferry_saveenv_canary"] = "1"
        env.save()
        rolled = True
    elif v.get("ferry_saveenv_canary") != "1":
        v["ferry_saveenv_canary"] = "1"
        env.save()
    part = v["ferry_boot_part"]
    return BootResult(part, f"ferry.slot={part}", rolled_back=rolled, saves=env.saves)


def boot(fw_env_config: str | Path, *, scheme: str = "bootchooser",
         flags: str = "incremental", bootcount_enabled: bool | None = None,
         cmdline_path: str | Path | None = None) -> BootResult:
    """One simulated boot. ``bootcount_enabled`` says whether the simulated U-Boot was
    built with BOOTCOUNT_LIMIT + BOOTCOUNT_ENV (default: only for the bootcount scheme).
    With ``cmdline_path`` the kernel command line is written there (what ferry reads as
    /proc/cmdline)."""
    env = SimEnv(read_areas(fw_env_config), flags)
    if not env.load():
        result = BootResult(None, "")
    else:
        if scheme == "bootcount" if bootcount_enabled is None else bootcount_enabled:
            _count_boot(env)
        result = _bootcount(env) if scheme == "bootcount" else _bootchooser(env)
    if cmdline_path is not None and result.slot is not None:
        Path(cmdline_path).write_text(f"console=ttyS0 {result.cmdline}\n")
    return result
