"""The package layout promises of the foundation issue."""

from __future__ import annotations

import subprocess
import sys

from ferry.daemon.cli.main import build_parser, main


def test_top_level_folders_do_not_shadow_pypa_packaging(tmp_path):
    # From the project root (cwd on sys.path), `import packaging` must still be PyPA's.
    root = __import__("pathlib").Path(__file__).resolve().parents[2]
    out = subprocess.run(
        [sys.executable, "-c", "import packaging, ferry.packaging; print(packaging.__file__)"],
        cwd=root, capture_output=True, text=True, check=True,
    ).stdout
    assert "site-packages" in out


def test_cli_help_lists_commands(capsys):
    parser = build_parser()
    assert parser.prog == "ferry"
    assert main([]) == 2
    assert "COMMAND" in capsys.readouterr().out
