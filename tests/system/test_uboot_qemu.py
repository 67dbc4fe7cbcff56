"""A real U-Boot reads and writes what ferry does.

Debian's u-boot-qemu (qemu_arm64) runs under qemu-system-aarch64 (QEMU 10 from
bookworm-backports; Debian 12's 7.2 corrupts saveenv on pflash). The env lives in the
second pflash bank, a plain file the host (ferry) writes between boots. ferry's boot
scripts (yocto-layer/meta-ferry/recipes-bsp/u-boot/files/boot-*.cmd) are compiled with
mkimage and placed at ${scriptaddr} by QEMU's generic loader; bootcmd sources them, the
way a board's bootcmd sources boot.scr. The "kernel" is the env variable ferry_boot: it
prints the bootargs the script built (the test writes them to the cmdline file ferry
reads) and powers off.

Two U-Boot builds: Debian's (single-copy env, no bootcount) and one rebuilt from
Debian's source package with CONFIG_SYS_REDUNDAND_ENVIRONMENT + BOOTCOUNT_ENV by
.ci/deps/uboot.sh (cached under /var/cache/ferry).
"""

from __future__ import annotations

import contextlib
import os
import queue
import random
import re
import shutil
import signal
import subprocess
import threading
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from ferry.daemon.boot import bootchooser, bootcount
from ferry.daemon.boot.bootloader import CANARY_VAR, CanaryError, EnvBootloader, make_bootloader
from ferry.daemon.boot.ubootenv import NoValidEnvError, _Sink, select_copy
from ferry.daemon.config import load_config
from ferry.sim import bootsim

pytestmark = pytest.mark.system

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = ROOT / "yocto-layer/meta-ferry/recipes-bsp/u-boot/files"
DEBIAN_UBOOT = Path("/usr/lib/u-boot/qemu_arm64/u-boot.bin")
ENV_SIZE = 0x40000
FLASH_SIZE = 64 * 1024 * 1024
SCRIPT_ADDR = 0x40200000
BOOT_TIMEOUT = 90  # seconds; a boot takes ~0.4 s, a loaded CI machine much more


CROSS_CHECKED = ("BOOT_ORDER", "BOOT_A_LEFT", "BOOT_B_LEFT", "ferry_boot_part",
                 "upgrade_available", "bootcount", "ferry_failed_part", CANARY_VAR)


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed; run 'bash .ci/setup' (.ci/deps/uboot.*)")
    return path


def redundant_uboot() -> Path:
    ver = subprocess.run(["dpkg-query", "-W", "-f=${Version}", "u-boot-qemu"],
                         capture_output=True, text=True).stdout.strip()
    cache = Path(os.environ.get("FERRY_UBOOT_CACHE", "/var/cache/ferry"))
    path = cache / f"u-boot-{ver}-redund" / "u-boot.bin"
    if not path.is_file():
        pytest.fail(f"{path} missing: the redundant-env U-Boot is built by "
                    "'bash .ci/setup' (.ci/deps/uboot.sh)")
    return path


@dataclass
class Boot:
    console: str
    killed: bool = False

    @property
    def slot(self) -> str | None:
        m = re.search(r"FERRY: boot slot=(\S+)", self.console)
        return m.group(1) if m else None

    @property
    def cmdline(self) -> str | None:
        m = re.search(r"FERRY_KERNEL (.*)", self.console)
        return m.group(1).strip() if m else None

    @property
    def default_env(self) -> bool:
        return "bad CRC, using default environment" in self.console


@dataclass
class Board:
    """One emulated board: flash file, U-Boot build, ferry config pointing at it."""

    dir: Path
    uboot: Path
    scheme: str
    redundant: bool
    flags: str = "boolean"
    attempts: int = 2
    boots: list[Boot] = field(default_factory=list)

    def __post_init__(self) -> None:
        tool("qemu-system-aarch64")
        self.flash = self.dir / "flash1.img"
        with open(self.flash, "wb") as f:
            f.write(b"\xff" * FLASH_SIZE)  # erased NOR; QEMU wants the exact bank size
        lines = f"flash1.img 0x0 {ENV_SIZE:#x} {ENV_SIZE:#x}\n"
        if self.redundant:
            lines += f"flash1.img {ENV_SIZE:#x} {ENV_SIZE:#x} {ENV_SIZE:#x}\n"
        (self.dir / "fw_env.config").write_text(lines)
        (self.dir / "cmdline").write_text("console=ttyAMA0\n")
        (self.dir / "ferry.toml").write_text(f"""
[gateway]
compatible = "qemu-arm64"
version = "1.0"
data_dir = "data"
[bootloader]
scheme = "{self.scheme}"
fw_env_config = "fw_env.config"
flags = "{self.flags}"
attempts = {self.attempts}
cmdline = "cmdline"
lock_file = "lock"
[[slot]]
name = "rootfs.0"
bootname = "A"
device = "/dev/vda2"
[[slot]]
name = "rootfs.1"
bootname = "B"
device = "/dev/vda3"
""")
        self.config = load_config(self.dir / "ferry.toml")
        self.script = self.dir / "boot.scr"
        subprocess.run(
            [tool("mkimage"), "-A", "arm64", "-T", "script", "-C", "none",
             "-d", str(SCRIPTS / f"boot-{self.scheme}.cmd"), str(self.script)],
            check=True, capture_output=True, timeout=60,
        )

    def bootloader(self) -> EnvBootloader:
        return make_bootloader(self.config, warn=False)

    def provision(self) -> None:
        """The board's default env plus the scheme's variables, as a factory would."""
        mod = bootchooser if self.scheme == "bootchooser" else bootcount
        env = {
            "bootdelay": "0",
            "bootcmd": f"source {SCRIPT_ADDR:#x}",
            "ferry_boot": "echo FERRY_KERNEL ${bootargs}; poweroff",
            **mod.default_env(self.config),
        }
        if self.scheme == "bootcount":
            env["altbootcmd"] = "run bootcmd"
        self.bootloader().store.initialize(env)

    def _start(self) -> tuple[subprocess.Popen[bytes], queue.Queue[str | None]]:
        argv = [
            tool("qemu-system-aarch64"), "-M", "virt", "-cpu", "cortex-a57", "-m", "128",
            "-nographic", "-no-reboot", "-nic", "none", "-bios", str(self.uboot),
            "-drive", f"if=pflash,format=raw,index=1,file={self.flash}",
            "-device", f"loader,file={self.script},addr={SCRIPT_ADDR:#x},force-raw=on",
        ]
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT)
        lines: queue.Queue[str | None] = queue.Queue()

        def pump() -> None:
            # raw chunks, not lines: "Writing to Flash... done" is one line, and a cut
            # must land between its two halves
            assert proc.stdout is not None
            fd = proc.stdout.fileno()
            while chunk := os.read(fd, 4096):
                lines.put(chunk.decode("utf-8", "replace").replace("\r", ""))
            lines.put(None)

        threading.Thread(target=pump, daemon=True).start()
        return proc, lines

    def boot(self, *, kill_at: str | None = None, kill_after: int = 1,
             delay: float = 0.0) -> Boot:
        """Boot once. With ``kill_at``, SIGKILL QEMU (a power cut) ``delay`` seconds after
        the ``kill_after``-th console line containing that text."""
        proc, lines = self._start()
        text = ""
        killed = False
        try:
            while True:
                try:
                    chunk = lines.get(timeout=BOOT_TIMEOUT)
                except queue.Empty:
                    pytest.fail("U-Boot did not finish in time:\n" + text[-3000:])
                if chunk is None:
                    break
                text += chunk
                if "Failed (1)" in text:
                    pytest.fail("this QEMU corrupts saveenv on pflash (QEMU 7.2 bug); "
                                "install qemu-system-arm from bookworm-backports")
                if not killed and "bad CRC, using default environment" in text:
                    # the default env would sit at the prompt: that is the failure shown
                    proc.kill()
                    killed = True
                if kill_at is not None and not killed and text.count(kill_at) >= kill_after:
                    if delay:
                        threading.Event().wait(delay)
                    proc.send_signal(signal.SIGKILL)
                    killed = True
        finally:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait(timeout=30)
        boot = Boot(text, killed)
        if boot.cmdline is not None:
            (self.dir / "cmdline").write_text(boot.cmdline + "\n")
        self.boots.append(boot)
        return boot

    def predict(self) -> tuple[str | None, dict[str, str]]:
        """What ferry.sim.bootsim says this boot will do, on a copy of the env."""
        img = self.dir / "sim-env.img"
        with open(self.flash, "rb") as f:
            img.write_bytes(f.read(2 * ENV_SIZE))
        cfg = self.dir / "sim-fw_env.config"
        cfg.write_text(f"sim-env.img 0x0 {ENV_SIZE:#x}\n"
                       + (f"sim-env.img {ENV_SIZE:#x} {ENV_SIZE:#x}\n" if self.redundant else ""))
        # both builds keep the env in NOR flash (env/flash.c): boolean flags, whatever
        # ferry is configured with
        res = bootsim.boot(cfg, scheme=self.scheme, flags="boolean",
                           bootcount_enabled=self.uboot != DEBIAN_UBOOT)
        sim = bootsim.SimEnv(bootsim.read_areas(cfg), "boolean")
        assert sim.load()
        return res.slot, sim.vars

    def good_boot(self) -> Boot:
        predicted, sim_env = self.predict()
        b = self.boot()
        # the simulator (its own env codec) agrees with the real U-Boot
        assert b.slot == predicted, (predicted, b.console[-1500:])
        real = self.bootloader().store.read()
        for key in CROSS_CHECKED:
            assert real.get(key) == sim_env.get(key), (key, real, sim_env)
        # "OK", or with a redundant env possibly "recovered successfully" (env/flash.c
        # then fixes the flag bytes): either way ferry's env, never the default one
        head = b.console.split("In:", 1)[0]
        assert "Loading Environment from Flash..." in head, b.console[-2000:]
        assert "OK" in head or "recovered successfully" in head, b.console[-2000:]
        assert not b.default_env
        assert b.cmdline is not None, b.console[-2000:]
        return b


@pytest.fixture(autouse=True)
def _drop_flash_images(tmp_path):
    """Each board's flash is 64 MiB; pytest keeps old tmp dirs, so remove them."""
    yield
    for img in tmp_path.rglob("flash1.img"):
        img.unlink()


def env(board: Board) -> dict[str, str]:
    return board.bootloader().store.read()


# --- Debian's U-Boot: single copy, bootchooser ----------------------------------------


def test_bootchooser_on_debian_uboot(tmp_path):
    tool("mkimage")
    board = Board(tmp_path, DEBIAN_UBOOT, "bootchooser", redundant=False, attempts=2)
    board.provision()
    bl = board.bootloader()
    # before U-Boot ever ran the script, the canary is missing: no activation
    with pytest.raises(CanaryError):
        bl.activate("B")

    b = board.good_boot()
    assert b.slot == "A" and "ferry.slot=A" in (b.cmdline or "")
    assert env(board)["BOOT_A_LEFT"] == "1"  # decremented and saved by U-Boot
    assert env(board)[CANARY_VAR] == "1"
    assert bl.booted() == "A"
    bl.mark_good("A")
    assert env(board)["BOOT_A_LEFT"] == "2"

    bl.activate("B")  # one env write: BOOT_ORDER=B A, BOOT_B_LEFT=2
    b = board.good_boot()
    assert b.slot == "B" and bl.booted() == "B"
    st = bl.state()
    assert st.booted == "B" and st.primary == "B" and st.slot("B").attempts_left == 1

    # never marked good: B runs out of attempts and U-Boot falls back to A
    assert board.good_boot().slot == "B"
    assert env(board)["BOOT_B_LEFT"] == "0"
    b = board.good_boot()
    assert b.slot == "A" and bl.booted() == "A"
    assert env(board)["BOOT_A_LEFT"] == "1"
    st = bl.state()
    assert st.primary == "A" and not st.slot("B").good

    # activate again and this time confirm: B stays
    bl.activate("B")
    assert board.good_boot().slot == "B"
    bl.mark_good("B")  # as the daemon does after each healthy boot
    assert board.good_boot().slot == "B"
    bl.mark_good("B")
    assert board.good_boot().slot == "B"
    assert env(board)["BOOT_B_LEFT"] == "1"


def test_bootchooser_script_defaults_and_reset(tmp_path):
    """The script's other branches on a real U-Boot: missing variables get defaults, and
    with no attempts left anywhere it resets the counters and the board."""
    board = Board(tmp_path, DEBIAN_UBOOT, "bootchooser", redundant=False)
    board.provision()
    store = board.bootloader().store
    store.update({"BOOT_ORDER": None, "BOOT_A_LEFT": None, "BOOT_B_LEFT": None})
    assert board.good_boot().slot == "A"
    e = env(board)
    assert (e["BOOT_ORDER"], e["BOOT_A_LEFT"], e["BOOT_B_LEFT"]) == ("A B", "2", "3")

    store.update({"BOOT_A_LEFT": "0", "BOOT_B_LEFT": "0"})
    b = board.boot()  # -no-reboot: U-Boot's reset ends QEMU
    assert "no slot has attempts left" in b.console and b.slot is None
    assert not b.default_env
    e = env(board)
    assert (e["BOOT_A_LEFT"], e["BOOT_B_LEFT"]) == ("3", "3")
    assert board.good_boot().slot == "A"


# --- rebuilt U-Boot: redundant env, both schemes ----------------------------------


def test_bootchooser_on_redundant_uboot(tmp_path):
    board = Board(tmp_path, redundant_uboot(), "bootchooser", redundant=True, attempts=2)
    board.provision()
    bl = board.bootloader()
    assert board.good_boot().slot == "A"
    bl.activate("B")
    assert board.good_boot().slot == "B"
    assert board.good_boot().slot == "B"
    assert board.good_boot().slot == "A"  # fell back
    assert bl.booted() == "A" and not bl.state().slot("B").good
    bl.activate("B")
    assert board.good_boot().slot == "B"
    bl.mark_good("B")
    assert board.good_boot().slot == "B"
    assert env(board)["BOOT_B_LEFT"] == "1"
    copies = bl.store.read_copies()
    assert all(c.crc_ok for c in copies) and sorted(c.flag for c in copies) == [0, 1]


def test_bootcount_on_redundant_uboot(tmp_path):
    board = Board(tmp_path, redundant_uboot(), "bootcount", redundant=True, attempts=1)
    board.provision()
    bl = board.bootloader()
    b = board.good_boot()
    assert b.slot == "A" and bl.booted() == "A"
    assert env(board)[CANARY_VAR] == "1"

    bl.activate("B")  # ferry_boot_part=B upgrade_available=1 bootcount=0 bootlimit=1
    b = board.good_boot()
    assert b.slot == "B" and bl.booted() == "B"
    e = env(board)
    assert e["bootcount"] == "1"  # counted and saved by U-Boot's BOOTCOUNT_ENV
    st = bl.state()
    assert st.pending and st.primary == "B" and st.slot("B").attempts_left == 0

    # no commit: bootcount 2 > bootlimit 1, altbootcmd, the script rolls back
    b = board.good_boot()
    assert "rolling back" in b.console
    assert b.slot == "A" and bl.booted() == "A"
    e = env(board)
    assert e["upgrade_available"] == "0" and e["ferry_failed_part"] == "B"
    st = bl.state()
    assert st.primary == "A" and not st.pending and not st.slot("B").good

    # again, with a commit after the first boot: B stays
    bl.activate("B")
    assert board.good_boot().slot == "B"
    bl.mark_good("B")
    assert env(board)["upgrade_available"] == "0"
    assert board.good_boot().slot == "B"
    assert board.good_boot().slot == "B"
    assert bl.state().slot("B").good


def test_incremental_flags_against_nor_uboot_lose_a_change(tmp_path):
    """Why ``flags`` is a setting: counter-style flags, two host writes, NOR U-Boot
    (env/flash.c) loads the older one. The same writes with ``boolean`` are kept."""
    outcome = {}
    for flags in ("incremental", "boolean"):
        d = tmp_path / flags
        d.mkdir()
        board = Board(d, redundant_uboot(), "bootchooser", redundant=True, flags=flags)
        board.provision()
        assert board.good_boot().slot == "A"
        bl = board.bootloader()
        copies = bl.store.read_copies()
        if select_copy(copies, flags) != 0:
            bl.store.update({"pad": "1"})  # so that the last write below lands in copy 1
        bl.activate("B")  # first write
        bl.activate("A")  # second write: the last word is "A"
        assert bl.state().primary == "A"  # what ferry (and libubootenv) read
        outcome[flags] = board.good_boot().slot
    assert outcome == {"incremental": "B", "boolean": "A"}


# --- power cuts ---------------------------------------------------------------------


def test_power_cut_during_uboot_saveenv_redundant(tmp_path):
    """SIGKILL QEMU inside saveenv: the next boot loads the old or the new env."""
    board = Board(tmp_path, redundant_uboot(), "bootchooser", redundant=True, attempts=3)
    board.provision()
    assert board.good_boot().slot == "A"
    board.bootloader().mark_good("A")
    cuts = [("Erasing Flash", 0.0), ("Writing to Flash", 0.0), ("Saving Environment", 0.0),
            ("Saving Environment", 0.01), ("Saving Environment", 0.03),
            ("Writing to Flash", 0.02)]
    lefts = set()
    for text, delay in cuts:
        before = env(board)["BOOT_A_LEFT"]
        cut = board.boot(kill_at=text, delay=delay)
        assert cut.killed
        after = env(board)  # never NoValidEnvError
        assert after["BOOT_A_LEFT"] in (before, str(int(before) - 1))
        b = board.good_boot()  # never the default env
        assert b.slot == "A"
        lefts.add(after["BOOT_A_LEFT"] == before)
        board.bootloader().mark_good("A")
    assert True in lefts  # at least one cut really landed inside the write


def test_power_cut_during_uboot_saveenv_single_copy(tmp_path):
    """The same cut on Debian's single-copy build destroys the env: U-Boot falls back
    to its compiled-in default env (and would sit at its prompt in the field)."""
    board = Board(tmp_path, DEBIAN_UBOOT, "bootchooser", redundant=False)
    board.provision()
    assert board.good_boot().slot == "A"
    # cut inside the erase/write window; the first kill that lands there destroys the
    # only copy (a kill before the erase or after the write leaves a valid env)
    abs_cfg = tmp_path / "abs.config"
    abs_cfg.write_text(f"{board.flash} 0x0 {ENV_SIZE:#x} {ENV_SIZE:#x}\n")
    broken = False
    for text, delay in (("Writing to Flash", 0.0), ("Erasing Flash", 0.01),
                        ("Saving Environment", 0.02), ("Saving Environment", 0.04)):
        assert board.boot(kill_at=text, delay=delay).killed
        try:
            env(board)
        except NoValidEnvError:
            broken = True
            break
    assert broken, "no kill landed inside saveenv"
    out = subprocess.run([tool("fw_printenv"), "-c", str(abs_cfg)],
                         capture_output=True, timeout=30)
    assert out.returncode != 0
    b = board.boot()
    assert b.default_env and b.slot is None


def test_power_cut_during_bootcount_save(tmp_path):
    """U-Boot's own BOOTCOUNT_ENV save (before bootcmd) cut short: the trial goes on with
    the count before or after that boot, never the default env."""
    board = Board(tmp_path, redundant_uboot(), "bootcount", redundant=True, attempts=9)
    board.provision()
    assert board.good_boot().slot == "A"
    bl = board.bootloader()
    bl.activate("B")
    for delay in (0.0, 0.01, 0.03):
        before = int(env(board)["bootcount"])
        assert board.boot(kill_at="Saving Environment", delay=delay).killed
        after = int(env(board)["bootcount"])  # never NoValidEnvError
        assert after in (before, before + 1)
        b = board.good_boot()
        assert b.slot == "B"
        assert int(env(board)["bootcount"]) == after + 1
    assert bl.state().pending  # still on trial, nothing lost


class _Cut(Exception):
    pass


class _CuttingSink(_Sink):
    def __init__(self, budget: int) -> None:
        self.budget = budget

    def pwrite(self, fd: int, data: bytes, offset: int) -> None:
        n = min(len(data), self.budget)
        if n:
            super().pwrite(fd, data[:n], offset)
        self.budget -= n
        if n < len(data):
            raise _Cut


def test_torn_ferry_writes_boot_old_or_new(tmp_path):
    """ferry's env write cut at random byte offsets: U-Boot boots the old or new choice."""
    board = Board(tmp_path, redundant_uboot(), "bootchooser", redundant=True, attempts=3)
    board.provision()
    assert board.good_boot().slot == "A"
    rng = random.Random(1234)
    # header bytes, the changed bytes near the start, the tail, and the flag byte
    offsets = [0, 3, 5, 40, rng.randrange(100, ENV_SIZE), ENV_SIZE - 1, ENV_SIZE,
               ENV_SIZE + 1]
    seen = set()
    for off in offsets:
        bl = board.bootloader()
        bl.mark_good("A")
        bl.store.sink = _CuttingSink(off)
        with contextlib.suppress(_Cut):
            bl.activate("B")
        bl.store.sink = None
        want = bootchooser.choose(env(board), board.config)
        assert want in ("A", "B")
        b = board.good_boot()
        assert b.slot == want, (off, b.console[-1500:])
        seen.add(want)
        if want == "B":
            bl.activate("A")
            bl.mark_good("A")
            board.good_boot()
    assert seen == {"A", "B"}


def test_torn_ferry_write_single_copy_is_the_default_env(tmp_path):
    """On a single-copy env the same torn write leaves nothing U-Boot accepts."""
    board = Board(tmp_path, DEBIAN_UBOOT, "bootchooser", redundant=False)
    board.provision()
    assert board.good_boot().slot == "A"
    bl = board.bootloader()
    bl.store.sink = _CuttingSink(8)  # new CRC and 4 bytes of data, then power is gone
    with pytest.raises(_Cut):
        bl.activate("B")
    bl.store.sink = None
    with pytest.raises(NoValidEnvError):
        env(board)
    b = board.boot()
    assert b.default_env and b.slot is None


_WRITER = """
import sys
from ferry.daemon.config import load_config
from ferry.daemon.boot.bootloader import make_bootloader
bl = make_bootloader(load_config(sys.argv[1]), warn=False)
print("ready", flush=True)
i = 0
while True:
    bl.activate("AB"[i % 2])
    i += 1
"""


def test_sigkill_ferry_during_env_writes(tmp_path):
    """A ferry process SIGKILLed at random moments while it writes the env over and over:
    every time, ferry, libubootenv and finally U-Boot read a valid env."""
    board = Board(tmp_path, redundant_uboot(), "bootchooser", redundant=True)
    board.provision()
    assert board.good_boot().slot == "A"
    abs_cfg = tmp_path / "abs.config"
    abs_cfg.write_text(f"{board.flash} 0x0 {ENV_SIZE:#x} {ENV_SIZE:#x}\n"
                       f"{board.flash} {ENV_SIZE:#x} {ENV_SIZE:#x} {ENV_SIZE:#x}\n")
    rng = random.Random(99)
    python = str(ROOT / ".venv" / "bin" / "python")
    for _ in range(12):
        proc = subprocess.Popen([python, "-c", _WRITER, str(tmp_path / "ferry.toml")],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert proc.stdout is not None
        assert proc.stdout.readline() == b"ready\n"
        threading.Event().wait(rng.uniform(0.0, 0.05))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        assert proc.returncode == -signal.SIGKILL
        e = env(board)
        assert e["BOOT_ORDER"] in ("A B", "B A")
        out = subprocess.run([tool("fw_printenv"), "-c", str(abs_cfg), "-n", "BOOT_ORDER"],
                             capture_output=True, text=True, timeout=30)
        assert out.returncode == 0 and out.stdout.strip() == e["BOOT_ORDER"]
    want = bootchooser.choose(env(board), board.config)
    assert board.good_boot().slot == want
