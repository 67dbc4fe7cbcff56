"""Byte compatibility with libubootenv (Debian's libubootenv-tool: fw_printenv,
fw_setenv), an independent implementation of the U-Boot env format: ferry writes and
fw_printenv reads; fw_setenv -s writes and ferry reads; single and redundant layouts."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from ferry.daemon.boot.ubootenv import EnvStore

SIZE = 0x4000

TRICKY = {
    "bootcmd": "run bootchooser; echo SLOT=${slot}; saveenv; poweroff",
    "BOOT_ORDER": "B A",
    "spaces": "a  b   c",
    "subst": "${BOOT_ORDER} and $BOOT_A_LEFT",
    "semi": ";;;",
    "quote": "say \"hi\" 'there'",
    "eq": "k=v=w",
}


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed; run 'bash .ci/setup' (libubootenv-tool)")
    return path


def setup_env(tmp_path: Path, layout: str, flags: str = "incremental") -> tuple[EnvStore, Path]:
    img = tmp_path / "env.img"
    img.write_bytes(b"\xff" * (2 * SIZE))
    lines = f"{img} 0x0 {SIZE:#x} {SIZE:#x}\n"
    if layout == "redundant":
        lines += f"{img} {SIZE:#x} {SIZE:#x} {SIZE:#x}\n"
    cfg = tmp_path / "fw_env.config"
    cfg.write_text(lines)  # absolute paths: libubootenv needs them
    return EnvStore.from_config(cfg, flags=flags, lock_file=tmp_path / "lock"), cfg


def printenv(cfg: Path) -> dict[str, str]:
    out = subprocess.run([tool("fw_printenv"), "-c", str(cfg)], capture_output=True,
                         text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    env = {}
    for line in out.stdout.splitlines():
        k, _, v = line.partition("=")
        env[k] = v
    return env


def setenv_script(cfg: Path, tmp_path: Path, values: dict[str, str], *,
                  defaults: bool = False) -> None:
    script = tmp_path / "script.txt"
    script.write_text("".join(f"{k}={v}\n" for k, v in values.items()))
    argv = [tool("fw_setenv"), "-c", str(cfg)]
    if defaults:  # blank flash: libubootenv needs a default env file
        (tmp_path / "defaults.txt").write_text("bootdelay=0\n")
        argv += ["-f", str(tmp_path / "defaults.txt")]
    out = subprocess.run([*argv, "-s", str(script)], capture_output=True, text=True,
                         timeout=30)
    assert out.returncode == 0, out.stderr


@pytest.mark.parametrize(("layout", "flags"), [("single", "incremental"),
                                               ("redundant", "incremental"),
                                               ("redundant", "boolean")])
def test_ferry_writes_fw_printenv_reads(tmp_path, layout, flags):
    store, cfg = setup_env(tmp_path, layout, flags)
    store.initialize({"bootdelay": "0"})
    store.update(TRICKY)
    assert printenv(cfg) == {"bootdelay": "0", **TRICKY}
    # several writes in a row: libubootenv must keep choosing ferry's newest copy
    for i in range(4):
        store.update({"BOOT_A_LEFT": str(i)})
        assert printenv(cfg)["BOOT_A_LEFT"] == str(i)
    out = subprocess.run([tool("fw_printenv"), "-c", str(cfg), "-n", "subst"],
                         capture_output=True, text=True, timeout=30)
    assert out.stdout == TRICKY["subst"] + "\n"


@pytest.mark.parametrize("layout", ["single", "redundant"])
def test_fw_setenv_writes_ferry_reads(tmp_path, layout):
    store, cfg = setup_env(tmp_path, layout)
    setenv_script(cfg, tmp_path, TRICKY, defaults=True)  # onto blank flash
    assert store.read() == {"bootdelay": "0", **TRICKY}
    for i in range(4):
        setenv_script(cfg, tmp_path, {"BOOT_B_LEFT": str(i), "BOOT_ORDER": f"A B {i}"})
        env = store.read()
        assert env["BOOT_B_LEFT"] == str(i) and env["BOOT_ORDER"] == f"A B {i}"


def test_interleaved_writers_agree(tmp_path):
    """ferry and fw_setenv take turns on one redundant env; each sees the other's last word."""
    store, cfg = setup_env(tmp_path, "redundant")
    store.initialize({"n": "0"})
    for i in range(1, 7):
        if i % 2:
            store.update({"n": str(i)})
        else:
            setenv_script(cfg, tmp_path, {"n": str(i)})
        assert printenv(cfg)["n"] == str(i)
        assert store.read()["n"] == str(i)


def test_fw_printenv_rejects_what_ferry_rejects(tmp_path):
    """A flipped data byte: both refuse the env (U-Boot would load its default env)."""
    store, cfg = setup_env(tmp_path, "single")
    store.initialize({"a": "1"})
    img = tmp_path / "env.img"
    raw = bytearray(img.read_bytes())
    raw[6] ^= 0x20
    img.write_bytes(bytes(raw))
    out = subprocess.run([tool("fw_printenv"), "-c", str(cfg)], capture_output=True,
                         text=True, timeout=30)
    assert out.returncode != 0
    from ferry.daemon.boot.ubootenv import NoValidEnvError

    with pytest.raises(NoValidEnvError):
        store.read()
