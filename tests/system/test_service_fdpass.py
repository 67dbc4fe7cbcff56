"""Group ``ferry`` acts with its own rights over D-Bus, and local users see no secrets
(issue #16 item 4, D-Bus Flash, GetStatus): a real ferryd on a private dbus-daemon, the
caller an unprivileged uid in a subprocess (uid 65534 stands in for a member of group
ferry through ferryd's FERRY_TEST_DBUS_GROUP test hook)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from dbus_fixtures import (
    VENV_BIN,
    private_bus,
    run_as_nobody,
    running_ferryd,
    world_readable_dir,
)
from install_gateway import make_bundle, make_gateway, make_image

from ferry.daemon.cli import dbus_client as client
from ferry.daemon.journal import Journal

AS_MEMBER = {"FERRY_TEST_DBUS_GROUP": "nogroup"}  # uid 65534's own group

# A caller that speaks to ferryd with dbus-next directly (not through ferry's client,
# which would never send these): prints the D-Bus error name and text, or the reply.
RAW_CALL = """
import asyncio, json, os, sys
from dbus_next import Message, MessageType, Variant
from dbus_next.aio import MessageBus

async def main():
    bus = await MessageBus(bus_address=os.environ["FERRY_BUS_ADDRESS"],
                           negotiate_unix_fd=True).connect()
    member, signature, body = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    if signature == "sa{sv}":
        body = [body[0], {}]
    reply = await bus.call(Message(destination="org.ferry.Ferry1", path="/org/ferry/Ferry1",
                                   interface="org.ferry.Ferry1", member=member,
                                   signature=signature, body=body))
    if reply.message_type == MessageType.ERROR:
        print("ERROR", reply.error_name, reply.body[0] if reply.body else "")
    else:
        print("OK", json.dumps(reply.body))

asyncio.run(main())
"""


@pytest.fixture
def gateway(tmp_path: Path):
    return make_gateway(tmp_path / "gw", slot_size=4 << 20)


def _deployments(gateway) -> list:
    return Journal.open(gateway.config.gateway.data_dir).history(limit=10)


def test_member_cannot_install_a_bundle_only_root_can_read(gateway):
    """Old ferryd opened the path it was given, as root: the member's `ferry install`
    of a 0600 root file went through. Now the client opens it with the member's rights."""
    before = gateway.env()
    with world_readable_dir() as shared:
        secret = make_bundle(gateway, shared / "root-only.swu", version="2.0.0",
                             image=make_image("2.0.0", 1 << 20))
        secret.chmod(0o600)
        readable = shutil.copy(secret, shared / "readable.swu")
        Path(readable).chmod(0o644)
        with private_bus(with_policy=False) as address, \
                running_ferryd(gateway.config_path, address,
                               FERRY_BOOT_ID_PATH=str(gateway.boot_id), **AS_MEMBER):
            denied = run_as_nobody([str(VENV_BIN / "ferry"), "install", str(secret)],
                                   address)
            assert denied.returncode == 4, denied.stderr  # exitcodes.DENIED
            assert "permission denied" in denied.stderr, denied.stderr
            assert "your own rights" in denied.stderr
            assert _deployments(gateway) == []  # ferryd never saw a request
            assert gateway.env() == before
            # the same bundle, readable by the member, installs through the descriptor
            ok = run_as_nobody([str(VENV_BIN / "ferry"), "install", "--json", readable],
                               address)
            assert ok.returncode == 0, (ok.stdout, ok.stderr)
            assert json.loads(ok.stdout.splitlines()[-1]) == {"result": "ok", "error": ""}
    deps = _deployments(gateway)
    assert len(deps) == 1 and deps[0].version == "2.0.0" and deps[0].origin == "dbus"
    assert deps[0].source.startswith("/proc/self/fd/")  # never a path ferryd opened
    assert gateway.reboot_flag.exists()


def test_path_string_to_install_is_refused_for_a_member(gateway):
    with world_readable_dir() as shared:
        bundle = make_bundle(gateway, shared / "b.swu", version="2.0.0",
                             image=make_image("2.0.0", 1 << 20))
        bundle.chmod(0o600)
        with private_bus(with_policy=False) as address, \
                running_ferryd(gateway.config_path, address,
                               FERRY_BOOT_ID_PATH=str(gateway.boot_id), **AS_MEMBER):
            out = run_as_nobody([str(VENV_BIN / "python"), "-c", RAW_CALL, "Install",
                                 "sa{sv}", json.dumps([str(bundle)])], address)
            assert out.stdout.startswith("ERROR org.ferry.Ferry1.Error.PermissionDenied"), \
                (out.stdout, out.stderr)
            assert "only from root" in out.stdout and "ferry install" in out.stdout
    assert _deployments(gateway) == []
    assert not gateway.reboot_flag.exists()


def test_getstatus_and_lasterror_show_urls_without_credentials_or_query(gateway, monkeypatch):
    url = "http://fleet:s3cr3t-pass@127.0.0.1:9/bundles/gw.swu?X-Amz-Signature=abc123#frag"
    text = gateway.config_path.read_text()  # fail the download at once, not after retries
    gateway.config_path.write_text(
        text.replace("[install]\n", "[install]\ndownload_retries = 0\n", 1))
    with private_bus(with_policy=True) as address, \
            running_ferryd(gateway.config_path, address,
                           FERRY_BOOT_ID_PATH=str(gateway.boot_id)):
        monkeypatch.setenv("FERRY_BUS_ADDRESS", address)
        result, error = client.install(url, force=False, on_progress=lambda *a: None)
        assert result == 1
        status = run_as_nobody([str(VENV_BIN / "python"), "-c", RAW_CALL, "GetStatus", "",
                                "[]"], address)
        prop = subprocess.run(
            ["dbus-send", f"--bus={address}", "--print-reply", "--dest=org.ferry.Ferry1",
             "/org/ferry/Ferry1", "org.freedesktop.DBus.Properties.Get",
             "string:org.ferry.Ferry1", "string:LastError"],
            capture_output=True, text=True, check=True).stdout
    assert status.stdout.startswith("OK "), (status.stdout, status.stderr)
    doc = json.loads(json.loads(status.stdout[3:])[0])
    last = doc["install"]["last"]
    assert last["source"] == "http://127.0.0.1:9/bundles/gw.swu"
    for shown in (status.stdout, prop, error):
        assert "s3cr3t" not in shown and "X-Amz-Signature" not in shown and "frag" not in shown
    assert last["error"]  # the download error is there, stripped
    # the journal itself (root's) still holds the whole URL
    assert _deployments(gateway)[0].source == url


def test_a_member_may_still_install_from_a_url(gateway):
    """URLs stay strings for everyone allowed to install (no descriptor to pass)."""
    with private_bus(with_policy=False) as address, \
            running_ferryd(gateway.config_path, address,
                           FERRY_BOOT_ID_PATH=str(gateway.boot_id), **AS_MEMBER):
        out = run_as_nobody([str(VENV_BIN / "python"), "-c", RAW_CALL, "Install", "sa{sv}",
                             json.dumps(["http://127.0.0.1:9/x.swu"])], address)
    assert out.stdout.startswith('OK ["started"]'), (out.stdout, out.stderr)
