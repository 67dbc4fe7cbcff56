"""Install throughput against the limit measured in the same run (test-recipes.md §3).

For each image size, in interleaved rounds:

- limit:    ``curl -o SLOT URL`` from a local ``python -m http.server``, then ``sync SLOT``
            (as in §3.2), and ``curl URL 1<>SLOT`` + ``sync SLOT``: in place, without the
            truncation of ``-o``, the semantics ferry and a block device have
- hash:     ``openssl dgst -sha256 IMAGE``
- swupdate: Debian's SWUpdate installing the same raw image over HTTP (``-d -u URL``),
            streamed (``installed-directly = true``), signed as in §3.3; timed at its exit
            and with ``sync SLOT`` after it, because SWUpdate 2022.12 makes no fsync,
            fdatasync or sync call at all (strace): at its exit the image may still be
            only in the page cache, while the limit and ferry count the flush
- ferry:    ``ferry install URL`` of a bundle with the raw image, and with it zstd-compressed
- ferryd:   the same bundles through a running ferryd on a private dbus-daemon: the timed
            process is the ``ferry install URL`` client (no ``--config``), which hands the
            install to ferryd over D-Bus and follows Progress until Completed, as on a
            gateway. ferryd runs on its own gateway directory (the ``--config`` rows
            delete theirs between installs) and is started once per size, with one untimed
            warm-up install; before each install the bench ends the previous deployment in
            the journal (as the reboot and its rollback would), outside the timed region

It prints MiB/s (image bytes / wall time), the per-round ratios ferry/limit and
ferry/SWUpdate (medians), and each tool's peak RSS (``/usr/bin/time`` max RSS of the
process, i.e. the largest single process; for the ferryd rows ferryd's own VmHWM from
/proc/PID/status, the client's is not counted). Every tool is a whole process start to
exit, so the standalone ferry rows include its Python start-up (~0.2-0.3 s) and the
ferryd rows the client's (~0.2 s: start-up, dbus-next, waiting for Completed); with
``-d`` SWUpdate has no 1 s sleep at exit (that is ``-i``, §3.4).

    .venv/bin/python bench/install.py            # 256 MiB and 2 GiB, 3 rounds
    .venv/bin/python bench/install.py --quick    # 64 MiB and 256 MiB, 1 round
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
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MiB = 1 << 20
ENV_SIZE = 0x4000
SWU = "swupdate raw over HTTP (at its exit)"
SWU_SYNCED = "swupdate raw over HTTP + sync"


@dataclass
class Sample:
    label: str
    size: int
    wall: float
    rss_kb: int

    @property
    def mibs(self) -> float:
        return self.size / MiB / self.wall if self.wall > 0 else float("inf")


def timed(cmd: list[str], tmp: Path, env: dict[str, str] | None = None) -> tuple[float, int]:
    tf = tmp / "time.out"
    full = ["/usr/bin/time", "-f", "%e %M", "-o", str(tf), *cmd]
    t0 = time.monotonic()
    proc = subprocess.run(full, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    wall = time.monotonic() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n"
                         f"{proc.stderr.decode(errors='replace')[-2000:]}")
    _e, rss = tf.read_text().split()[-2:]
    return wall, int(rss)


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


def ferry_gateway(d: Path, slot: Path, ca: Path, name: str = "gw") -> Path:
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
[install]
reboot_command = ["true"]
""")
    config = load_config(cfg)
    EnvStore.from_config(gw / "fw_env.config").initialize(
        {**default_env(config), CANARY_VAR: "1"})
    return cfg


def swupdate_bundle(d: Path, image: Path, slot: Path) -> tuple[Path, Path]:
    """A signed .swu as in test-recipes §3.3 (EC P-256 cert with EKU emailProtection)."""
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
    out = d / "www" / f"swupdate-{image.stat().st_size}.swu"
    if out.exists():
        return out, crt
    digest = subprocess.run(["openssl", "dgst", "-sha256", "-r", str(image)], check=True,
                            capture_output=True, text=True).stdout.split()[0]
    work = sd / "pack"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    (work / "sw-description").write_text(f"""software =
{{
    version = "2.0.0";
    hardware-compatibility = ["1.0"];
    images: (
        {{
            filename = "rootfs.img";
            device = "{slot}";
            type = "raw";
            sha256 = "{digest}";
            installed-directly = true;
        }}
    );
}}
""")
    subprocess.run(["openssl", "cms", "-sign", "-in", "sw-description", "-out",
                    "sw-description.sig", "-signer", str(crt), "-inkey", str(key),
                    "-outform", "DER", "-nosmimecap", "-binary"], cwd=work, check=True)
    os.link(image, work / "rootfs.img")
    with open(out, "wb") as f:
        subprocess.run(["cpio", "-o", "-H", "crc", "--quiet"], cwd=work, check=True,
                       input=b"sw-description\nsw-description.sig\nrootfs.img\n", stdout=f)
    shutil.rmtree(work)
    return out, crt


class Ferryd:
    """A private dbus-daemon for one size, and a long-running ferryd on it."""

    def __init__(self, d: Path, cfg: Path) -> None:
        self.d, self.cfg = d, cfg
        dbus_daemon = shutil.which("dbus-daemon")
        if dbus_daemon is None:
            raise SystemExit("dbus-daemon is missing; run 'bash .ci/setup'")
        busdir = Path(tempfile.mkdtemp(prefix="ferry-bench-bus-"))
        self.busdir = busdir
        conf = busdir / "bus.conf"
        from ferry.sim.dbusbus import private_bus_config

        conf.write_text(private_bus_config(busdir))
        self.bus = subprocess.Popen([dbus_daemon, "--config-file", str(conf), "--nofork",
                                     "--print-address"], stdout=subprocess.PIPE, text=True)
        assert self.bus.stdout is not None
        self.address = self.bus.stdout.readline().strip()
        if not self.address.startswith("unix:"):
            self.close()
            raise SystemExit(f"dbus-daemon gave no address ({self.address!r})")
        self.proc: subprocess.Popen[bytes] | None = None
        self.env = dict(os.environ, FERRY_BUS_ADDRESS=self.address)

    def start(self) -> None:
        log = open(self.d / "ferryd.log", "ab")  # noqa: SIM115 - the child holds it
        self.proc = subprocess.Popen([str(ROOT / ".venv" / "bin" / "ferryd"), "--config",
                                      str(self.cfg), "--bus", self.address],
                                     stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"ferryd exited with {self.proc.returncode}; see "
                                 f"{self.d / 'ferryd.log'}")
            out = subprocess.run(["dbus-send", f"--bus={self.address}", "--print-reply",
                                  "--dest=org.freedesktop.DBus", "/org/freedesktop/DBus",
                                  "org.freedesktop.DBus.NameHasOwner",
                                  "string:org.ferry.Ferry1"], capture_output=True, text=True)
            if "boolean true" in out.stdout:
                return
            time.sleep(0.1)
        raise SystemExit("ferryd never took org.ferry.Ferry1")

    def peak_rss_kb(self) -> int:
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
        return 0

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self.proc = None

    def close(self) -> None:
        self.stop()
        self.bus.terminate()
        self.bus.wait(10)
        shutil.rmtree(self.busdir, ignore_errors=True)


def run_size(d: Path, size: int, rounds: int, tools: dict[str, str]) -> list[list[Sample]]:
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
    cfg = ferry_gateway(d, slot, ca)
    swu, swu_crt = swupdate_bundle(d, rnd, slot) if tools.get("swupdate") else (None, None)
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
    ferry = str(ROOT / ".venv" / "bin" / "ferry")
    ferryd = Ferryd(d, ferry_gateway(d, slot, ca, name="gwd"))
    try:
        ferryd.start()

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

        # untimed warm-up: the lazy imports of the install path happen once per process
        reset_ferryd()  # the previous size's last deployment shares this journal
        warm = subprocess.run([ferry, "install", f"{base}/{raw_b.name}"], env=ferryd.env,
                              capture_output=True, text=True)
        if warm.returncode != 0:
            raise SystemExit(f"ferry install through ferryd failed:\n{warm.stderr[-2000:]}")
        for r in range(rounds):
            samples: list[Sample] = []

            def measure(label: str, cmd: list[str], env: dict[str, str] | None = None,
                        then_sync: bool = False, unsynced_label: str | None = None,
                        samples: list[Sample] = samples) -> None:
                scrub(slot, size)  # so the cmp after each tool proves that tool wrote it
                subprocess.run(["sync"], check=True)
                wall, rss = timed(cmd, d, env)
                if unsynced_label is not None:  # the same run, timed at the tool's exit
                    samples.append(Sample(unsynced_label, size, wall, rss))
                if then_sync:
                    t0 = time.monotonic()
                    subprocess.run(["sync", str(slot)], check=True)
                    wall += time.monotonic() - t0
                samples.append(Sample(label, size, wall, rss))

            def reset_ferry() -> None:
                shutil.rmtree(d / "gw" / "data", ignore_errors=True)
                with open(slot, "ab") as f:  # capacity for ferry: the slot's size
                    f.truncate(size)

            measure("limit: curl -o slot + sync", ["curl", "-s", "-o", str(slot),
                                                   f"{base}/{rnd.name}"], then_sync=True)
            # the same semantics as ferry and a block device: overwrite in place (curl -o
            # truncates, so ext4 frees and allocates every block again)
            measure("limit: curl 1<>slot (in place) + sync",
                    ["bash", "-c", f'curl -s "{base}/{rnd.name}" 1<>"{slot}"'],
                    then_sync=True)
            measure("openssl dgst -sha256", ["openssl", "dgst", "-sha256", str(rnd)])
            if swu is not None:
                tmpdir = d / "swutmp"
                tmpdir.mkdir(exist_ok=True)
                env = dict(os.environ, TMPDIR=str(tmpdir))
                # SWUpdate 2022.12 calls no fsync/fdatasync/sync at all (strace), so at its
                # exit the image may still be in the page cache: timed both at exit and
                # with `sync SLOT`, as the limit is; ferry fsyncs the slot before it ends
                measure(SWU_SYNCED, [tools["swupdate"], "-H", "gw:1.0", "-k",
                                     str(swu_crt), "-d", f"-u {base}/{swu.name}"], env=env,
                        then_sync=True, unsynced_label=SWU)
                if not cmp_slot(slot, rnd):
                    raise SystemExit("swupdate did not write the image into the slot")
            reset_ferry()
            measure("ferry raw over HTTP", [ferry, "--config", str(cfg), "install",
                                            f"{base}/{raw_b.name}"])
            if not cmp_slot(slot, rnd):
                raise SystemExit("ferry did not write the image into the slot")
            samples.append(Sample("ferry raw, pipeline only (journal)", size,
                                  pipeline_seconds(d / "gw" / "data"), samples[-1].rss_kb))
            reset_ferry()
            measure("ferry zstd over HTTP", [ferry, "--config", str(cfg), "install",
                                             f"{base}/{zst_b.name}"])
            if not cmp_slot(slot, comp):
                raise SystemExit("ferry (zstd) did not write the image into the slot")
            for kind, bundle, image in (("raw", raw_b, rnd), ("zstd", zst_b, comp)):
                reset_ferryd()
                measure(f"ferryd {kind} over HTTP (D-Bus)",
                        [ferry, "install", f"{base}/{bundle.name}"], env=ferryd.env)
                samples[-1].rss_kb = ferryd.peak_rss_kb()
                if not cmp_slot(slot, image):
                    raise SystemExit(f"ferryd ({kind}) did not write the image into the slot")
                samples.append(Sample(f"ferryd {kind}, pipeline only (journal)", size,
                                      pipeline_seconds(d / "gwd" / "data"),
                                      samples[-1].rss_kb))
            all_rounds.append(samples)
            print(f"  round {r + 1}/{rounds}: " + ", ".join(
                f"{s.label.split(':')[0]} {s.mibs:.0f}" for s in samples), flush=True)
    finally:
        ferryd.close()
        server.terminate()
        server.wait()
    return all_rounds


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


def report(size: int, rounds: list[list[Sample]]) -> None:
    labels = [s.label for s in rounds[0]]
    print(f"\n{size // MiB} MiB image, {len(rounds)} round(s), medians:")
    print(f"  {'what':40} {'wall s':>7} {'MiB/s':>7} {'peak RSS MiB':>13}")
    by = {lab: [next(s for s in r if s.label == lab) for r in rounds] for lab in labels}
    for lab in labels:
        ss = by[lab]
        wall = statistics.median(s.wall for s in ss)
        mibs = statistics.median(s.mibs for s in ss)
        rss = max(s.rss_kb for s in ss) / 1024
        print(f"  {lab:40} {wall:7.2f} {mibs:7.0f} {rss:13.1f}")

    def ratio(a: str, b: str) -> str:
        if a not in by or b not in by:
            return "n/a"
        rs = [x.mibs / y.mibs for x, y in zip(by[a], by[b], strict=True)]
        return f"{statistics.median(rs):.2f} [{min(rs):.2f}-{max(rs):.2f}]"

    for lim in ("limit: curl 1<>slot (in place) + sync", "limit: curl -o slot + sync"):
        print(f"  against {lim.removeprefix('limit: ')}:")
        print(f"    ratio ferry raw / limit:      {ratio('ferry raw over HTTP', lim)}")
        print(f"    ratio ferry pipeline / limit: "
              f"{ratio('ferry raw, pipeline only (journal)', lim)}")
        print(f"    ratio ferry zstd / limit:     {ratio('ferry zstd over HTTP', lim)}")
        for kind in ("raw", "zstd"):
            print(f"    ratio ferryd {kind:4} / limit:     "
                  f"{ratio(f'ferryd {kind} over HTTP (D-Bus)', lim)}")
            print(f"    ratio ferryd {kind:4} pipeline / limit: "
                  f"{ratio(f'ferryd {kind}, pipeline only (journal)', lim)}")
    for swu, what in ((SWU_SYNCED, "swupdate + sync"), (SWU, "swupdate at exit")):
        print(f"  against {what} (faster than it: > 1):")
        print(f"    ratio ferry raw / swupdate:   {ratio('ferry raw over HTTP', swu)}")
        print(f"    ratio ferryd raw / swupdate:  {ratio('ferryd raw over HTTP (D-Bus)', swu)}")
        print(f"    ratio ferryd zstd / swupdate: {ratio('ferryd zstd over HTTP (D-Bus)', swu)}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="64 MiB and 256 MiB, one round")
    ap.add_argument("--sizes", help="comma-separated sizes in MiB (default 256,2048)")
    ap.add_argument("--rounds", type=int, help="interleaved rounds (default 3, quick 1)")
    ap.add_argument("--dir", help="work directory (default a temp dir under /var/tmp)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    args = ap.parse_args()
    sizes = [int(s) * MiB for s in (args.sizes or ("64,256" if args.quick else "256,2048")
                                    ).split(",")]
    rounds = args.rounds or (1 if args.quick else 3)
    for tool in ("curl", "openssl", "cpio", "/usr/bin/time", "sync", "cmp", "dbus-daemon",
                 "dbus-send"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is missing; run 'bash .ci/setup'")
    tools = {"swupdate": shutil.which("swupdate") or ""}
    if not tools["swupdate"]:
        print("swupdate is missing (apt install swupdate): its rows are left out")
    d = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="ferry-bench-",
                                                               dir="/var/tmp"))
    d.mkdir(parents=True, exist_ok=True)
    need = sum(s * 4 for s in sizes)
    if shutil.disk_usage(d).free < need:
        raise SystemExit(f"{d} needs {need // MiB} MiB free")
    print(f"bench/install.py: sizes {[s // MiB for s in sizes]} MiB, {rounds} round(s), "
          f"work dir {d}, load {os.getloadavg()[0]:.1f}")
    try:
        results = []
        for size in sizes:
            print(f"{size // MiB} MiB:", flush=True)
            results.append((size, run_size(d, size, rounds, tools)))
        for size, rs in results:
            report(size, rs)
    finally:
        if not args.keep:
            shutil.rmtree(d, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
