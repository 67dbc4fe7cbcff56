"""`ferry install` via ferryd: the client opens local files itself and says what happened
when ferryd goes away (issue #16 item 4)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import pytest

from ferry.daemon.cli import dbus_client as client
from ferry.daemon.cli import exitcodes
from ferry.daemon.cli.install import run_via_ferryd


def test_the_client_opens_a_local_bundle_and_sends_its_descriptor(tmp_path: Path,
                                                                  monkeypatch) -> None:
    bundle = tmp_path / "b.swu"
    bundle.write_bytes(b"070701")
    sent: list[tuple[str, str, list, list[int], bytes]] = []

    def fake_follow(method, signature, body, on_progress, unix_fds=None):
        data = os.pread(unix_fds[0], 16, 0) if unix_fds else b""
        sent.append((method, signature, body, unix_fds or [], data))
        return 0, ""

    monkeypatch.setattr(client, "follow", fake_follow)
    assert client.install(str(bundle), force=True, on_progress=lambda *a: None) == (0, "")
    method, signature, body, fds, data = sent[0]
    assert (method, signature, body[0], data) == ("InstallFd", "ha{sv}", 0, b"070701")
    assert body[1]["force"].value is True
    with pytest.raises(OSError):
        os.fstat(fds[0])  # closed once the call is done
    client.install("https://fleet.example/b.swu", force=False, on_progress=lambda *a: None)
    assert sent[1][:3] == ("Install", "sa{sv}", ["https://fleet.example/b.swu", sent[1][2][1]])


@pytest.mark.parametrize("make, error, message", [
    (lambda p: p / "missing.swu", client.DaemonError, "not found"),
    (lambda p: p, client.DaemonError, "not a regular file"),
])
def test_what_the_client_cannot_send_is_said_before_ferryd_hears_of_it(
        tmp_path: Path, make, error, message: str) -> None:
    with pytest.raises(error, match=message):
        client.open_for_ferryd(str(make(tmp_path)), "bundle")


def test_ferryd_leaving_mid_install_is_reported_not_waited_for(monkeypatch, capsys) -> None:
    monkeypatch.setattr(client, "install", lambda *a, **k: (client.RESULT_DAEMON_GONE,
                                                            client.DAEMON_GONE))
    args = argparse.Namespace(source="b.swu", force=False)
    assert run_via_ferryd(args) == exitcodes.FAILED
    err = capsys.readouterr().err
    assert "install interrupted: ferryd stopped" in err
    assert "run 'ferry install' again" in err


def test_the_client_does_not_import_the_pipeline_it_hands_the_bundle_to_ferryd() -> None:
    # The pipeline's imports (journal, sqlite3, packaging) were a third of the CPU of a
    # `ferry install` that only hands the bundle to ferryd (bench/install.py, issue #22).
    import subprocess
    import sys

    script = ("import sys\n"
              "from ferry.daemon.cli import install\n"
              "install.run_via_ferryd = lambda args: 0\n"
              "from ferry.daemon.cli.main import main\n"
              "rc = main(['install', 'https://fleet.example/b.swu'])\n"
              "mods = sys.modules\n"
              "print(rc, 'ferry.daemon.install.pipeline' in mods, 'sqlite3' in mods)\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=60)
    assert out.stdout.split() == ["0", "False", "False"], (out.stdout, out.stderr)
