"""CPU seconds and peak memory of a whole tool: one transient cgroup v2 per command or daemon.

``/usr/bin/time`` sees one process and the children it waited for. A daemon that does the
work (ferryd, ``rauc service``, the dbus-daemon that carries their progress) is nobody's
child there, so a client's ``time`` shows almost nothing of an install. A cgroup counts
every process in it, and every process they start, user and system time alike, which is
what a gateway's CPU pays. Without systemd as PID 1 there is no ``systemd-run --scope``:
the bench makes the cgroup itself (``mkdir``), and the child moves itself into it before
``exec`` (``cgroup.procs``), so nothing it starts escapes.

Memory: ``memory.peak`` needs the memory controller on the v2 hierarchy (and kernel
>= 5.19). On a hybrid host (v1 controllers, v2 at ``/sys/fs/cgroup/unified``) it is not
there, so the peak is the processes' own high-water mark: ``ru_maxrss`` from ``wait4``
for a command (the largest process of it, as ``/usr/bin/time %M``), and ``VmHWM`` for a
daemon, reset before each measured operation by writing 5 to ``/proc/PID/clear_refs``.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path


def cgroup2_root() -> Path:
    """The mount point of the cgroup v2 hierarchy, or a one-line reason why there is none."""
    for line in Path("/proc/self/mounts").read_text().splitlines():
        fields = line.split()
        if len(fields) >= 3 and fields[2] == "cgroup2":
            return Path(fields[1])
    raise SystemExit("no cgroup2 hierarchy mounted (see /proc/self/mounts): CPU per tool "
                     "needs one")


@dataclass(frozen=True)
class CpuUsage:
    """user and system CPU seconds, as cpu.stat counts them."""

    user: float
    system: float

    @property
    def total(self) -> float:
        return self.user + self.system

    def __sub__(self, other: CpuUsage) -> CpuUsage:
        return CpuUsage(self.user - other.user, self.system - other.system)

    def __add__(self, other: CpuUsage) -> CpuUsage:
        return CpuUsage(self.user + other.user, self.system + other.system)


ZERO = CpuUsage(0.0, 0.0)


class Cgroup:
    """One child cgroup under the bench's own parent, removed again by ``remove``."""

    def __init__(self, parent: Path, name: str) -> None:
        self.path = parent / name
        self.path.mkdir(exist_ok=True)

    def add(self, pid: int) -> None:
        (self.path / "cgroup.procs").write_text(f"{pid}\n")

    def cpu(self) -> CpuUsage:
        stat = dict(line.split() for line in
                    (self.path / "cpu.stat").read_text().splitlines() if line.strip())
        return CpuUsage(int(stat["user_usec"]) / 1e6, int(stat["system_usec"]) / 1e6)

    def pids(self) -> list[int]:
        return [int(p) for p in (self.path / "cgroup.procs").read_text().split()]

    def memory_peak_kb(self) -> int | None:
        """``memory.peak`` where the kernel and the hierarchy have it, else None."""
        f = self.path / "memory.peak"
        return int(f.read_text()) // 1024 if f.exists() else None

    def wrap(self, cmd: Sequence[str]) -> list[str]:
        """``cmd`` behind a shell that joins this cgroup and then execs it: the same pid,
        so nothing it starts runs outside (no ``preexec_fn``, which threads make unsafe)."""
        procs = self.path / "cgroup.procs"
        return ["/bin/sh", "-c", f'echo $$ > "{procs}" && exec "$@"', "sh", *cmd]

    def remove(self) -> None:
        """rmdir once its processes have gone (a cgroup with members cannot be removed)."""
        for _ in range(50):
            try:
                self.path.rmdir()
                return
            except OSError:
                time.sleep(0.1)


class CgroupTree:
    """The bench's parent cgroup (``ferry-bench-PID``) and the children made in it."""

    def __init__(self) -> None:
        root = cgroup2_root()
        self.parent = root / f"ferry-bench-{os.getpid()}"
        try:
            self.parent.mkdir(exist_ok=True)
        except OSError as e:
            raise SystemExit(f"cannot make a cgroup under {root} ({e}): run the bench as "
                             "root with cgroup2 writable") from None
        self.children: list[Cgroup] = []
        self._n = 0

    def new(self, name: str) -> Cgroup:
        self._n += 1
        cg = Cgroup(self.parent, f"{self._n:04d}-{name}")
        self.children.append(cg)
        return cg

    def close(self) -> None:
        for cg in self.children:
            cg.remove()
        with contextlib.suppress(OSError):
            self.parent.rmdir()


@dataclass(frozen=True)
class Run:
    """One command, start to exit, and everything it started."""

    wall: float
    cpu: CpuUsage
    maxrss_kb: int
    returncode: int
    stderr: bytes


def run_in(cg: Cgroup, cmd: Sequence[str], env: dict[str, str] | None = None) -> Run:
    """Run ``cmd`` inside ``cg`` (fresh or reused): wall, the cgroup's CPU delta, and the
    peak RSS of its largest process.

    The peak comes from ``/usr/bin/time -f %M`` between the shell and ``cmd``, not from
    our own ``wait4``: a child forked (or vforked) from this Python process counts this
    process's RSS at its ``exec`` in ``ru_maxrss``, so every tool would show the bench's
    ~60 MiB. ``time`` is a small C program, so the child it forks carries ~2 MiB."""
    before = cg.cpu()
    with tempfile.NamedTemporaryFile(prefix="ferry-bench-rss-") as tf:
        timed = ["/usr/bin/time", "-q", "-f", "%M", "-o", tf.name, *cmd]
        t0 = time.monotonic()
        proc = subprocess.run(cg.wrap(timed), stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, env=env)
        wall = time.monotonic() - t0
        text = Path(tf.name).read_text().split()
    # a descendant left behind still counts until it exits; wait for the cgroup to empty
    for _ in range(1500):  # 30 s
        if not cg.pids():
            break
        time.sleep(0.02)
    maxrss = int(text[-1]) if text and text[-1].isdigit() else 0
    return Run(wall, cg.cpu() - before, maxrss, proc.returncode, proc.stderr)


def vm_kb(pid: int, field: str) -> int:
    """``VmRSS`` or ``VmHWM`` of a live process in KiB (0 once it has gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def reset_hwm(pid: int) -> None:
    """VmHWM := VmRSS (Linux >= 4.0), so the next VmHWM read is this operation's peak."""
    Path(f"/proc/{pid}/clear_refs").write_text("5\n")
