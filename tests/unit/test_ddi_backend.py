"""The deployment runner against the OpenAPI-checked DDI fixture, with a fake gateway.

Covers the DDI features goosebit lacks (several chunks, maintenance windows,
update=skip, cancelAction before/after the slot switch, installedBase after a
rollback); the same runner against goosebit is in tests/peers/test_ddi_goosebit.py.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest
import requests

from ferry.daemon.backend import ddi
from ferry.daemon.backend import runner as backend
from ferry.daemon.backend.health import GatewayHealth, Health, TargetHealth
from ferry.errors import FerryError

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from ddi_server import DdiFixture, validate_exchange


class FakeGateway:
    """Records calls; "installs" by reading the whole source; health from fields."""

    def __init__(self, *, boot_ok=True, fail_install=False, targets=("mcu0",)):
        self.version = "1.0"
        self.slot = "A"
        self.committed = True
        self.boot_ok = boot_ok
        self.fail_install = fail_install
        self.targets = list(targets)
        self.calls = []
        self.installed_bytes = {}
        self.pending = ""
        self.target_results = {t: "never" for t in targets}

    def installed_version(self):
        return self.version

    auth = None  # what the pipeline's download_options would send to the backend

    def _read(self, source):
        if "://" in source:
            headers = {"Authorization": self.auth} if self.auth else {}
            resp = requests.get(source, timeout=10, headers=headers)
            resp.raise_for_status()
            return resp.content
        return Path(source).read_bytes()

    def install(self, source, *, action_id, progress):
        data = self._read(source)
        name = source.rsplit("/", 1)[-1].split("-")[-1]
        progress("write", len(data), len(data))
        self.calls.append(("install", name))
        if self.fail_install:
            raise FerryError("bundle signature is not trusted by the keyring")
        self.installed_bytes[name] = data
        if name.startswith("gw"):
            self.pending = "2.0"
            self.calls.append(("activate",))
            self.calls.append(("reboot",))
            self.slot, self.committed = "B", False
            return backend.InstallReport("2.0", True)
        self.calls.append(("proxy",))
        return backend.InstallReport("2.0", False, self._proxy())

    def _proxy(self):
        out = []
        for t in self.targets:
            self.target_results[t] = "success"
            out.append(backend.TargetOutcome(t, True, "1.4"))
        return backend.Outcome("success", version=self.version, targets=out)

    def resume(self, action_id):
        self.calls.append(("boot_check",))
        if self.boot_ok:
            self.version, self.committed = self.pending, True
            self.calls.append(("proxy",))
            return self._proxy()
        self.slot, self.committed = "A", True
        return backend.Outcome("rolled-back", "health check 'check-app' exited 1",
                               self.version)

    def abort(self, action_id):
        self.calls.append(("abort",))

    def health(self):
        g = GatewayHealth(self.slot, self.committed, self.version, "ferry-test", 10.0,
                          "running", data_free_bytes=1 << 30, data_total_bytes=2 << 30)
        return Health(g, tuple(TargetHealth(t, "smp-serial", "/dev/pty", version="1.4",
                                            last_result=self.target_results[t],
                                            reachable=True) for t in self.targets))


@pytest.fixture
def server():
    s = DdiFixture().start()
    yield s
    s.stop()
    assert s.violations == []


def runner(server, gw, tmp_path, **kw):
    client = ddi.DdiClient(ddi.DdiSettings(url=server.url, controller_id="gw1", poll_jitter=0,
                                           **kw),
                           on_exchange=validate_exchange)
    return backend.DeploymentRunner(client, gw, tmp_path / "data")


def run_until(r, event, limit=12):
    seen = []
    for _ in range(limit):
        res = r.step()
        seen.append(res.event)
        if res.event == event:
            return seen
    raise AssertionError(f"never reached {event}: {seen}")


def test_idle_poll_sends_combined_health(server, tmp_path):
    r = runner(server, FakeGateway(), tmp_path)
    res = r.step()
    assert res.event == "idle"
    assert res.sleep == 1.0
    assert server.config_data["ferry.overall"] == "ok"
    assert server.config_data["target.mcu0.transport"] == "smp-serial"
    assert server.config_data["gw.slot"] == "A"


def test_config_data_resent_when_health_changes(server, tmp_path):
    gw = FakeGateway()
    r = runner(server, gw, tmp_path)
    r.step()
    server.config_data_requested = False
    puts = [p for m, p in server.requests if m == "PUT"]
    r.step()  # nothing new (only the uptime could tick): no configData
    assert [p for m, p in server.requests if m == "PUT"] == puts
    gw.target_results["mcu0"] = "failure"
    r.step()
    assert len([p for m, p in server.requests if m == "PUT"]) == len(puts) + 1
    assert server.config_data["ferry.overall"] == "degraded"
    assert server.config_data["target.mcu0.result"] == "failure"


def test_several_chunks_happy_path(server, tmp_path):
    gw = FakeGateway()
    aid = server.assign([("firmware", "mcu", "1.4", {"mcu.swu": b"M" * 3000}),
                         ("os", "gateway", "2.0", {"gw.swu": b"G" * 5000, "gw.txt": b"n"})])
    r = runner(server, gw, tmp_path)
    seen = run_until(r, "finished")
    assert seen[0] == "rebooting"
    # the gateway bundle goes first whatever the server's chunk order
    assert [c for c in gw.calls if c[0] == "install"] == [("install", "gw.swu"),
                                                          ("install", "mcu.swu")]
    assert gw.installed_bytes == {"gw.swu": b"G" * 5000, "mcu.swu": b"M" * 3000}
    names = [c[0] for c in gw.calls]
    assert names.index("reboot") < names.index("boot_check") < names.index("proxy")
    sts = server.statuses(aid)
    assert sts[0] == "download" and "downloaded" in sts and "proceeding" in sts
    assert sts[-1] == "closed"
    a = server.actions[aid]
    assert a.result == "success"
    details = a.feedback[-1]["status"]["details"]
    assert "target mcu0: ok version 1.4" in details
    assert any("ignored artifact gw.txt" in d for d in details)
    assert server.config_data["gw.slot"] == "B" and server.config_data["gw.committed"] == "yes"
    assert server.config_data["target.mcu0.result"] == "success"
    assert r.state.phase == backend.IDLE


def test_health_failure_rolls_back_and_reports_installed_base(server, tmp_path):
    gw = FakeGateway(boot_ok=False)
    aid = server.assign([("os", "gateway", "2.0", {"gw.swu": b"G" * 100})])
    r = runner(server, gw, tmp_path)
    run_until(r, "finished")
    a = server.actions[aid]
    assert a.result == "failure"
    details = " | ".join(a.feedback[-1]["status"]["details"])
    assert "rolled back" in details and "check-app" in details
    assert "targets not flashed" in details
    assert ("proxy",) not in gw.calls
    assert server.installed == [{"name": "ferry-test", "version": "1.0"}]
    assert server.config_data["gw.slot"] == "A"


def test_install_failure_reports_reason(server, tmp_path):
    gw = FakeGateway(fail_install=True)
    aid = server.assign([("os", "gateway", "2.0", {"gw.swu": b"G"})])
    r = runner(server, gw, tmp_path)
    res = r.step()
    assert (res.event, res.detail) == ("finished", "failure")
    assert server.actions[aid].result == "failure"
    assert any("not trusted" in d for d in server.actions[aid].feedback[-1]["status"]["details"])
    assert ("reboot",) not in gw.calls


def test_maintenance_window_downloads_now_installs_later(server, tmp_path):
    gw = FakeGateway()
    aid = server.assign([("os", "gateway", "2.0", {"gw.swu": b"G" * 4000})],
                        window="unavailable")
    r = runner(server, gw, tmp_path)
    assert r.step().event == "waiting"
    assert r.step().event == "waiting"  # no second download
    assert not [c for c in gw.calls if c[0] == "install"]
    assert server.statuses(aid).count("downloaded") == 1
    artifact_gets = [p for m, p in server.requests if "/artifacts/" in p]
    assert len(artifact_gets) == 1
    server.actions[aid].maintenance_window = "available"
    run_until(r, "finished")
    assert gw.installed_bytes["gw.swu"] == b"G" * 4000
    assert len([p for m, p in server.requests if "/artifacts/" in p]) == 1
    assert server.actions[aid].result == "success"
    assert not list((tmp_path / "data" / "ddi-downloads").iterdir())


def test_update_skip_then_forced(server, tmp_path):
    gw = FakeGateway()
    aid = server.assign([("os", "gateway", "2.0", {"gw.swu": b"G"})], download="skip",
                        update="skip")
    r = runner(server, gw, tmp_path)
    assert r.step().event == "waiting"
    assert server.statuses(aid) == []
    server.actions[aid].download = "attempt"
    assert r.step().event == "waiting"
    assert server.statuses(aid)[-1] == "downloaded"
    server.actions[aid].update = "forced"
    run_until(r, "finished")
    assert server.actions[aid].result == "success"


def test_cancel_before_slot_switch_is_accepted(server, tmp_path):
    gw = FakeGateway()
    aid = server.assign([("os", "gateway", "2.0", {"gw.swu": b"G" * 10})],
                        window="unavailable")
    r = runner(server, gw, tmp_path)
    r.step()  # downloaded, waiting
    cid = server.request_cancel(aid)
    assert r.step().event == "cancelled"
    assert server.cancel.feedback[-1]["status"]["execution"] == "closed"
    assert server.actions[aid].state == "canceled"
    assert ("abort",) in gw.calls and ("activate",) not in gw.calls
    assert r.state.phase == backend.IDLE
    assert r.step().event == "idle"
    assert cid


def test_cancel_after_slot_switch_is_rejected(server, tmp_path):
    gw = FakeGateway()
    aid = server.assign([("os", "gateway", "2.0", {"gw.swu": b"G" * 10})])
    r = runner(server, gw, tmp_path)
    assert r.step().event == "rebooting"
    server.request_cancel(aid)
    # the daemon after the "reboot": a new runner picks the action up from its state file
    r2 = runner(server, gw, tmp_path)
    assert r2.state.phase == backend.REBOOTING
    assert r2.step().event == "finished"
    assert server.cancel.feedback[-1]["status"]["execution"] == "rejected"
    assert "cannot be cancelled" in server.cancel.feedback[-1]["status"]["details"][0]
    assert ("abort",) not in gw.calls
    assert server.actions[aid].result == "success"


def test_offline_install_reported_as_installed_base(server, tmp_path):
    gw = FakeGateway()
    r = runner(server, gw, tmp_path)
    r.step()
    assert server.installed == [{"name": "ferry-test", "version": "1.0"}]  # first contact
    r.step()
    assert len(server.installed) == 1  # nothing changed: not sent again
    gw.version = "1.7-usb"  # a technician ran `ferry install` from a USB stick
    r = runner(server, gw, tmp_path)  # ... and rebooted: state comes from the file
    r.step()
    assert server.installed[-1] == {"name": "ferry-test", "version": "1.7-usb"}
    assert len(server.installed) == 2
    # after a DDI action the server knows the version: no extra installedBase
    server.assign([("os", "gateway", "2.0", {"gw.swu": b"G"})])
    run_until(r, "finished")
    r.step()
    assert len(server.installed) == 2


def test_server_down_mid_action_is_retried(server, tmp_path):
    gw = FakeGateway()
    aid = server.assign([("os", "gateway", "2.0", {"gw.swu": b"G"})])
    r = runner(server, gw, tmp_path)
    assert r.step().event == "rebooting"
    server.unavailable = True
    # the boot check and proxy phase do not wait for the server; the final report does
    with pytest.raises(ddi.DdiError):
        r.step()
    assert r.state.phase == backend.REPORTING
    server.unavailable = False
    assert r.step().event == "finished"
    assert server.actions[aid].result == "success"


def test_target_token_bundles_stream_from_their_url(server, tmp_path):
    """With a token the runner still hands the pipeline the artifact URL (its
    downloader carries the token, see test_ddi_pipeline); nothing is fetched first."""
    server.target_token = "tok-123"
    gw = FakeGateway()
    gw.auth = "TargetToken tok-123"
    aid = server.assign([("os", "gateway", "2.0", {"gw.swu": b"G" * 2000})])
    r = runner(server, gw, tmp_path, target_token="tok-123")
    run_until(r, "finished")
    assert server.actions[aid].result == "success"
    assert gw.installed_bytes["gw.swu"] == b"G" * 2000
    assert set(server.auth_headers) == {"TargetToken tok-123"}
    assert any("/artifacts/" in p for m, p in server.requests)
    assert not (tmp_path / "data" / "ddi-downloads").exists()


def test_ferryd_backend_thread_resumes_then_polls(server, tmp_path, monkeypatch):
    import threading

    from ferry.daemon.backend.pipeline_adapter import make_runner, resume_then_poll
    from ferry.daemon.config import load_config
    from ferry.sim.gateway import SimGateway

    gw = SimGateway(tmp_path / "gw", backend_url=server.url, controller_id="gw1").create()
    monkeypatch.setenv("FERRY_BOOT_ID_PATH", str(gw.boot_id_path))
    cfg = load_config(gw.config_path)
    server.sleep = "00:00:00"
    order = []
    stop = threading.Event()
    t = threading.Thread(target=resume_then_poll,
                         args=(lambda: order.append("resume"), cfg, None, stop))
    t.start()
    try:
        for _ in range(200):
            if server.config_data:
                break
            time.sleep(0.05)
    finally:
        stop.set()
        t.join(timeout=30)
    assert not t.is_alive()
    assert order == ["resume"]
    assert server.config_data["hw_revision"] == "ferry-demo-gw"
    assert server.config_data["gw.slot"] == "A"
    none_cfg = load_config(gw.config_path)
    assert make_runner(type(none_cfg)(gateway=none_cfg.gateway)) is None
