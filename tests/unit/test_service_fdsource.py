"""Descriptors ferryd accepts for a bundle or an image, and what a restart does to a
deployment that was reading one (issue #16 item 4)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from install_gateway import make_gateway

from ferry.daemon.install.pipeline import make_context
from ferry.daemon.service import fdsource
from ferry.daemon.service.fdsource import BadDescriptor


def test_a_readable_regular_file_gives_a_private_close_on_exec_copy(tmp_path: Path) -> None:
    f = tmp_path / "b.swu"
    f.write_bytes(b"070701")
    fd = os.open(f, os.O_RDONLY)
    try:
        mine = fdsource.take(fd, "bundle")
    finally:
        os.close(fd)
    try:
        assert not os.get_inheritable(mine)  # a reboot command never inherits it
        with open(fdsource.path(mine), "rb") as stream:  # how the pipeline opens it
            assert stream.read() == b"070701"
    finally:
        os.close(mine)


@pytest.mark.parametrize("opener, message", [
    (lambda p: os.open(p / "f", os.O_PATH), "not open for reading"),
    (lambda p: os.open(p / "f", os.O_WRONLY), "not open for reading"),
    (lambda p: os.open(p, os.O_RDONLY | os.O_DIRECTORY), "not a directory"),
    (lambda p: os.open("/dev/null", os.O_RDONLY), "not a character device"),
])
def test_descriptors_root_must_not_reopen_are_refused(tmp_path: Path, opener,
                                                      message: str) -> None:
    (tmp_path / "f").write_bytes(b"x")
    fd = opener(tmp_path)
    try:
        with pytest.raises(BadDescriptor, match=message):
            fdsource.take(fd, "bundle")
    finally:
        os.close(fd)


def test_a_missing_descriptor_says_to_pass_one() -> None:
    with pytest.raises(BadDescriptor, match="no file descriptor arrived"):
        fdsource.take(None, "image")


def test_restart_fails_an_fd_deployment_before_the_slot_switch(tmp_path: Path) -> None:
    """After ferryd restarts, /proc/self/fd/N is some other file of the new process (or
    none): the deployment fails with what to do, it is never re-opened."""
    gw = make_gateway(tmp_path / "gw")
    ctx = make_context(gw.config)
    dep_id = ctx.journal.create(fdsource.path(7), origin="dbus")
    ctx.journal.begin_step(dep_id, "write", state="writing")
    assert fdsource.fail_unresumable(ctx) == dep_id
    dep = ctx.journal.get(dep_id)
    assert dep.result == "failure"
    assert "run 'ferry install' again" in (dep.error or "")
    assert ctx.journal.steps(dep_id)[-1].status == "failed"
    assert ctx.journal.pending() is None


@pytest.mark.parametrize("source, state", [
    ("/proc/self/fd/7", "rebooting"),  # past the slot switch: needs no bundle
    ("https://fleet.example/gw.swu", "writing"),  # a URL resumes by Range
    ("/media/usb/gw.swu", "writing"),  # root's path install reopens the path
])
def test_other_deployments_are_left_to_resume(tmp_path: Path, source: str,
                                              state: str) -> None:
    gw = make_gateway(tmp_path / "gw")
    ctx = make_context(gw.config)
    dep_id = ctx.journal.create(source, origin="dbus")
    ctx.journal.update(dep_id, state=state)
    assert fdsource.fail_unresumable(ctx) is None
    assert ctx.journal.get(dep_id).result is None


def test_ferryd_start_fails_the_fd_deployment_instead_of_resuming_it(tmp_path: Path) -> None:
    from ferry.daemon.service import ferryd
    from ferry.daemon.service.operations import GatewayEngine

    gw = make_gateway(tmp_path / "gw")
    engine = GatewayEngine(gw.config)
    dep_id = engine.ctx.journal.create(fdsource.path(999), origin="dbus")
    ferryd._resume(engine)
    dep = engine.ctx.journal.get(dep_id)
    assert dep.result == "failure"
    assert "file descriptor" in (dep.error or "") and "ferry install" in (dep.error or "")
