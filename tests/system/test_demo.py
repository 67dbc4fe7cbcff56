"""`ferry demo` end to end, as a newcomer runs it: goosebit, simulated gateway and MCU."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def ferry() -> list[str]:
    exe = shutil.which("ferry", path=str(ROOT / ".venv" / "bin")) or shutil.which("ferry")
    if exe is None:
        pytest.fail("the ferry command is not installed; run 'bash .ci/setup'")
    return [exe]


def run_demo(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200"}
    env.pop("FERRY_BOOT_ID_PATH", None)
    proc = subprocess.run([*ferry(), "demo", "--dir", str(tmp_path / "demo"), *args],
                          capture_output=True, text=True, timeout=400, env=env,
                          start_new_session=True)
    sys.stdout.write(proc.stdout[-3000:])
    sys.stderr.write(proc.stderr[-3000:])
    return proc


@pytest.mark.system
def test_demo_happy_path(tmp_path):
    proc = run_demo(tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "DEMO OK" in out
    for step in range(1, 11):
        assert f"[{step}/10]" in out
    assert "goosebit is up at http://127.0.0.1:" in out
    assert "gateway boots: U-Boot picks slot B, rootfs version 2.0.0" in out
    assert "mcu0: upload 100%" in out
    assert "state:      Finished" in out and "sw_version: 2.0.0" in out
    assert "target mcu0: ok version 1.4.0" in out
    assert "overall:   OK" in out
    # the second act: the MCU as a controller of its own, goosebit's per-device token
    assert "device controllers: 1" in out and "ferry-demo-gw-1.mcu0" in out
    assert "a poll without it: HTTP 401, refused" in out
    assert "ferry polls ferry-demo-gw-1.mcu0 with its TargetToken: ok" in out
    act_two = out[out.index("[10/10]"):]
    assert "mcu0: upload 100%" in act_two and "staging target firmware" in act_two
    assert re.search(r"goosebit: device ferry-demo-gw-1 +goosebit: device "
                     r"ferry-demo-gw-1\.mcu0", act_two)
    assert re.search(r"sw_version: 2\.0\.0 +sw_version: 1\.5\.0", act_two)
    assert "target mcu0: ok version 1.5.0" in act_two
    assert "ACT TWO OK: mcu0 runs 1.5.0" in out
    assert "gateway's entry is unchanged (2.0.0, Finished)" in out
    # everything it started is gone: nothing listens on goosebit's port any more
    port = int(re.search(r"goosebit is up at http://127\.0\.0\.1:(\d+)", out).group(1))
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()


@pytest.mark.system
def test_demo_fail_health_rolls_back(tmp_path):
    proc = run_demo(tmp_path, "--fail", "health")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "DEMO OK: the new rootfs failed its health check" in out
    assert "U-Boot picks slot B, rootfs version 2.0.0" in out
    assert out.rindex("U-Boot picks slot A") > out.index("U-Boot picks slot B")
    assert "state:      Error" in out and "sw_version: 1.0.0" in out
    assert "health check failed" in out and "app.service: failed to start" in out
    assert "mcu0: upload" not in out  # the MCU was left alone
    assert "[8/" not in out and "ACT TWO" not in out  # no second act after a rollback


@pytest.mark.system
def test_demo_port_in_use_says_what_to_do(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        proc = run_demo(tmp_path, "--port", str(port))
    assert proc.returncode == 1
    assert f"port {port} on 127.0.0.1 is in use" in proc.stderr
    assert "--port" in proc.stderr


@pytest.mark.system
def test_demo_real_uboot_rolls_back_through_the_real_bootloader(tmp_path):
    for tool in ("qemu-system-aarch64", "mkimage"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} missing; run 'bash .ci/setup' (.ci/deps/uboot.*)")
    proc = run_demo(tmp_path, "--real-uboot", "--fail", "health")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "--real-uboot: every boot runs the real U-Boot" in out
    boots = re.findall(r"the real U-Boot \(QEMU\) picks slot (\w)", out)
    assert boots == ["A", "B", "A"]
    assert "DEMO OK: the new rootfs failed its health check" in out
    console = (tmp_path / "demo" / "gateway" / "uboot" / "console.log").read_text()
    assert console.count("FERRY: boot slot=") == 3
    assert "bad CRC" not in console


@pytest.mark.system
def test_demo_keep_leaves_it_running_and_says_how_to_explore(tmp_path):
    import signal
    import threading
    import time

    import requests

    env = {**os.environ, "COLUMNS": "200"}
    env.pop("FERRY_BOOT_ID_PATH", None)
    # Ctrl-C must reach it as in a terminal: a job started in the background by a
    # non-interactive shell (how CI may run us) inherits SIGINT ignored, and Python
    # then never raises KeyboardInterrupt
    proc = subprocess.Popen([*ferry(), "demo", "--keep", "--dir", str(tmp_path / "demo")],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    lines: list[str] = []
    ready = threading.Event()

    def pump():
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if "assign another bundle there" in line:
                ready.set()

    t = threading.Thread(target=pump, daemon=True)
    t.start()
    ui = ""
    try:
        assert ready.wait(300), "".join(lines[-40:])
        out = "".join(lines)
        assert "DEMO OK" in out
        ui = re.search(r"goosebit UI:\s+(http://127\.0\.0\.1:\d+)/ui", out).group(1)
        status_cmd = re.search(r"ferry status:\s+(.*)", out).group(1)
        assert requests.get(ui + "/login", timeout=30).status_code == 200
        # the printed status command works as printed
        status = subprocess.run(status_cmd.replace("ferry ", f"{ferry()[0]} ", 1),
                                shell=True, capture_output=True, text=True, timeout=60)
        assert status.returncode == 0, status.stderr
        assert "slot B (committed)" in status.stdout
        time.sleep(1)
        assert proc.poll() is None  # still running
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        hung = False
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            hung = True
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        t.join(timeout=10)
    assert not hung, "ferry demo did not stop within 60 s of Ctrl-C:\n" + "".join(lines[-30:])
    assert "stopping" in "".join(lines), "".join(lines[-30:])  # its Ctrl-C path ran
    port = int(ui.rsplit(":", 1)[1])
    deadline = time.monotonic() + 20  # goosebit's shutdown may outlast ferry's exit a bit
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=5).close()
        except ConnectionRefusedError:
            break
        time.sleep(0.5)
    with pytest.raises(ConnectionRefusedError):  # Ctrl-C stopped goosebit too
        socket.create_connection(("127.0.0.1", port), timeout=5).close()


@pytest.mark.system
def test_demo_without_goosebit_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv("FERRY_GOOSEBIT_VENV", str(tmp_path / "no-such-venv"))
    proc = run_demo(tmp_path)
    assert proc.returncode == 1
    assert "goosebit is not installed" in proc.stderr
    assert "bash .ci/setup" in proc.stderr and "pip install goosebit==" in proc.stderr
