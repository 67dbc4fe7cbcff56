"""A simulated gateway in one directory: file-backed slots A/B, a U-Boot env file, the
simulated bootloader, a kernel command line and boot id that change on every "boot",
and a rootfs whose contents decide the version that runs and whether it is healthy.

It is the machine ferry runs on in ``ferry demo`` and the backend tests; ferry itself
(the install pipeline, the bootloader code, the proxy phase) runs unchanged against it
through its config file. Layout under ``root``::

    ferry.toml           the gateway config ferry reads (``--config``)
    slots/rootfs.A.img   slot devices (plain files)
    uboot.env            redundant U-Boot env (two copies), described by fw_env.config
    proc/cmdline         what the "kernel" was booted with (ferry.slot=A ...)
    proc/boot_id         new on every boot (FERRY_BOOT_ID_PATH)
    run/version          the running rootfs's version (gateway.version_file)
    run/rootfs.env       health=ok|fail and why, read by bin/app-check
    bin/app-check        the health check ([health] checks)
    data/                ferry's data partition (journal, staging)
    boot.log             one line per simulated boot

A simulated rootfs image is a text header (``FERRYSIM-ROOTFS``, ``version=``,
``health=``, ``reason=``) padded with bytes; :func:`rootfs_image` makes one.
"""

from __future__ import annotations

import os
import shlex
import struct
import sys
import time
import uuid
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MAGIC = b"FERRYSIM-ROOTFS\n"
ENV_SIZE = 0x4000


def rootfs_image(path: str | Path, version: str, *, healthy: bool = True,
                 reason: str = "", size: int = 256 << 10) -> Path:
    """Write a simulated rootfs image of ``size`` bytes."""
    head = MAGIC + (f"version={version}\nhealth={'ok' if healthy else 'fail'}\n"
                    f"reason={reason}\n\n").encode()
    body = (b"ferry simulated rootfs " * ((size // 23) + 1))[: max(0, size - len(head))]
    p = Path(path)
    p.write_bytes(head + body)
    return p


def read_rootfs(path: str | Path) -> dict[str, str]:
    """The header of a simulated rootfs in a slot; {} if the slot holds none."""
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError:
        return {}
    if not head.startswith(MAGIC):
        return {}
    out: dict[str, str] = {}
    for line in head[len(MAGIC):].split(b"\n"):
        if not line:
            break
        k, _, v = line.decode(errors="replace").partition("=")
        out[k] = v
    return out


# -- the factory env ---------------------------------------------------------------------
# Written apart from ferry.daemon.boot.ubootenv on purpose (sim/ shares no codec with ferry):
# a redundant env file (two copies, "incremental" flag byte, as libubootenv writes on
# plain files). Boots go through ferry.sim.bootsim, the simulated U-Boot running
# ferry's boot script.


def _decode_copy(raw: bytes) -> tuple[bool, int, dict[str, str]]:
    crc, flag = struct.unpack_from("<IB", raw)
    data = raw[5:]
    if zlib.crc32(data) & 0xFFFFFFFF != crc:
        return False, flag, {}
    env: dict[str, str] = {}
    for entry in data.split(b"\0"):
        if not entry:
            break
        k, _, v = entry.decode().partition("=")
        env[k] = v
    return True, flag, env


def _encode_copy(env: dict[str, str], flag: int) -> bytes:
    data = b"".join(f"{k}={v}".encode() + b"\0" for k, v in env.items()) + b"\0"
    data = data.ljust(ENV_SIZE - 5, b"\0")
    return struct.pack("<IB", zlib.crc32(data) & 0xFFFFFFFF, flag) + data


def read_env(path: Path) -> tuple[int, int, dict[str, str]]:
    """(index of the current copy, its flag, its variables) as U-Boot picks them."""
    raw = path.read_bytes()
    copies = [_decode_copy(raw[i * ENV_SIZE:(i + 1) * ENV_SIZE]) for i in (0, 1)]
    ok = [i for i in (0, 1) if copies[i][0]]
    if not ok:
        raise RuntimeError(f"simulated U-Boot: no valid env copy in {path}; it would boot "
                           "its default env and stop at the prompt")
    if len(ok) == 1:
        i = ok[0]
    else:
        f0, f1 = copies[0][1], copies[1][1]
        # incremental: the higher counter wins; 255 wraps to 0 (255 < 0)
        i = 0 if (f0 == (f1 + 1) & 0xFF) or (f0 >= f1 and not (f0 == 255 and f1 == 0)) else 1
    return i, copies[i][1], copies[i][2]


def write_env(path: Path, env: dict[str, str]) -> None:
    """saveenv: the new env goes to the other copy with the next counter."""
    try:
        cur, flag, _ = read_env(path)
    except (OSError, RuntimeError):
        cur, flag = 1, 0
    other = 1 - cur
    with open(path, "r+b" if path.exists() else "w+b") as f:
        if f.seek(0, 2) < 2 * ENV_SIZE:
            f.truncate(2 * ENV_SIZE)
        f.seek(other * ENV_SIZE)
        f.write(_encode_copy(env, (flag + 1) & 0xFF))
        f.flush()
        os.fsync(f.fileno())


def factory_env(path: Path, slots: list[str], *, attempts: int = 3) -> None:
    env = {"bootdelay": "0", "BOOT_ORDER": " ".join(slots)}
    env.update({f"BOOT_{s}_LEFT": str(attempts) for s in slots})
    with open(path, "wb") as f:
        f.truncate(2 * ENV_SIZE)
    write_env(path, env)


@dataclass
class TargetEntry:
    """One [[target]] of the simulated gateway's config."""

    name: str
    transport: str
    address: str
    image_id: str = ""
    baud: int | None = None
    options: dict[str, str] = field(default_factory=dict)
    target_token: str = ""  # its own DDI TargetToken (a device controller on goosebit)


@dataclass
class SimGateway:
    root: Path
    compatible: str = "ferry-demo-gw"
    slot_size: int = 1 << 20
    attempts: int = 3
    health_window: float = 4.0
    backend_url: str = ""
    controller_id: str = "ferry-demo-gw-1"
    device_controllers: bool = False  # each [[target]] a DDI controller of its own
    targets: list[TargetEntry] = field(default_factory=list)
    keyring: Path | None = None
    on_boot: Callable[[str, dict[str, str]], None] | None = None
    real_uboot: bool = False  # boot through the real U-Boot in QEMU (sim/uboot_qemu.py)
    boots: int = 0
    booted_at: float = 0.0

    # -- paths ------------------------------------------------------------------------

    @property
    def config_path(self) -> Path:
        return self.root / "ferry.toml"

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    def slot_path(self, bootname: str) -> Path:
        return self.root / "slots" / f"rootfs.{bootname}.img"

    @property
    def env_path(self) -> Path:
        return self.root / "uboot.env"

    @property
    def boot_id_path(self) -> Path:
        return self.root / "proc" / "boot_id"

    # -- set-up -----------------------------------------------------------------------

    def create(self, version: str = "1.0.0") -> SimGateway:
        """Lay out a factory-fresh gateway running ``version`` from slot A."""
        for d in ("slots", "proc", "run", "bin", "data"):
            (self.root / d).mkdir(parents=True, exist_ok=True)
        for b in ("A", "B"):
            with open(self.slot_path(b), "wb") as f:
                f.truncate(self.slot_size)
        factory = rootfs_image(self.root / "factory-rootfs.img", version)
        with open(self.slot_path("A"), "r+b") as f:
            f.write(factory.read_bytes())
        if self.real_uboot:
            q = self.qemu()
            q.provision({"BOOT_ORDER": "A B", "BOOT_A_LEFT": str(self.attempts),
                         "BOOT_B_LEFT": str(self.attempts)})
            (self.root / "fw_env.config").write_text(q.fw_env_config())
        else:
            (self.root / "fw_env.config").write_text(
                f"{self.env_path} 0x0 {ENV_SIZE:#x} {ENV_SIZE:#x}\n"
                f"{self.env_path} {ENV_SIZE:#x} {ENV_SIZE:#x} {ENV_SIZE:#x}\n")
            factory_env(self.env_path, ["A", "B"], attempts=self.attempts)
        check = self.root / "bin" / "app-check"
        check.write_text(
            "#!/bin/sh\n"
            "# the simulated rootfs's application health check\n"
            f". {shlex.quote(str(self.root / 'run' / 'rootfs.env'))}\n"
            '[ "$health" = ok ] && exit 0\n'
            'echo "$reason" >&2\n'
            "exit 1\n")
        check.chmod(0o755)
        self.write_config()
        self.boot()
        return self

    def write_config(self) -> None:
        lines = [
            "[gateway]",
            f'compatible = "{self.compatible}"',
            'version_file = "run/version"',
            'data_dir = "data"',
            "",
            "[bootloader]",
            'scheme = "bootchooser"',
            'fw_env_config = "fw_env.config"',
            # the real U-Boot keeps its env in NOR flash (env/flash.c): boolean flags
            f'flags = "{"boolean" if self.real_uboot else "incremental"}"',
            f"attempts = {self.attempts}",
            'cmdline = "proc/cmdline"',
            'lock_file = "uboot.env.lock"',
            "",
        ]
        for b, n in (("A", 0), ("B", 1)):
            lines += ["[[slot]]", f'name = "rootfs.{n}"', f'bootname = "{b}"',
                      f'device = "slots/rootfs.{b}.img"', ""]
        if self.keyring is not None:
            lines += ["[keyring]", f'path = "{self.keyring}"', ""]
        lines += ["[install]", f'reboot_command = ["{sys.executable}", "-c", "pass"]', "",
                  "[health]", f"window_seconds = {self.health_window}",
                  "system_state = false  # no systemd in the simulator",
                  f'checks = [["{self.root / "bin" / "app-check"}"]]', ""]
        if self.backend_url:
            lines += ["[backend]", f'url = "{self.backend_url}"',
                      f'controller_id = "{self.controller_id}"', "poll_jitter = 0.0"]
            if self.device_controllers:
                lines.append("device_controllers = true")
            lines.append("")
        for t in self.targets:
            lines += ["[[target]]", f'name = "{t.name}"', f'transport = "{t.transport}"',
                      f'address = "{t.address}"']
            if t.image_id:
                lines.append(f'image_id = "{t.image_id}"')
            if t.baud:
                lines.append(f"baud = {t.baud}")
            if t.target_token:
                lines.append(f'target_token = "{t.target_token}"')
            if t.options:
                opts = ", ".join(f'{k} = "{v}"' for k, v in t.options.items())
                lines.append(f"options = {{ {opts} }}")
            lines.append("")
        self.config_path.write_text("\n".join(lines))

    # -- the machine ------------------------------------------------------------------

    def boot_id(self) -> str:
        try:
            return self.boot_id_path.read_text().strip()
        except OSError:
            return ""

    def boot(self) -> str:
        """Power on: the simulated U-Boot picks a slot from the env (and saves its
        counter), the "kernel" gets ferry.slot=<x>, the rootfs in it decides the rest."""
        cmdline = self.root / "proc" / "cmdline"
        if self.real_uboot:
            slot_or_none, kernel = self.qemu().boot()
            if slot_or_none is None:  # the script reset the counters and the board
                slot_or_none, kernel = self.qemu().boot()
            if slot_or_none is None:
                raise RuntimeError("the real U-Boot booted no slot; see "
                                   f"{self.root / 'uboot' / 'console.log'}")
            cmdline.write_text(f"console=ttyAMA0 {kernel}\n")
            return self._booted(slot_or_none)
        from ferry.sim import bootsim

        result = bootsim.boot(self.root / "fw_env.config", scheme="bootchooser",
                              flags="incremental", cmdline_path=cmdline)
        if result.slot is None and result.reset_attempts:
            # no slot had attempts left: the script reset the counters and the board
            result = bootsim.boot(self.root / "fw_env.config", scheme="bootchooser",
                                  flags="incremental", cmdline_path=cmdline)
        if result.slot is None:
            raise RuntimeError(f"simulated U-Boot found no valid env in {self.env_path}: a "
                               "real one would stop at its prompt with the default env")
        return self._booted(result.slot)

    def qemu(self) -> Any:
        from ferry.sim.uboot_qemu import QemuUBoot

        return QemuUBoot(self.root / "uboot")

    def _booted(self, slot: str) -> str:
        self.boots += 1
        self.booted_at = time.monotonic()
        rootfs = read_rootfs(self.slot_path(slot))
        self.boot_id_path.write_text(str(uuid.uuid4()) + "\n")
        (self.root / "run" / "version").write_text(rootfs.get("version", "unknown") + "\n")
        health = rootfs.get("health", "fail")
        reason = rootfs.get("reason") or "the rootfs in this slot is not a simulated rootfs"
        (self.root / "run" / "rootfs.env").write_text(
            f"health={shlex.quote(health)}\nreason={shlex.quote(reason)}\n")
        with open(self.root / "boot.log", "a") as f:
            f.write(f"{time.strftime('%H:%M:%S')} boot #{self.boots}"
                    f"{' (real U-Boot)' if self.real_uboot else ''}: slot {slot}, "
                    f"version {rootfs.get('version', '?')}, health {health}\n")
        if self.on_boot is not None:
            self.on_boot(slot, rootfs)
        return slot

    def uptime(self) -> float:
        return time.monotonic() - self.booted_at if self.booted_at else 0.0

    def reboot(self) -> None:
        """What ferry's reboot does here: the machine comes back up at once."""
        self.boot()

    def environ(self) -> dict[str, str]:
        """Environment for a ferry process running "on" this gateway."""
        return {**os.environ, "FERRY_BOOT_ID_PATH": str(self.boot_id_path)}
