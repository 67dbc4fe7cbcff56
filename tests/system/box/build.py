"""Build the gateway in a box: a Debian arm64 gateway image with ferry, for QEMU + U-Boot.

Why a box: every part of ferry is proven against a peer, but only a real image shows how
the units, sysusers, tmpfiles, the D-Bus policy, U-Boot's script and systemd meet
(issue #17). The route is the one proven in shared/reference/test-recipes.md §4: these
machines have no binfmt_misc and no KVM, so no arm64 code runs at build time.

- base.py: Debian's arm64 packages (packages.txt) unpacked with ``mmdebstrap
  --variant=extract``, the NOR modules Debian's kernel lacks, the initramfs, and the
  aarch64 wheels of ferry's dependencies that bookworm has too old (wheels.txt).
- here: what the packages' maintainer scripts would have done (passwd, sysusers, PAM,
  hwdb, /bin/sh and awk links, /var/run, unit enablement), ferry as a wheel of the
  checkout, ferry's files where meta-ferry's recipes (ferry.inc, ferry-conf.bb) put
  them, and the disk.
- The disk is GPT: 1 = rootfs A, 2 = rootfs B (each with /boot/Image and
  /boot/initrd.img), 3 = data (/var/lib/ferry), filled with ``mkfs.ext4 -d`` (no mount).

Two cache levels under /var/cache/ferry, so a change to ferry's code costs seconds and not
a new download: ``box-base-<key>`` (base.py) and ``box-<key>`` (the disk, the boot
script, the dev PKI; keyed by the base key, this file, files/ and the content of ferry's
source tree). Stdlib only, plus the checkout's ``ferry bundle dev-pki`` and pip.

    python3 tests/system/box/build.py          # prints the image directory
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import base
from base import CACHE, HERE, ROOT, digest, log, run, tool

# ferry's source as the Yocto recipe builds it (the whole tree: ferry/ holds the
# symlinks and the package's __init__), plus the layer whose files the box installs.
SOURCE_PATHS = ("ferry", "daemon", "proxy", "packaging", "sim", "systemd", "yocto-layer",
                "pyproject.toml", "README.md", "LICENSE")
SLOT_SIZE = 512 * 1024 * 1024
DATA_SIZE = 64 * 1024 * 1024
MIB = 1024 * 1024
VERSION = "1.0.0"
# The update the box installs (issue #17, scenario 1): the same tree with this version,
# as a signed bundle next to the disk. Slot B's kernel is its own copy, loaded from B.
UPDATE_VERSION = "2.0.0"
UPDATE_BUNDLE = f"update-{UPDATE_VERSION}.swu"
# Scenario 2: the image's application (box-app.service, in [health] required_units)
# fails. Scenario 3: the kernel never reaches userspace (an initramfs that is not one:
# no root file system, the kernel panics and, with panic=-1, resets).
HEALTH_FAIL_BUNDLE = "update-3.0.0-app-fails.swu"
PANIC_BUNDLE = "update-4.0.0-kernel-panics.swu"
BOX_APP = "#!/bin/sh\n# the product's application: [health] required_units names it\nexit {}\n"
# The product's own health check ([health] checks): the application must still be up
# after a few seconds, as a product's self-test that talks to its app would take. It
# also gives the health window a width a power cut can land in (issue #17, scenario 4).
BOX_APP_SELFTEST = ("#!/bin/sh\n# the product's self-test: [health] checks runs it\n"
                    "sleep 2\nexec systemctl is-active --quiet box-app.service\n")
COMPATIBLE = "qemu-box"
# The MCU behind the gateway (issue #17): ferry's simulated SMP/MCUboot MCU on the
# board's second UART (/dev/ttyAMA1 in the guest, a host pty outside). Its images are
# signed by imgtool (the peer: MCUboot's own tool) with the box's MCU key; the MCU runs
# MCU_FACTORY from the factory, and each update bundle carries the MCU image of its own
# version for target MCU_TARGET.
MCU_TARGET = "mcu0"
MCU_PORT = "/dev/ttyAMA1"
MCU_KEY = "mcu-key.pem"  # imgtool keygen (ecdsa-p256): signs the images
MCU_PUBLIC_KEY = "mcu-key.pub.pem"  # what the MCU's bootloader verifies against
MCU_FACTORY = "mcu-1.0.0.bin"
MCU_SLOT_SIZE = 0x40000  # sim/mcu's McuConfig default: 256 KiB per slot
MCU_APP_SIZE = 48 * 1024  # ~6 s over SMP at 115200 baud


def mcu_image(version: str) -> str:
    return f"mcu-{version}.bin"
# The box as a controller of goosebit (scenario 1 with a backend), with its own token:
# a test device's credential, not a secret.
CONTROLLER_ID = "ferry-box"
TARGET_TOKEN = "ferry-box-test-token"
LAYER = ROOT / "yocto-layer/meta-ferry"
ENV_DEVICE = "/dev/mtd0"


# --- cache keys ------------------------------------------------------------------------


def source_files() -> list[Path]:
    """ferry's files as git sees them in the working tree (tracked + untracked, not ignored).

    The working tree, not HEAD: the image must run the code under test, and the wheel is
    built from these very files.
    """
    out = run(["git", "-C", ROOT, "ls-files", "-z", "--cached", "--others",
               "--exclude-standard", "--", *SOURCE_PATHS]).stdout
    return sorted({ROOT / p for p in out.split("\0") if p and (ROOT / p).is_file()})


def image_key(base_key: str, files: list[Path]) -> str:
    parts = [base_key.encode(), (HERE / "build.py").read_bytes()]
    for f in files:
        parts += [str(f.relative_to(ROOT)).encode(), f.read_bytes()]
    for f in sorted(HERE.glob("files/**/*")):
        if f.is_file():
            parts += [str(f.relative_to(HERE)).encode(), f.read_bytes()]
    return digest(parts)


# --- stage 2: ferry and the disk --------------------------------------------------------


def build_ferry_wheel(files: list[Path], work: Path) -> Path:
    """A wheel of exactly the hashed files (a copy, so the shared checkout gets no build/)."""
    src = work / "src"
    for f in files:
        dst = src / f.relative_to(ROOT)
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(f, dst)
    for link in (ROOT / "ferry").iterdir():  # the ferry/<room> symlinks
        if link.is_symlink():
            (src / "ferry" / link.name).symlink_to(os.readlink(link))
    run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
         "-w", work / "dist", src])
    return next((work / "dist").glob("ferry_ota-*.whl"))


def substitute(text: str, values: dict[str, str]) -> str:
    for k, v in values.items():
        text = text.replace(f"@{k}@", v)
    if "@FERRY_" in text:
        sys.exit("box: a meta-ferry template has a placeholder the box does not set")
    return text


def install_ferry(root: Path, wheel: Path, keyring: Path) -> None:
    """ferry's files where meta-ferry puts them (ferry.inc do_install, ferry-conf.bb)."""
    base.pip_target(root, [wheel])
    for name, func in (("ferry", "ferry.daemon.cli.main:run"),
                       ("ferryd", "ferry.daemon.service.ferryd:main")):
        mod, attr = func.split(":")
        script = root / "usr/bin" / name
        script.write_text(f"#!/usr/bin/python3\nimport sys\nfrom {mod} import {attr}\n"
                          f"sys.exit({attr}())\n")
        script.chmod(0o755)
    units = root / "usr/lib/systemd/system"
    for unit in ("ferryd.service", "ferry-health.service", "ferry-mark-good.service"):
        shutil.copy(ROOT / "systemd" / unit, units / unit)
    policy = root / "usr/share/dbus-1/system.d"
    policy.mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "systemd/org.ferry.Ferry1.conf", policy / "org.ferry.Ferry1.conf")
    activation = root / "usr/share/dbus-1/system-services"
    activation.mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "systemd/org.ferry.Ferry1.service",
                activation / "org.ferry.Ferry1.service")
    shutil.copy(ROOT / "systemd/ferry.tmpfiles", root / "usr/lib/tmpfiles.d/ferry.conf")
    shutil.copy(ROOT / "systemd/ferry.sysusers", root / "usr/lib/sysusers.d/ferry.conf")
    conf = LAYER / "recipes-core/ferry/files"
    etc = root / "etc/ferry"
    etc.mkdir(parents=True, exist_ok=True)
    (etc / "ferry.toml").write_text(substitute((conf / "ferry.toml").read_text(), {
        "FERRY_COMPATIBLE": COMPATIBLE, "FERRY_BOOT_SCHEME": "bootchooser",
        "FERRY_ENV_FLAGS": "boolean", "FERRY_SLOT_A_DEVICE": "/dev/vda1",
        "FERRY_SLOT_B_DEVICE": "/dev/vda2"}) + (
        "\n# the box's product part (docs/box.md): its application must be running\n"
        "[health]\nrequired_units = [\"box-app.service\"]\n"
        "checks = [[\"/usr/bin/box-app-selftest\"]]\n"
        "\n# goosebit on the host, as the guest reaches it (machine.py: SERVER_IP)\n"
        f"[backend]\nurl = \"http://10.0.2.100:8080\"\ntenant = \"DEFAULT\"\n"
        f"controller_id = \"{CONTROLLER_ID}\"\ntarget_token = \"{TARGET_TOKEN}\"\n"
        "\n# the product's MCU on the board's second UART (SMP over MCUboot)\n"
        f"[[target]]\nname = \"{MCU_TARGET}\"\ntransport = \"smp-serial\"\n"
        f"address = \"{MCU_PORT}\"\nbaud = 115200\n"))
    (etc / "ferry.toml").chmod(0o640)
    (root / "usr/bin/box-app").write_text(BOX_APP.format(0))
    (root / "usr/bin/box-app").chmod(0o755)
    (root / "usr/bin/box-app-selftest").write_text(BOX_APP_SELFTEST)
    (root / "usr/bin/box-app-selftest").chmod(0o755)
    (root / "usr/lib/systemd/system/box-app.service").write_text(
        "[Unit]\nDescription=the product's application in the box\n\n[Service]\n"
        "Type=oneshot\nRemainAfterExit=yes\nExecStart=/usr/bin/box-app\n\n"
        "[Install]\nWantedBy=multi-user.target\n")
    shutil.copy(keyring, etc / "keyring.pem")
    (etc / "keyring.pem").chmod(0o644)
    # QEMU's two pflash banks are one NOR node in the device tree (cfi-flash, 2 x 64 MiB);
    # physmap concatenates them into /dev/mtd0, so U-Boot's env (bank 1, offset 0 and
    # 0x40000: CONFIG_ENV_ADDR(_REDUND)) is at 64 MiB and 64 MiB + 256 KiB, one 256 KiB
    # erase block each. Named as libubootenv wants it (issue #17).
    (root / "etc/fw_env.config").write_text(substitute((conf / "fw_env.config").read_text(), {
        "FERRY_ENV_DEVICE": ENV_DEVICE, "FERRY_ENV_OFFSET": "0x4000000",
        "FERRY_ENV_OFFSET_REDUND": "0x4040000", "FERRY_ENV_SIZE": "0x40000",
        "FERRY_ENV_SECTOR": "0x40000"}))
    # ferry-conf.bb's do_install: FERRY_GATEWAY_VERSION into the version_file
    (etc / "version").write_text(VERSION + "\n")


def _pam(kind: str, unix: str, additional: str = "") -> str:
    return (f"{kind}\t{unix}\n{kind}\trequisite\t\t\tpam_deny.so\n"
            f"{kind}\trequired\t\t\tpam_permit.so\n{additional}")


# What pam-auth-update writes into /etc/pam.d/common-* with only the "unix" profile
# (/usr/share/pam-configs/unix): the templates in /usr/share/pam still hold its
# $auth_primary-style markers, and a login through them is always refused.
PAM_COMMON = {
    "common-auth": _pam("auth", "[success=1 default=ignore]\tpam_unix.so nullok"),
    "common-account": _pam(
        "account", "[success=1 new_authtok_reqd=done default=ignore]\tpam_unix.so"),
    "common-password": _pam(
        "password", "[success=1 default=ignore]\tpam_unix.so obscure yescrypt"),
    "common-session": _pam("session", "[default=1]\t\t\tpam_permit.so",
                           "session\trequired\tpam_unix.so\n"),
    "common-session-noninteractive": _pam("session", "[default=1]\t\t\tpam_permit.so",
                                          "session\trequired\tpam_unix.so\n"),
}


def passwd_and_groups(root: Path) -> None:
    """What base-passwd's, passwd's and systemd's maintainer scripts would have done."""
    # the groups udev's postinst adds (its rules name them)
    (root / "usr/lib/sysusers.d/box-udev.conf").write_text(
        "".join(f"g {g} -\n" for g in ("input", "kvm", "render", "sgx")))
    # issue #17, scenario 5: a field technician in group ferry, and a user who is not
    (root / "usr/lib/sysusers.d/box-people.conf").write_text(
        'u tech - "field technician" /home/tech /bin/sh\nm tech ferry\n'
        'u guest - "another local user" /home/guest /bin/sh\n')
    share = root / "usr/share/base-passwd"
    shutil.copy(share / "passwd.master", root / "etc/passwd")
    shutil.copy(share / "group.master", root / "etc/group")
    run([tool("systemd-sysusers"), f"--root={root}"])
    # pwconv/grpconv (base-passwd's postinst runs "shadowconfig on"): the password
    # field becomes "x", the hash moves to shadow; a "*" left in passwd locks the login
    for name in ("passwd", "group"):
        f = root / "etc" / name
        rows = [ln.split(":") for ln in f.read_text().splitlines() if ln]
        f.write_text("".join(":".join([r[0], "x", *r[2:]]) + "\n" for r in rows))
    users = [ln.split(":")[0] for ln in (root / "etc/passwd").read_text().splitlines()]
    groups = [ln.split(":")[0] for ln in (root / "etc/group").read_text().splitlines()]
    # Empty root password: the console login of a development box (docs/box.md).
    shadow = "".join(f"{u}:{'' if u == 'root' else '*'}:20000:0:99999:7:::\n" for u in users)
    (root / "etc/shadow").write_text(shadow)
    (root / "etc/shadow").chmod(0o640)
    (root / "etc/gshadow").write_text("".join(f"{g}:*::\n" for g in groups))
    (root / "etc/gshadow").chmod(0o640)
    for name in ("shadow", "gshadow"):
        os.chown(root / "etc" / name, 0, group_id(root, "shadow"))
    for name, text in PAM_COMMON.items():
        (root / "etc/pam.d" / name).write_text(text)


def group_id(root: Path, name: str) -> int:
    for line in (root / "etc/group").read_text().splitlines():
        parts = line.split(":")
        if parts[0] == name:
            return int(parts[2])
    sys.exit(f"box: group {name} missing in the image")


def system_files(root: Path) -> None:
    (root / "etc/machine-id").write_text("")  # empty, not "uninitialized": no first boot
    (root / "etc/hostname").write_text("ferry-box\n")
    (root / "etc/hosts").write_text("127.0.0.1 localhost\n127.0.1.1 ferry-box\n")
    (root / "etc/locale.conf").write_text("LANG=C.UTF-8\n")
    (root / "etc/fstab").write_text(
        "# / is mounted rw by the initramfs from root= (the slot U-Boot chose)\n"
        "PARTLABEL=data /var/lib/ferry ext4 defaults 0 2\n")
    (root / "var/lib/ferry").mkdir(parents=True, exist_ok=True)
    # DHCP from QEMU's user network (the update server is its one forwarded address)
    (root / "etc/systemd/network").mkdir(parents=True, exist_ok=True)
    (root / "etc/systemd/network/20-box.network").write_text(
        "[Match]\nType=ether\n\n[Network]\nDHCP=ipv4\n")
    box = HERE / "files"
    for unit in ("ferry-box-early.service", "ferry-box-report.service",
                 "ferry-box-follow.service"):
        shutil.copy(box / unit, root / "usr/lib/systemd/system" / unit)
    shutil.copy(box / "ferry-box-report", root / "usr/bin/ferry-box-report")
    (root / "usr/bin/ferry-box-report").chmod(0o755)
    # base-files' postinst: /var/run and /var/lock point into /run (dbus-next connects to
    # /var/run/dbus/system_bus_socket; tmpfiles' "L /var/run" skips an existing directory)
    for link, target in (("var/run", "../run"), ("var/lock", "../run/lock")):
        if (root / link).is_dir() and not (root / link).is_symlink():
            shutil.rmtree(root / link)
            (root / link).symlink_to(target)
    # Links that maintainer scripts (update-alternatives, dash's postinst) would make
    for link, target in (("usr/bin/sh", "dash"), ("usr/bin/awk", "mawk")):
        if not (root / link).exists():
            (root / link).symlink_to(target)
    run([tool("systemd-hwdb"), "update", f"--root={root}"])
    for f in ("etc/.updated", "var/.updated"):
        (root / f).touch()
    run([tool("systemctl"), f"--root={root}", "set-default", "multi-user.target"])
    run([tool("systemctl"), f"--root={root}", "enable", "ferryd.service",
         "ferry-health.service", "ferry-mark-good.service", "ferry-box-early.service",
         "ferry-box-report.service", "ferry-box-follow.service", "systemd-networkd.service",
         "box-app.service"])
    # systemd-networkd's [Install] Also= enables wait-online, which fails on the boots
    # without a NIC, and a failed unit fails ferry's health check (docs/box.md)
    run([tool("systemctl"), f"--root={root}", "disable", "systemd-networkd-wait-online.service"])


def compile_python(root: Path) -> None:
    """Byte-compile with the host's python3.11 (Debian's, the guest's version): a TCG
    guest would otherwise compile every module on each start, and user ferry cannot
    write __pycache__ at all."""
    py = shutil.which("python3.11", path="/usr/bin")
    if py is None:
        return
    dirs = [root / "usr/lib/python3.11", root / "usr/lib/python3/dist-packages",
            root / "usr/local/lib/python3.11/dist-packages"]
    subprocess.run([py, "-m", "compileall", "-q", "-j", "2", "-s", str(root), "-p", "/",
                    *map(str, dirs)], capture_output=True)


def mkfs(tree: Path, image: Path, size: int, label: str) -> None:
    with open(image, "wb") as f:
        f.truncate(size)
    run([tool("mkfs.ext4"), "-q", "-F", "-L", label, "-d", tree, image])


def make_disk(out: Path, slot: Path, data: Path) -> None:
    """GPT: 1 = rootfs A, 2 = rootfs B, 3 = data; addressed by number or PARTLABEL."""
    disk = out / "disk.img"
    start = MIB  # 1 MiB aligned, after the GPT
    parts = [("rootfs-A", slot, SLOT_SIZE), ("rootfs-B", slot, SLOT_SIZE),
             ("data", data, DATA_SIZE)]
    total = start + sum(p[2] for p in parts) + MIB
    with open(disk, "wb") as f:
        f.truncate(total)
    script = "label: gpt\n"
    offset = start
    for name, _, size in parts:
        script += f"start={offset // 512}, size={size // 512}, name={name}, type=linux\n"
        offset += size
    run([tool("sfdisk"), "-q", disk], input=script)
    offset = start
    for _, img, size in parts:
        run(["dd", f"if={img}", f"of={disk}", "bs=1M", f"seek={offset // MIB}",
             "conv=notrunc,sparse", "status=none"])
        offset += size


def build_image(base: Path, dest: Path, files: list[Path]) -> None:
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(dir=CACHE, prefix="box-tmp-") as tmp:
        work = Path(tmp)
        root = work / "root"
        log("copying the base tree")
        run(["cp", "-a", base / "root", root])
        out = work / "out"
        out.mkdir()
        pki = out / "pki"
        run([ferry_cli(), "bundle", "dev-pki", pki])
        wheel = build_ferry_wheel(files, work)
        install_ferry(root, wheel, pki / "ca.pem")
        passwd_and_groups(root)
        ferry_gid = group_id(root, "ferry")
        os.chown(root / "etc/ferry/ferry.toml", 0, ferry_gid)
        system_files(root)
        compile_python(root)
        boot = root / "boot"
        shutil.copy(base / "Image", boot / "Image")
        shutil.copy(base / "initrd.img", boot / "initrd.img")
        slot = work / "slot.ext4"
        mkfs(root, slot, SLOT_SIZE, "rootfs")
        mcu_images(out, ("1.0.0", UPDATE_VERSION, "3.0.0", "4.0.0"))
        make_bundle(root, work, pki, UPDATE_VERSION, out / UPDATE_BUNDLE, out)
        (root / "usr/bin/box-app").write_text(BOX_APP.format(1))
        make_bundle(root, work, pki, "3.0.0", out / HEALTH_FAIL_BUNDLE, out)
        (root / "usr/bin/box-app").write_text(BOX_APP.format(0))
        (root / "boot/initrd.img").write_bytes(b"\0" * 4096)
        make_bundle(root, work, pki, "4.0.0", out / PANIC_BUNDLE, out)
        datatree = work / "data"
        datatree.mkdir(mode=0o750)
        os.chown(datatree, 0, ferry_gid)
        data = work / "data.ext4"
        mkfs(datatree, data, DATA_SIZE, "data")
        make_disk(out, slot, data)
        run([tool("mkimage"), "-A", "arm64", "-T", "script", "-C", "none", "-n",
             "ferry bootchooser", "-d",
             LAYER / "recipes-bsp/u-boot/files/boot-bootchooser.cmd", out / "boot.scr"])
        (out / "manifest.json").write_text(json.dumps({
            "version": VERSION, "compatible": COMPATIBLE, "update": UPDATE_BUNDLE,
            "health_fail": HEALTH_FAIL_BUNDLE, "panic": PANIC_BUNDLE,
            "mcu": {"target": MCU_TARGET, "port": MCU_PORT, "factory": MCU_FACTORY,
                    "public_key": MCU_PUBLIC_KEY},
            "kernel": (base / "kernel-release").read_text().strip(),
            "env_device": ENV_DEVICE, "base": base.name, "built": time.time(),
        }, indent=1) + "\n")
        out.rename(dest)
    log(f"image built in {time.monotonic() - t0:.0f} s: {dest}")


def make_bundle(root: Path, work: Path, pki: Path, version: str, dest: Path,
                out: Path) -> None:
    """The tree as it is now, as version ``version``, in a signed bundle with the MCU's
    image of the same version."""
    (root / "etc/ferry/version").write_text(version + "\n")
    image = work / "update.ext4"
    mkfs(root, image, SLOT_SIZE, "rootfs")
    run([ferry_cli(), "bundle", "create", "--key", pki / "signer.key", "--cert",
         pki / "signer.pem", "--version", version, "--compatible", COMPATIBLE,
         "--rootfs", image, "--target",
         f"smp-serial:{MCU_TARGET}={out / mcu_image(version)}", "-o", dest])
    image.unlink()


def mcu_images(out: Path, versions: Sequence[str]) -> None:
    """MCUboot images of the MCU's application, one per version, signed by imgtool."""
    imgtool = venv_tool("imgtool")
    run([imgtool, "keygen", "-k", out / MCU_KEY, "-t", "ecdsa-p256"])
    run([imgtool, "getpub", "-k", out / MCU_KEY, "-e", "pem", "-o", out / MCU_PUBLIC_KEY])
    for version in versions:
        app = out / f"mcu-app-{version}.bin"
        app.write_bytes(os.urandom(MCU_APP_SIZE))
        run([imgtool, "sign", "-k", out / MCU_KEY, "--align", "4", "-H", "0x200",
             "--pad-header", "-S", hex(MCU_SLOT_SIZE), "-v", version, app,
             out / mcu_image(version)])
        app.unlink()


def venv_tool(name: str) -> str:
    """The checkout's venv's tool (imgtool, ferry: .ci/setup installs them there)."""
    venv = ROOT / ".venv/bin" / name
    return str(venv) if venv.exists() else tool(name)


def ferry_cli() -> str:
    return venv_tool("ferry")


def ensure(force: bool = False) -> Path:
    """The cached image directory for the current checkout, built if missing."""
    if os.geteuid() != 0:
        sys.exit("box: building the image needs root (mmdebstrap --mode=root, file owners)")
    CACHE.mkdir(parents=True, exist_ok=True)
    bkey = base.base_key()
    tree = CACHE / f"box-base-{bkey}"
    if force and tree.exists():
        shutil.rmtree(tree)
    if not tree.exists():
        base.build_base(tree)
    files = source_files()
    dest = CACHE / f"box-{image_key(bkey, files)}"
    if force and dest.exists():
        shutil.rmtree(dest)
    if not dest.exists():
        build_image(tree, dest, files)
        prune(keep={tree, dest})
    return dest


def prune(keep: set[Path]) -> None:
    """Old images and bases go: each image is ~250 MB on disk, a base ~200 MB. The newest
    other image stays, for a second checkout that is one commit behind."""
    images = sorted((p for p in CACHE.glob("box-*") if p.is_dir() and p not in keep
                     and not p.name.startswith(("box-base-tmp", "box-tmp"))),
                    key=lambda p: p.stat().st_mtime, reverse=True)
    spare = [p for p in images if not p.name.startswith("box-base-")][:1]
    for p in images:
        if p not in spare and (p.name.startswith("box-base-") or len(p.name) == 20):
            shutil.rmtree(p, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--force", action="store_true", help="rebuild even when cached")
    args = p.parse_args(argv)
    print(ensure(force=args.force))
    return 0


if __name__ == "__main__":
    sys.exit(main())
