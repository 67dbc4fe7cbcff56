"""The Debian part of the gateway in a box: arm64 tree, kernel, NOR modules, initramfs.

Slow and network-bound (mmdebstrap from Debian's archive, wheels from PyPI, ~70 s), so
it is cached on its own (``box-base-<key>``, keyed by this file, the package lists and
the initramfs /init) and survives any change to ferry's code; build.py explains the
whole route. No arm64 code runs here: these machines have no binfmt_misc.

- ``mmdebstrap --variant=extract`` unpacks packages.txt into the tree, and the headers
  and source of the tree's kernel into a scratch tree for the modules below.
- Debian's kernel lacks the NOR drivers for QEMU's pflash (no MTD_PHYSMAP, no MTD_CFI):
  physmap, cfi_probe, cfi_util, gen_probe and cfi_cmdset_0001 are built out of tree
  from Debian's linux-source against its linux-headers (MODVERSIONS match; the modules
  are unsigned, which this kernel allows and logs as a taint). cfi_cmdset_0001 is
  built to program word by word: QEMU's write-to-buffer emulation fails under it.
- Modules are pruned to virtio, ext4, MTD and what they depend on.
- virtio and ext4 are modules, so a busybox initramfs loads them and switch_roots.
- ferry's dependencies that bookworm has too old come as aarch64 wheels (wheels.txt).
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
CACHE = Path(os.environ.get("FERRY_BOX_CACHE", "/var/cache/ferry"))
MIRROR = "http://deb.debian.org/debian"
SUITE = "bookworm"
MERGED_USR_HOOK = "/usr/share/mmdebstrap/hooks/merged-usr/setup00.sh"
# Only needed to build the NOR modules: unpacked into a scratch tree of their own (they
# pull in gcc-12 for arm64 and the like, ~150 MB the image does not need).
def build_only(kver: str) -> list[str]:
    series = ".".join(kver.split("-")[0].split(".")[:2])  # 6.1.0-50-arm64 -> 6.1
    return [f"linux-headers-{kver}", f"linux-source-{series}"]
# Kernel modules kept in the image (globs under lib/modules/<kver>/kernel), plus their
# dependencies. Everything else (~290 MB) goes.
KEEP_MODULES = (
    "drivers/virtio/*", "drivers/block/virtio_blk.ko", "drivers/net/virtio_net.ko",
    "drivers/char/virtio_console.ko", "drivers/char/hw_random/virtio-rng.ko",
    "fs/ext4/*", "crypto/crc32c_generic.ko", "drivers/mtd/mtd.ko",
    "drivers/mtd/chips/chipreg.ko", "drivers/mtd/mtdblock.ko", "drivers/mtd/ofpart*",
    "drivers/mtd/parsers/ofpart.ko", "net/packet/af_packet.ko",
)
# The initramfs loads these (with dependencies, in order) before mounting root=.
INITRAMFS_MODULES = ("virtio_mmio", "virtio_blk", "crc32c_generic", "ext4")
# Out-of-tree NOR modules: (module, sources) from drivers/mtd/{chips,maps}.
MTD_SOURCES = {
    "chips": ("cfi_probe.c", "cfi_util.c", "cfi_cmdset_0001.c", "gen_probe.c", "fwh_lock.h"),
    "maps": ("physmap-core.c", "physmap-bt1-rom.h", "physmap-gemini.h", "physmap-ixp4xx.h",
             "physmap-versatile.h"),
}
MTD_KBUILD = """\
# Debian's kernel has MTD=m but neither MTD_CFI nor MTD_PHYSMAP; build them like Kconfig
# would with MTD_PHYSMAP=m, MTD_PHYSMAP_OF=y, MTD_CFI=m, MTD_CFI_INTELEXT=m.
ccflags-y += -DCONFIG_MTD_PHYSMAP_OF=1 -DCONFIG_MTD_CFI_UTIL=1
obj-m += cfi_probe.o cfi_util.o cfi_cmdset_0001.o gen_probe.o physmap.o
physmap-y := physmap-core.o
"""


def log(msg: str) -> None:
    print(f"box: {msg}", file=sys.stderr, flush=True)


def run(argv: Sequence[str | Path], **kw: object) -> subprocess.CompletedProcess[str]:
    """Run a build step; on failure its own output is the error, not a traceback."""
    cmd = [str(a) for a in argv]
    proc = subprocess.run(cmd, text=True, capture_output=True, **kw)  # type: ignore[call-overload]
    if proc.returncode != 0:
        sys.exit(f"box: {' '.join(cmd[:4])} ... failed ({proc.returncode}):\n"
                 f"{proc.stdout[-3000:]}{proc.stderr[-3000:]}")
    return proc


def tool(name: str) -> str:
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if path is None:
        sys.exit(f"box: {name} is missing; run 'bash .ci/setup' (.ci/deps/box.apt)")
    return path


def lines(path: Path) -> list[str]:
    out = []
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if line:
            out.append(line)
    return out



def digest(parts: Iterable[bytes]) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(len(p).to_bytes(8, "little"))
        h.update(p)
    return h.hexdigest()[:16]


def base_key() -> str:
    """The Debian tree depends on this file, the lists and the initramfs /init."""
    files = [HERE / "base.py", HERE / "packages.txt", HERE / "wheels.txt",
             HERE / "files/initramfs-init"]
    return digest([f.read_bytes() for f in files])


# --- stage 1: the Debian base -----------------------------------------------------------


def kernel_release(root: Path) -> str:
    found = sorted(p.name for p in (root / "lib/modules").iterdir())
    if len(found) != 1:
        sys.exit(f"box: expected one kernel in the tree, found {found}")
    return found[0]


def mmdebstrap(root: Path, pkgs: list[str]) -> None:
    log(f"mmdebstrap {len(pkgs)} packages (arm64, extract) into {root}")
    run([tool("mmdebstrap"), "--mode=root", "--variant=extract", "--architectures=arm64",
         f"--setup-hook={MERGED_USR_HOOK}", "--include=" + ",".join(pkgs), SUITE, root,
         MIRROR])


def build_mtd_modules(root: Path, kbuild: Path, kver: str, work: Path) -> list[Path]:
    """physmap + CFI for QEMU's pflash, built against the headers of the image's kernel
    (unpacked in ``kbuild``) and installed into ``root``'s lib/modules/<kver>/extra."""
    src_tar = next((kbuild / "usr/src").glob("linux-source-*.tar.xz"))
    run(["tar", "-xJf", src_tar, "-C", work, "--wildcards", "*/drivers/mtd/chips/*",
         "*/drivers/mtd/maps/*"])
    srcdir = next(work.glob("linux-source-*"))
    mod = work / "mtd"
    mod.mkdir()
    for sub, names in MTD_SOURCES.items():
        for n in names:
            shutil.copy(srcdir / "drivers/mtd" / sub / n, mod / n)
    # QEMU's pflash_cfi01 emulates write-to-buffer (0xE8) only roughly (it logs "Write
    # to buffer emulation is flawed" under -d unimp): on the virt board's two
    # interleaved x16 chips the kernel's buffered writes end in "0.flash: buffer write
    # error (status timeout)" and the writer hangs (seen on the box). The driver's own
    # compile-time switch for such chips makes it program word by word, as U-Boot's
    # CFI driver on this board does; what reaches the flash is the same bytes.
    cmdset = mod / "cfi_cmdset_0001.c"
    text = cmdset.read_text()
    if "#define FORCE_WORD_WRITE 0" not in text:
        raise SystemExit("box: cfi_cmdset_0001.c has no FORCE_WORD_WRITE switch to set")
    cmdset.write_text(text.replace("#define FORCE_WORD_WRITE 0", "#define FORCE_WORD_WRITE 1"))
    (mod / "Kbuild").write_text(MTD_KBUILD)
    hdr = kbuild / f"usr/src/linux-headers-{kver}"
    common = next((kbuild / "usr/src").glob("linux-headers-*-common"))
    # The headers point at Debian's absolute paths and at the arm64 kbuild tools; use
    # this tree's copies and the host's kbuild (linux-kbuild-6.1, amd64).
    mk = hdr / "Makefile"
    mk.write_text(mk.read_text().replace("include /usr/src/", f"include {kbuild}/usr/src/"))
    for d in (hdr, common):
        for name in ("scripts", "tools"):
            link = d / name
            if link.is_symlink() or link.exists():
                link.unlink()
            link.symlink_to(f"/usr/lib/linux-kbuild-{kver.split('.')[0]}."
                            f"{kver.split('.')[1].split('-')[0]}/{name}")
    run(["make", "-s", "-C", hdr, f"M={mod}", "ARCH=arm64",
         "CROSS_COMPILE=aarch64-linux-gnu-", "modules"])
    kos = sorted(mod.glob("*.ko"))
    dest = root / f"lib/modules/{kver}/extra"
    dest.mkdir(parents=True, exist_ok=True)
    for ko in kos:
        shutil.copy(ko, dest / ko.name)
    return kos


def modules_dep(root: Path, kver: str) -> dict[str, list[str]]:
    """modules.dep as {path: [dependency paths]} (paths relative to lib/modules/<kver>)."""
    run([tool("depmod"), "-b", root, kver])
    deps: dict[str, list[str]] = {}
    for line in (root / f"lib/modules/{kver}/modules.dep").read_text().splitlines():
        mod, _, rest = line.partition(":")
        deps[mod] = rest.split()
    return deps


def closure(wanted: Iterable[str], deps: dict[str, list[str]]) -> list[str]:
    """Modules with their dependencies, dependencies first, each once."""
    order: list[str] = []

    def visit(m: str) -> None:
        if m in order:
            return
        for d in deps.get(m, []):
            visit(d)
        order.append(m)

    for w in wanted:
        visit(w)
    return order


def by_name(deps: dict[str, list[str]], name: str) -> str:
    for variant in {name, name.replace("_", "-"), name.replace("-", "_")}:
        for m in deps:
            if Path(m).name == f"{variant}.ko":
                return m
    sys.exit(f"box: kernel module {name} not found")


def prune_modules(root: Path, kver: str, deps: dict[str, list[str]]) -> None:
    mods = root / f"lib/modules/{kver}"
    keep: list[str] = []
    for pattern in KEEP_MODULES:
        keep += [str(p.relative_to(mods)) for p in mods.glob(f"kernel/{pattern}")]
    keep += [m for m in deps if m.startswith("extra/")]
    kept = set(closure(keep, deps))
    for m in deps:
        if m not in kept:
            (mods / m).unlink()
    for d in sorted(mods.rglob("*"), reverse=True):
        if d.is_dir() and not any(d.iterdir()):
            d.rmdir()
    run([tool("depmod"), "-b", root, kver])


def initramfs(root: Path, kver: str, deps: dict[str, list[str]], out: Path,
              work: Path) -> None:
    """busybox + the modules to reach root= (test-recipes §2.2, §4.2)."""
    ir = work / "initramfs"
    for d in ("bin", "sbin", "proc", "sys", "dev", "newroot", "lib/modules"):
        (ir / d).mkdir(parents=True)
    shutil.copy(root / "usr/bin/busybox", ir / "bin/busybox")
    # busybox --list cannot run here (arm64): link the applets /init uses.
    for applet in ("sh", "mount", "umount", "insmod", "switch_root", "sleep", "cat",
                   "echo", "mkdir", "ls", "dmesg", "poweroff"):
        (ir / "bin" / applet).symlink_to("busybox")
    names = []
    for m in closure([by_name(deps, n) for n in INITRAMFS_MODULES], deps):
        shutil.copy(root / f"lib/modules/{kver}" / m, ir / "lib/modules" / Path(m).name)
        names.append(Path(m).name)
    (ir / "lib/modules/load.list").write_text("\n".join(names) + "\n")
    init = ir / "init"
    shutil.copy(HERE / "files/initramfs-init", init)
    init.chmod(0o755)
    cpio = subprocess.run("find . | cpio -o -H newc --quiet", shell=True, cwd=ir,
                          capture_output=True, check=True).stdout
    out.write_bytes(gzip.compress(cpio, compresslevel=6))


def install_wheels(root: Path, work: Path) -> None:
    wheels = work / "wheels"
    log("pip download " + " ".join(lines(HERE / "wheels.txt")))
    run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
         "--platform", "manylinux2014_aarch64", "--platform", "manylinux_2_17_aarch64",
         "--platform", "manylinux_2_28_aarch64", "--python-version", "3.11",
         "--implementation", "cp", "--abi", "cp311", "--abi", "abi3", "--abi", "none",
         "-d", wheels, *lines(HERE / "wheels.txt")])
    pip_target(root, sorted(wheels.glob("*.whl")))


def pip_target(root: Path, wheels: list[Path]) -> None:
    """Install wheels where Debian's python3 looks first: /usr/local/lib/python3.11."""
    run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-compile",
         "--upgrade", "--target", root / "usr/local/lib/python3.11/dist-packages",
         "--platform", "manylinux2014_aarch64", "--only-binary=:all:",
         "--python-version", "3.11", "--implementation", "cp", *wheels])


def slim(root: Path) -> None:
    for d in ("usr/share/doc", "usr/share/man", "usr/share/locale", "usr/share/info",
              "usr/src", "var/cache/apt", "var/lib/apt/lists"):
        shutil.rmtree(root / d, ignore_errors=True)
    # device trees: QEMU hands U-Boot and the kernel its own
    for p in (root / "usr/lib").glob("linux-image-*"):
        shutil.rmtree(p)
    (root / "usr/share/doc").mkdir()


def build_base(dest: Path) -> None:
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(dir=CACHE, prefix="box-base-tmp-") as tmp:
        work = Path(tmp)
        root = work / "root"
        mmdebstrap(root, lines(HERE / "packages.txt"))
        kver = kernel_release(root)
        kbuild = work / "kbuild"
        mmdebstrap(kbuild, build_only(kver))
        log(f"building physmap/CFI modules against linux-headers-{kver}")
        build_mtd_modules(root, kbuild, kver, work)
        deps = modules_dep(root, kver)
        out = work / "out"
        out.mkdir()
        initramfs(root, kver, deps, out / "initrd.img", work)
        prune_modules(root, kver, deps)
        install_wheels(root, work)
        slim(root)
        image = root / f"boot/vmlinuz-{kver}"
        if image.read_bytes()[:2] == b"\x1f\x8b":  # booti wants the raw Image
            image.write_bytes(gzip.decompress(image.read_bytes()))
        shutil.move(str(image), out / "Image")
        for p in (root / "boot").glob("*"):
            p.unlink()
        (out / "kernel-release").write_text(kver + "\n")
        root.rename(out / "root")
        out.rename(dest)
    log(f"base built in {time.monotonic() - t0:.0f} s: {dest}")


