"""bench/cgroup.py counts the CPU of every process a tool starts, not only the one the
bench waits for: the property that makes bench/install.py's CPU per GiB include daemons.

A child that leaves a detached grandchild burning CPU (as a client leaves the work to a
daemon) is measured; the cgroup's count must cover what the grandchild itself reports,
which ``/usr/bin/time`` of the child would not. Nothing here depends on speed: the
grandchild does a fixed amount of work and reports its own CPU time.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest


def _cgroup() -> ModuleType:
    name = "ferry_bench_cgroup"
    if name not in sys.modules:
        path = Path(__file__).resolve().parents[2] / "bench" / "cgroup.py"
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


BURN = ("import time\n"
        "x = 0\n"
        "for i in range(1_000_000): x += i * i\n"
        "print(time.process_time(), flush=True)\n")


def test_detached_grandchild_counts(tmp_path: Path) -> None:
    cg_mod = _cgroup()
    tree = cg_mod.CgroupTree()
    try:
        cg = tree.new("burn")
        out = tmp_path / "grandchild.out"
        # the child returns at once; the grandchild works on, outside its wait
        run = cg_mod.run_in(cg, ["sh", "-c", f'"{sys.executable}" -c "$0" > "{out}" &',
                                 BURN])
        assert run.returncode == 0
        assert not cg.pids(), "run_in returns once every process of the cgroup is gone"
        grandchild_cpu = float(out.read_text())
        assert grandchild_cpu > 0
        assert run.cpu.total >= grandchild_cpu * 0.95  # cpu.stat vs the process's own
        assert run.maxrss_kb > 0
    finally:
        tree.close()
    assert not tree.parent.exists()


def test_failing_command_reports_its_code_and_stderr() -> None:
    cg_mod = _cgroup()
    tree = cg_mod.CgroupTree()
    try:
        run = cg_mod.run_in(tree.new("fail"), ["sh", "-c", "echo nope >&2; exit 3"])
    finally:
        tree.close()
    assert run.returncode == 3
    assert b"nope" in run.stderr


def test_cpu_usage_arithmetic() -> None:
    cg_mod = _cgroup()
    a, b = cg_mod.CpuUsage(1.0, 0.5), cg_mod.CpuUsage(0.25, 0.25)
    assert (a - b).total == pytest.approx(1.0)
    assert (a + b).total == pytest.approx(2.0)
    assert cg_mod.ZERO.total == 0
