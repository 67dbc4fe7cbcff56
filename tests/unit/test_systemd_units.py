"""systemd/ files: units pass `systemd-analyze verify`, the rest is well-formed.

The units name /usr/bin/ferry and /usr/bin/ferryd; for verification they are pointed
at this checkout's console scripts, since systemd-analyze checks that ExecStart exists.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
UNITS = sorted((ROOT / "systemd").glob("*.service"))
SYSTEMD_UNITS = [u for u in UNITS if not u.read_text().lstrip().startswith(
    ("[D-BUS Service]", "# D-Bus activation"))]


def _systemd_analyze() -> str:
    path = shutil.which("systemd-analyze")
    if path is None:
        pytest.fail("systemd-analyze missing: run 'bash .ci/setup' (Debian package systemd)")
    return path


@pytest.mark.parametrize("unit", SYSTEMD_UNITS, ids=lambda p: p.name)
def test_unit_verifies(unit: Path, tmp_path: Path) -> None:
    venv_bin = ROOT / ".venv" / "bin"
    text = unit.read_text()
    text = text.replace("/usr/bin/ferryd", str(venv_bin / "ferryd"))
    text = re.sub(r"/usr/bin/ferry\b", str(venv_bin / "ferry"), text)
    copy = tmp_path / unit.name
    copy.write_text(text)
    proc = subprocess.run([_systemd_analyze(), "verify", "--man=no", str(copy)],
                          capture_output=True, text=True)
    # verify also reports problems in unrelated host units it loads; keep ours only.
    ours = [line for line in proc.stderr.splitlines() if unit.name in line]
    assert proc.returncode == 0 and not ours, proc.stderr


def test_expected_units_exist() -> None:
    names = {u.name for u in UNITS}
    assert {"ferryd.service", "ferry-health.service", "ferry-mark-good.service",
            "org.ferry.Ferry1.service"} <= names


def test_ferryd_is_notify_with_watchdog() -> None:
    text = (ROOT / "systemd" / "ferryd.service").read_text()
    assert "Type=notify" in text
    assert re.search(r"^WatchdogSec=\d+", text, re.M)
    assert "Restart=on-failure" in text


def test_health_is_part_of_boot_assessment() -> None:
    health = (ROOT / "systemd" / "ferry-health.service").read_text()
    assert "Before=boot-complete.target" in health
    assert "RequiredBy=boot-complete.target" in health
    good = (ROOT / "systemd" / "ferry-mark-good.service").read_text()
    assert "After=boot-complete.target" in good and "Requires=boot-complete.target" in good


def test_dbus_policy_restricts_state_changes_to_root_and_ferry_group() -> None:
    tree = ET.parse(ROOT / "systemd" / "org.ferry.Ferry1.conf")
    policies = tree.getroot().findall("policy")
    by_key = {tuple(sorted(p.attrib.items())): p for p in policies}
    default = by_key[(("context", "default"),)]
    denies = [d.attrib for d in default.findall("deny")]
    assert {"send_destination": "org.ferry.Ferry1"} in denies
    allowed_members = {a.attrib.get("send_member") for a in default.findall("allow")}
    assert allowed_members <= {None, "Get", "GetAll", "GetStatus", "ListTargets"}
    assert (("group", "ferry"),) in by_key
    assert (("user", "root"),) in by_key


def test_tmpfiles_and_sysusers() -> None:
    assert "g ferry" in (ROOT / "systemd" / "ferry.sysusers").read_text()
    assert "/var/lib/ferry" in (ROOT / "systemd" / "ferry.tmpfiles").read_text()


def _directive(text: str, name: str) -> str:
    found = re.findall(rf"^{name}=(.*)$", text, re.M)
    assert len(found) == 1, (name, found)
    return found[0].strip()


def test_state_directory_is_tmpfiles_root_ferry_2750_and_umask_is_027() -> None:
    """tmpfiles alone owns /var/lib/ferry. A ``StateDirectory=`` would be chowned by
    systemd to the unit's User=/Group= (root:root, ferryd has none) at every start
    (systemd.exec(5)), taking group ferry's read access to the journal away: seen on
    the gateway in a box (docs/box.md). ferryd still writes there through
    ReadWritePaths= (ProtectSystem=full does not cover /var anyway)."""
    unit = (ROOT / "systemd" / "ferryd.service").read_text()
    tmpfiles = (ROOT / "systemd" / "ferry.tmpfiles").read_text()
    dirs = {line.split()[1]: line.split()[2:5] for line in tmpfiles.splitlines()
            if line.startswith("d ")}
    # setgid: files ferryd creates there (the journal) get group ferry, not root
    assert dirs["/var/lib/ferry"] == ["2750", "root", "ferry"]
    assert dirs["/var/lib/ferry/staging"] == ["0750", "root", "ferry"]
    assert not re.findall(r"^StateDirectory(Mode)?=", unit, re.M)
    assert "/var/lib/ferry" in _directive(unit, "ReadWritePaths").split()
    assert _directive(unit, "UMask") == "0027"


def test_the_env_lock_lives_in_ferrys_runtime_directory() -> None:
    from ferry.daemon.config import BootloaderConfig

    unit = (ROOT / "systemd" / "ferryd.service").read_text()
    tmpfiles = (ROOT / "systemd" / "ferry.tmpfiles").read_text()
    lock_dir = BootloaderConfig().lock_file.parent
    assert Path("/run") / _directive(unit, "RuntimeDirectory") == lock_dir
    assert _directive(unit, "RuntimeDirectoryPreserve") == "yes"
    assert f"d {lock_dir} 0755 root root -" in tmpfiles


def test_ferryd_sets_umask_027_without_systemd(tmp_path: Path) -> None:
    """A start outside systemd (no UMask=) must be as tight: main() sets it itself."""
    script = ("import os, sys\n"
              "os.umask(0o022)\n"
              "from ferry.daemon.service import ferryd\n"
              f"rc = ferryd.main(['--check-health', '--config', '{tmp_path}/missing.toml'])\n"
              "print(oct(os.umask(0)), rc)\n")
    out = subprocess.run([str(ROOT / ".venv" / "bin" / "python"), "-c", script],
                         capture_output=True, text=True, timeout=60)
    assert out.stdout.split()[0] == "0o27", (out.stdout, out.stderr)


def test_standalone_cli_sets_umask_027_only_as_the_gateway(tmp_path: Path) -> None:
    """``ferry --config`` writes the journal and slot records itself: ferryd's modes.
    Without --config (``ferry bundle create`` on a build host) the user's umask stays."""
    script = ("import os\n"
              "os.umask(0o022)\n"
              "from ferry.daemon.cli.main import main\n"
              "rc = main(sys_argv)\n"
              "print(oct(os.umask(0)), rc)\n")
    py = str(ROOT / ".venv" / "bin" / "python")
    got = {}
    for name, argv in (("gateway", ["--config", f"{tmp_path}/missing.toml", "status"]),
                       ("build host", ["bundle", "inspect", f"{tmp_path}/missing.swu"])):
        out = subprocess.run([py, "-c", f"sys_argv = {argv!r}\n" + script],
                             capture_output=True, text=True, timeout=60)
        got[name] = out.stdout.split()[0] if out.stdout.split() else (out.stdout, out.stderr)
    assert got["gateway"] == "0o27", got
    assert got["build host"] == "0o22", got


def test_ferryd_does_not_wait_for_the_network() -> None:
    """The box booted without a NIC: ferryd (and with it the health check and the boot's
    commit) started only when systemd-networkd-wait-online gave up, 2 minutes later."""
    unit = (ROOT / "systemd" / "ferryd.service").read_text()
    lines = [ln for ln in unit.splitlines() if not ln.startswith("#")]
    assert not any("network-online.target" in ln for ln in lines), unit
