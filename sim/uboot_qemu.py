"""The real U-Boot as the simulated gateway's bootloader (``ferry demo --real-uboot``).

Debian's ``u-boot-qemu`` (qemu_arm64) under ``qemu-system-aarch64`` (QEMU from
bookworm-backports: Debian 12's 7.2 corrupts saveenv on pflash). The env lives in the
second pflash bank, a plain file ferry writes between boots; ferry's boot script
(yocto-layer/.../boot-bootchooser.cmd, compiled with mkimage) is placed at
``SCRIPT_ADDR`` by QEMU's generic loader and sourced by ``bootcmd``. The "kernel" is
the env variable ``ferry_boot``: it prints the bootargs the script built and powers
off, and that line becomes the simulated /proc/cmdline. The same recipe as
tests/system/test_uboot_qemu.py, which checks it boot by boot against sim/bootsim.

With the redundant-env build that ``.ci/deps/uboot.sh`` caches in /var/cache/ferry the
env has two copies; with Debian's build one (not power-safe, and ferry says so).
"""

from __future__ import annotations

import os
import re
import shutil
import struct
import subprocess
import zlib
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "yocto-layer/meta-ferry/recipes-bsp/u-boot/files/boot-bootchooser.cmd"
DEBIAN_UBOOT = Path("/usr/lib/u-boot/qemu_arm64/u-boot.bin")
ENV_SIZE = 0x40000
FLASH_SIZE = 64 * 1024 * 1024
SCRIPT_ADDR = 0x40200000
BOOT_TIMEOUT = 120.0


def redundant_build() -> Path | None:
    cache = Path(os.environ.get("FERRY_UBOOT_CACHE", "/var/cache/ferry"))
    found = sorted(cache.glob("u-boot-*-redund/u-boot.bin")) if cache.is_dir() else []
    return found[-1] if found else None


def missing() -> list[str]:
    """What --real-uboot needs and this machine lacks, each with how to get it."""
    out = []
    if shutil.which("qemu-system-aarch64") is None:
        out.append("qemu-system-aarch64 (apt-get install -t bookworm-backports "
                   "qemu-system-arm)")
    if shutil.which("mkimage") is None:
        out.append("mkimage (apt-get install u-boot-tools)")
    if not DEBIAN_UBOOT.exists() and redundant_build() is None:
        out.append("U-Boot for qemu_arm64 (apt-get install u-boot-qemu)")
    if not SCRIPT.exists():
        out.append(f"ferry's boot script {SCRIPT} (part of the ferry checkout)")
    return out


@dataclass
class QemuUBoot:
    dir: Path
    uboot: Path | None = None

    def __post_init__(self) -> None:
        if self.uboot is None:
            self.uboot = redundant_build() or DEBIAN_UBOOT
        self.flash = self.dir / "flash1.img"
        self.script = self.dir / "boot.scr"

    @property
    def redundant(self) -> bool:
        return self.uboot != DEBIAN_UBOOT

    def fw_env_config(self) -> str:
        lines = f"{self.flash} 0x0 {ENV_SIZE:#x} {ENV_SIZE:#x}\n"
        if self.redundant:
            lines += f"{self.flash} {ENV_SIZE:#x} {ENV_SIZE:#x} {ENV_SIZE:#x}\n"
        return lines

    def provision(self, env: dict[str, str]) -> None:
        """Erased NOR plus the board's default env, as a factory would write it."""
        self.dir.mkdir(parents=True, exist_ok=True)
        full = {"bootdelay": "0", "bootcmd": f"source {SCRIPT_ADDR:#x}",
                "ferry_boot": "echo FERRY_KERNEL ${bootargs}; poweroff", **env}
        head = 5 if self.redundant else 4
        data = b"".join(f"{k}={v}".encode() + b"\0" for k, v in full.items()) + b"\0"
        data = data.ljust(ENV_SIZE - head, b"\0")
        copy = struct.pack("<I", zlib.crc32(data) & 0xFFFFFFFF)
        if self.redundant:
            copy += b"\x01"  # env/flash.c: 1 = active
        with open(self.flash, "wb") as f:
            f.write(copy + data)
            f.write(b"\xff" * (FLASH_SIZE - len(copy) - len(data)))
        subprocess.run(["mkimage", "-A", "arm64", "-T", "script", "-C", "none", "-d",
                        str(SCRIPT), str(self.script)], check=True, capture_output=True,
                       timeout=60)

    def boot(self) -> tuple[str | None, str]:
        """One power-on: (slot the script booted or None, kernel command line)."""
        argv = ["qemu-system-aarch64", "-M", "virt", "-cpu", "cortex-a57", "-m", "128",
                "-nographic", "-no-reboot", "-nic", "none", "-bios", str(self.uboot),
                "-drive", f"if=pflash,format=raw,index=1,file={self.flash}",
                "-device", f"loader,file={self.script},addr={SCRIPT_ADDR:#x},force-raw=on"]
        try:
            proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True,
                                  timeout=BOOT_TIMEOUT)
        except subprocess.TimeoutExpired as exc:
            raise RuntimeError(f"U-Boot in QEMU did not finish within {BOOT_TIMEOUT:g} s") \
                from exc
        console = proc.stdout.decode("utf-8", "replace").replace("\r", "")
        with open(self.dir / "console.log", "a") as log:
            log.write(console)
        if "bad CRC, using default environment" in console:
            raise RuntimeError("the real U-Boot found no valid env and would stop at its "
                               "prompt; see " + str(self.dir / "console.log"))
        slot = re.search(r"FERRY: boot slot=(\S+)", console)
        kernel = re.search(r"FERRY_KERNEL (.*)", console)
        return (slot.group(1) if slot else None,
                kernel.group(1).strip() if kernel else "")
