"""The ``ferry`` console script skips the interpreter's teardown: nothing may be lost."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from ferry.daemon.cli import exitcodes
from ferry.daemon.cli.main import main
from ferry.daemon.service import memory

FERRY = Path(sys.executable).parent / "ferry"


def test_piped_output_is_complete_and_the_code_kept() -> None:
    out = subprocess.run([str(FERRY), "bundle", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    # the same command through main() and a normal interpreter exit
    full = subprocess.run([sys.executable, "-c", "import sys; from ferry.daemon.cli.main "
                           "import main; sys.exit(main(['bundle', '--help']))"],
                          capture_output=True, text=True)
    assert out.stdout == full.stdout and len(out.stdout) > 200
    bad = subprocess.run([str(FERRY), "install"], capture_output=True, text=True)
    assert bad.returncode == exitcodes.USAGE
    assert "give a bundle path or URL" in bad.stderr  # stderr flushed before _exit


def test_an_error_reaches_stderr_whole(tmp_path: Path) -> None:
    cfg = tmp_path / "none.toml"
    out = subprocess.run([str(FERRY), "--config", str(cfg), "history", "--json"],
                         capture_output=True, text=True)
    # a missing config: a clear error and its exit code, whole, through the pipe
    assert out.returncode != 0 and out.stderr.startswith("ferry: ") and out.stderr.endswith("\n")


def test_main_still_returns_in_process() -> None:
    assert main(["install"]) == exitcodes.USAGE  # run() exits; main() never does


def test_memory_release_runs_on_this_libc() -> None:
    assert memory.release() is True


def test_one_command_builds_only_its_parser() -> None:
    """`ferry install ...` imports and builds the install command only (demo alone
    imports ~20 ms of modules); --help and unknown commands still see every command."""
    from ferry.daemon.cli.main import _command

    assert _command(["--config", "x.toml", "--json", "install", "URL"]) == "install"
    assert _command(["--config", "install"]) is None  # "install" is the config's path
    assert _command(["nosuch", "install"]) is None
    assert _command(["--help"]) is None and _command([]) is None
    probe = ("import sys\nfrom ferry.daemon.cli.main import main\n"
             "try:\n    main(['--config', 'x', 'status', '--help'])\nexcept SystemExit:\n"
             "    pass\nprint('ferry.daemon.cli.demo' in sys.modules, "
             "'ferry.daemon.cli.status' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         check=True).stdout.split()
    assert out[-2:] == ["False", "True"]
    everything = subprocess.run([str(FERRY), "--help"], capture_output=True, text=True).stdout
    assert all(name in everything for name in ("status", "install", "demo", "sim", "flash"))
