#!/usr/bin/env python3
"""Delta updates on real rootfs images: ferry against zchunk, casync and RAUC's adaptive
block-hash-index, in one run, on the same image pair (issue 20).

Images: two ext4 rootfs images (256 MiB, ``mkfs.ext4 -d``) built with ``mmdebstrap
--variant=extract`` from one Debian bookworm package set. Version 1 takes 28 packages at
the versions of earlier bookworm point releases/security updates (bookworm-updates,
bookworm-security), version 2 the same packages at today's bookworm/bookworm-security
versions: what a gateway sees as "the security update". Both are built with the same
filesystem UUID and hash seed (a reproducible image build), and cached under
/var/cache/ferry/delta (keyed by the package list). Also: a worst case (everything
changed: 64 MiB of random data) and an identical pair.

Rows (bytes are what crosses the wire for the rootfs, head and index included):

- ferry: ``ferry bundle create --delta`` at several average chunk sizes (planned bytes:
  the head up to the rootfs data, the signed index, the missing chunks in merged
  ranges); then the default size installed for real with ``ferry --config ... install
  URL`` against a local HTTP server throttled to 10 Mbit/s, counting the bytes it
  served, timing the whole process and its peak RSS: with the active slot's index kept
  by a delta install, made at idle by the indexer ferryd starts after a boot
  (``daemon/install/deltaindexer.py``, timed on its own), and with none (the slot read
  and cut inside the install).
- zchunk: ``zck`` (default chunking) on both images; bytes = ``zck_delta_size``'s
  download plus the new file's header (what zckdl fetches first).
- casync: ``casync make`` a blob index and chunk store of the new image, then ``casync
  extract --seed=OLD`` over HTTP from a local server; bytes = the .caibx plus the chunk
  files it fetched (counted by the server).
- RAUC adaptive (block-hash-index): 4 KiB blocks of the new image whose sha256 is not
  among the old image's blocks, times 4096 (RAUC fetches them uncompressed).
- full: ferry's zstd bundle as today (the whole bundle).

The limit for time is the issue's: the delta install's wall time at 10 Mbit/s must be at
most 1.1 x (bytes / link rate) + the full install's local time (the same ferry command
with the full zstd bundle over an unthrottled local server), measured in this run.

    .venv/bin/python bench/delta.py [--chunks 16,32,64] [--keep DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import http.server
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CACHE = Path("/var/cache/ferry/delta")
MiB = 1 << 20
LINK = 10_000_000 / 8  # 10 Mbit/s in bytes per second
IMAGE_SIZE = "256M"
UUID = "5a1e7d0c-6a55-4c1e-9d1e-0b5e11a7e0f1"
MIRRORS = [
    "deb http://deb.debian.org/debian bookworm main",
    "deb http://deb.debian.org/debian bookworm-updates main",
    "deb http://deb.debian.org/debian-security bookworm-security main",
]
# name: (version 1, version 2); None = the same in both (bookworm's)
PACKAGES: dict[str, tuple[str | None, str | None]] = {
    "libc6": ("2.36-9+deb12u7", "2.36-9+deb12u14"),
    "curl": ("7.88.1-10+deb12u5", "7.88.1-10+deb12u15"),
    "libcurl4": ("7.88.1-10+deb12u5", "7.88.1-10+deb12u15"),
    "openssh-server": ("1:9.2p1-2+deb12u7", "1:9.2p1-2+deb12u10"),
    "openssh-client": ("1:9.2p1-2+deb12u7", "1:9.2p1-2+deb12u10"),
    "openssh-sftp-server": ("1:9.2p1-2+deb12u7", "1:9.2p1-2+deb12u10"),
    "systemd": ("252.38-1~deb12u1", "252.39-1~deb12u2"),
    "libsystemd0": ("252.38-1~deb12u1", "252.39-1~deb12u2"),
    "libsystemd-shared": ("252.38-1~deb12u1", "252.39-1~deb12u2"),
    "udev": ("252.38-1~deb12u1", "252.39-1~deb12u2"),
    "libudev1": ("252.38-1~deb12u1", "252.39-1~deb12u2"),
    "openssl": ("3.0.17-1~deb12u2", "3.0.20-1~deb12u2"),
    "libssl3": ("3.0.17-1~deb12u2", "3.0.20-1~deb12u2"),
    "tzdata": ("2025b-0+deb12u1", "2026b-0+deb12u1"),
    "python3.11-minimal": ("3.11.2-6+deb12u8", "3.11.2-6+deb12u9"),
    "libpython3.11-minimal": ("3.11.2-6+deb12u8", "3.11.2-6+deb12u9"),
    "libexpat1": ("2.5.0-1+deb12u2", "2.5.0-1+deb12u5"),
    "zlib1g": ("1:1.2.13.dfsg-1", "1:1.2.13.dfsg-1+deb12u1"),
    "util-linux": ("2.38.1-5+deb12u1", "2.38.1-5+deb12u3"),
    "sudo": ("1.9.13p3-1+deb12u2", "1.9.13p3-1+deb12u4"),
    "ca-certificates": ("20230311+deb12u1", "20250419~deb12u2"),
    "bash": (None, None),
    "coreutils": (None, None),
    "dash": (None, None),
    "dbus": (None, None),
    "iproute2": (None, None),
    "busybox": (None, None),
    "nftables": (None, None),
}


# -- images -----------------------------------------------------------------------------
def _include(version: int) -> str:
    out = []
    for name, pins in PACKAGES.items():
        pin = pins[version - 1]
        out.append(f"{name}={pin}" if pin else name)
    return ",".join(out)


def build_image(version: int) -> Path:
    key = hashlib.sha256(repr((sorted(PACKAGES.items()), MIRRORS, IMAGE_SIZE, UUID)).encode()
                         ).hexdigest()[:12]
    img = CACHE / f"rootfs-v{version}-{key}.ext4"
    if img.exists():
        return img
    CACHE.mkdir(parents=True, exist_ok=True)
    if shutil.which("mmdebstrap") is None:
        subprocess.run(["apt-get", "install", "-y", "-q", "mmdebstrap"], check=True)
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
        root = Path(tmp) / "root"
        subprocess.run(["mmdebstrap", "--quiet", "--mode=root", "--variant=extract",
                        "--architectures=amd64", f"--include={_include(version)}",
                        "bookworm", str(root), *MIRRORS], check=True)
        part = img.with_suffix(".part")
        env = {**os.environ, "E2FSPROGS_FAKE_TIME": "1700000000"}
        subprocess.run(["mkfs.ext4", "-q", "-F", "-U", UUID, "-E", f"hash_seed={UUID}",
                        "-d", str(root), str(part), IMAGE_SIZE], check=True, env=env)
        part.rename(img)
    return img


def worst_image(d: Path, like: Path) -> Path:
    """Everything changed: 64 MiB of random data, zeros to the same size."""
    out = d / "worst.img"
    with open(out, "wb") as f:
        f.write(os.urandom(64 * MiB))
        f.truncate(like.stat().st_size)
    return out


# -- HTTP servers -----------------------------------------------------------------------
class _Bucket:
    """A shared token bucket: every connection together gets ``rate`` bytes/s."""

    def __init__(self, rate: float | None) -> None:
        self.rate = rate
        self.lock = threading.Lock()
        self.next = time.monotonic()

    def take(self, n: int) -> None:
        if self.rate is None:
            return
        with self.lock:
            now = time.monotonic()
            start = max(now, self.next)
            self.next = start + n / self.rate
            wait = self.next - now
        if wait > 0:
            time.sleep(wait)


class FileServer(http.server.ThreadingHTTPServer):
    """Serves a directory with single-range support (as nginx), ETag, an optional
    link-rate limit, and counts body bytes sent and requests per path."""

    daemon_threads = True

    def __init__(self, root: Path, rate: float | None = None) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.root = root
        self.bucket = _Bucket(rate)
        self.sent = 0
        self.requests: list[tuple[str, str | None]] = []
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/{name}"

    def __enter__(self) -> FileServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
        self.server_close()

    def reset(self) -> None:
        self.sent = 0
        self.requests.clear()


class _Handler(http.server.BaseHTTPRequestHandler):
    server: FileServer  # type: ignore[assignment]
    protocol_version = "HTTP/1.1"
    # as nginx does (tcp_nodelay): else every small response waits for a delayed ACK
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        srv = self.server
        path = (srv.root / self.path.lstrip("/").split("?")[0]).resolve()
        rng = self.headers.get("Range")
        srv.requests.append((self.path, rng))
        if not path.is_file() or srv.root.resolve() not in path.parents:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        size = path.stat().st_size
        etag = f'"{int(path.stat().st_mtime_ns)}-{size}"'
        start, end = 0, size - 1
        if rng and self.headers.get("If-Range") in (None, etag):
            a, _, b = rng.split("=", 1)[1].split(",")[0].partition("-")
            start, end = int(a), min(int(b) if b else size - 1, size - 1)
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(end - start + 1))
        self.send_header("ETag", etag)
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        with open(path, "rb") as f:
            f.seek(start)
            left = end - start + 1
            try:
                while left:
                    data = f.read(min(left, 16 << 10))
                    srv.bucket.take(len(data))
                    self.wfile.write(data)
                    srv.sent += len(data)
                    left -= len(data)
            except OSError:
                pass


# -- anchors ----------------------------------------------------------------------------
def rauc_adaptive(old: Path, new: Path) -> int:
    """Bytes RAUC's block-hash-index adaptive mode fetches: 4 KiB blocks of the new
    image not found (by sha256) anywhere in the old one."""
    seen: set[bytes] = set()
    with open(old, "rb") as f:
        while block := f.read(4096):
            seen.add(hashlib.sha256(block).digest())
    missing = 0
    with open(new, "rb") as f:
        while block := f.read(4096):
            if hashlib.sha256(block).digest() not in seen:
                missing += len(block)
    return missing


def zchunk_bytes(d: Path, old: Path, new: Path) -> int:
    for img in (old, new):
        out = d / (img.name + ".zck")
        if not out.exists():
            subprocess.run(["zck", "-o", str(out), str(img)], check=True,
                           stdout=subprocess.DEVNULL)
    res = subprocess.run(["zck_delta_size", str(d / (old.name + ".zck")),
                          str(d / (new.name + ".zck"))], check=True, capture_output=True,
                         text=True)
    m = re.search(r"download (\d+) of (\d+) bytes", res.stdout)
    if m is None:
        raise SystemExit(f"zck_delta_size said: {res.stdout[-500:]}")
    header = subprocess.run(["zck_read_header", str(d / (new.name + ".zck"))],
                            capture_output=True, text=True)
    hm = re.search(r"Header size:\s*(\d+)", header.stdout)
    return int(m.group(1)) + (int(hm.group(1)) if hm else 0)


def casync_bytes(d: Path, old: Path, new: Path) -> int:
    store = d / "casync" / "store.castr"
    index = d / "casync" / "new.caibx"
    store.parent.mkdir(exist_ok=True)
    if not index.exists():
        subprocess.run(["casync", "make", f"--store={store}", str(index), str(new)],
                       check=True, stdout=subprocess.DEVNULL)
    out = d / "casync" / "out.img"
    out.unlink(missing_ok=True)
    with FileServer(d / "casync") as srv:
        subprocess.run(["casync", "extract", f"--store={srv.url('store.castr')}",
                        f"--seed={old}", srv.url("new.caibx"), str(out)], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        sent = srv.sent
    if hashlib.sha256(out.read_bytes()).digest() != hashlib.sha256(new.read_bytes()).digest():
        raise SystemExit("casync extract did not reproduce the new image")
    return sent


# -- ferry ------------------------------------------------------------------------------
def pki(d: Path) -> Path:
    from ferry.packaging.devpki import write_dev_pki

    if not (d / "pki" / "signer.key").exists():
        write_dev_pki(d / "pki")
    return d / "pki"


def ferry_bundle(d: Path, image: Path, name: str, avg_kib: int | None) -> Path:
    from ferry.packaging.chunker import ChunkParams
    from ferry.packaging.writer import ImageInput, create_bundle, load_signing_key

    out = d / "www" / name
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    p = pki(d)
    signing = load_signing_key(p / "signer.key", p / "signer.pem")
    delta = ChunkParams(avg=avg_kib << 10) if avg_kib else None
    create_bundle(out, signing=signing, version="2.0.0", compatible=["bench-gw"],
                  images=[ImageInput(image, "zstd", filename="rootfs.ext4.zst", delta=delta)])
    return out


def planned_bytes(bundle: Path, keyring: Path, old: Path) -> tuple[int, int, str, int]:
    """(bytes the device fetches, requests, mode, chunks) for ``bundle`` against ``old``:
    the head up to the rootfs data (with the index), then the planned ranges."""
    from ferry.daemon.install.delta import index_slot, make_plan
    from ferry.daemon.install.deltafetch import REQUEST_OVERHEAD
    from ferry.packaging.chunkindex import parse_index
    from ferry.packaging.keyring import load_keyring
    from ferry.packaging.reader import BundleReader

    with open(bundle, "rb") as fh:
        reader = BundleReader(fh, load_keyring(keyring))
        for entry, _stream in reader.images():
            head = reader.offset
            assert reader.delta_index is not None
            index = parse_index(reader.delta_index, stored_size=entry.size,
                                image_size=entry.decompressed_size)
            break
    plan = make_plan(index, index_slot(old, index))
    return (head + plan.fetch_bytes + REQUEST_OVERHEAD * (plan.requests + 1),
            plan.requests, "full" if plan.full else "delta", index.count)


def bundle_index(bundle: Path, ca: Path) -> bytes:
    from ferry.packaging.keyring import load_keyring
    from ferry.packaging.reader import BundleReader

    with open(bundle, "rb") as fh:
        reader = BundleReader(fh, load_keyring(ca))
        for _entry, _stream in reader.images():
            break
    assert reader.delta_index is not None
    return reader.delta_index


def gateway(d: Path, base: Path, ca: Path, name: str, *, record: bool,
            kept: bytes | None = None) -> Path:
    from ferry.daemon.boot.bootchooser import default_env
    from ferry.daemon.boot.bootloader import CANARY_VAR
    from ferry.daemon.boot.slotrecord import record_verified
    from ferry.daemon.boot.ubootenv import EnvStore
    from ferry.daemon.config import load_config

    gw = d / name
    if gw.exists():
        shutil.rmtree(gw)
    gw.mkdir()
    shutil.copyfile(base, gw / "slotA.img")
    with open(gw / "slotB.img", "wb") as f:
        f.truncate(base.stat().st_size)
    for env in ("env0", "env1"):
        (gw / env).write_bytes(b"\xff" * 0x4000)
    (gw / "fw_env.config").write_text("env0 0 0x4000\nenv1 0 0x4000\n")
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
device = "slotB.img"
[keyring]
path = "{ca}"
[install]
reboot_command = ["true"]
""")
    config = load_config(cfg)
    EnvStore.from_config(gw / "fw_env.config").initialize(
        {**default_env(config), CANARY_VAR: "1"})
    if record:  # slot A was written and verified by an earlier ferry install
        sha = hashlib.sha256(base.read_bytes()).hexdigest()
        record_verified(config, "rootfs.0", sha256=sha, size=base.stat().st_size,
                        version="1.0.0")
        if kept is not None:  # ... a delta install, which kept the slot's chunk index
            from ferry.daemon.install import deltacache

            deltacache.save(config, "rootfs.0", sha, kept)
    return cfg


def ferry_install(cfg: Path, url: str, d: Path) -> tuple[float, int]:
    tf = d / "time.out"
    cmd = ["/usr/bin/time", "-f", "%e %M", "-o", str(tf), sys.executable, "-m",
           "ferry.daemon.cli.main", "--config", str(cfg), "install", url]
    t0 = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    wall = time.monotonic() - t0
    if proc.returncode != 0:
        raise SystemExit(f"ferry install failed: {proc.stderr[-2000:]}")
    return wall, int(tf.read_text().split()[-1])


def slot_ok(cfg: Path, image: Path) -> bool:
    slot = cfg.parent / "slotB.img"
    n = image.stat().st_size
    with open(slot, "rb") as a, open(image, "rb") as b:
        return hashlib.sha256(a.read(n)).digest() == hashlib.sha256(b.read()).digest()


# -- main -------------------------------------------------------------------------------
def fmt(n: int) -> str:
    return f"{n / MiB:9.2f} MiB"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--chunks", default="4,8,16,32,64", help="average chunk sizes, KiB")
    ap.add_argument("--default-chunk", type=int, default=16)
    ap.add_argument("--keep", type=Path, help="work directory to keep (bundles reused)")
    args = ap.parse_args()
    sizes = [int(x) for x in args.chunks.split(",")]
    for tool, pkg in (("zck", "zchunk"), ("casync", "casync")):
        if shutil.which(tool) is None:
            subprocess.run(["apt-get", "install", "-y", "-q", pkg], check=True,
                           stdout=subprocess.DEVNULL)
    d = args.keep or Path(tempfile.mkdtemp(prefix="ferry-delta-", dir="/var/tmp"))
    d.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    v1, v2 = build_image(1), build_image(2)
    print(f"images: {v1.name}, {v2.name} ({fmt(v2.stat().st_size)} each; "
          f"built or cached in {time.monotonic() - t0:.0f} s)")
    ca = pki(d) / "ca.pem"

    full = ferry_bundle(d, v2, "full.swu", None)
    print(f"\n== security-update pair (v1 -> v2), {len(PACKAGES)} packages, "
          f"{sum(1 for p in PACKAGES.values() if p[0] != p[1])} at new versions")
    rauc = rauc_adaptive(v1, v2)
    zck = zchunk_bytes(d, v1, v2)
    cas = casync_bytes(d, v1, v2)
    full_size = full.stat().st_size
    rows: list[tuple[str, int, str]] = [
        ("full zstd bundle (today)", full_size, ""),
        ("zchunk (zck, default chunking)", zck, "zck_delta_size + header"),
        ("casync (make / extract --seed)", cas, "caibx + chunks served"),
        ("RAUC adaptive (4 KiB block-hash-index)", rauc, "missing blocks x 4 KiB"),
    ]
    ferry_rows: dict[int, tuple[int, int, str, int, Path]] = {}
    for kib in sizes:
        b = ferry_bundle(d, v2, f"delta-{kib}.swu", kib)
        got = planned_bytes(b, ca, v1)
        ferry_rows[kib] = (*got, b)
        rows.append((f"ferry --delta, {kib} KiB chunks (planned)", got[0],
                     f"{got[3]} chunks, {got[1]} requests, bundle {fmt(b.stat().st_size)}"))
    best_anchor = min(zck, cas, rauc, full_size)
    for label, n, note in rows:
        print(f"  {label:44s} {fmt(n)}  {note}")
    for kib, (n, *_rest) in ferry_rows.items():
        print(f"  ferry {kib:3d} KiB / best anchor: {n / best_anchor:.3f}")

    kib = args.default_chunk
    bundle = ferry_rows[kib][4]
    print(f"\n== install at an emulated 10 Mbit/s link, {kib} KiB chunks (ferry --config "
          "... install URL, whole process)")
    with FileServer(d / "www") as local:
        cfg = gateway(d, v1, ca, "gw-full", record=True)
        full_wall, full_rss = ferry_install(cfg, local.url("full.swu"), d)
        assert slot_ok(cfg, v2), "full install: slot B differs from v2"
    print(f"  full install, local (no throttle): {full_wall:6.2f} s, peak RSS "
          f"{full_rss / 1024:.1f} MiB")
    v1_delta = ferry_bundle(d, v1, f"same-{kib}.swu", kib)
    for how, kept in (("index kept by the last delta install", bundle_index(v1_delta, ca)),
                      ("index made at idle by ferryd after the boot (deltaindexer)", b""),
                      ("active slot read and cut", None)):
        with FileServer(d / "www", rate=LINK) as slow:
            cfg = gateway(d, v1, ca, "gw-delta", record=True, kept=kept or None)
            if kept == b"":  # what ferryd starts once it has resumed, before any install
                t0 = time.perf_counter()
                c0 = resource.getrusage(resource.RUSAGE_CHILDREN)
                subprocess.run([sys.executable, "-m", "ferry.daemon.install.deltaindexer",
                                "--config", str(cfg)], check=True, capture_output=True)
                c1 = resource.getrusage(resource.RUSAGE_CHILDREN)
                print(f"  the idle indexer on v1's slot: {time.perf_counter() - t0:.2f} s wall, "
                      f"{c1.ru_utime + c1.ru_stime - c0.ru_utime - c0.ru_stime:.2f} s CPU "
                      "(at SCHED_IDLE on a gateway: only while nothing else runs)")
            wall, rss = ferry_install(cfg, slow.url(bundle.name), d)
            sent, nreq = slow.sent, len(slow.requests)
            assert slot_ok(cfg, v2), "delta install: slot B differs from v2"
        limit = 1.1 * sent / LINK + full_wall
        print(f"  ferry delta install at 10 Mbit/s, {how}:")
        print(f"    {wall:6.2f} s, {fmt(sent)} served in {nreq} requests, peak RSS "
              f"{rss / 1024:.1f} MiB")
        print(f"    limit 1.1 x bytes/link + full local: {limit:6.2f} s  -> ratio "
              f"{wall / limit:.3f}")
        print(f"    bytes served / best anchor ({fmt(best_anchor).strip()}): "
              f"{sent / best_anchor:.3f}")
    print(f"  the full bundle at 10 Mbit/s would take {full_size / LINK:.0f} s")

    print("\n== worst case (64 MiB of random data over v1's size) and identical pair")
    worst = worst_image(d, v1)
    wb = ferry_bundle(d, worst, f"worst-{kib}.swu", kib)
    n, req, mode, _c = planned_bytes(wb, ca, v1)
    print(f"  worst: ferry plans {mode} ({req} request), {fmt(n)}; stored member "
          f"{fmt(wb.stat().st_size)}")
    ib = ferry_bundle(d, v1, f"same-{kib}.swu", kib)
    n, req, mode, _c = planned_bytes(ib, ca, v1)
    print(f"  identical: ferry plans {mode}, {req} requests, {fmt(n)} (head and index)")
    with FileServer(d / "www") as local:
        cfg = gateway(d, v1, ca, "gw-same", record=True)
        wall, rss = ferry_install(cfg, local.url(ib.name), d)
        print(f"  identical pair installed: {fmt(local.sent)} served in "
              f"{len(local.requests)} requests, {wall:.2f} s")
    if args.keep is None:
        shutil.rmtree(d, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
