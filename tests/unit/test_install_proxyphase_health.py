"""Proxy phase, MCUboot targets: flash on trial -> health -> confirm, or revert with the
reason; every stage journalled first, so a kill -9 at any point resumes to the right
decision. The target is the simulated MCUboot on a pty (in this process); the phase
that gets killed runs in a child process, as ferryd would."""

from __future__ import annotations

import hashlib
import io
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from install_gateway import Gateway, make_gateway
from smp_helpers import NEW, running_sim, running_version

from ferry.daemon.backend.pipeline_adapter import PipelineGateway
from ferry.daemon.install.pipeline import make_context
from ferry.daemon.install.proxyphase import run
from ferry.daemon.journal import Journal
from ferry.proxy.smp.transport import create
from ferry.proxy.transport import Target
from ferry.sim.mcu import SimMcu

TARGET = """
[[target]]
name = "sensor"
transport = "smp-serial"
address = "{port}"

[target.options]
timeout = "1"
boot_timeout = "10"
health_smp_group = 64
health_timeout_s = 0.6
health_interval_s = 0.1
"""

CHILD = """
import sys
from ferry.daemon.config import load_config
from ferry.daemon.install.pipeline import make_context
from ferry.daemon.install.proxyphase import run
from ferry.daemon.journal import Journal

config = load_config(sys.argv[1])
run(make_context(config, journal=Journal.open(config.gateway.data_dir)), int(sys.argv[2]))
"""


@pytest.fixture
def sim_factory() -> Iterator[Any]:
    sims: list[Any] = []

    def start(**kw: Any) -> SimMcu:
        cm = running_sim(**kw)
        sim = cm.__enter__()
        sims.append(cm)
        return sim

    yield start
    for cm in sims:
        cm.__exit__(None, None, None)


def setup(tmp_path: Path, sim: SimMcu, options: str = "") -> tuple[Gateway, Journal, int]:
    gw = make_gateway(tmp_path / "gw", extra=TARGET.format(port=sim.port) + options)
    j = Journal.open(gw.data_dir)
    path = gw.data_dir / "staging" / "1-sensor.bin"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(NEW)
    image = {"filename": "sensor.bin", "path": str(path), "size": len(NEW),
             "sha256": hashlib.sha256(NEW).hexdigest(), "transport": "smp-serial",
             "name": "sensor", "format": "mcuboot", "version": "1.1.0", "selector": {}}
    dep = j.create("targets.swu", origin="ddi", external_id="42")
    j.set_info(dep, staged=[image])
    j.update(dep, state="committed")
    return gw, j, dep


def phase(gw: Gateway, j: Journal, dep: int) -> None:
    run(make_context(gw.config, journal=j), dep)


def killed_phase(gw: Gateway, dep: int, point: str, nth: int = 1) -> None:
    env = dict(os.environ, FERRY_TEST_KILL_AT=f"{point}:{nth}",
               FERRY_BOOT_ID_PATH=str(gw.boot_id))
    done = subprocess.run([sys.executable, "-c", CHILD, str(gw.config_path), str(dep)],
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == -signal.SIGKILL, done.stderr


def trial_record(j: Journal, dep: int) -> dict[str, Any]:
    record = j.get(dep).info.get("trial.sensor")
    assert isinstance(record, dict)
    return record


def feedback_line(gw: Gateway, j: Journal, dep: int) -> str:
    outcome = PipelineGateway(gw.config, journal=j).outcome(j.get(dep))
    [line] = [t.line() for t in outcome.targets if t.name == "sensor"]
    return line


def test_healthy_target_is_confirmed_and_recorded_ok(tmp_path: Path, sim_factory: Any) -> None:
    sim = sim_factory()
    gw, j, dep = setup(tmp_path, sim)
    phase(gw, j, dep)
    [row] = j.targets(dep)
    assert row.state == "ok" and row.version == "1.1.0", row.message
    assert row.message == "sensor runs 1.1.0, confirmed"
    assert sim.device.primary.image_ok and running_version(sim) == "1.1.0"
    assert trial_record(j, dep)["stage"] == "done"
    assert trial_record(j, dep)["trial"]["previous_version"] == "1.0.0"
    assert j.get(dep).result == "success"
    assert feedback_line(gw, j, dep) == ("target sensor: ok version 1.1.0 "
                                         "(sensor runs 1.1.0, confirmed)")


def test_unhealthy_target_is_rolled_back_with_the_reason(tmp_path: Path,
                                                        sim_factory: Any) -> None:
    sim = sim_factory(app_unhealthy=True)
    gw, j, dep = setup(tmp_path, sim)
    phase(gw, j, dep)
    [row] = j.targets(dep)
    assert row.state == "rolled-back" and row.version == "1.0.0"
    assert (row.message or "").startswith(
        "rolled back: application health (SMP group 64 command 0): target answered user "
        "group error (group 64 user, rc 1)"), row.message
    assert "sensor runs 1.0.0 again" in (row.message or "")
    assert running_version(sim) == "1.0.0" and sim.device.primary.image_ok
    assert "boot: revert" in sim.device.log
    dep_row = j.get(dep)
    assert dep_row.result == "failure" and "rolled back: application health" in (
        dep_row.error or "")
    line = feedback_line(gw, j, dep)
    assert line.startswith("target sensor: FAILED version 1.0.0 (rolled back: application "
                           "health (SMP group 64 command 0)"), line

    # the settled trial is final: running the phase again flashes nothing
    resets, frames = sim.resets_scheduled, sim.frames_in
    phase(gw, j, dep)
    assert sim.resets_scheduled == resets and sim.frames_in == frames
    assert j.targets(dep)[0].state == "rolled-back"


def test_health_command_from_the_config_list(tmp_path: Path, sim_factory: Any) -> None:
    seen = tmp_path / "seen"
    script = tmp_path / "check.sh"
    script.write_text(f'#!/bin/sh\necho "$FERRY_TARGET $1" > {seen}\necho "radio did not join" '
                      '>&2\nexit 1\n')
    script.chmod(0o755)
    sim = sim_factory()
    options = f'health = "command"\nhealth_command = ["{script}", "a b"]\n'
    gw, j, dep = setup(tmp_path, sim, options)
    phase(gw, j, dep)
    [row] = j.targets(dep)
    assert row.state == "rolled-back", row.message
    assert "health command exited 1: radio did not join" in (row.message or "")
    assert seen.read_text().strip() == "sensor a b"  # the list reached it as two words
    assert running_version(sim) == "1.0.0"


@pytest.mark.parametrize("healthy", [True, False], ids=["healthy", "unhealthy"])
@pytest.mark.parametrize("point", ["proxy.trial.booted", "proxy.trial.decided",
                                   "proxy.trial.settled"])
def test_kill_between_flash_and_confirm_resumes_to_the_right_decision(
        tmp_path: Path, sim_factory: Any, point: str, healthy: bool) -> None:
    sim = sim_factory(app_unhealthy=not healthy)
    gw, j, dep = setup(tmp_path, sim)
    killed_phase(gw, dep, point)

    record = trial_record(j, dep)
    [row] = j.targets(dep)
    if point == "proxy.trial.booted":  # on trial, nothing decided, nothing confirmed
        assert record["stage"] == "health" and row.state == "flashing"
        assert "on trial" in (row.message or "")
        assert running_version(sim) == "1.1.0" and not sim.device.primary.image_ok
    elif point == "proxy.trial.decided":  # decided and journalled, not carried out
        assert record["stage"] == ("confirm" if healthy else "revert")
        assert running_version(sim) == "1.1.0" and not sim.device.primary.image_ok
    else:  # carried out and recorded; only the "done" mark is missing
        assert row.state == ("ok" if healthy else "rolled-back")
    uploads = sim.device.log.count("boot: swap test")

    phase(gw, j, dep)  # ferryd starts again and resumes the phase
    [row] = j.targets(dep)
    assert trial_record(j, dep)["stage"] == "done"
    assert sim.device.log.count("boot: swap test") == uploads  # never flashed again
    if healthy:
        assert row.state == "ok" and row.version == "1.1.0", row.message
        assert sim.device.primary.image_ok and j.get(dep).result == "success"
    else:
        assert row.state == "rolled-back" and row.version == "1.0.0", row.message
        assert (row.message or "").startswith("rolled back: application health")
        assert running_version(sim) == "1.0.0" and j.get(dep).result == "failure"
        assert feedback_line(gw, j, dep).startswith(
            "target sensor: FAILED version 1.0.0 (rolled back: application health")


def test_kill_inside_the_flash_after_the_reset_still_checks_health(
        tmp_path: Path, sim_factory: Any) -> None:
    """No trial record yet (the daemon died inside ``flash``, after the MCU booted the
    image on trial): the resumed phase flashes again, gets the same trial back, and the
    health check decides; the image is not confirmed by the repeat."""
    sim = sim_factory(app_unhealthy=True)
    gw, j, dep = setup(tmp_path, sim)
    target = Target(name="sensor", transport="smp-serial", address=sim.port,
                    options={"timeout": "1", "defer_confirm": "1"})
    create({}).flash(target, io.BytesIO(NEW), progress=lambda d, t, m: None)
    j.set_target(dep, "sensor", transport="smp-serial", state="flashing", image="sensor.bin")
    assert running_version(sim) == "1.1.0" and not sim.device.primary.image_ok

    phase(gw, j, dep)
    [row] = j.targets(dep)
    assert row.state == "rolled-back" and running_version(sim) == "1.0.0", row.message
    assert (row.message or "").startswith("rolled back: application health")


@pytest.mark.parametrize("point", ["proxy.trial.booted", "proxy.trial.decided"])
def test_power_cut_reverts_the_trial_and_the_resumed_phase_flashes_again(
        tmp_path: Path, sim_factory: Any, point: str) -> None:
    """The power goes for the gateway and the MCU alike while the image is on trial
    (before the health check decided, or after it decided to confirm but before the
    confirm reached the MCU): MCUboot reverts the unconfirmed image at power-on. Nobody
    judged the image, so the resumed phase flashes it again and the health check
    decides; it is not reported rolled back."""
    sim = sim_factory()
    gw, j, dep = setup(tmp_path, sim)
    killed_phase(gw, dep, point)
    assert running_version(sim) == "1.1.0" and not sim.device.primary.image_ok
    sim.power_cycle()  # the MCU shares the gateway's supply
    assert running_version(sim) == "1.0.0" and "boot: revert" in sim.device.log
    uploads = sim.device.log.count("boot: swap test")

    phase(gw, j, dep)
    [row] = j.targets(dep)
    assert row.state == "ok" and row.version == "1.1.0", row.message
    assert running_version(sim) == "1.1.0" and sim.device.primary.image_ok
    assert sim.device.log.count("boot: swap test") == uploads + 1  # flashed once more
    record = trial_record(j, dep)
    assert record["stage"] == "done" and record["reflashed"] == 1, record
    assert j.get(dep).result == "success"


def test_flashing_again_after_reverts_is_bounded(tmp_path: Path, sim_factory: Any) -> None:
    """An image the MCU reverts at every resume (a power cut each time, or an image that
    crashes after its health check) is flashed again at most MAX_REFLASH times; then
    the target is recorded rolled back, with MCUboot's revert as the reason."""
    from ferry.daemon.install.proxyphase import MAX_REFLASH

    sim = sim_factory()
    gw, j, dep = setup(tmp_path, sim)
    killed_phase(gw, dep, "proxy.trial.booted")
    for _ in range(MAX_REFLASH):
        sim.power_cycle()
        # the resume checks the reverted trial (1st pass), flashes again and is cut
        # once the new trial booted (2nd pass)
        killed_phase(gw, dep, "proxy.trial.booted", nth=2)
    sim.power_cycle()
    phase(gw, j, dep)
    [row] = j.targets(dep)
    assert row.state == "rolled-back" and row.version == "1.0.0", row.message
    assert "reset while on trial and MCUboot reverted it" in (row.message or "")
    assert trial_record(j, dep)["reflashed"] == MAX_REFLASH
    assert j.get(dep).result == "failure"
