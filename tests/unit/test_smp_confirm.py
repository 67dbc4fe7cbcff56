"""smp-serial confirms an MCUboot image only after the target reports healthy.

The flash stops at "booted, not confirmed" (``defer_confirm``); the health check
(SMP echo, an application SMP group, or a command on the gateway) decides between
confirm and a reset that makes MCUboot revert. Run against the simulated MCUboot, whose
application can be told to fail its own check while it boots and answers SMP.
"""

from __future__ import annotations

import io
import json
import stat
import time
from pathlib import Path

import pytest
from smp_helpers import NEW, running_sim, running_version, target

from ferry.daemon.cli.main import main
from ferry.proxy.registry import get_transport
from ferry.proxy.smp import healthspec
from ferry.proxy.smp.healthspec import HealthConfigError, HealthSpec
from ferry.proxy.smp.settle import settle
from ferry.proxy.smp.transport import SmpSerialTransport, create
from ferry.proxy.transport import FlashResult, Target, Trial, confirming
from ferry.sim.mcu import SimMcu
from ferry.sim.mcu.device import EUNKNOWN, McuDevice

QUICK = {"health_timeout_s": "0.6", "health_interval_s": "0.1", "boot_timeout": "10"}


def on_trial(sim: SimMcu, **options: str) -> tuple[SmpSerialTransport, Target, Trial]:
    """Flash NEW with defer_confirm; the image must be running, not confirmed."""
    transport = create({})
    tgt = target(sim, defer_confirm="1", **{**QUICK, **options})
    result = transport.flash(tgt, io.BytesIO(NEW), progress=lambda d, t, m: None)
    assert result.ok and result.trial is not None, result.message
    assert "on trial" in result.message
    assert running_version(sim) == "1.1.0" and not sim.device.primary.image_ok
    return transport, tgt, result.trial


def finish(transport: SmpSerialTransport, tgt: Target, trial: Trial) -> FlashResult:
    conf = confirming(transport)
    assert conf is not None
    return settle(conf, tgt, trial, progress=lambda d, t, m: None)


def slot1_reverted(sim: SimMcu) -> bool:
    """MCUboot's revert leaves the trial image in slot 1, neither pending nor confirmed."""
    images = {i["slot"]: i for i in sim.device._images()}
    return images[1]["version"] == "1.1.0" and not images[1]["pending"] \
        and images[0]["confirmed"]


def test_only_smp_serial_has_the_confirming_capability() -> None:
    from ferry.proxy.dfu.transport import DfuTransport
    from ferry.proxy.lora.transport import LoraTransport
    from ferry.proxy.zigbee.transport import ZigbeeTransport

    assert confirming(get_transport("smp-serial", {})) is not None
    for cls in (DfuTransport, ZigbeeTransport, LoraTransport):
        assert confirming(cls) is None, cls.__name__


def test_healthy_by_smp_echo_is_confirmed() -> None:
    with running_sim() as sim:
        transport, tgt, trial = on_trial(sim)
        assert trial.version == "1.1.0" and trial.previous_version == "1.0.0"
        result = finish(transport, tgt, trial)
        assert result.ok and result.message == "mcu runs 1.1.0, confirmed", result.message
        assert result.detail["health"] == "SMP echo passed"
        assert sim.device.primary.image_ok and running_version(sim) == "1.1.0"


@pytest.mark.parametrize("v1", [False, True], ids=["smp-v2", "smp-v1"])
def test_unhealthy_application_group_is_reverted_with_the_reason(v1: bool) -> None:
    with running_sim(app_unhealthy=True, smp_v2=not v1) as sim:
        transport, tgt, trial = on_trial(sim, health_smp_group="64")
        resets = sim.resets_scheduled
        result = finish(transport, tgt, trial)
        assert not result.ok and result.rolled_back, result.message
        code = "MGMT_ERR_EUNKNOWN (rc 1)" if v1 else "(group 64 user, rc 1)"
        assert result.message.startswith("rolled back: application health (SMP group 64 "
                                          "command 0): target answered"), result.message
        assert code in result.message and "tries in 0.6 s" in result.message
        assert "mcu runs 1.0.0 again" in result.message
        assert result.version == "1.0.0" and running_version(sim) == "1.0.0"
        assert sim.resets_scheduled == resets + 1  # one reset, never repeated
        assert slot1_reverted(sim) and "boot: revert" in sim.device.log


def test_healthy_application_group_is_confirmed() -> None:
    with running_sim(app_unhealthy=False) as sim:
        transport, tgt, trial = on_trial(sim, health_smp_group="64", health_smp_command="0")
        result = finish(transport, tgt, trial)
        assert result.ok and sim.device.primary.image_ok, result.message
        assert "SMP group 64 command 0 passed" in result.detail["health"]


def test_group_without_handler_stops_at_once_and_reverts() -> None:
    with running_sim(health_group=None) as sim:
        transport, tgt, trial = on_trial(sim, health_smp_group="70", health_timeout_s="30")
        result = finish(transport, tgt, trial)
        assert result.rolled_back and "MGMT_ERR_ENOTSUP" in result.message
        # one try, not the 30 s window: "after N tries" is only said at the window's end
        assert "no handler" in result.message and "tries" not in result.message
        assert running_version(sim) == "1.0.0"


def write_script(path: Path, body: str) -> Path:
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return path


def test_health_command_sees_the_target_and_decides(tmp_path: Path) -> None:
    seen = tmp_path / "env.txt"
    ok = write_script(tmp_path / "ok.sh",
                      f'echo "$FERRY_TARGET $FERRY_TARGET_PORT $FERRY_TARGET_VERSION" > {seen}\n')
    with running_sim() as sim:
        transport, tgt, trial = on_trial(sim, health_command=str(ok))
        result = finish(transport, tgt, trial)
        assert result.ok and sim.device.primary.image_ok, result.message
        assert seen.read_text().split() == ["mcu", sim.port, "1.1.0"]


def test_failing_health_command_reverts_with_its_last_line(tmp_path: Path) -> None:
    bad = write_script(tmp_path / "bad.sh",
                       'echo "starting" >&2\necho "sensor task not running" >&2\nexit 3\n')
    with running_sim() as sim:
        transport, tgt, trial = on_trial(sim, health_command=f"{bad} --strict")
        result = finish(transport, tgt, trial)
        assert result.rolled_back and running_version(sim) == "1.0.0"
        assert "health command exited 3: sensor task not running" in result.message


def test_bad_health_options_stop_before_a_byte_is_sent() -> None:
    with running_sim() as sim:
        transport = get_transport("smp-serial", {})
        for options, words in [({"health": "ping"}, "use one of"),
                               ({"health_timeout_s": "soon"}, "not a number of seconds"),
                               ({"health": "smp-group"}, "needs health_smp_group"),
                               ({"health_smp_group": "70000"}, "outside 0..65535"),
                               ({"health": "command"}, "needs health_command")]:
            tgt = target(sim, defer_confirm="1", **options)
            with pytest.raises(HealthConfigError, match=words):
                transport.flash(tgt, io.BytesIO(NEW), progress=lambda d, t, m: None)
        assert sim.frames_in == 0 and running_version(sim) == "1.0.0"


def test_repeated_flash_while_on_trial_hands_back_the_trial_not_a_confirm() -> None:
    """A crash inside the flash (after the reset) resumes by flashing again: that must
    not confirm the image behind the health check's back."""
    with running_sim(app_unhealthy=True) as sim:
        transport, tgt, trial = on_trial(sim)
        again = transport.flash(tgt, io.BytesIO(NEW), progress=lambda d, t, m: None)
        assert again.trial == trial and not sim.device.primary.image_ok


def test_revert_and_confirm_are_safe_to_repeat() -> None:
    with running_sim() as sim:
        transport, tgt, trial = on_trial(sim)
        first = transport.revert(tgt, trial, "told to")
        assert first.rolled_back and "after a reset" in first.message
        second = transport.revert(tgt, trial, "told to")
        assert second.rolled_back and "already" in second.message
        late = transport.confirm(tgt, trial)  # the old image runs: nothing is confirmed
        assert not late.ok and late.rolled_back and "before 1.1.0 was confirmed" in late.message
        assert running_version(sim) == "1.0.0"


def test_application_that_confirms_itself_cannot_be_rolled_back() -> None:
    with running_sim(app_confirms=True, app_unhealthy=True) as sim:
        transport = create({})
        tgt = target(sim, defer_confirm="1", health_smp_group="64", **QUICK)
        booted = transport.flash(tgt, io.BytesIO(NEW), progress=lambda d, t, m: None)
        assert booted.trial is not None and "confirmed it itself" in booted.message
        result = finish(transport, tgt, booted.trial)
        assert not result.ok and not result.rolled_back
        assert result.message.startswith("unhealthy, not confirmed: application health")
        assert "confirmed 1.1.0 itself" in result.message and running_version(sim) == "1.1.0"


def test_usb_port_that_vanishes_at_the_revert_reset(tmp_path: Path) -> None:
    with running_sim(tmp_path, app_unhealthy=True, reenumerate=True,
                     reenumerate_seconds=0.3) as sim:
        transport, tgt, trial = on_trial(sim, health_smp_group="64")
        vanished = sim.reenumerations
        result = finish(transport, tgt, trial)
        assert result.rolled_back and running_version(sim) == "1.0.0", result.message
        assert sim.reenumerations == vanished + 1


def test_target_that_stops_answering_is_left_unconfirmed_and_says_so() -> None:
    with running_sim() as sim:
        transport, tgt, trial = on_trial(sim)
        tgt.options["boot_timeout"] = "0.5"
        sim.device.silent_until = time.monotonic() + 3600  # the application hangs
        result = finish(transport, tgt, trial)
        assert not result.ok and not result.rolled_back
        assert "no SMP answer on the trial image" in result.message
        assert "does not answer SMP, so it could not be reset" in result.message
        assert "brings back 1.0.0" in result.message and not sim.device.primary.image_ok


def test_simulated_health_group_answers_as_zephyr_does() -> None:
    dev = McuDevice(running=None)
    dev.config.app_unhealthy = True
    from smp_helpers import OLD

    dev.primary.data, dev.primary.magic, dev.primary.image_ok = OLD, True, True
    dev.boot()  # the image it first booted is its healthy factory image
    assert dev.handle(0, 64, 0, {}, 1) == ({"status": "ok"}, False)
    dev.primary.data = NEW
    assert dev.handle(0, 64, 0, {}, 1) == ({"err": {"group": 64, "rc": 1}}, False)
    assert dev.handle(0, 64, 0, {}, 0) == ({"rc": EUNKNOWN}, False)  # v1: no translation


def test_health_spec_kinds_and_the_window_without_the_clock() -> None:
    assert healthspec.parse({}) == HealthSpec()
    assert healthspec.parse({"health_command": "/bin/check -v 'a b'"}).command == (
        "/bin/check", "-v", "a b")
    assert healthspec.parse({"health_smp_group": "0x40"}).smp_group == 64
    now = [0.0]
    answers = iter([(False, "not joined", False)] * 3 + [(True, "joined", False)])
    report = healthspec.poll(lambda left: next(answers), HealthSpec(timeout=10, interval=2),
                             clock=lambda: now[0],
                             sleep=lambda s: now.__setitem__(0, now[0] + s))
    assert report.healthy and report.attempts == 4 and now[0] == 6
    now[0] = 0.0
    report = healthspec.poll(lambda left: (False, "not joined", False),
                             HealthSpec(timeout=5, interval=2), clock=lambda: now[0],
                             sleep=lambda s: now.__setitem__(0, now[0] + s))
    assert not report.healthy and report.attempts == 3
    assert report.reason == "not joined (after 3 tries in 5 s)"


def test_cli_flash_confirms_a_healthy_image(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    image = tmp_path / "app.bin"
    image.write_bytes(NEW)
    with running_sim() as sim:
        assert main(["flash", "smp-serial", sim.port, str(image), "--timeout", "2",
                     "--health-smp", "64", "--health-timeout", "1"]) == 0
        err = capsys.readouterr().err
        assert err.rstrip().splitlines()[-1] == f"done: {sim.port} runs 1.1.0, confirmed"
        assert sim.device.primary.image_ok


def test_cli_flash_rolls_an_unhealthy_image_back(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    image = tmp_path / "app.bin"
    image.write_bytes(NEW)
    with running_sim(app_unhealthy=True) as sim:
        rc = main(["--json", "flash", "smp-serial", sim.port, str(image), "--timeout", "2",
                   "--health-smp", "64:0", "--health-timeout", "0.5",
                   "--health-interval", "0.1"])
        doc = json.loads(capsys.readouterr().out)
        assert rc == 1 and doc["rolled_back"] and not doc["ok"]
        assert doc["message"].startswith("rolled back: application health")
        assert doc["version"] == "1.0.0" and "rc 1" in doc["detail"]["health"]
        assert running_version(sim) == "1.0.0"
        assert main(["flash", "smp-serial", sim.port, str(image), "--no-confirm"]) == 0
        assert "test mode" in capsys.readouterr().err.rstrip().splitlines()[-1]
        assert running_version(sim) == "1.1.0" and not sim.device.primary.image_ok


def test_ferryd_flash_method_settles_the_trial_too(tmp_path: Path) -> None:
    """D-Bus Flash (GatewayEngine.flash) gives an unhealthy image the same fate."""
    from install_gateway import make_gateway

    from ferry.daemon.service.operations import GatewayEngine

    with running_sim(app_unhealthy=True) as sim:
        gw = make_gateway(tmp_path / "gw", extra=f"""
[[target]]
name = "sensor"
transport = "smp-serial"
address = "{sim.port}"
options = {{ timeout = "1", health_smp_group = 64, health_timeout_s = 0.4 }}
""")
        engine = GatewayEngine(gw.config)
        out = engine.flash("sensor", io.BytesIO(NEW), progress=lambda p, d, t: None)
        assert not out["ok"] and out["rolled_back"] and out["version"] == "1.0.0"
        assert out["message"].startswith("rolled back: application health"), out["message"]
        assert running_version(sim) == "1.0.0"


def test_sim_mcu_app_unhealthy_flag_through_both_commands(tmp_path: Path) -> None:
    import subprocess
    import sys

    link = tmp_path / "ttyMCU"
    proc = subprocess.Popen([sys.executable, "-m", "ferry.daemon.cli.main", "sim", "mcu",
                             "--baud", "0", "--port", str(link), "--app-unhealthy"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == str(link)
        image = tmp_path / "app.bin"
        image.write_bytes(NEW)
        out = subprocess.run([sys.executable, "-m", "ferry.daemon.cli.main", "flash",
                              "smp-serial", str(link), str(image), "--reset-delay", "100ms",
                              "--health-smp", "64", "--health-timeout", "0.5"],
                             capture_output=True, text=True, timeout=120)
        last = out.stderr.rstrip().splitlines()[-1]
        assert out.returncode == 1, out.stderr
        assert last.startswith("FAILED: rolled back: application health (SMP group 64"), last
        assert last.endswith("runs 1.0.0 again (after a reset; MCUboot reverted 1.1.0)")
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_build_without_echo_handler_is_judged_by_its_image_list() -> None:
    """CONFIG_MCUMGR_GRP_OS_ECHO off: echo answers MGMT_ERR_ENOTSUP, which still proves
    the SMP server runs; the image list then decides (the old confirm-on-answer rule)."""
    with running_sim() as sim:
        sim.device.faults.error_rc[(0, 0)] = 8  # MGMT_ERR_ENOTSUP for echo
        transport, tgt, trial = on_trial(sim)
        result = finish(transport, tgt, trial)
        assert result.ok and sim.device.primary.image_ok, result.message


@pytest.mark.parametrize("smp_v2", [True, False], ids=["v2", "v1"])
def test_smpclient_reads_the_simulated_health_group_as_ferry_does(smp_v2: bool) -> None:
    """An independent SMP client (smpclient, .ci/deps/smp.pip) sees the same health
    answers ferry acts on: a success map when healthy; ``err: {group 64, rc 1}`` (v2) or
    ``MGMT_ERR_EUNKNOWN`` (v1) when the application's check fails."""
    import asyncio

    from smp import error as smperr
    from smp import header, message
    from smp.user import intercreate
    from smpclient import SMPClient
    from smpclient.transport.serial import SMPSerialTransport

    from ferry.proxy.smp.client import SmpClient
    from ferry.proxy.smp.header import Op
    from ferry.proxy.smp.smp import SmpError

    # smp's only user group enum is Intercreate's (64); its command 1 stands in for the
    # application's health command here
    class HealthResponse(message.ReadResponse):
        _GROUP_ID = header.UserGroupId.INTERCREATE
        _COMMAND_ID = header.CommandId.Intercreate.UPLOAD
        status: str

    class HealthRead(message.ReadRequest):
        _GROUP_ID = header.UserGroupId.INTERCREATE
        _COMMAND_ID = header.CommandId.Intercreate.UPLOAD
        _Response = HealthResponse
        _ErrorV1 = intercreate.ErrorV1
        _ErrorV2 = intercreate.ErrorV2

    command = int(header.CommandId.Intercreate.UPLOAD)
    with running_sim(smp_v2=smp_v2, health_command=command) as sim:
        async def ask() -> object:
            async with SMPClient(SMPSerialTransport(), sim.port, timeout_s=5) as client:
                return await client.request(HealthRead())

        healthy = asyncio.run(ask())
        assert isinstance(healthy, HealthResponse) and healthy.status == "ok"
        sim.device.config.app_unhealthy = True
        sim.device.factory_hash = b"another image"  # what runs now is a "new" image
        broken = asyncio.run(ask())
        with SmpClient(sim.port, timeout=2) as ours, pytest.raises(SmpError) as err:
            ours.request(Op.READ, (64, command), {}, "health")
        if smp_v2:
            assert isinstance(broken, smperr.ErrorV2), broken
            assert (int(broken.err.group), int(broken.err.rc)) == (64, 1)
            assert (err.value.group, err.value.rc) == (64, 1)
        else:
            assert isinstance(broken, smperr.ErrorV1), broken
            assert broken.rc == smperr.MGMT_ERR.EUNKNOWN
            assert err.value.group is None and err.value.rc == 1
