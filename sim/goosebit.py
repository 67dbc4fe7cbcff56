"""goosebit (PyPI), a real hawkBit-DDI server, run on 127.0.0.1 with its state in one dir.

Used by ``ferry demo`` and tests/peers. goosebit lives in its own virtualenv because its
pinned web stack (FastAPI, Tortoise ORM, pydantic) must not mix with ferry's:
``.ci/deps/ddi.sh`` creates ``.cache/goosebit-venv`` in the checkout; the environment
variable ``FERRY_GOOSEBIT_VENV`` points at another one. The recipe (aerich schema
first, uvicorn bound to loopback, admin via /setup, JWT from /login) is the one in
shared/reference/update-clients.md §10.

Device tokens: goosebit 0.2.12 reads only ``Authorization: TargetToken <token>``
(``updater/routes.py``, ``validate_device_token``; any other header counts as none),
so it cannot take hawkBit's GatewayToken. What it has instead is a token per device:
``PUT /api/v1/devices`` with ``auth_token`` (``api/v1/devices/routes.py``) creates the
device and sets it, and ``device_auth.mode`` decides who must send one
(``settings/schema.py``, ``DeviceAuthMode``): ``lax`` lets devices without a token
poll and makes a device that has one send it (a 401 otherwise), ``strict`` makes
every device send one. ``device_auth="lax"`` starts it that way, :meth:`register_device`
gives one device its token: the route by which ``ferry demo`` makes the MCU a
controller of its own (``[[target]] target_token``).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from ferry.errors import FerryError

GOOSEBIT_VERSION = "0.2.12"
ADMIN = ("admin@ferry.invalid", "ferry-demo-password")


class GoosebitError(FerryError):
    pass


def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent


def find_venv() -> Path:
    """The goosebit virtualenv, or a GoosebitError saying how to get one."""
    env = os.environ.get("FERRY_GOOSEBIT_VENV")
    candidates = [Path(env)] if env else [repo_root() / ".cache" / "goosebit-venv"]
    for c in candidates:
        if (c / "bin" / "uvicorn").exists() and (c / "bin" / "aerich").exists():
            return c
    raise GoosebitError(
        "goosebit is not installed: run 'bash .ci/setup' (it creates .cache/goosebit-venv), "
        f"or 'python3 -m venv DIR && DIR/bin/pip install goosebit=={GOOSEBIT_VERSION}' and "
        "set FERRY_GOOSEBIT_VENV=DIR")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@dataclass
class Goosebit:
    state_dir: Path
    port: int = 0  # 0: pick a free one
    poll_time: str = "00:00:01"
    tenant: str = "DEFAULT"
    device_auth: str = ""  # "", "lax", "strict" or "setup": goosebit's device_auth.mode
    venv: Path | None = None
    proc: subprocess.Popen[bytes] | None = None
    token: str = ""
    session: requests.Session = field(default_factory=requests.Session)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.state_dir / "goosebit.log"

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["GOOSEBIT_SETTINGS"] = str(self.state_dir / "goosebit.yaml")
        env.pop("PYTHONPATH", None)
        return env

    def start(self, timeout: float = 60.0) -> Goosebit:
        venv = self.venv or find_venv()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        if self.port == 0:
            self.port = free_port()
        elif not port_free(self.port):
            raise GoosebitError(f"port {self.port} on 127.0.0.1 is in use; pick another with "
                                "--port or stop what holds it")
        site = subprocess.run(
            [str(venv / "bin" / "python"), "-c",
             "import goosebit, os; print(os.path.dirname(goosebit.__file__))"],
            capture_output=True, text=True, env=self._env(), cwd=self.state_dir, timeout=120)
        if site.returncode != 0:
            raise GoosebitError(f"goosebit in {venv} does not import: "
                                f"{site.stderr.strip().splitlines()[-1:]}; re-run bash .ci/setup")
        pkg = site.stdout.strip()
        secret = secrets.token_hex(16)
        (self.state_dir / "artifacts").mkdir(exist_ok=True)
        (self.state_dir / "goosebit.yaml").write_text(
            f"db_uri: sqlite:///{self.state_dir / 'db.sqlite3'}\n"
            f"artifacts_dir: {self.state_dir / 'artifacts'}\n"
            f"secret_key: {secret}\n"
            f'poll_time: "{self.poll_time}"\n'
            f"tenant: {self.tenant}\n"
            + (f"device_auth:\n  enable: true\n  mode: {self.device_auth}\n"
               if self.device_auth else ""))
        (self.state_dir / "pyproject.toml").write_text(
            "[tool.aerich]\n"
            'tortoise_orm = "goosebit.db.config.TORTOISE_CONF"\n'
            f'location = "{pkg}/db/migrations"\n'
            'src_folder = "./."\n')
        mig = subprocess.run([str(venv / "bin" / "aerich"), "upgrade"], cwd=self.state_dir,
                             env=self._env(), capture_output=True, text=True, timeout=300)
        if mig.returncode != 0:
            raise GoosebitError(f"goosebit schema set-up (aerich upgrade) failed: "
                                f"{(mig.stderr or mig.stdout).strip()[-300:]}")
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        self.proc = subprocess.Popen(
            [str(venv / "bin" / "uvicorn"), "goosebit:app", "--host", "127.0.0.1",
             "--port", str(self.port)],
            cwd=self.state_dir, env=self._env(), stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                tail = self.log_path.read_text(errors="replace")[-400:]
                raise GoosebitError(f"goosebit exited at start ({self.proc.returncode}): {tail}")
            try:
                if self.session.get(self.url + "/login", timeout=2).status_code < 500:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise GoosebitError(f"goosebit did not answer on {self.url} within "
                                    f"{timeout:g} s; see {self.log_path}")
            time.sleep(0.2)
        self._login()
        return self

    def _login(self) -> None:
        form = {"username": ADMIN[0], "password": ADMIN[1]}
        r = self.session.post(self.url + "/setup", data=form, timeout=30)
        if r.status_code >= 400:
            raise GoosebitError(f"goosebit /setup answered {r.status_code}")
        r = self.session.post(self.url + "/login", data=form, timeout=30)
        if r.status_code != 200:
            raise GoosebitError(f"goosebit /login answered {r.status_code}")
        self.token = r.json()["access_token"]
        self.session.headers["Authorization"] = f"Bearer {self.token}"

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=15)
        # whatever uvicorn started in its session (and could hold the port) goes too
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc = None

    # -- management API ---------------------------------------------------------------

    def _check(self, r: requests.Response, what: str) -> Any:
        if r.status_code >= 400:
            raise GoosebitError(f"goosebit {what} answered {r.status_code}: {r.text[:300]}")
        return r.json() if r.content else None

    def upload(self, path: str | Path) -> int:
        """PUT /api/v1/software with the .swu file; returns the software id."""
        with open(path, "rb") as f:
            r = self.session.put(self.url + "/api/v1/software",
                                 files={"file": (Path(path).name, f)}, timeout=120)
        return int(self._check(r, f"upload of {Path(path).name}")["id"])

    def software(self) -> list[dict[str, Any]]:
        r = self.session.get(self.url + "/api/v1/software", timeout=30)
        return list(self._check(r, "software list")["software"])

    def assign(self, device: str, software: int | str) -> None:
        r = self.session.patch(self.url + "/api/v1/devices",
                               json={"devices": [device], "software": str(software)},
                               timeout=30)
        self._check(r, "assign")

    def patch_device(self, device: str, **fields: Any) -> None:
        r = self.session.patch(self.url + "/api/v1/devices",
                               json={"devices": [device], **fields}, timeout=30)
        self._check(r, "device update")

    def register_device(self, device: str, token: str) -> None:
        """Create ``device`` (if new) with its own TargetToken (PUT /api/v1/devices)."""
        r = self.session.put(self.url + "/api/v1/devices",
                             json={"devices": [device], "auth_token": token}, timeout=30)
        self._check(r, f"registration of {device}")

    def devices(self) -> list[dict[str, Any]]:
        r = self.session.get(self.url + "/api/v1/devices", timeout=30)
        return list(self._check(r, "device list")["devices"])

    def device(self, device: str) -> dict[str, Any]:
        for d in self.devices():
            if d["id"] == device:
                return d
        raise GoosebitError(f"goosebit knows no device {device!r}")

    def log(self, device: str) -> str:
        r = self.session.get(self.url + f"/api/v1/devices/{device}/log", timeout=30)
        return str(self._check(r, "device log").get("log") or "")

    def __enter__(self) -> Goosebit:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    """``python -m ferry.sim.goosebit DIR [PORT]``: run goosebit until Ctrl-C."""
    args = sys.argv[1:] if argv is None else argv
    gb = Goosebit(Path(args[0]).resolve(), port=int(args[1]) if len(args) > 1 else 0)
    gb.start()
    print(f"goosebit on {gb.url} (admin {ADMIN[0]} / {ADMIN[1]}); Ctrl-C stops it")
    try:
        while gb.proc is not None and gb.proc.poll() is None:
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        gb.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


__all__ = ["ADMIN", "Goosebit", "GoosebitError", "find_venv", "free_port", "port_free"]
