"""Power-cut matrix: kill -9 the install at every journal step, inside the slot write,
inside the U-Boot env write and inside staging; then power on again (the bootchooser
model in install_gateway picks a slot as U-Boot would) and let ferry resume.

Every run must end either resumed to completion (new slot booted, committed, target
flashed) or back on the old slot with a valid env; at no moment may the env make a
half-written slot bootable, and the deployment record is never lost.

Children are forked from the test process (ferry already imported, so ~50 runs stay
fast) and die by SIGKILL from FERRY_TEST_KILL_AT, so no finally/atexit runs.
"""

from __future__ import annotations

import collections
import os
import shutil
import signal
import sys
from pathlib import Path
from typing import Any, BinaryIO

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))

from install_gateway import Gateway, image_version, make_bundle, make_gateway, make_image

# imported once here so the forked children do not each pay for the imports
import ferry.daemon.install.bootcheck
import ferry.daemon.install.pipeline
import ferry.daemon.install.proxyphase  # noqa: F401
from ferry.daemon.boot.bootchooser import choose
from ferry.daemon.cli.main import build_parser
from ferry.daemon.journal import Journal
from ferry.packaging.description import TargetSpec

CHUNK = 64 << 10
TARGET = """
[[target]]
name = "mcu"
transport = "smp-serial"
address = "/dev/null"
"""
SLOT = 1 << 20
IMAGE = 4 * CHUNK + 4321  # five chunks into the slot
TARGET_SIZE = 2 * CHUNK + 99  # three chunks into staging
ENV_PIECE = 512


build_parser()  # import every CLI module before the forks


class _FakeTransport:
    def __init__(self, root: Path) -> None:
        self.root = root

    def flash(self, target: Any, image: BinaryIO, *, progress: Any) -> Any:
        from ferry.proxy.transport import FlashResult

        data = image.read()
        (self.root / f"flashed-{target.name}").write_bytes(data)
        return FlashResult(ok=True, version=target.options.get("spec_version", ""))


def _child(root: Path, argv: list[str], env: dict[str, str]) -> None:
    """Runs in the forked child: test hooks, then the real CLI."""
    from ferry.daemon.boot import ubootenv
    from ferry.daemon.cli.main import main
    from ferry.daemon.install import proxyphase, slotwriter, staging
    from ferry.daemon.testhooks import killpoint

    os.environ.update(env)
    killpoint._parsed = False
    killpoint._counts.clear()
    base = ubootenv._Sink

    class KillSink(base):  # type: ignore[misc, valid-type]
        """Writes the env in pieces with a kill point between them: a torn env copy."""

        def pwrite(self, fd: int, data: bytes, offset: int) -> None:
            for i in range(0, len(data), ENV_PIECE):
                base.pwrite(self, fd, data[i:i + ENV_PIECE], offset + i)
                killpoint.killpoint("env.pwrite")

        def fsync(self, fd: int) -> None:
            killpoint.killpoint("env.fsync")
            base.fsync(self, fd)

    ubootenv._Sink = KillSink  # type: ignore[misc]
    slotwriter.CHUNK = slotwriter.STORED_CHUNK = staging.CHUNK = CHUNK  # more write points
    proxyphase._default_factory = lambda name, options: _FakeTransport(root)  # type: ignore[assignment]
    out = os.open(root / "child.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(out, 1)
    os.dup2(out, 2)
    rc = main(["--config", str(root / "ferry.toml"), *argv])
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(rc)


def run_child(gw: Gateway, argv: list[str], **env: str) -> int | str:
    """Exit code, or "killed" when the kill point fired."""
    full = {"FERRY_BOOT_ID_PATH": str(gw.boot_id), **env}
    pid = os.fork()
    if pid == 0:
        try:
            _child(gw.root, argv, full)
        except BaseException:
            import traceback

            with open(gw.root / "child.log", "a") as f:
                traceback.print_exc(file=f)
        finally:
            os._exit(99)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        assert os.WTERMSIG(status) == signal.SIGKILL
        return "killed"
    return os.WEXITSTATUS(status)


def clone(template: Gateway, dest: Path) -> Gateway:
    shutil.copytree(template.root, dest)
    cfg = (dest / "ferry.toml").read_text().replace(str(template.root), str(dest))
    (dest / "ferry.toml").write_text(cfg)
    return Gateway(root=dest, config_path=dest / "ferry.toml", pki_dir=dest / "pki",
                   slot_size=template.slot_size)


def build(base: Path, name: str, **kw: Any) -> tuple[Gateway, Path]:
    gw = make_gateway(base / name, slot_size=SLOT, extra=TARGET, **kw)
    spec = TargetSpec(transport="smp-serial", name="mcu", format="bin", version="5.0.0")
    bundle = make_bundle(gw, base / f"{name}.swu", version="1.1.0",
                         image=make_image("1.1.0", IMAGE),
                         targets=[(spec, os.urandom(TARGET_SIZE))])
    return gw, bundle


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> tuple[Gateway, Path]:
    return build(tmp_path_factory.mktemp("powercut"), "gw")


@pytest.fixture(scope="module")
def unhealthy(tmp_path_factory: pytest.TempPathFactory) -> tuple[Gateway, Path]:
    """The new system boots but fails its health check: the rollback path."""
    return build(tmp_path_factory.mktemp("powercut-rb"), "gw", checks=[["false"]], window=0.2)


def check_invariants(gw: Gateway) -> None:
    """At any instant: the env is readable and never makes a torn slot bootable."""
    env = gw.env()  # raises if no env copy is valid
    cfg = gw.config
    for slot in ("A", "B"):
        bootable = slot in env.get("BOOT_ORDER", "").split() and env.get(
            f"BOOT_{slot}_LEFT", "3") != "0"
        if bootable:
            with open(gw.slot_path(slot), "rb") as f:
                assert image_version(f.read(SLOT)) is not None, f"torn slot {slot} is bootable"
    assert choose(env, cfg) is not None


def drive_to_the_end(gw: Gateway) -> None:
    """Power on and let ferry resume until nothing is pending (bounded)."""
    for _ in range(8):
        gw.boot()
        rc = run_child(gw, ["install", "--resume"])
        assert rc != "killed"
        check_invariants(gw)
        if gw.reboot_flag.exists():
            continue
        j = Journal.open(gw.data_dir)
        try:
            if j.pending() is None:
                return
        finally:
            j.close()
    raise AssertionError("deployment still pending after 8 boots")


def full_run(gw: Gateway, bundle: Path, kill: tuple[int, str] | None,
             logs: Path | None = None) -> int | str:
    """Install, then boot and resume while ferry asks for a reboot. Phase 1 is the
    install, phase n > 1 the n-th boot; the kill point is armed in phase ``kill[0]``."""
    for phase in range(1, 6):
        env = {}
        if kill and kill[0] == phase:
            env["FERRY_TEST_KILL_AT"] = kill[1]
        if logs:
            env["FERRY_TEST_KILL_LOG"] = str(logs / f"phase{phase}.log")
        if phase == 1:
            rc = run_child(gw, ["install", str(bundle)], **env)
        elif gw.reboot_flag.exists():
            gw.boot()
            rc = run_child(gw, ["install", "--resume"], **env)
        else:
            return 0
        if rc == "killed":
            return rc
        assert rc in (0, 1), (gw.root / "child.log").read_text()
    raise AssertionError("still rebooting after 5 phases")


def choose_points(counts: collections.Counter[str]) -> list[str]:
    points: list[str] = []
    for name, n in sorted(counts.items()):
        if name.startswith("step.") or name.startswith("journal.") or name in (
                "reboot.before", "staging.rename", "env.fsync", "slot.fsync", "slot.write",
                "staging.write"):
            points += [f"{name}:{i}" for i in range(1, n + 1)]
        elif name == "env.pwrite":
            per_copy = 0x4000 // ENV_PIECE
            picks = {1, 2, per_copy // 2, per_copy - 1, per_copy, per_copy + 1,
                     per_copy + per_copy // 2, n - 1, n}
            points += [f"{name}:{i}" for i in sorted(p for p in picks if 1 <= p <= n)]
    return points


def discover_points(template: tuple[Gateway, Path], tmp: Path, first_phase: int = 1
                    ) -> list[tuple[int, str]]:
    gw, bundle = template
    g = clone(gw, tmp / "discover")
    logs = tmp / "logs"
    logs.mkdir()
    assert full_run(g, bundle, None, logs) == 0
    shutil.rmtree(g.root)
    out: list[tuple[int, str]] = []
    for log in sorted(logs.iterdir()):
        phase = int(log.stem.removeprefix("phase"))
        if phase >= first_phase:
            counts = collections.Counter(log.read_text().split())
            out += [(phase, p) for p in choose_points(counts)]
    shutil.rmtree(logs)
    return out


def test_power_cut_matrix(template: tuple[Gateway, Path], unhealthy: tuple[Gateway, Path],
                          tmp_path: Path) -> None:
    points = discover_points(template, tmp_path)
    names = {p.rsplit(":", 1)[0] for _, p in points}
    # the clean run passes every kind of point we promise to cover
    for kind in ("journal.created", "step.write.begun", "slot.write", "env.pwrite",
                 "env.fsync", "staging.write", "staging.rename", "step.activate.begun",
                 "reboot.before", "step.commit.begun", "step.proxy.ending"):
        assert kind in names, kind
    # the rollback path: phase 1 is the same install, so only its later phases
    rb_points = discover_points(unhealthy, tmp_path / "rb", first_phase=2)
    assert "step.rollback.begun" in {p.rsplit(":", 1)[0] for _, p in rb_points}
    runs = [(template, p, "success") for p in points] + [
        (unhealthy, p, "rolled-back") for p in rb_points]
    assert len({(t[0].root, p) for t, p, _ in runs}) >= 50, len(runs)
    outcomes: collections.Counter[str] = collections.Counter()
    for i, ((gw0, bundle), point, expected) in enumerate(runs):
        gw = clone(gw0, tmp_path / f"run{i}")
        rc = full_run(gw, bundle, point)
        assert rc == "killed", f"{point} was never reached"
        check_invariants(gw)
        j = Journal.open(gw.data_dir)
        try:
            assert j.latest() is not None, f"{point}: deployment record lost"
        finally:
            j.close()
        drive_to_the_end(gw)
        j = Journal.open(gw.data_dir)
        dep = j.latest()
        j.close()
        assert dep is not None and dep.result is not None
        booted = gw.booted()
        if dep.result == "success":
            assert booted == "B" and gw.running_version() == "1.1.0", point
            # B is what U-Boot picks and it has attempts left (a boot after the commit
            # spends one; the every-boot mark-good service tops it up)
            assert choose(gw.env(), gw.config) == "B", point
            assert (gw.root / "flashed-mcu").stat().st_size == TARGET_SIZE, point
        else:
            assert booted == "A" and gw.running_version() == "1.0.0", (point, dep.error)
            assert gw.env()["BOOT_ORDER"].split()[0] == "A"
            assert not (gw.root / "flashed-mcu").exists()
        # a healthy system always gets there; an unhealthy one always comes back
        assert dep.result == expected, (point, dep.result, dep.error)
        outcomes[f"{expected}:{dep.result}"] += 1
        shutil.rmtree(gw.root)
    print(f"\npower-cut matrix: {len(runs)} kill points, outcomes {dict(outcomes)}")
