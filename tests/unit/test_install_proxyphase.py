"""Proxy phase: staged images matched to [[target]]s, flashed in parallel across ports,
one failure reported per target without stopping the others."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, BinaryIO, ClassVar

import pytest
from install_gateway import make_bundle, make_gateway

from ferry.daemon.install.pipeline import install, make_context
from ferry.daemon.journal import Journal
from ferry.packaging.description import TargetSpec
from ferry.proxy.transport import FlashResult, Progress, Target, TargetState

TARGETS = """
[[target]]
name = "mcu-left"
transport = "smp-serial"
address = "/dev/ttyUSB0"
baud = 115200

[[target]]
name = "mcu-right"
transport = "smp-serial"
address = "/dev/ttyUSB1"

[[target]]
name = "radio"
transport = "dfu"
address = "1234:5678"
image_id = "radio-v2"

[[target]]
name = "sensor"
transport = "smp-serial"
address = "/dev/ttyUSB2"
"""


class FakeTransport:
    flashed: ClassVar[dict[str, tuple[bytes, dict[str, str]]]] = {}
    lock = threading.Lock()
    barrier: threading.Barrier | None = None

    def __init__(self, name: str) -> None:
        self.name = name

    def discover(self) -> list[Target]:
        return []

    def inspect(self, target: Target) -> TargetState:
        return TargetState(reachable=True)

    def flash(self, target: Target, image: BinaryIO, *, progress: Progress) -> FlashResult:
        data = image.read()
        progress(len(data), len(data), "upload")
        if FakeTransport.barrier is not None and target.name.startswith("mcu-"):
            FakeTransport.barrier.wait(timeout=30)  # both ports are busy at once
        if target.name == "mcu-right":
            raise OSError("port /dev/ttyUSB1 vanished")
        with FakeTransport.lock:
            FakeTransport.flashed[target.name] = (data, dict(target.options))
        return FlashResult(ok=True, version=target.options.get("spec_version", ""),
                           message="confirmed")


def test_targets_only_bundle_flashes_each_matching_target(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gw = make_gateway(tmp_path / "gw", extra=TARGETS)
    monkeypatch.setenv("FERRY_BOOT_ID_PATH", str(gw.boot_id))
    FakeTransport.flashed = {}
    FakeTransport.barrier = threading.Barrier(2)
    made: list[tuple[str, dict[str, Any]]] = []

    def factory(name: str, options: dict[str, Any]) -> FakeTransport:
        made.append((name, options))
        return FakeTransport(name)

    monkeypatch.setattr("ferry.daemon.install.proxyphase._default_factory", factory)
    mcu = TargetSpec(transport="smp-serial", name="mcu-left", format="bin", version="2.1.0")
    mcu2 = TargetSpec(transport="smp-serial", name="mcu-right", format="bin", version="2.1.0")
    radio = TargetSpec(transport="dfu", name="radio-fw", format="dfu", version="7",
                       selector={"image_id": "radio-v2"})
    orphan = TargetSpec(transport="zigbee", name="lamp", format="zigbee-ota", version="3")
    bundle = make_bundle(gw, tmp_path / "t.swu", version="1.0.1", compress="zstd", targets=[
        (mcu, b"L" * 5000), (mcu2, b"R" * 6000), (radio, b"D" * 7000), (orphan, b"Z" * 10)])
    ctx = make_context(gw.config)
    dep_id = install(gw.config, str(bundle), ctx=ctx, force=True)

    j = Journal.open(gw.data_dir)
    dep = j.get(dep_id)
    assert not gw.reboot_flag.exists()  # nothing to boot: no rootfs in the bundle
    records = {t.name: t for t in j.targets(dep_id)}
    assert records["mcu-left"].state == "ok" and records["mcu-left"].version == "2.1.0"
    assert records["radio"].state == "ok"  # matched by selector image_id, not by name
    assert records["mcu-right"].state == "failed"
    assert "vanished" in (records["mcu-right"].message or "")
    assert records["lamp"].state == "failed" and "no [[target]]" in (
        records["lamp"].message or "")
    assert "sensor" not in records  # configured but nothing in the bundle for it
    assert dep.result == "failure" and "2 of 4 target(s) failed" in (dep.error or "")

    data, options = FakeTransport.flashed["mcu-left"]
    assert data == b"L" * 5000  # decompressed at staging
    assert options["force"] == "1" and options["baud"] == "115200"
    assert options["spec_version"] == "2.1.0" and options["spec_format"] == "bin"
    assert FakeTransport.flashed["radio"][1]["spec_image_id"] == "radio-v2"
    assert not any((gw.data_dir / "staging").iterdir())  # cleaned up after the phase


def test_resumed_phase_skips_targets_already_done(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from ferry.daemon.install.proxyphase import run

    gw = make_gateway(tmp_path / "gw", extra=TARGETS)
    monkeypatch.setenv("FERRY_BOOT_ID_PATH", str(gw.boot_id))
    FakeTransport.flashed = {}
    FakeTransport.barrier = None
    monkeypatch.setattr("ferry.daemon.install.proxyphase._default_factory",
                        lambda n, o: FakeTransport(n))
    staged = gw.data_dir / "staging" / "1-x.bin"
    staged.parent.mkdir(parents=True)
    staged.write_bytes(b"abc")
    import hashlib

    image = {"filename": "x.bin", "path": str(staged), "size": 3,
             "sha256": hashlib.sha256(b"abc").hexdigest(), "transport": "smp-serial",
             "name": "mcu-left", "format": "bin", "version": "2", "selector": {}}
    j = Journal.open(gw.data_dir)
    dep = j.create("x")
    j.set_info(dep, staged=[image, dict(image, name="sensor")])
    j.update(dep, state="committed")
    j.set_target(dep, "mcu-left", transport="smp-serial", state="ok", version="2")
    run(make_context(gw.config, journal=j), dep)
    assert set(FakeTransport.flashed) == {"sensor"}
    assert j.get(dep).result == "success"
