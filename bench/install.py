"""Install cost as a gateway pays it, against the floor measured in the same run (issue 22).

For each image size, in interleaved rounds, every tool installs the same image into the
same slot file, from the same local ``python -m http.server``:

- ``curl -o SLOT`` + ``sync SLOT`` (test-recipes §3.2), and ``curl URL 1<>SLOT`` + ``sync
  SLOT``: in place, without the truncation of ``-o``, the semantics of a partition
- ``openssl dgst -sha256 IMAGE``; with the in-place write, the floor of an install's CPU
- ``zstd -d`` of the compressible image as ferry's bundles carry it (level 10, 32 MiB
  frames) into /dev/null: what decompression alone costs, which that floor leaves out;
  a ratio against floor + ``zstd -d`` is printed beside the zstd goals
- SWUpdate 2022.12 (``-d -u URL``, streamed, signed as in §3.3), raw and zstd; it makes no
  fsync/fdatasync/sync call at all (strace), so it is timed at its exit and + ``sync SLOT``
- RAUC 1.8 (Debian's ``rauc``, which the bench apt-installs as root when missing: no
  test needs it, so .ci/deps does not), a plain bundle signed with an openssl-made cert,
  ``rauc service`` on the private bus with ``bootloader=noop``: ``rauc install FILE``
  (raw: an uncompressed squashfs; zstd: the compressible image in a zstd squashfs) and
  ``rauc install URL``, which downloads the whole bundle to TMPDIR first (1.8 is built
  without streaming, and verity bundles need NBD or device-mapper, which this kernel
  lacks). Its large size is at most 2040 MiB: rauc < 1.15.2 skips most of the signature
  check on plain bundles over 2 GiB (a CVE fixed in 1.15.2), so a larger bundle would
  measure an install that checks less
- ``ferry --config ... install URL`` (one process), raw and zstd bundles
- ``ferry install URL`` through a running ferryd on the private bus (the gateway's path),
  raw and zstd; ferryd starts once per size, with one untimed warm-up install; before each
  install the bench ends the previous deployment in the journal (as the reboot and its
  rollback would), outside the timed region
- the raw image encrypted as SWUpdate does (``ferry bundle create --encrypt-key``,
  AES-256-CBC) through the same ferryd, which holds the key (``[keyring]
  decryption_key``), beside ``openssl enc -d -aes-256-cbc`` of the same image's ciphertext
  into /dev/null (issue 18: an encrypted install at >= 0.9 of the unencrypted one)

CPU is user + system of every process of the tool, daemons included: each command runs in
a transient cgroup v2 of its own, and each daemon (ferryd, ``rauc service``, the
dbus-daemon that carries their calls and progress) in one of its own, whose ``cpu.stat``
delta over the install is added to the client's (bench/cgroup.py). Printed as CPU seconds
per GiB of image. Peak RSS: the largest process's high-water mark (``ru_maxrss``; for a
daemon its VmHWM, reset before each install), as memory.peak needs the v2 memory
controller that a hybrid host does not have.

After the rounds: ferryd's RSS at idle after start, during a 2 GiB zstd install, and
after 20 installs in a row; ``ferry status`` through ferryd, median wall of 20 calls; and
the goals of issue 22 as ratios against the floor and the in-place limit of the same run,
each with PASS or MISS.

    .venv/bin/python bench/install.py                       # 256 MiB and 2 GiB, 3 rounds
    .venv/bin/python bench/install.py --rounds 5 --dir /var/tmp/fb --keep   # reuse bundles
    .venv/bin/python bench/install.py --quick               # 64 and 256 MiB, 1 round
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from cgroup import (  # noqa: E402 - bench/ is not a package
    ZERO,
    Cgroup,
    CgroupTree,
    CpuUsage,
    reset_hwm,
    run_in,
    vm_kb,
)

MiB = 1 << 20
GiB = 1 << 30
ENV_SIZE = 0x4000
RAUC_MAX = 2040 * MiB  # rauc < 1.15.2 checks little of a plain bundle over 2 GiB

CURL_O = "curl -o slot + sync"
IN_PLACE = "curl 1<>slot (in place) + sync"
SHA = "openssl dgst -sha256"
ZSTD_D = "zstd -d (ferry's member)"
SWU_RAW = "swupdate raw + sync"
SWU_RAW_EXIT = "swupdate raw, at its exit"
SWU_ZSTD = "swupdate zstd + sync"
RAUC_RAW = "rauc raw, local file + sync"
RAUC_ZSTD = "rauc zstd, local file + sync"
RAUC_HTTP = "rauc raw, http:// + sync"
FERRY_RAW = "ferry --config raw"
FERRY_ZSTD = "ferry --config zstd"
FERRYD_RAW = "ferryd raw (D-Bus)"
FERRYD_ZSTD = "ferryd zstd (D-Bus)"
FERRYD_RAW_SPAN = "ferryd raw, journal span"
FERRYD_ENC = "ferryd raw AES-256-CBC (D-Bus)"
OPENSSL_DEC = "openssl enc -d -aes-256-cbc"
ENCRYPTED_GOAL = 0.9  # issue 18: an encrypted install at >= 0.9 of the unencrypted one


@dataclass
class Sample:
    label: str
    size: int  # image bytes the tool wrote
    wall: float
    cpu: CpuUsage
    rss_kb: int
    client: float = 0.0  # CPU s of the command's own cgroup, without the daemons'

    @property
    def mibs(self) -> float:
        return self.size / MiB / self.wall if self.wall > 0 else float("inf")

    @property
    def cpu_per_gib(self) -> float:
        return self.cpu.total / (self.size / GiB)


@dataclass
class Memory:
    """ferryd's RSS over its life at one size (KiB)."""

    idle_after_start: int = 0
    anon_idle: int = 0  # RssAnon: the heap, without the mapped code of the imports
    after_warmup: int = 0
    anon_after_warmup: int = 0
    during_install: dict[str, int] = field(default_factory=dict)  # label -> max VmHWM
    after_installs: list[int] = field(default_factory=list)  # VmRSS after each of 20
    anon_after_installs: int = 0
    status_walls: list[float] = field(default_factory=list)


def make_images(d: Path, size: int) -> tuple[Path, Path]:
    """A random image and a compressible one (~3:1 with zstd), both ``size`` bytes."""
    rnd, comp = d / f"rand-{size}.img", d / f"comp-{size}.img"
    if not rnd.exists():
        with open(rnd, "wb") as f:
            left = size
            while left:
                n = min(left, 8 * MiB)
                f.write(os.urandom(n))
                left -= n
    if not comp.exists():
        words = b" ".join(hashlib.sha256(str(i).encode()).hexdigest()[:8].encode()
                          for i in range(4096))
        with open(comp, "wb") as f:
            left, i = size, 0
            while left:
                block = os.urandom(16 << 10) + (words * 13)[: 48 << 10]
                n = min(left, len(block))
                f.write(block[:n])
                left -= n
                i += 1
    return rnd, comp


def ferry_zstd_member(d: Path, comp: Path) -> Path:
    """The compressible image compressed as ``ferry bundle create`` does it."""
    from ferry.packaging.compression import compress_file

    out = d / f"{comp.name}.zst"
    if not out.exists():
        with open(comp, "rb") as src, open(out, "wb") as dst:
            compress_file("zstd", src, dst)
    return out


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return int(port)


def ferry_bundles(d: Path, image: Path, comp: Path) -> tuple[Path, Path, Path]:
    from ferry.packaging.devpki import write_dev_pki
    from ferry.packaging.writer import ImageInput, create_bundle, load_signing_key

    pdir = d / "pki"
    if not (pdir / "signer.key").exists():  # a kept --dir keeps its keys and bundles
        write_dev_pki(pdir)
    signing = load_signing_key(pdir / "signer.key", pdir / "signer.pem")
    raw = d / "www" / f"ferry-raw-{image.stat().st_size}.swu"
    zst = d / "www" / f"ferry-zstd-{image.stat().st_size}.swu"
    if not raw.exists():
        create_bundle(raw, signing=signing, version="2.0.0", compatible=["bench-gw"],
                      images=[ImageInput(path=image, compress=None, filename="rootfs.img")])
    if not zst.exists():
        create_bundle(zst, signing=signing, version="2.0.0", compatible=["bench-gw"],
                      images=[ImageInput(path=comp, compress="zstd",
                                         filename="rootfs.img.zst")])
    return raw, zst, pdir / "ca.pem"


def encrypted_bundle(d: Path, image: Path) -> tuple[Path, Path, Path]:
    """The raw image encrypted as SWUpdate does (AES-256-CBC, ``--encrypt-key``), its
    key file, and the same image encrypted by ``openssl enc`` with that key: the
    ciphertext ``openssl enc -d`` is timed on."""
    from ferry.packaging.encryption import load_key
    from ferry.packaging.writer import ImageInput, create_bundle, load_signing_key

    pdir = d / "pki"
    key_file = pdir / "aes.key"
    if not key_file.exists():
        key_file.write_text(f"{os.urandom(32).hex()} {os.urandom(16).hex()}\n")
    key_hex, iv_hex = key_file.read_text().split()
    enc = d / "www" / f"ferry-enc-{image.stat().st_size}.swu"
    if not enc.exists():
        create_bundle(enc, signing=load_signing_key(pdir / "signer.key", pdir / "signer.pem"),
                      version="2.0.0", compatible=["bench-gw"],
                      images=[ImageInput(path=image, compress=None, filename="rootfs.img")],
                      encrypt_key=load_key(key_file))
    cipher = d / f"{image.name}.aes"
    if not cipher.exists():
        subprocess.run(["openssl", "enc", "-aes-256-cbc", "-nosalt", "-K", key_hex, "-iv",
                        iv_hex, "-in", str(image), "-out", str(cipher)], check=True)
    return enc, key_file, cipher


def ferry_gateway(d: Path, slot: Path, ca: Path, name: str = "gw",
                  aes_key: Path | None = None) -> Path:
    from ferry.daemon.boot.bootchooser import default_env
    from ferry.daemon.boot.bootloader import CANARY_VAR
    from ferry.daemon.boot.ubootenv import EnvStore
    from ferry.daemon.config import load_config

    gw = d / name
    gw.mkdir(exist_ok=True)
    (gw / "slotA.img").write_bytes(b"")
    for name in ("env0", "env1"):
        (gw / name).write_bytes(b"\xff" * ENV_SIZE)
    (gw / "fw_env.config").write_text(f"env0 0 {ENV_SIZE:#x}\nenv1 0 {ENV_SIZE:#x}\n")
    (gw / "cmdline").write_text("ferry.slot=A\n")
    cfg = gw / "ferry.toml"
    cfg.write_text(f"""
[gateway]
compatible = "bench-gw"
version = "1.0.0"
data_dir = "data"
[bootloader]
fw_env_config = "fw_env.config"
cmdline = "cmdline"
lock_file = "fw_env.lock"
[[slot]]
name = "rootfs.0"
bootname = "A"
device = "slotA.img"
[[slot]]
name = "rootfs.1"
bootname = "B"
device = "{slot}"
[keyring]
path = "{ca}"
{f'decryption_key = "{aes_key}"' if aes_key else ""}
[install]
reboot_command = ["true"]
""")
    config = load_config(cfg)
    EnvStore.from_config(gw / "fw_env.config").initialize(
        {**default_env(config), CANARY_VAR: "1"})
    return cfg


def swupdate_bundle(d: Path, image: Path, slot: Path, zstd: bool = False) -> tuple[Path, Path]:
    """A signed .swu as in test-recipes §3.3 (EC P-256 cert with EKU emailProtection);
    with ``zstd`` the member is ``zstd -3`` of the image, ``compressed = "zstd"``, and
    its sha256 is that of the compressed member (what SWUpdate hashes)."""
    sd = d / "swu"
    sd.mkdir(exist_ok=True)
    key, crt = sd / "swu.key", sd / "swu.crt"
    if not crt.exists():
        subprocess.run(["openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout",
                        "-out", str(key)], check=True)
        subprocess.run(["openssl", "req", "-new", "-x509", "-key", str(key), "-out", str(crt),
                        "-days", "30", "-subj", "/CN=bench", "-addext",
                        "extendedKeyUsage=emailProtection"], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    kind = "zstd" if zstd else "raw"
    out = d / "www" / f"swupdate-{kind}-{image.stat().st_size}.swu"
    if out.exists():
        return out, crt
    work = sd / "pack"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    member = "rootfs.img.zst" if zstd else "rootfs.img"
    if zstd:
        subprocess.run(["zstd", "-q", "-3", "-T0", "-o", str(work / member), str(image)],
                       check=True)
    else:
        os.link(image, work / member)
    digest = subprocess.run(["openssl", "dgst", "-sha256", "-r", str(work / member)],
                            check=True, capture_output=True, text=True).stdout.split()[0]
    compressed = '\n            compressed = "zstd";' if zstd else ""
    (work / "sw-description").write_text(f"""software =
{{
    version = "2.0.0";
    hardware-compatibility = ["1.0"];
    images: (
        {{
            filename = "{member}";
            device = "{slot}";
            type = "raw";
            sha256 = "{digest}";{compressed}
            installed-directly = true;
        }}
    );
}}
""")
    subprocess.run(["openssl", "cms", "-sign", "-in", "sw-description", "-out",
                    "sw-description.sig", "-signer", str(crt), "-inkey", str(key),
                    "-outform", "DER", "-nosmimecap", "-binary"], cwd=work, check=True)
    with open(out, "wb") as f:
        subprocess.run(["cpio", "-o", "-H", "crc", "--quiet"], cwd=work, check=True,
                       input=f"sw-description\nsw-description.sig\n{member}\n".encode(),
                       stdout=f)
    shutil.rmtree(work)
    return out, crt


def rauc_bundles(d: Path, image: Path, comp: Path) -> tuple[Path, Path, Path, Path]:
    """Plain RAUC bundles of at most RAUC_MAX bytes of each image, signed by a self-signed
    P-256 cert that is also the keyring (``rauc bundle``), and that cert. Raw: squashfs
    without compression (``-noI -noD -noF -noX``), so the install copies; zstd: squashfs
    with zstd at level 3, which the kernel decompresses as rauc reads the image."""
    rd = d / "rauc"
    rd.mkdir(exist_ok=True)
    key, crt = rd / "rauc.key", rd / "rauc.pem"
    if not crt.exists():
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                        "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", str(key),
                        "-out", str(crt), "-days", "3650", "-subj", "/CN=ferry bench rauc"],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    n = min(image.stat().st_size, RAUC_MAX)
    out: list[Path] = []
    for kind, src, args in (("raw", image, "-noI -noD -noF -noX"),
                            ("zstd", comp, "-comp zstd -Xcompression-level 3")):
        bundle = d / "www" / f"rauc-{kind}-{n}.raucb"
        img = rd / f"{kind}-{n}.img"
        if not img.exists():
            if n == src.stat().st_size:
                os.link(src, img)
            else:
                with open(src, "rb") as f, open(img, "wb") as g:
                    left = n
                    while left:
                        buf = f.read(min(left, 8 * MiB))
                        g.write(buf)
                        left -= len(buf)
        if not bundle.exists():
            content = rd / "content"
            shutil.rmtree(content, ignore_errors=True)
            content.mkdir()
            os.link(img, content / "rootfs.img")
            (content / "manifest.raucm").write_text(
                "[update]\ncompatible=bench-gw\nversion=2.0.0\n\n[bundle]\nformat=plain\n\n"
                "[image.rootfs]\nfilename=rootfs.img\n")
            subprocess.run(["rauc", "bundle", f"--cert={crt}", f"--key={key}",
                            f"--keyring={crt}", f"--mksquashfs-args={args}", str(content),
                            str(bundle)], check=True, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
            shutil.rmtree(content)
        out.append(bundle)
    return out[0], out[1], crt, rd


def rauc_system_conf(rd: Path, slot: Path, crt: Path) -> Path:
    """``bootloader=noop``, one dummy booted slot A and the bench's slot as B (raw)."""
    (rd / "slotA.img").touch()
    (rd / "mnt").mkdir(exist_ok=True)
    conf = rd / f"system-{slot.stem}.conf"
    conf.write_text(f"""[system]
compatible=bench-gw
bootloader=noop
mountprefix={rd / 'mnt'}
statusfile={rd / 'rauc.status'}
max-bundle-download-size={8 * GiB}

[keyring]
path={crt}

[slot.rootfs.0]
device={rd / 'slotA.img'}
type=raw
bootname=A

[slot.rootfs.1]
device={slot}
type=raw
bootname=B
""")
    return conf


class Daemons:
    """A private dbus-daemon for one size, ferryd and ``rauc service`` on it, each in a
    cgroup of its own so that an install's CPU counts every process that did it."""

    def __init__(self, d: Path, tree: CgroupTree) -> None:
        self.d, self.tree = d, tree
        dbus_daemon = shutil.which("dbus-daemon")
        if dbus_daemon is None:
            raise SystemExit("dbus-daemon is missing; run 'bash .ci/setup'")
        self.busdir = Path(tempfile.mkdtemp(prefix="ferry-bench-bus-"))
        conf = self.busdir / "bus.conf"
        from ferry.sim.dbusbus import private_bus_config

        conf.write_text(private_bus_config(self.busdir))
        self.bus_cg = tree.new("dbus-daemon")
        self.bus = subprocess.Popen(self.bus_cg.wrap([dbus_daemon, "--config-file", str(conf),
                                                      "--nofork", "--print-address"]),
                                    stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                    text=True)
        assert self.bus.stdout is not None
        self.address = self.bus.stdout.readline().strip()
        if not self.address.startswith("unix:"):
            self.close()
            raise SystemExit(f"dbus-daemon gave no address ({self.address!r})")
        self.env = dict(os.environ, FERRY_BUS_ADDRESS=self.address,
                        DBUS_SYSTEM_BUS_ADDRESS=self.address)
        self.ferryd: subprocess.Popen[bytes] | None = None
        self.ferryd_cg = tree.new("ferryd")
        self.rauc: subprocess.Popen[bytes] | None = None
        self.rauc_cg = tree.new("rauc-service")

    def _has_name(self, name: str) -> bool:
        out = subprocess.run(["dbus-send", f"--bus={self.address}", "--print-reply",
                              "--dest=org.freedesktop.DBus", "/org/freedesktop/DBus",
                              "org.freedesktop.DBus.NameHasOwner", f"string:{name}"],
                             capture_output=True, text=True)
        return "boolean true" in out.stdout

    def _start(self, cg: Cgroup, cmd: list[str], name: str, log: Path,
               env: dict[str, str]) -> subprocess.Popen[bytes]:
        with open(log, "ab") as f:
            proc = subprocess.Popen(cg.wrap(cmd), stdout=f, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise SystemExit(f"{cmd[0]} exited with {proc.returncode}; see {log}")
            if self._has_name(name):
                return proc
            time.sleep(0.1)
        raise SystemExit(f"{cmd[0]} never took {name}; see {log}")

    def start_ferryd(self, cfg: Path) -> None:
        self.ferryd = self._start(self.ferryd_cg, [str(ROOT / ".venv" / "bin" / "ferryd"),
                                                   "--config", str(cfg), "--bus",
                                                   self.address],
                                  "org.ferry.Ferry1", self.d / "ferryd.log", self.env)

    def start_rauc(self, conf: Path, tmpdir: Path) -> None:
        tmpdir.mkdir(exist_ok=True)
        self.rauc = self._start(self.rauc_cg, ["rauc", "service", f"--conf={conf}",
                                               "--override-boot-slot=A"],
                                "de.pengutronix.rauc", self.d / "rauc.log",
                                dict(self.env, TMPDIR=str(tmpdir)))

    def close(self) -> None:
        for proc in (self.ferryd, self.rauc, self.bus):
            if proc is None or proc.poll() is not None:
                continue
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        shutil.rmtree(self.busdir, ignore_errors=True)


class Meter:
    """Runs one tool's command in its cgroup (one per label, reused over the rounds) and
    adds the CPU the named daemons spent meanwhile."""

    def __init__(self, tree: CgroupTree, slot: Path, size: int) -> None:
        self.tree, self.slot, self.size = tree, slot, size
        self.cgs: dict[str, Cgroup] = {}

    def run(self, label: str, cmd: Sequence[str], *, image_size: int | None = None,
            env: dict[str, str] | None = None, then_sync: bool = False,
            daemons: Sequence[Cgroup] = (), daemon_pids: Sequence[int] = (),
            exit_label: str | None = None) -> list[Sample]:
        scrub(self.slot, self.size)  # so the cmp after each tool proves that tool wrote it
        subprocess.run(["sync"], check=True)
        cg = self.cgs.get(label) or self.cgs.setdefault(
            label, self.tree.new(label.split()[0].replace("/", "_")))
        for pid in daemon_pids:
            reset_hwm(pid)
        before = sum((c.cpu() for c in daemons), ZERO)
        run = run_in(cg, cmd, env)
        if run.returncode != 0:
            raise SystemExit(f"{label}: {' '.join(cmd)} failed ({run.returncode}):\n"
                             f"{run.stderr.decode(errors='replace')[-2000:]}")
        wall, cpu = run.wall, run.cpu
        out: list[Sample] = []
        rss = max([run.maxrss_kb, *(vm_kb(p, "VmHWM") for p in daemon_pids)])
        n = image_size or self.size
        if exit_label is not None:
            out.append(Sample(exit_label, n, wall, cpu + sum(
                (c.cpu() for c in daemons), ZERO) - before, rss, cpu.total))
        if then_sync:
            sync = run_in(cg, ["sync", str(self.slot)])
            wall, cpu = wall + sync.wall, cpu + sync.cpu
        out.append(Sample(label, n, wall, cpu + sum((c.cpu() for c in daemons), ZERO) - before,
                          rss, cpu.total))
        return out


class RssSampler:
    """VmRSS of one pid every 10 ms in a thread: the curve behind VmHWM."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak, self._stop = pid, 0, threading.Event()
        self._t = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, vm_kb(self.pid, "VmRSS"))

    def __enter__(self) -> RssSampler:
        self._t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._t.join()


def run_size(d: Path, size: int, rounds: int, tree: CgroupTree, swupdate: str,
             memory_test: bool) -> tuple[list[list[Sample]], Memory]:
    rnd, comp = make_images(d, size)
    www = d / "www"
    www.mkdir(exist_ok=True)
    img_link = www / rnd.name
    if not img_link.exists():
        os.link(rnd, img_link)
    slot = d / f"slot-{size}.img"
    with open(slot, "wb") as f:
        f.truncate(size)
    raw_b, zst_b, ca = ferry_bundles(d, rnd, comp)
    member = ferry_zstd_member(d, comp)
    enc_b, aes_key, cipher = encrypted_bundle(d, rnd)
    cfg = ferry_gateway(d, slot, ca)
    swu_raw, swu_crt = swupdate_bundle(d, rnd, slot) if swupdate else (None, None)
    swu_zst = swupdate_bundle(d, comp, slot, zstd=True)[0] if swupdate else None
    rauc_raw, rauc_zst, rauc_crt, rd = rauc_bundles(d, rnd, comp)
    rauc_n = min(size, RAUC_MAX)
    rauc_img = {"raw": rd / f"raw-{rauc_n}.img", "zstd": rd / f"zstd-{rauc_n}.img"}
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind",
                               "127.0.0.1"], cwd=www, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.05)
    all_rounds: list[list[Sample]] = []
    mem = Memory()
    ferry = str(ROOT / ".venv" / "bin" / "ferry")
    daemons = Daemons(d, tree)
    meter = Meter(tree, slot, size)
    try:
        daemons.start_ferryd(ferry_gateway(d, slot, ca, name="gwd", aes_key=aes_key))
        daemons.start_rauc(rauc_system_conf(rd, slot, rauc_crt), d / "rauctmp")
        assert daemons.ferryd is not None and daemons.rauc is not None
        fpid = daemons.ferryd.pid
        time.sleep(1.0)  # idle: start-up done, nothing asked of it yet
        mem.idle_after_start = vm_kb(fpid, "VmRSS")
        mem.anon_idle = vm_kb(fpid, "RssAnon")
        ferryd_cgs = (daemons.ferryd_cg, daemons.bus_cg)
        rauc_cgs = (daemons.rauc_cg, daemons.bus_cg)

        def reset_ferryd() -> None:
            from ferry.daemon.journal import Journal

            journal = Journal.open(d / "gwd" / "data")
            try:
                dep = journal.pending()
                if dep is not None:
                    journal.finish(dep.id, "rolled-back", "bench: next round")
            finally:
                journal.close()
            with open(slot, "ab") as f:
                f.truncate(size)

        def reset_ferry() -> None:
            shutil.rmtree(d / "gw" / "data", ignore_errors=True)
            with open(slot, "ab") as f:  # capacity for ferry: the slot's size
                f.truncate(size)

        def check(what: str, image: Path) -> None:
            if not cmp_slot(slot, image):
                raise SystemExit(f"{what} did not write the image into the slot")

        # untimed warm-up: the lazy imports of the install path happen once per process
        reset_ferryd()  # the previous size's last deployment shares this journal
        warm = subprocess.run([ferry, "install", f"{base}/{raw_b.name}"], env=daemons.env,
                              capture_output=True, text=True)
        if warm.returncode != 0:
            raise SystemExit(f"ferry install through ferryd failed:\n{warm.stderr[-2000:]}")
        time.sleep(0.5)
        mem.after_warmup = vm_kb(fpid, "VmRSS")
        mem.anon_after_warmup = vm_kb(fpid, "RssAnon")
        # the standalone process's own imports, compiled once outside the rounds
        subprocess.run([ferry, "--config", str(cfg), "status"], capture_output=True)
        for r in range(rounds):
            samples: list[Sample] = []
            add: Callable[[list[Sample]], None] = samples.extend
            add(meter.run(CURL_O, ["curl", "-s", "-o", str(slot), f"{base}/{rnd.name}"],
                          then_sync=True))
            # the semantics of ferry and a block device: overwrite in place (curl -o
            # truncates, so ext4 frees and allocates every block again)
            add(meter.run(IN_PLACE, ["bash", "-c", f'curl -s "{base}/{rnd.name}" 1<>"{slot}"'],
                          then_sync=True))
            check("curl", rnd)
            add(meter.run(SHA, ["openssl", "dgst", "-sha256", str(rnd)]))
            add(meter.run(ZSTD_D, ["zstd", "-q", "-d", "-f", str(member), "-o",
                                   "/dev/null"]))
            key_hex, iv_hex = aes_key.read_text().split()
            add(meter.run(OPENSSL_DEC, ["openssl", "enc", "-d", "-aes-256-cbc", "-nosalt",
                                        "-K", key_hex, "-iv", iv_hex, "-in", str(cipher),
                                        "-out", "/dev/null"]))
            if swu_raw is not None and swu_zst is not None:
                tmpdir = d / "swutmp"
                tmpdir.mkdir(exist_ok=True)
                env = dict(os.environ, TMPDIR=str(tmpdir))
                swu = [swupdate, "-H", "gw:1.0", "-k", str(swu_crt), "-d"]
                add(meter.run(SWU_RAW, [*swu, f"-u {base}/{swu_raw.name}"], env=env,
                              then_sync=True, exit_label=SWU_RAW_EXIT))
                check("swupdate", rnd)
                add(meter.run(SWU_ZSTD, [*swu, f"-u {base}/{swu_zst.name}"], env=env,
                              then_sync=True))
                check("swupdate (zstd)", comp)
            rauc = ["rauc", "install"]
            for label, src, kind in ((RAUC_RAW, str(rauc_raw), "raw"),
                                     (RAUC_ZSTD, str(rauc_zst), "zstd"),
                                     (RAUC_HTTP, f"{base}/{rauc_raw.name}", "raw")):
                add(meter.run(label, [*rauc, src], env=daemons.env, then_sync=True,
                              image_size=rauc_n, daemons=rauc_cgs,
                              daemon_pids=[daemons.rauc.pid]))
                check(f"rauc ({label})", rauc_img[kind])
            reset_ferry()
            add(meter.run(FERRY_RAW, [ferry, "--config", str(cfg), "install",
                                      f"{base}/{raw_b.name}"]))
            check("ferry", rnd)
            reset_ferry()
            add(meter.run(FERRY_ZSTD, [ferry, "--config", str(cfg), "install",
                                       f"{base}/{zst_b.name}"]))
            check("ferry (zstd)", comp)
            for label, bundle, image in ((FERRYD_RAW, raw_b, rnd), (FERRYD_ZSTD, zst_b, comp),
                                         (FERRYD_ENC, enc_b, rnd)):
                reset_ferryd()
                with RssSampler(fpid) as sampler:
                    add(meter.run(label, [ferry, "install", f"{base}/{bundle.name}"],
                                  env=daemons.env, daemons=ferryd_cgs, daemon_pids=[fpid]))
                mem.during_install[label] = max(mem.during_install.get(label, 0),
                                                vm_kb(fpid, "VmHWM"), sampler.peak)
                check(label, image)
                if label == FERRYD_RAW:
                    last = samples[-1]
                    samples.append(Sample(FERRYD_RAW_SPAN, size,
                                          pipeline_seconds(d / "gwd" / "data"), last.cpu,
                                          last.rss_kb, last.client))
            all_rounds.append(samples)
            print(f"  round {r + 1}/{rounds} (load {os.getloadavg()[0]:.1f}): " + ", ".join(
                f"{s.label.split(' + ')[0]} {s.mibs:.0f} MiB/s {s.cpu_per_gib:.2f} s/GiB"
                for s in samples if "exit" not in s.label and "span" not in s.label),
                flush=True)
        if memory_test:
            for _ in range(20):
                reset_ferryd()
                done = subprocess.run([ferry, "install", f"{base}/{raw_b.name}"],
                                      env=daemons.env, capture_output=True, text=True)
                if done.returncode != 0:
                    raise SystemExit(f"ferryd install failed:\n{done.stderr[-2000:]}")
                time.sleep(0.2)  # ferryd trims its heap just after Completed
                mem.after_installs.append(vm_kb(fpid, "VmRSS"))
            mem.anon_after_installs = vm_kb(fpid, "RssAnon")
            for _ in range(20):
                t0 = time.monotonic()
                st = subprocess.run([ferry, "status"], env=daemons.env, capture_output=True)
                mem.status_walls.append(time.monotonic() - t0)
                if st.returncode != 0:
                    raise SystemExit(f"ferry status failed:\n{st.stderr[-2000:]!r}")
    finally:
        daemons.close()
        server.terminate()
        server.wait()
    return all_rounds, mem


def pipeline_seconds(data_dir: Path) -> float:
    """Deployment created -> reboot requested, from the journal: what ferryd pays,
    without the CLI's Python start-up."""
    import sqlite3

    conn = sqlite3.connect(data_dir / "journal.db")
    try:  # the newest deployment: ferryd's journal holds one per install
        dep_id, created = conn.execute(
            "SELECT id, created FROM deployments ORDER BY id DESC LIMIT 1").fetchone()
        ended = conn.execute("SELECT MAX(ended) FROM steps WHERE deployment_id = ?",
                             (dep_id,)).fetchone()[0]
    finally:
        conn.close()
    return float(ended - created)


def scrub(slot: Path, size: int) -> None:
    if not slot.exists():
        return
    with open(slot, "r+b") as f:
        for off in (0, max(size - MiB, 0)):
            f.seek(off)
            f.write(b"\0" * min(MiB, size))


def cmp_slot(slot: Path, image: Path) -> bool:
    size = image.stat().st_size
    proc = subprocess.run(["cmp", "-n", str(size), str(slot), str(image)],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return proc.returncode == 0


def mmm(xs: Sequence[float], fmt: str = "{:.2f}") -> str:
    """median [min-max]"""
    return (fmt.format(statistics.median(xs)) + " [" + fmt.format(min(xs)) + "-"
            + fmt.format(max(xs)) + "]")


def by_label(rounds: list[list[Sample]]) -> dict[str, list[Sample]]:
    labels = [s.label for s in rounds[0]]
    return {lab: [next(s for s in r if s.label == lab) for r in rounds] for lab in labels}


def floor_cpu(by: dict[str, list[Sample]]) -> list[float]:
    """Per round: CPU s/GiB of sha256 + the in-place write, the least an install can burn."""
    return [a.cpu_per_gib + b.cpu_per_gib for a, b in zip(by[SHA], by[IN_PLACE], strict=True)]


def report(size: int, rounds: list[list[Sample]]) -> None:
    by = by_label(rounds)
    print(f"\n{size // MiB} MiB image, {len(rounds)} round(s), median [min-max]:")
    print(f"  {'what':40} {'wall s':>18} {'MiB/s':>6} {'CPU s/GiB':>18} {'user+sys s':>11} "
          f"{'RSS MiB':>8} {'client s':>8}")
    for lab, ss in by.items():
        cpu = [s.cpu_per_gib for s in ss]
        us = statistics.median(s.cpu.user for s in ss)
        sy = statistics.median(s.cpu.system for s in ss)
        note = f" ({ss[0].size // MiB} MiB)" if ss[0].size != size else ""
        cpu_s = "(the client's)" if "span" in lab else mmm(cpu)
        print(f"  {lab + note:40} {mmm([s.wall for s in ss]):>18} "
              f"{statistics.median(s.mibs for s in ss):6.0f} {cpu_s:>18} "
              f"{us:5.2f}+{sy:<5.2f} {max(s.rss_kb for s in ss) / 1024:8.1f}"
              + (f" {statistics.median(s.client for s in ss):8.2f}" if "ferryd" in lab
                 or "rauc" in lab else ""))
    fl = floor_cpu(by)
    print(f"  {'floor: sha256 + in-place write':40} {'':>18} {'':>6} {mmm(fl):>18}")
    if size > RAUC_MAX:
        print(f"  rauc rows install {RAUC_MAX // MiB} MiB: rauc 1.8 skips most of the signature "
              "check of a plain bundle over 2 GiB (fixed in 1.15.2)")
    print("  rauc http:// downloads the whole bundle to TMPDIR, then installs from that copy")


def ratio_rounds(a: list[Sample], b: list[Sample], key: Callable[[Sample], float]) -> list[float]:
    return [key(x) / key(y) for x, y in zip(a, b, strict=True)]


def goal(what: str, xs: Sequence[float], limit: float, below: bool, unit: str = "x",
         fmt: str = "{:.2f}") -> bool:
    med = statistics.median(xs)
    ok = med <= limit if below else med >= limit
    shown = mmm(xs, fmt) if len(xs) > 1 else fmt.format(med)
    print(f"  {what:64} {shown:>20}{unit} {'<=' if below else '>='} {fmt.format(limit)}{unit}"
          f"  {'PASS' if ok else 'MISS'}")
    return ok


def goals(results: list[tuple[int, list[list[Sample]], Memory]]) -> None:
    print("\ngoals of issue 22 (ratios per round, median [min-max]):")
    for size, rounds, _mem in results:
        by = by_label(rounds)
        big = size >= GiB
        fl = floor_cpu(by)
        n = size // MiB
        for lab in (FERRYD_RAW, FERRYD_ZSTD):
            cpu = [s.cpu_per_gib for s in by[lab]]
            goal(f"CPU/GiB {lab} / floor, {n} MiB",
                 [c / f for c, f in zip(cpu, fl, strict=True)], 1.15 if big else 1.3, True)
        if ZSTD_D in by:
            zfl = [f + z.cpu_per_gib for f, z in zip(fl, by[ZSTD_D], strict=True)]
            zcpu = [s.cpu_per_gib for s in by[FERRYD_ZSTD]]
            print(f"  {f'CPU/GiB {FERRYD_ZSTD} / (floor + {ZSTD_D}), {n} MiB':64} "
                  f"{mmm([c / f for c, f in zip(zcpu, zfl, strict=True)]):>20}x"
                  "  (the floor above has no decompression)")
        for lab, peer in ((FERRYD_RAW, RAUC_RAW), (FERRYD_ZSTD, RAUC_ZSTD)):
            goal(f"CPU/GiB {lab} / {peer}, {n} MiB",
                 ratio_rounds(by[lab], by[peer], lambda s: s.cpu_per_gib), 1.0, True)
        for lab in (FERRYD_RAW, FERRYD_ZSTD):
            goal(f"MiB/s {lab} / in-place limit, {n} MiB",
                 ratio_rounds(by[lab], by[IN_PLACE], lambda s: s.mibs), 0.9 if big else 0.8,
                 False)
    print("\ngoals of issue 18 (encrypted install through ferryd, per round):")
    for size, rounds, _mem in results:
        by = by_label(rounds)
        n = size // MiB
        if FERRYD_ENC in by:
            goal(f"MiB/s {FERRYD_ENC} / {FERRYD_RAW}, {n} MiB",
                 ratio_rounds(by[FERRYD_ENC], by[FERRYD_RAW], lambda s: s.mibs),
                 ENCRYPTED_GOAL, False)
            print(f"  {'MiB/s ' + FERRYD_ENC + ' / ' + OPENSSL_DEC + f', {n} MiB':64} "
                  f"{mmm(ratio_rounds(by[FERRYD_ENC], by[OPENSSL_DEC], lambda s: s.mibs)):>20}x"
                  "  (openssl decrypts into /dev/null: no hash, no write)")
    for size, _rounds, mem in results:
        n = size // MiB
        print(f"  ferryd RSS, {n} MiB: idle after start {mem.idle_after_start / 1024:.1f} MiB "
              f"(RssAnon {mem.anon_idle / 1024:.1f}), after the warm-up install "
              f"{mem.after_warmup / 1024:.1f} MiB (RssAnon {mem.anon_after_warmup / 1024:.1f}), "
              "peak during "
              + ", ".join(f"{k} {v / 1024:.1f}" for k, v in mem.during_install.items())
              + " MiB")
        if size >= GiB and FERRYD_ZSTD in mem.during_install:
            goal(f"ferryd peak RSS during a {n} MiB zstd install",
                 [mem.during_install[FERRYD_ZSTD] / 1024], 40, True, " MiB", "{:.1f}")
        if mem.after_installs:
            a = [x / 1024 for x in mem.after_installs]
            print(f"  ferryd VmRSS after installs 1..20 ({n} MiB raw): "
                  + " ".join(f"{x:.1f}" for x in a) + " MiB")
            goal("ferryd RSS after 20 installs - idle after start",
                 [a[-1] - mem.idle_after_start / 1024], 4.0, True, " MiB", "{:.1f}")
            print(f"    (after 20 - after the 1st: {a[-1] - a[0]:+.1f} MiB; after 20 - after "
                  f"the warm-up: {a[-1] - mem.after_warmup / 1024:+.1f} MiB; RssAnon after 20 "
                  f"{mem.anon_after_installs / 1024:.1f} MiB)")
        if mem.status_walls:
            goal("ferry status through ferryd, wall of 20 calls",
                 [w * 1000 for w in mem.status_walls], 150, True, " ms", "{:.0f}")


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="64 MiB and 256 MiB, one round")
    ap.add_argument("--sizes", help="comma-separated sizes in MiB (default 256,2048)")
    ap.add_argument("--rounds", type=int, help="interleaved rounds (default 3, quick 1)")
    ap.add_argument("--dir", help="work directory (default a temp dir under /var/tmp)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    args = ap.parse_args()
    sizes = [int(s) * MiB for s in (args.sizes or ("64,256" if args.quick else "256,2048")
                                    ).split(",")]
    rounds = args.rounds or (1 if args.quick else 3)
    if (shutil.which("rauc") is None or shutil.which("mksquashfs") is None) and os.geteuid() == 0:
        # the RAUC rows only: no test needs rauc, so .ci/deps does not install it
        print("installing Debian's rauc and squashfs-tools for the RAUC rows", flush=True)
        subprocess.run(["apt-get", "install", "-y", "-q", "rauc", "squashfs-tools"],
                       check=False, stdout=subprocess.DEVNULL,
                       env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))
    for tool in ("curl", "openssl", "cpio", "zstd", "sync", "cmp", "dbus-daemon", "dbus-send",
                 "rauc", "mksquashfs"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is missing; apt install curl openssl cpio zstd "
                             "coreutils diffutils dbus-daemon dbus rauc squashfs-tools")
    swupdate = shutil.which("swupdate") or ""
    if not swupdate:
        print("swupdate is missing (apt install swupdate): its rows are left out")
    d = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="ferry-bench-",
                                                               dir="/var/tmp"))
    d.mkdir(parents=True, exist_ok=True)
    need = sum(s * 9 for s in sizes)
    if shutil.disk_usage(d).free < need:
        raise SystemExit(f"{d} needs {need // MiB} MiB free")
    # Python tools run with their bytecode cached, as on a gateway (Yocto's wheel install
    # compiles it): with PYTHONDONTWRITEBYTECODE (set on the development VMs) every ferry
    # process compiled its sources again, ~30 % of the client's CPU (py-spy). The cache
    # goes to the work directory, not the source tree; the warm-ups fill it.
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    os.environ["PYTHONPYCACHEPREFIX"] = str(d / "pycache")
    tree = CgroupTree()
    load = os.getloadavg()
    print(f"bench/install.py: sizes {[s // MiB for s in sizes]} MiB, {rounds} round(s), "
          f"work dir {d}, cgroups under {tree.parent}, load average "
          f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}", flush=True)
    try:
        results = []
        for i, size in enumerate(sizes):
            print(f"{size // MiB} MiB:", flush=True)
            rs, mem = run_size(d, size, rounds, tree, swupdate, memory_test=(i == 0))
            results.append((size, rs, mem))
        for size, rs, _mem in results:
            report(size, rs)
        goals(results)
        load = os.getloadavg()
        print(f"\nload average at the end: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} "
              f"({os.cpu_count()} CPUs; every figure above shares them with that load)")
    finally:
        tree.close()
        if not args.keep:
            shutil.rmtree(d, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
