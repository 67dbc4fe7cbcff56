"""A whole gateway in a temp directory for the install tests: slots and env are files,
reboot is a command that leaves a flag, and a tiny "U-Boot + kernel" model boots it.

Test images are self-describing (magic, version, length, sha256 of the payload), so
the boot model can tell a whole image from a half-written one exactly the way a real
kernel would fail on a torn rootfs, and knows which version it booted.
"""

from __future__ import annotations

import hashlib
import os
import struct
import subprocess
import sys
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ferry.daemon.boot.bootchooser import choose, default_env, left_var
from ferry.daemon.boot.bootloader import CANARY_VAR
from ferry.daemon.boot.ubootenv import EnvStore
from ferry.daemon.config import Config, load_config
from ferry.packaging.description import TargetSpec
from ferry.packaging.devpki import write_dev_pki
from ferry.packaging.writer import ImageInput, create_bundle, load_signing_key

ROOT = Path(__file__).resolve().parents[2]
MAGIC = b"FERRYIMG"
HEADER = struct.Struct(">8s16sQ32s")
ENV_SIZE = 0x4000


def make_image(version: str, size: int, seed: int = 0) -> bytes:
    payload_len = size - HEADER.size
    rnd = hashlib.sha256(f"{version}/{seed}".encode()).digest()
    payload = (rnd * (payload_len // 32 + 1))[:payload_len]
    # vary the payload so compressed images are not trivially tiny
    payload = bytes(b ^ (i * 7 & 0xFF) for i, b in enumerate(payload[:4096])) + payload[4096:]
    header = HEADER.pack(MAGIC, version.encode().ljust(16, b"\0"), payload_len,
                         hashlib.sha256(payload).digest())
    return header + payload


def image_version(data: bytes) -> str | None:
    """The version of a whole, intact image at the start of ``data``; else None."""
    if len(data) < HEADER.size:
        return None
    magic, ver, n, digest = HEADER.unpack_from(data)
    if magic != MAGIC or HEADER.size + n > len(data):
        return None
    if hashlib.sha256(data[HEADER.size:HEADER.size + n]).digest() != digest:
        return None
    return ver.rstrip(b"\0").decode()


@dataclass
class Gateway:
    root: Path
    config_path: Path
    pki_dir: Path
    slot_size: int

    @property
    def config(self) -> Config:
        return load_config(self.config_path)

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    def slot_path(self, bootname: str) -> Path:
        return self.root / f"slot{bootname}.img"

    @property
    def reboot_flag(self) -> Path:
        return self.root / "reboot-requested"

    @property
    def cmdline(self) -> Path:
        return self.root / "cmdline"

    @property
    def boot_id(self) -> Path:
        return self.root / "boot_id"

    def store(self) -> EnvStore:
        return EnvStore.from_config(self.root / "fw_env.config")

    def env(self) -> dict[str, str]:
        return self.store().read()

    def booted(self) -> str:
        return self.cmdline.read_text().split("ferry.slot=")[1].split()[0]

    def running_version(self) -> str:
        return (self.data_dir / "version").read_text().strip()

    def child_env(self, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        env["FERRY_BOOT_ID_PATH"] = str(self.boot_id)
        env["PYTHONPATH"] = str(ROOT)
        env.update(extra)
        return env

    def ferry(self, *args: str, timeout: float = 120, **env: str
              ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "ferry.daemon.cli.main", "--config", str(self.config_path),
             *args],
            capture_output=True, text=True, timeout=timeout, env=self.child_env(**env),
        )

    def boot(self, max_tries: int = 10) -> str:
        """Power on: U-Boot picks a slot as the bootchooser script does (decrement, save);
        the "kernel" comes up only from an intact image. Returns the booted slot."""
        cfg = self.config
        store = self.store()
        self.reboot_flag.unlink(missing_ok=True)
        for _ in range(max_tries):
            env = store.read()
            slot = choose(env, cfg)
            if slot is None:  # the script resets all counters and starts over
                store.update(default_env(cfg))
                continue
            left = int(env.get(left_var(slot), "3"), 16)
            store.update({left_var(slot): f"{left - 1:x}"})
            with open(self.slot_path(slot), "rb") as f:
                version = image_version(f.read(self.slot_size))
            if version is None:
                continue  # kernel panic, watchdog reset: U-Boot tries again
            self.cmdline.write_text(f"console=ttyS0 ferry.slot={slot}\n")
            (self.data_dir / "version").write_text(version + "\n")
            self.boot_id.write_text(str(uuid.uuid4()) + "\n")
            return slot
        raise AssertionError("gateway does not boot: no slot holds an intact image")


def make_gateway(root: Path, *, slot_size: int = 1 << 20, version: str = "1.0.0",
                 checks: list[list[str]] | None = None, window: float = 20.0,
                 extra: str = "", min_version: str | None = None) -> Gateway:
    root.mkdir(parents=True, exist_ok=True)
    pki = write_dev_pki(root / "pki")
    gw = Gateway(root=root, config_path=root / "ferry.toml", pki_dir=root / "pki",
                 slot_size=slot_size)
    gw.data_dir.mkdir(exist_ok=True)
    for b in ("A", "B"):
        with open(gw.slot_path(b), "wb") as f:
            f.truncate(slot_size)
    for b in ("A", "B"):  # factory state: both slots hold the same intact image
        with open(gw.slot_path(b), "r+b") as f:
            f.write(make_image(version, slot_size // 2))
    (root / "env0").write_bytes(b"\xff" * ENV_SIZE)
    (root / "env1").write_bytes(b"\xff" * ENV_SIZE)
    (root / "fw_env.config").write_text(f"env0 0 {ENV_SIZE:#x}\nenv1 0 {ENV_SIZE:#x}\n")
    checks = checks if checks is not None else [["true"]]
    check_toml = ", ".join("[" + ", ".join(f'"{a}"' for a in c) + "]" for c in checks)
    floor = f'min_version = "{min_version}"\n' if min_version else ""
    gw.config_path.write_text(f"""
[gateway]
compatible = "test-gw"
version_file = "data/version"
data_dir = "data"

[bootloader]
scheme = "bootchooser"
fw_env_config = "fw_env.config"
cmdline = "cmdline"
lock_file = "fw_env.lock"
attempts = 3

[[slot]]
name = "rootfs.0"
bootname = "A"
device = "slotA.img"

[[slot]]
name = "rootfs.1"
bootname = "B"
device = "slotB.img"

[keyring]
path = "{pki.ca_cert}"

[install]
reboot_command = ["touch", "{gw.reboot_flag}"]
{floor}
[health]
window_seconds = {window}
system_state = false
checks = [{check_toml}]
{extra}
""")
    cfg = gw.config
    store = gw.store()
    store.initialize({**default_env(cfg), CANARY_VAR: "1", "bootcmd": "run ferry_boot"})
    gw.boot()
    assert gw.booted() == "A"
    return gw


def make_bundle(gw: Gateway, out: Path, *, version: str, image: bytes | None = None,
                compress: str | None = None, compatible: str = "test-gw",
                targets: list[tuple[TargetSpec, bytes]] | None = None,
                pki_dir: Path | None = None) -> Path:
    work = out.parent / (out.name + ".d")
    work.mkdir(parents=True, exist_ok=True)
    inputs: list[ImageInput] = []
    if image is not None:
        p = work / "rootfs.img"
        p.write_bytes(image)
        inputs.append(ImageInput(path=p, compress=compress, filename="rootfs.img"))
    for spec, data in targets or []:
        p = work / f"{spec.name}.bin"
        p.write_bytes(data)
        inputs.append(ImageInput(path=p, compress=compress, target=spec,
                                 filename=f"{spec.name}.bin"))
    pki = pki_dir or gw.pki_dir
    signing = load_signing_key(pki / "signer.key", pki / "signer.pem")
    create_bundle(out, signing=signing, version=version, compatible=[compatible],
                  images=inputs)
    return out


def killed_mid_write(install: Callable[[], object], nth: int) -> None:
    """A power cut inside the slot writer: ``install()`` runs in a forked child whose
    slot writer takes 64 KiB buffers and is SIGKILLed at its ``nth`` buffer write (the
    ``slot.write`` kill point); what it wrote stays in the slot file, as after a cut."""
    import signal

    pid = os.fork()
    if pid == 0:
        try:
            from ferry.daemon.install import slotwriter
            from ferry.daemon.testhooks import killpoint

            os.environ["FERRY_TEST_KILL_AT"] = f"slot.write:{nth}"
            killpoint._parsed = False
            killpoint._counts.clear()
            slotwriter.CHUNK = slotwriter.STORED_CHUNK = 64 << 10
            install()
        finally:
            os._exit(99)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
