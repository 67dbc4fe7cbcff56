"""Shared fixtures. Tests never depend on wall-clock speed; see bench/ for that."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

# CI runs on a loaded 2-core machine: no per-example deadlines or speed health checks,
# and a fixed example sequence so a run is reproducible (a failure replays exactly).
settings.register_profile(
    "ferry", deadline=None, derandomize=True, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                           HealthCheck.filter_too_much],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ferry"))

ROOT = Path(__file__).resolve().parent.parent


def require_tool(name: str) -> str:
    """Path of an external peer tool; .ci/setup installs every one, so absence is a failure."""
    path = shutil.which(name) or shutil.which(name, path=str(ROOT / ".venv" / "bin"))
    if path is None:
        pytest.fail(f"{name} is not installed; run 'bash .ci/setup' (it installs every peer)")
    return path


@pytest.fixture
def venv_bin() -> Path:
    return ROOT / ".venv" / "bin"


@pytest.fixture(autouse=True)
def _path_has_venv(monkeypatch: pytest.MonkeyPatch) -> None:
    # Peer tools installed from PyPI (imgtool, smpmgr, swugenerator, goosebit) live in
    # the venv's bin; make subprocesses find them the same way CI does.
    monkeypatch.setenv("PATH", f"{ROOT / '.venv' / 'bin'}{os.pathsep}{os.environ['PATH']}")


@pytest.fixture(autouse=True)
def _umask_restored() -> Iterator[None]:
    """ferryd's main() and ``ferry --config`` set the process umask to 027, as they
    should; called in-process by a test, that would leak into every later test's files."""
    before = os.umask(0o022)
    os.umask(before)
    yield
    os.umask(before)
