"""USB DFU on a real Linux USB stack: one QEMU (TCG) guest boot runs everything.

Two simulated devices are served over usbredir to QEMU's usb-redir on a guest xHCI:
A, a DFU 1.1 device with a run-time mode (1209:5a01 -> 1209:df11), and B, an STM32-style
DfuSe ROM bootloader (0483:df11). The guest (Debian's kernel, busybox initramfs, the
host root read-only over 9p, udevd for re-enumeration) runs, in this order:

1. Debian's unmodified dfu-util -l (list);
2. ferry's ``flash dfu`` command in one Python process (the guest pays Python's start-up
   over 9p once): on A run-time -> DFU_DETACH + USB reset -> download, where A stalls
   block 5 once (the kernel's EPIPE must come back as a clear error and leave A idle);
   the retry downloads, verifies by UPLOAD and resets (pyusb -> libusb -> usbfs -> xHCI);
   then on B a DfuSe file ferry wrote (erase, program, verify, leave);
3. dfu-util uploads A (detaching it again) and the guest compares with ferry's image;
4. dfu-util downloads another image to A, uploads it, compares;
5. dfu-util downloads a dfuse-pack file to B (DfuSe, other pages than ferry's), uploads
   a range, compares.
The host then checks the devices' memories. See test-recipes.md §2.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ferry.proxy.dfu.files import DfuseTarget, Element, write_dfuse
from ferry.sim.dfu.device import Faults, SimDfuDevice, Timing
from ferry.sim.dfu.harness import dfuse_spec, plain_spec
from ferry.sim.dfu.usbredir import UsbredirServer

pytestmark = pytest.mark.system

ROOT = Path(__file__).resolve().parents[2]
KROOT = Path(os.environ.get("FERRY_DFU_CACHE", "/var/cache/ferry-dfu")) / "kroot"
MODULES = ["usb-common", "usbcore", "xhci-hcd", "xhci-pci", "netfs", "fscache", "9pnet",
           "virtio_ring", "virtio", "virtio_pci_modern_dev", "virtio_pci_legacy_dev",
           "virtio_pci", "9pnet_virtio", "9p"]

INIT = """#!/bin/sh
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in $(cat /lib/modules/load.list); do insmod /lib/modules/$m; done
mkdir -p /host
mount -t 9p -o trans=virtio,version=9p2000.L,ro,cache=loose hostroot /host
mount -t tmpfs tmpfs /host/run
mount -t tmpfs tmpfs /host/mnt
mkdir -p /host/mnt/work
mount -t 9p -o trans=virtio,version=9p2000.L hostwork /host/mnt/work
mount -o bind /proc /host/proc
mount -o bind /sys /host/sys
mount -o bind /dev /host/dev
sh /test.sh
echo DFUTEST end
poweroff -f
"""

TEST_SH = """
W=/host/mnt/work
log() { echo "DFUTEST $* @$(cut -d' ' -f1 /proc/uptime)"; }
n=0
for i in $(seq 1 600); do
  n=$(cat /sys/bus/usb/devices/*/idVendor 2>/dev/null | grep -c -e 1209 -e 0483)
  [ "$n" -ge 2 ] && break
  sleep 0.1
done
log devices $n
chroot /host /lib/systemd/systemd-udevd --daemon
chroot /host udevadm settle -t 10
run() { name=$1; shift; chroot /host "$@" > $W/$name.out 2>&1; log "$name rc=$?"; }
same() { if cmp $W/$2 $W/$3 > /dev/null; then log "$1 same"; else log "$1 differ"; fi; }
run list dfu-util -l
run ferry @PYTHON@ /mnt/work/ferry_guest.py
run up1 dfu-util -d 1209:5a01,1209:df11 -S 0001 -a 0 --detach-delay 1 -U /mnt/work/up1.bin
same cmp1 fw1.bin up1.bin
run down2 dfu-util -d 1209:df11 -S 0001 -a 0 -D /mnt/work/fw2.bin
run up2 dfu-util -d 1209:df11 -S 0001 -a 0 -U /mnt/work/up2.bin
same cmp2 fw2.bin up2.bin
run dfuse_down dfu-util -d 0483:df11 -S DFUSE0001 -a 0 -D /mnt/work/packed.dfu
run dfuse_up dfu-util -d 0483:df11 -S DFUSE0001 -a 0 -s 0x08000000:@A3SIZE@ -U /mnt/work/up3.bin
same cmp3 a3.bin up3.bin
"""


# ``ferry flash dfu`` twice in one interpreter; only the flash command's parser is built,
# so the guest does not import every other command's dependencies over 9p.
GUEST_SCRIPT = """
import argparse, sys
from ferry.daemon.cli import flash_dfu
parser = argparse.ArgumentParser(prog="ferry flash")
flash_dfu.register(parser.add_subparsers())
for name, argv in (("stalled", ["dfu", "1209:5a01,0001", "/mnt/work/fw1.bin"]),
                   ("retry", ["dfu", "1209:5a01,0001", "/mnt/work/fw1.bin"]),
                   ("dfuse", ["dfu", "0483:df11,DFUSE0001", "/mnt/work/fw4.dfu"])):
    args = parser.parse_args(argv)
    code = args.func(args)
    print(f"FERRY {name} rc={code}", file=sys.stderr, flush=True)
"""


def need(path: str | None, what: str) -> str:
    if not path or not os.path.exists(path):
        pytest.fail(f"{what} is missing; run 'bash .ci/setup' (.ci/deps/dfu.apt, dfu.sh)")
    return path


def build_initrd(tmp: Path, python: str, a3_size: int) -> Path:
    kver = (KROOT / ".ready").read_text().strip()
    moddir = KROOT / "lib" / "modules" / kver
    deps: dict[str, list[str]] = {}
    for line in (moddir / "modules.dep").read_text().splitlines():
        mod, _, rest = line.partition(":")
        deps[Path(mod).name.split(".ko")[0].replace("-", "_")] = [mod, *rest.split()]
    order: list[str] = []

    def add(relpath: str) -> None:
        name = Path(relpath).name.split(".ko")[0].replace("-", "_")
        for dep in deps[name][1:]:
            add(dep)
        if relpath not in order:
            order.append(relpath)

    for mod in MODULES:
        add(deps[mod.replace("-", "_")][0])
    root = tmp / "initrd"
    for sub in ("bin", "sbin", "proc", "sys", "dev", "tmp", "mnt", "lib/modules", "etc", "run"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    shutil.copy2("/bin/busybox", root / "bin" / "busybox")
    applets = subprocess.run(["/bin/busybox", "--list"], capture_output=True, text=True,
                             check=True).stdout.split()
    for applet in applets:
        if applet != "busybox" and not (root / "bin" / applet).exists():
            (root / "bin" / applet).symlink_to("busybox")
    for relpath in order:
        shutil.copy2(moddir / relpath, root / "lib" / "modules" / Path(relpath).name)
    (root / "lib" / "modules" / "load.list").write_text(
        "\n".join(Path(p).name for p in order) + "\n")
    (root / "init").write_text(INIT)
    (root / "init").chmod(0o755)
    script = TEST_SH.replace("@PYTHON@", python).replace("@A3SIZE@", str(a3_size))
    (root / "test.sh").write_text(script)
    out = tmp / "initrd.cpio.gz"
    with out.open("wb") as fh:
        find = subprocess.Popen(["find", "."], cwd=root, stdout=subprocess.PIPE)
        cpio = subprocess.Popen(["cpio", "-o", "-H", "newc", "--quiet"], cwd=root,
                                stdin=find.stdout, stdout=subprocess.PIPE)
        subprocess.run(["gzip", "-1"], stdin=cpio.stdout, stdout=fh, check=True)
        assert cpio.wait() == 0 and find.wait() == 0
    return out


def markers(console: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in console.splitlines():
        if "DFUTEST " in line:
            words = [w for w in line.split("DFUTEST ", 1)[1].split() if not w.startswith("@")]
            if len(words) == 2:
                out[words[0]] = words[1]
            elif words:
                out[words[0]] = ""
    return out


def test_dfu_util_and_ferry_in_a_qemu_guest(tmp_path):
    qemu = need(shutil.which("qemu-system-x86_64"), "qemu-system-x86_64")
    need(shutil.which("dfu-util"), "dfu-util")
    dfuse_pack = need(shutil.which("dfuse-pack"), "dfuse-pack (dfu-util)")
    need("/bin/busybox", "busybox-static")
    need(str(KROOT / ".ready"), f"the guest kernel in {KROOT}")
    kernel = next((KROOT / "boot").glob("vmlinuz-*"))
    # The guest runs ferry with the same interpreter (venv) as this test, reached over 9p.
    # The guest hides the host's /run and /mnt (tmpfs for udevd, the work share).
    python = sys.executable
    if any(p.startswith(("/run/", "/mnt/")) for p in (python, str(ROOT))):
        pytest.fail("the checkout or venv lives under /run or /mnt, which the guest mounts over")

    work = tmp_path / "work"
    work.mkdir()
    fw1, fw2 = os.urandom(24 * 1024 + 100), os.urandom(20 * 1024)
    a3, b3 = os.urandom(12 * 1024), os.urandom(3000)  # pages 0x08000000, 0x08010000
    (work / "fw1.bin").write_bytes(fw1)
    (work / "fw2.bin").write_bytes(fw2)
    (work / "a3.bin").write_bytes(a3)
    (work / "b3.bin").write_bytes(b3)
    subprocess.run([dfuse_pack, "-b", "0x08000000:a3.bin", "-b", "0x08010000@0:b3.bin",
                    "-D", "0x0483:0xdf11", "packed.dfu"], cwd=work, check=True,
                   capture_output=True, timeout=60)
    a4, b4 = os.urandom(17 * 1024), os.urandom(512)  # pages 0x08008000.., 0x08020000
    (work / "fw4.dfu").write_bytes(write_dfuse(
        [DfuseTarget(0, "Internal Flash", (Element(0x08008000, a4), Element(0x08020000, b4)))],
        0x0483, 0xDF11))
    (work / "ferry_guest.py").write_text(GUEST_SCRIPT)
    initrd = build_initrd(tmp_path, python, len(a3))

    timing = Timing(program_ms_per_block=2, erase_ms_per_page=5, manifest_ms=10)
    dev_a = SimDfuDevice(plain_spec(), timing=timing, faults=Faults(stall_at_block=5))
    dev_b = SimDfuDevice(dfuse_spec(), timing=timing)
    servers = [UsbredirServer(dev_a).start(), UsbredirServer(dev_b).start()]
    console = tmp_path / "console.log"
    argv = ["timeout", "-k", "10", "280", qemu, "-accel", "tcg", "-m", "1024", "-smp", "1",
            "-nographic", "-no-reboot", "-kernel", str(kernel), "-initrd", str(initrd),
            "-append", "console=ttyS0 quiet panic=-1",
            "-virtfs", "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,"
                       "multidevs=remap",
            "-virtfs", f"local,path={work},mount_tag=hostwork,security_model=none,"
                       "multidevs=remap",
            "-device", "qemu-xhci,id=xhci"]
    for n, server in enumerate(servers):
        argv += ["-chardev", f"socket,id=ur{n},host=127.0.0.1,port={server.port}",
                 "-device", f"usb-redir,chardev=ur{n},bus=xhci.0"]
    start = time.monotonic()
    try:
        with console.open("wb") as log:
            proc = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=log,
                                  stderr=subprocess.STDOUT, timeout=320)
    finally:
        for server in servers:
            server.stop()
    elapsed = time.monotonic() - start
    text = console.read_text(errors="replace")
    outputs = {p.stem: p.read_text(errors="replace") for p in work.glob("*.out")}
    context = (f"qemu rc={proc.returncode} after {elapsed:.0f} s\n--- console tail\n"
               + text[-3000:] + "\n--- outputs\n"
               + "\n".join(f"[{k}]\n{v[-1500:]}" for k, v in sorted(outputs.items()))
               + f"\n--- device A log {dev_a.log[-12:]}\n--- usbredir A {servers[0].trace[-8:]}")
    got = markers(text)
    assert "end" in got, context
    assert got.get("devices") == "2", context

    # 1. dfu-util lists both devices as the kernel enumerated them
    assert got.get("list") == "rc=0", context
    assert "Found Runtime: [1209:5a01]" in outputs["list"], context
    assert "Found DFU: [0483:df11]" in outputs["list"], context
    assert 'name="@Internal Flash  /0x08000000/04*016Kg,01*064Kg,01*128Kg"' in outputs["list"]

    # 2. ferry over pyusb -> libusb -> usbfs: detach, download, verify, reset; DfuSe
    assert got.get("ferry") == "rc=0", context
    assert "FAILED: device stalled DNLOAD block 5" in outputs["ferry"], context
    assert "FERRY stalled rc=1" in outputs["ferry"], context
    assert "FERRY retry rc=0" in outputs["ferry"], context
    assert "FERRY dfuse rc=0" in outputs["ferry"], context
    assert outputs["ferry"].count("verified by upload") == 2, context
    assert "fault: stall at block 5" in dev_a.log, context
    assert "reset mode=runtime state=APP_DETACH" in dev_a.log, context
    assert dev_b.regions[0].read(0x08008000, len(a4)) == a4
    assert dev_b.regions[0].read(0x08020000, len(b4)) == b4

    # 3. dfu-util reads back what ferry wrote (after detaching the device again)
    assert got.get("up1") == "rc=0" and got.get("cmp1") == "same", context

    # 4. dfu-util download, upload, compare
    assert got.get("down2") == "rc=0" and got.get("up2") == "rc=0", context
    assert got.get("cmp2") == "same", context
    assert dev_a.firmware() == fw2

    # 5. dfu-util DfuSe download of a dfuse-pack file, upload of a range
    assert got.get("dfuse_down") == "rc=0" and got.get("dfuse_up") == "rc=0", context
    assert got.get("cmp3") == "same", context
    assert dev_b.regions[0].read(0x08000000, len(a3)) == a3
    assert dev_b.regions[0].read(0x08010000, len(b3)) == b3
