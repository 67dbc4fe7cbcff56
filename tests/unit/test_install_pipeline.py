"""The install pipeline end to end on a file-backed gateway (slots, env and reboot are
files; boot is the bootchooser model in install_gateway)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from install_gateway import Gateway, image_version, make_bundle, make_gateway, make_image

from ferry.daemon.install.pipeline import (
    IncompatibleBundle,
    VersionRefused,
    install,
    make_context,
    resume,
)
from ferry.daemon.install.slotwriter import SlotTooSmall
from ferry.daemon.journal import Journal
from ferry.packaging.devpki import write_dev_pki
from ferry.packaging.errors import BundleError, HashMismatch, TruncatedBundle, UntrustedSigner


@pytest.fixture
def gw(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Gateway:
    g = make_gateway(tmp_path / "gw")
    monkeypatch.setenv("FERRY_BOOT_ID_PATH", str(g.boot_id))
    return g


def digest(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def run_install(gw: Gateway, bundle: Path, **kw: object) -> int:
    ctx = make_context(gw.config)
    try:
        return install(gw.config, str(bundle), ctx=ctx, **kw)  # type: ignore[arg-type]
    finally:
        ctx.journal.close()


def after_boot(gw: Gateway) -> None:
    ctx = make_context(gw.config)
    try:
        resume(ctx)
    finally:
        ctx.journal.close()


def journal(gw: Gateway) -> Journal:
    return Journal.open(gw.data_dir)


@pytest.mark.parametrize("compress", [None, "zstd", "zlib"])
def test_install_reboot_commit(gw: Gateway, tmp_path: Path, compress: str | None) -> None:
    image = make_image("1.1.0", 400_000)
    bundle = make_bundle(gw, tmp_path / "b.swu", version="1.1.0", image=image,
                         compress=compress)
    dep_id = run_install(gw, bundle)
    j = journal(gw)
    dep = j.get(dep_id)
    assert (dep.state, dep.result, dep.from_slot, dep.to_slot) == ("rebooting", None, "A", "B")
    assert gw.reboot_flag.exists()
    assert gw.env()["BOOT_ORDER"].split()[0] == "B"
    assert gw.slot_path("B").read_bytes()[: len(image)] == image

    assert gw.boot() == "B"
    after_boot(gw)
    dep = j.get(dep_id)
    assert dep.result == "success", dep.error
    assert gw.running_version() == "1.1.0"
    assert gw.env()["BOOT_B_LEFT"] == "3"  # marked good: full attempts again
    names = [s.name for s in j.steps(dep_id)]
    assert names == ["verify", "invalidate", "write", "activate", "reboot", "boot", "health",
                     "commit", "proxy"]
    assert all(s.status == "done" for s in j.steps(dep_id))


def test_failed_health_check_rolls_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gw = make_gateway(tmp_path / "gw", checks=[["sh", "-c", "test -e /nonexistent/x"]],
                      window=0.5)
    monkeypatch.setenv("FERRY_BOOT_ID_PATH", str(gw.boot_id))
    bundle = make_bundle(gw, tmp_path / "b.swu", version="1.1.0",
                         image=make_image("1.1.0", 200_000))
    dep_id = run_install(gw, bundle)
    assert gw.boot() == "B"
    after_boot(gw)  # health fails: B marked bad, reboot requested
    j = journal(gw)
    assert j.get(dep_id).state == "rolling-back"
    assert gw.reboot_flag.exists()
    assert gw.env()["BOOT_B_LEFT"] == "0"
    assert gw.boot() == "A"
    after_boot(gw)
    dep = j.get(dep_id)
    assert dep.result == "rolled-back"
    assert "health" in (dep.error or "") and "exited 1" in (dep.error or "")
    assert gw.running_version() == "1.0.0"


def test_uboot_fallback_is_recorded(gw: Gateway, tmp_path: Path) -> None:
    broken = bytearray(make_image("1.1.0", 200_000))
    broken[-1] ^= 0xFF  # a valid bundle member, but a kernel that never comes up
    bundle = make_bundle(gw, tmp_path / "b.swu", version="1.1.0", image=bytes(broken))
    dep_id = run_install(gw, bundle)
    assert gw.boot() == "A"  # three failed attempts on B, then U-Boot falls back
    after_boot(gw)
    dep = journal(gw).get(dep_id)
    assert dep.result == "rolled-back"
    assert "U-Boot fell back" in (dep.error or "")
    assert gw.env()["BOOT_ORDER"].split() == ["A"]


@pytest.mark.parametrize(
    ("version", "kw", "error", "match"),
    [
        ("0.9.0", {}, VersionRefused, "older than the running 1.0.0"),
        ("1.0.0", {}, VersionRefused, "already running"),
        ("0.5.0", {"force": True}, VersionRefused, "below the minimum 0.8"),
    ],
)
def test_version_policy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, version: str,
                        kw: dict[str, bool], error: type[Exception], match: str) -> None:
    gw = make_gateway(tmp_path / "gw", min_version="0.8")
    monkeypatch.setenv("FERRY_BOOT_ID_PATH", str(gw.boot_id))
    before = digest(gw.slot_path("B")), digest(gw.slot_path("A")), gw.env()
    bundle = make_bundle(gw, tmp_path / "b.swu", version=version,
                         image=make_image(version, 100_000))
    with pytest.raises(error, match=match):
        run_install(gw, bundle, **kw)
    assert (digest(gw.slot_path("B")), digest(gw.slot_path("A")), gw.env()) == before
    dep = journal(gw).latest()
    assert dep is not None and dep.result == "failure" and match.split()[0] in (dep.error or "")


def test_forced_downgrade_installs(gw: Gateway, tmp_path: Path) -> None:
    bundle = make_bundle(gw, tmp_path / "b.swu", version="0.9.0",
                         image=make_image("0.9.0", 100_000))
    dep_id = run_install(gw, bundle, force=True)
    assert gw.boot() == "B"
    after_boot(gw)
    assert journal(gw).get(dep_id).result == "success"
    assert gw.running_version() == "0.9.0"


def _refused(gw: Gateway, bundle: Path, error: type[Exception], match: str) -> None:
    a = digest(gw.slot_path("A"))
    with pytest.raises(error, match=match or None):
        run_install(gw, bundle)
    assert digest(gw.slot_path("A")) == a  # the running slot is never touched
    dep = journal(gw).latest()
    assert dep is not None and dep.result == "failure" and dep.error
    assert gw.boot() == "A"  # whatever happened to B, the gateway still boots A


def test_wrong_hardware(gw: Gateway, tmp_path: Path) -> None:
    bundle = make_bundle(gw, tmp_path / "b.swu", version="1.1.0", compatible="other-board",
                         image=make_image("1.1.0", 100_000))
    _refused(gw, bundle, IncompatibleBundle, "other-board")


def test_wrong_key(gw: Gateway, tmp_path: Path) -> None:
    write_dev_pki(tmp_path / "evil")
    bundle = make_bundle(gw, tmp_path / "b.swu", version="1.1.0", pki_dir=tmp_path / "evil",
                         image=make_image("1.1.0", 100_000))
    _refused(gw, bundle, UntrustedSigner, "")
    assert "keyring" in (journal(gw).latest().error or "")  # type: ignore[union-attr]


def test_tampered_image(gw: Gateway, tmp_path: Path) -> None:
    bundle = make_bundle(gw, tmp_path / "b.swu", version="1.1.0",
                         image=make_image("1.1.0", 300_000))
    data = bytearray(bundle.read_bytes())
    data[len(data) // 2] ^= 0x01
    bundle.write_bytes(bytes(data))
    _refused(gw, bundle, HashMismatch, "sha256")
    assert "B" not in gw.env()["BOOT_ORDER"].split()  # the torn slot is not bootable
    steps = journal(gw).steps(journal(gw).latest().id)  # type: ignore[union-attr]
    assert steps[-1].name == "write" and steps[-1].status == "failed"


def test_truncated_bundle(gw: Gateway, tmp_path: Path) -> None:
    bundle = make_bundle(gw, tmp_path / "b.swu", version="1.1.0",
                         image=make_image("1.1.0", 300_000))
    bundle.write_bytes(bundle.read_bytes()[:200_000])
    _refused(gw, bundle, (TruncatedBundle, BundleError), "")  # type: ignore[arg-type]
    assert "B" not in gw.env()["BOOT_ORDER"].split()


def test_image_larger_than_slot(gw: Gateway, tmp_path: Path) -> None:
    bundle = make_bundle(gw, tmp_path / "b.swu", version="1.1.0",
                         image=make_image("1.1.0", gw.slot_size + 4096), compress="zstd")
    b_before = digest(gw.slot_path("B"))
    _refused(gw, bundle, SlotTooSmall, "holds")
    assert digest(gw.slot_path("B")) == b_before  # refused before touching the slot


def test_missing_bundle_is_a_clear_error(gw: Gateway, tmp_path: Path) -> None:
    from ferry.daemon.install.bundlesource import SourceError

    _refused(gw, tmp_path / "nope.swu", SourceError, "not found")


def test_new_install_supersedes_one_cut_before_activation(gw: Gateway, tmp_path: Path) -> None:
    j = journal(gw)
    stale = j.create(str(tmp_path / "old.swu"))
    j.begin_step(stale, "write", state="writing")
    bundle = make_bundle(gw, tmp_path / "b.swu", version="1.1.0",
                         image=make_image("1.1.0", 100_000))
    dep_id = run_install(gw, bundle)
    assert j.get(stale).result == "cancelled"
    assert j.get(dep_id).state == "rebooting"


def test_image_is_intact_helper() -> None:
    img = make_image("2.0.0", 5000)
    assert image_version(img + b"\0" * 10) == "2.0.0"
    assert image_version(img[:-1]) is None


def test_failed_reboot_keeps_the_deployment_pending(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from ferry.daemon.install.reboot import RebootError

    gw = make_gateway(tmp_path / "gw")
    monkeypatch.setenv("FERRY_BOOT_ID_PATH", str(gw.boot_id))
    text = gw.config_path.read_text().replace(
        f'reboot_command = ["touch", "{gw.reboot_flag}"]', 'reboot_command = ["false"]')
    gw.config_path.write_text(text)
    bundle = make_bundle(gw, tmp_path / "b.swu", version="1.1.0",
                         image=make_image("1.1.0", 100_000))
    with pytest.raises(RebootError, match="exited 1"):
        run_install(gw, bundle)
    dep = journal(gw).latest()
    assert dep is not None and dep.result is None and dep.state == "rebooting"
    assert "reboot by hand" in (dep.error or "")
    assert gw.boot() == "B"  # the technician reboots: the boot check takes over
    after_boot(gw)
    done = journal(gw).get(dep.id)
    assert done.result == "success" and done.error is None


def test_history_cli(gw: Gateway, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from ferry.daemon.cli.main import main

    bundle = make_bundle(gw, tmp_path / "b.swu", version="1.1.0", compatible="other-board",
                         image=make_image("1.1.0", 100_000))
    with pytest.raises(IncompatibleBundle):
        run_install(gw, bundle)
    assert main(["--config", str(gw.config_path), "history", "--steps"]) == 0
    out = capsys.readouterr().out
    assert "#1 " in out and "1.1.0" in out and "failure" in out
    assert "error: bundle is for other-board" in out
    assert "verify: failed" in out
    assert main(["--config", str(gw.config_path), "history", "--json"]) == 0
    import json

    (dep,) = json.loads(capsys.readouterr().out)
    assert dep["result"] == "failure" and dep["steps"][0]["name"] == "verify"
