"""The combined-health model: the overall rule, configData flattening, text output."""

from __future__ import annotations

import dataclasses
import subprocess

from ferry.daemon.backend import health
from ferry.daemon.backend.health import GatewayHealth, Health, TargetHealth

GW = GatewayHealth(booted_slot="B", committed=True, version="2.0", compatible="acme-gw",
                   uptime_s=3725, system_state="running", failed_units=(),
                   required_units=("app.service",), data_free_bytes=900 << 20,
                   data_total_bytes=1000 << 20)
MCU = TargetHealth(name="mcu0", transport="smp-serial", address="/dev/ttyS1",
                   hardware_id="img0", version="1.4.0", last_result="success",
                   last_seen=1_700_000_000, reachable=True)


def with_gw(**kw):
    return dataclasses.replace(GW, **kw)


def test_all_good_is_ok():
    h = Health(GW, (MCU,))
    assert health.overall(h) == ("ok", [])


def test_degraded_cases():
    cases = [
        (with_gw(committed=False), "on trial"),
        (with_gw(failed_units=("foo.service",), system_state="degraded"), "foo.service"),
        (with_gw(data_free_bytes=50 << 20), "5% free"),
    ]
    for gw, word in cases:
        state, reasons = health.overall(Health(gw, (MCU,)))
        assert state == "degraded", gw
        assert word in " ".join(reasons)
    unreachable = dataclasses.replace(MCU, reachable=False)
    assert health.overall(Health(GW, (unreachable,)))[0] == "degraded"
    rolled = dataclasses.replace(MCU, last_result="rolled-back")
    assert health.overall(Health(GW, (rolled,)))[0] == "degraded"


def test_failed_cases():
    assert health.overall(Health(with_gw(failed_units=("app.service",)), ()))[0] == "failed"
    assert health.overall(Health(with_gw(system_state="maintenance"), ()))[0] == "failed"
    assert health.overall(Health(with_gw(data_free_bytes=1 << 20), ()))[0] == "failed"
    dead = dataclasses.replace(MCU, last_result="failure", reachable=False)
    state, reasons = health.overall(Health(GW, (dead,)))
    assert state == "failed" and "mcu0" in reasons[0]


def test_config_data_keys_are_flat_strings_within_hawkbit_limits():
    long = dataclasses.replace(MCU, address="x" * 300)
    data = health.to_config_data(Health(GW, (long,)))
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in data.items())
    assert all(len(v) <= 128 for v in data.values())
    assert data["hw_boardname"] == "default" and data["sw_version"] == "2.0"
    assert data["hw_revision"] == "acme-gw"
    assert data["ferry.overall"] == "ok"
    assert data["gw.slot"] == "B" and data["gw.committed"] == "yes"
    assert data["gw.uptime_s"] == "3725" and data["gw.data_free_mib"] == "900"
    assert data["target.mcu0.version"] == "1.4.0"
    assert data["target.mcu0.last_seen"] == "2023-11-14T22:13:20Z"
    assert data["target.mcu0.reachable"] == "yes"


def test_text_and_json_views():
    h = Health(with_gw(committed=False), (MCU,))
    text = health.render_text(h)
    assert "DEGRADED" in text and "ON TRIAL" in text and "mcu0" in text
    assert all(len(line) <= 80 for line in text.splitlines() if "overall" not in line)
    d = h.as_dict()
    assert d["overall"] == "degraded" and d["targets"][0]["name"] == "mcu0"


def test_probes(tmp_path):
    (tmp_path / "uptime").write_text("123.45 99.0\n")
    assert health.read_uptime(tmp_path / "uptime") == 123.45
    assert health.read_uptime(tmp_path / "missing") == 0.0
    free, total = health.data_space(tmp_path)
    assert 0 < free <= total
    assert health.data_space(tmp_path / "nope") == (0, 0)
    g = health.gateway_health(booted_slot="A", committed=True, version="1", compatible="c",
                              data_dir=tmp_path, system=("running", ()), uptime_s=5)
    assert g.data_total_bytes == total and g.system_state == "running"


def test_systemd_probe_parses_systemctl(monkeypatch):
    def fake_run(argv, **kw):
        if "is-system-running" in argv:
            return subprocess.CompletedProcess(argv, 1, "degraded\n", "")
        return subprocess.CompletedProcess(argv, 0, "a.service loaded failed failed A\n"
                                                    "b.mount loaded failed failed B\n", "")
    monkeypatch.setattr(health.shutil, "which", lambda name: "/bin/systemctl")
    monkeypatch.setattr(health.Path, "is_dir", lambda self: True)
    assert health.systemd_state(fake_run) == ("degraded", ("a.service", "b.mount"))
