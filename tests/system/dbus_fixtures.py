"""A private dbus-daemon and a ferryd on it, for the service tests (no mock bus)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from ferry.sim.dbusbus import private_bus_config

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = ROOT / ".venv" / "bin"
sys.path.insert(0, str(ROOT / "tests" / "unit"))


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} missing: run 'bash .ci/setup' (Debian package dbus)")
    return path


@contextmanager
def private_bus(with_policy: bool) -> Iterator[str]:
    """A bus open to everyone (so an unprivileged test caller can connect), plus, with
    ``with_policy``, ferry's own policy file exactly as installed on gateways."""
    # world-traversable: the unprivileged caller must reach the socket
    tmp = Path(tempfile.mkdtemp(prefix="ferry-bus-"))
    tmp.chmod(0o755)
    include = ROOT / "systemd" / "org.ferry.Ferry1.conf" if with_policy else None
    conf = tmp / "bus.conf"
    conf.write_text(private_bus_config(tmp, include))
    proc = subprocess.Popen([_tool("dbus-daemon"), "--config-file", str(conf), "--nofork",
                             "--print-address"], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    address = proc.stdout.readline().strip()
    try:
        assert address.startswith("unix:"), address
        yield address
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)


class NotifySocket:
    """Plays systemd's side of sd_notify: a datagram socket whose reader thread stamps
    each message with its arrival time."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / "notify.sock"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(self.path))
        self.sock.settimeout(0.1)
        self.messages: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except (TimeoutError, BlockingIOError, OSError):
                continue
            now = time.monotonic()
            for line in data.decode().splitlines():
                self.messages.append((now, line))

    def drain(self) -> None:
        time.sleep(0.05)

    def wait_for(self, text: str, timeout: float = 60) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.drain()
            for t, line in self.messages:
                if line.startswith(text):
                    return t
        raise AssertionError(f"no {text!r} from ferryd within {timeout}s; got {self.messages}")

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


@contextmanager
def running_ferryd(config: Path, address: str, notify: NotifySocket | None = None,
                   **env: str) -> Iterator[subprocess.Popen[str]]:
    child_env = dict(os.environ)
    child_env.update(env)
    if notify is not None:
        child_env["NOTIFY_SOCKET"] = str(notify.path)
    log = open(config.parent / "ferryd.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([str(VENV_BIN / "ferryd"), "--config", str(config),
                             "--bus", address], env=child_env, stdout=log,
                            stderr=subprocess.STDOUT, text=True)
    try:
        if notify is not None:
            notify.wait_for("READY=1")
        else:
            _wait_for_name(address, proc)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        log.close()


def _wait_for_name(address: str, proc: subprocess.Popen[str], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"ferryd exited with {proc.returncode} before taking its name")
        out = subprocess.run([_tool("dbus-send"), f"--bus={address}", "--print-reply",
                              "--dest=org.freedesktop.DBus", "/org/freedesktop/DBus",
                              "org.freedesktop.DBus.NameHasOwner", "string:org.ferry.Ferry1"],
                             capture_output=True, text=True)
        if "boolean true" in out.stdout:
            return
        time.sleep(0.2)
    raise AssertionError("ferryd never took org.ferry.Ferry1")


def dbus_send_as_nobody(address: str, member: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Call a ferryd method as uid/gid 65534 with Debian's dbus-send (not our code)."""
    return subprocess.run(
        [_tool("setpriv"), "--reuid=65534", "--regid=65534", "--clear-groups",
         _tool("dbus-send"), f"--bus={address}", "--print-reply", "--dest=org.ferry.Ferry1",
         "/org/ferry/Ferry1", f"org.ferry.Ferry1.{member}", *args],
        capture_output=True, text=True, timeout=30)


def run_as_nobody(argv: list[str], address: str,
                  timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` as uid/gid 65534 (no other groups) against the bus at ``address``;
    with ferryd's FERRY_TEST_DBUS_GROUP=nogroup that uid stands in for a member of
    group ferry, so what it may do is what a technician may do."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": "/nonexistent",
           "FERRY_BUS_ADDRESS": address, "PYTHONDONTWRITEBYTECODE": "1", "LANG": "C.UTF-8"}
    return subprocess.run(
        [_tool("setpriv"), "--reuid=65534", "--regid=65534", "--clear-groups", *argv],
        capture_output=True, text=True, timeout=timeout, env=env)


@contextmanager
def world_readable_dir() -> Iterator[Path]:
    """A directory uid 65534 can reach (pytest's tmp_path sits under a 0700 one)."""
    tmp = Path(tempfile.mkdtemp(prefix="ferry-fd-"))
    tmp.chmod(0o755)
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
