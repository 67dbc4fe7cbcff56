"""Bad input through the real CLI (a child process): each case gives a clear one-line
error, leaves the running slot untouched and leaves a journal entry saying why."""

from __future__ import annotations

import hashlib
import json
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from install_gateway import Gateway, make_bundle, make_gateway, make_image
from install_http import Server


@pytest.fixture
def gw(tmp_path: Path) -> Gateway:
    g = make_gateway(tmp_path / "gw", slot_size=1 << 20)
    text = g.config_path.read_text().replace(
        "[install]\n", "[install]\ndownload_stall_timeout = 2.0\ndownload_retries = 2\n")
    g.config_path.write_text(text)
    return g


@pytest.fixture
def bundle(gw: Gateway, tmp_path: Path) -> Path:
    return make_bundle(gw, tmp_path / "www" / "b.swu", version="1.1.0",
                       image=make_image("1.1.0", 600_000))


def digest(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def check_refused(gw: Gateway, proc: subprocess.CompletedProcess[str], match: str) -> None:
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines and lines[-1].startswith("ferry: ") and match in lines[-1], proc.stderr
    assert "Traceback" not in proc.stderr
    hist = gw.ferry("history", "--json")
    dep = json.loads(hist.stdout)[0]
    assert dep["result"] == "failure" and match in dep["error"]
    assert gw.boot() == "A"  # the gateway still boots its running slot


@pytest.mark.parametrize(("mode", "match"), [
    ("status:404", "HTTP 404"),
    ("status:500", "HTTP 500"),
    ("redirect:ftp://127.0.0.1/b.swu", "refusing redirect"),
])
def test_http_failures(gw: Gateway, bundle: Path, mode: str, match: str) -> None:
    a = digest(gw.slot_path("A"))
    with Server(bundle) as srv:
        srv.mode = mode
        proc = gw.ferry("install", srv.url)
    check_refused(gw, proc, match)
    assert digest(gw.slot_path("A")) == a


def test_slow_server(gw: Gateway, bundle: Path) -> None:
    with Server(bundle) as srv:
        srv.mode = "slow"
        srv.stall = 20
        proc = gw.ferry("install", srv.url)
    check_refused(gw, proc, "stalled")


def test_server_ignoring_range_after_a_drop(gw: Gateway, bundle: Path) -> None:
    with Server(bundle) as srv:
        srv.script = ["drop-once"]
        srv.mode = "ignore-range"
        srv.cut_at = 300_000
        proc = gw.ferry("install", srv.url)
    check_refused(gw, proc, "Range request")
    assert "B" not in gw.env()["BOOT_ORDER"].split()  # half-written B is not bootable


def test_dropped_connection_resumes_and_installs(gw: Gateway, bundle: Path) -> None:
    with Server(bundle) as srv:
        srv.script = ["drop-once"]
        srv.cut_at = 300_000
        proc = gw.ferry("install", srv.url)
        assert proc.returncode == 0, proc.stderr
        assert srv.requests[1][1]["Range"] == "bytes=300000-"
    assert gw.boot() == "B"


def test_truncated_bundle_file_on_server(gw: Gateway, bundle: Path) -> None:
    bundle.write_bytes(bundle.read_bytes()[:400_000])
    with Server(bundle) as srv:
        proc = gw.ferry("install", srv.url)
    check_refused(gw, proc, "bundle ends at byte 400000")
    assert "B" not in gw.env()["BOOT_ORDER"].split()


def test_full_disk(gw: Gateway, bundle: Path) -> None:
    def cap() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # get EFBIG instead of dying
        resource.setrlimit(resource.RLIMIT_FSIZE, (400_000, 400_000))

    a = digest(gw.slot_path("A"))
    proc = subprocess.run(
        [sys.executable, "-m", "ferry.daemon.cli.main", "--config", str(gw.config_path),
         "install", str(bundle)],
        capture_output=True, text=True, timeout=120, env=gw.child_env(), preexec_fn=cap)
    check_refused(gw, proc, "file size limit reached")
    assert digest(gw.slot_path("A")) == a
    assert "B" not in gw.env()["BOOT_ORDER"].split()
