"""Power on the gateway in a box: QEMU's arm64 ``virt`` board, U-Boot, the box's disk.

The board is the one of test-recipes §4.3 with the project's own U-Boot (redundant env
+ bootcount, built by .ci/deps/uboot.sh): the env sits in QEMU's second pflash bank,
written like a factory would by sim/uboot_qemu.py's ``QemuUBoot.provision`` (the same
helper ``ferry demo --real-uboot`` uses), and ferry's boot script from yocto-layer is
placed in memory by QEMU's loader device and sourced by ``bootcmd``. ``ferry_boot``, the
board's part of the script contract, loads /boot/Image and /boot/initrd.img from the
slot the script chose and ``booti``s them.

The product's MCU sits on the board's second UART (QEMU's virt board grows a second PL011
when ``-serial`` is given twice; the guest sees /dev/ttyAMA1): ferry's simulated SMP MCU
with MCUboot behind it (sim/mcu), on a host pty QEMU opens as a tty. It lives outside
QEMU, so it keeps its flash across the gateway's power-ons; a power cut reaches it
through ``power_cut`` (it shares the gateway's supply).

A machine directory holds a private copy of the disk and the flash, so runs never touch
the cached image. By hand (docs/box.md):

    python3 tests/system/box/machine.py DIR        # console on this terminal
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from ferry.sim.mcu import McuConfig, SimMcu
from ferry.sim.uboot_qemu import SCRIPT_ADDR, QemuUBoot, redundant_build

KERNEL_ADDR = "0x40400000"
RAMDISK_ADDR = "0x44000000"
# The kernel command line before the boot script appends rauc.slot=/ferry.slot=.
BOOTARGS = "console=ttyAMA0 systemd.firstboot=off panic=-1"
FERRY_BOOT = (
    "virtio scan; "
    "if test \"${ferry_slot}\" = A; then setenv ferry_part 1; else setenv ferry_part 2; fi; "
    "ext4load virtio 0:${ferry_part} ${kernel_addr_r} /boot/Image; "
    "ext4load virtio 0:${ferry_part} ${ramdisk_addr_r} /boot/initrd.img; "
    "setenv bootargs ${bootargs} root=/dev/vda${ferry_part} rw; "
    "booti ${kernel_addr_r} ${ramdisk_addr_r}:${filesize} ${fdtcontroladdr}"
)


# The update server as the guest sees it: QEMU's user network forwards this address
# (guestfwd) to a port on the host's loopback, and nothing else is reachable.
SERVER_IP = "10.0.2.100"
SERVER_PORT = 8080


def board_env(report: bool = False, install: str | None = None,
              backend: bool = False) -> dict[str, str]:
    """The board's default env: a saved env replaces U-Boot's compiled-in one entirely,
    so the load addresses are set here (test-recipes §4.3). ``install`` (a bundle's
    path on the update server) has ferry-box-report install it on a 1.0.0 gateway;
    ``backend`` has it wait for the deployment the backend (goosebit) assigned."""
    args = BOOTARGS + (" ferry_box.report" if report else "")
    if install:
        args += f" ferry_box.install=http://{SERVER_IP}:{SERVER_PORT}/{install}"
    if backend:
        args += " ferry_box.backend"
    return {
        "kernel_addr_r": KERNEL_ADDR, "ramdisk_addr_r": RAMDISK_ADDR,
        "fdt_high": "0xffffffff", "initrd_high": "0xffffffff",
        "BOOT_ORDER": "A B", "BOOT_A_LEFT": "3", "BOOT_B_LEFT": "3",
        "bootargs": args,
        "ferry_boot": FERRY_BOOT,
    }


@dataclass
class Machine:
    """One box: DIR/disk.img (a sparse copy of the image's), DIR/flash1.img, DIR/boot.scr."""

    dir: Path
    image: Path
    mcu: SimMcu | None = None  # the MCU on the second UART (attach_mcu)
    mcu_tty: str | None = None  # or a tty of one started elsewhere (``ferry sim mcu``)

    def __post_init__(self) -> None:
        self.uboot = redundant_build()
        if self.uboot is None:
            raise RuntimeError("the redundant-env U-Boot is missing: run 'bash .ci/setup' "
                               "(.ci/deps/uboot.sh builds it into /var/cache/ferry)")
        self.board = QemuUBoot(self.dir, self.uboot)
        self.disk = self.dir / "disk.img"

    def provision(self, report: bool = False, install: str | None = None,
                  backend: bool = False) -> None:
        """Factory state: both slots as built, an erased NOR with the board's env."""
        self.dir.mkdir(parents=True, exist_ok=True)
        subprocess.run(["cp", "--sparse=always", str(self.image / "disk.img"),
                        str(self.disk)], check=True)
        self.board.provision(board_env(report, install, backend))
        # fw_printenv on the host (libubootenv) reads the same copies as U-Boot
        (self.dir / "fw_env.config").write_text(self.board.fw_env_config())

    def attach_mcu(self) -> SimMcu:
        """The product's MCU, as it left the factory: the image's MCU_FACTORY running,
        confirmed, its bootloader checking the box's MCU key; at 115200 baud."""
        info = json.loads((self.image / "manifest.json").read_text())["mcu"]
        config = McuConfig(baud=115200,
                           public_key_pem=(self.image / info["public_key"]).read_bytes())
        self.mcu = SimMcu(config, running=(self.image / info["factory"]).read_bytes(),
                          link=self.dir / "mcu.tty").start()
        return self.mcu

    def power_cut(self) -> None:
        """What the MCU sees of the gateway's power cut (QEMU's SIGKILL is the rest)."""
        if self.mcu is not None:
            self.mcu.power_cycle()

    def close(self) -> None:
        if self.mcu is not None:
            self.mcu.stop()
            self.mcu = None

    def argv(self, server_port: int | None = None) -> list[str]:
        """QEMU's command line; with ``server_port``, a virtio NIC on QEMU's user network
        with ``restrict=on`` (no route out) and one forwarded address, SERVER_IP:
        SERVER_PORT, relayed by socat to that port on the host's loopback (a new relay
        per connection, so downloads can reconnect)."""
        # (-nic user,model=virtio-net-device is refused by virt: "requested NIC ... was
        # not created"; the virtio-mmio NIC needs -netdev + -device)
        net = ["-nic", "none"]
        if server_port is not None:
            net = ["-netdev", f"user,id=net0,restrict=on,guestfwd=tcp:{SERVER_IP}:"
                              f"{SERVER_PORT}-cmd:socat - TCP:127.0.0.1:{server_port}",
                   "-device", "virtio-net-device,netdev=net0"]
        # the console stays the first UART (ttyAMA0, stdio); the MCU's is the second
        tty = self.mcu.port if self.mcu is not None else self.mcu_tty
        serial = [] if tty is None else [
            "-serial", "mon:stdio", "-chardev", f"serial,id=mcu,path={tty}",
            "-serial", "chardev:mcu"]
        return [
            "qemu-system-aarch64", "-M", "virt", "-cpu", "cortex-a57", "-m", "1024",
            "-smp", "2", "-nographic", "-no-reboot", *net, *serial,
            "-bios", str(self.uboot),
            "-drive", f"if=pflash,format=raw,index=1,file={self.board.flash}",
            "-device", f"loader,file={self.board.script},addr={SCRIPT_ADDR:#x},force-raw=on",
            "-drive", f"if=none,id=disk,format=raw,file={self.disk}",
            "-device", "virtio-blk-device,drive=disk",
        ]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="start the gateway in a box (docs/box.md)")
    p.add_argument("dir", type=Path, help="machine directory (disk and flash copies)")
    p.add_argument("--image", type=Path, default=None,
                   help="image directory (default: build or find the current one)")
    p.add_argument("--keep", action="store_true",
                   help="boot DIR's disk and flash as they are (no factory reset)")
    p.add_argument("--report", action="store_true",
                   help="print ferry status on the console and power off (as the test)")
    p.add_argument("--server-port", type=int, default=None, metavar="PORT",
                   help=f"give the guest a NIC whose only reachable address, "
                        f"{SERVER_IP}:{SERVER_PORT}, is PORT on the host's loopback "
                        f"(an update server: docs/box.md)")
    p.add_argument("--mcu", metavar="TTY", default=None,
                   help="a simulated MCU's port for the board's second UART (the guest's "
                        "/dev/ttyAMA1), e.g. from 'ferry sim mcu --port TTY' (docs/box.md)")
    args = p.parse_args(argv)
    image = args.image
    if image is None:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        import build

        image = build.ensure()
    m = Machine(args.dir.resolve(), image, mcu_tty=args.mcu)
    if not (args.keep and m.disk.exists()):
        m.provision(report=args.report)
    print("box: " + " ".join(m.argv(args.server_port)), file=sys.stderr)
    if shutil.which("qemu-system-aarch64") is None:
        sys.exit("box: qemu-system-aarch64 missing: run 'bash .ci/setup'")
    os.execvp("qemu-system-aarch64", m.argv(args.server_port))


if __name__ == "__main__":
    sys.exit(main())
