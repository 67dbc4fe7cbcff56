"""Signed bundles cannot reach past their targets (issue 16, signed-bundle edge cases).

A bundle signer is trusted for what each image is, not for "every device" or "any
file": an empty selector value matches no target (it used to equal the empty value of
every target that does not set the key), two member names that sanitise alike stage to
two files (the second used to overwrite the first), and a target image that inflates
past its limit (signed size, else ``[install] max_target_image_size``, never past the
data partition's free space less ``staging_reserve``) fails the install with one line
and leaves no file behind (it used to be written out whole).
"""

from __future__ import annotations

import hashlib
import io
import threading
from pathlib import Path
from typing import Any, BinaryIO, ClassVar

import pytest
from install_gateway import Gateway, make_bundle, make_gateway

from ferry.daemon.config import ConfigError, TargetConfig, config_from_dict
from ferry.daemon.install import staging
from ferry.daemon.install.pipeline import install, make_context
from ferry.daemon.install.proxyphase import matches, plan
from ferry.daemon.journal import Journal
from ferry.errors import FerryError
from ferry.packaging import cpio, signature
from ferry.packaging.compression import compress_file
from ferry.packaging.description import Description, ImageEntry, TargetSpec, render_description
from ferry.packaging.writer import load_signing_key
from ferry.proxy.transport import FlashResult, Progress, Target, TargetState

TARGETS = """
[[target]]
name = "mcu-a"
transport = "smp-serial"
address = "/dev/ttyUSB0"

[[target]]
name = "mcu-b"
transport = "smp-serial"
address = "/dev/ttyUSB1"

[[target]]
name = "lamp"
transport = "zigbee"
address = "0x00124b0001"
options = { manufacturer = "0x1234", image_type = "0x0001" }

[[target]]
name = "plug"
transport = "zigbee"
address = "0x00124b0002"
"""


class Recorder:
    """A transport that keeps what each target was sent."""

    flashed: ClassVar[dict[str, bytes]] = {}
    lock = threading.Lock()

    def __init__(self, name: str) -> None:
        self.name = name

    def discover(self) -> list[Target]:
        return []

    def inspect(self, target: Target) -> TargetState:
        return TargetState(reachable=True)

    def flash(self, target: Target, image: BinaryIO, *, progress: Progress) -> FlashResult:
        data = image.read()
        with Recorder.lock:
            Recorder.flashed[target.name] = data
        return FlashResult(ok=True, version=target.options.get("spec_version", ""))


@pytest.fixture
def gw(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Gateway:
    g = make_gateway(tmp_path / "gw", extra=TARGETS)
    monkeypatch.setenv("FERRY_BOOT_ID_PATH", str(g.boot_id))
    Recorder.flashed = {}
    monkeypatch.setattr("ferry.daemon.install.proxyphase._default_factory",
                        lambda name, options: Recorder(name))
    return g


def set_install(gw: Gateway, **keys: int) -> None:
    lines = "".join(f"{k} = {v}\n" for k, v in keys.items())
    text = gw.config_path.read_text()
    gw.config_path.write_text(text.replace("[install]\n", "[install]\n" + lines, 1))


def staged_files(gw: Gateway) -> list[str]:
    d = gw.data_dir / "staging"
    return sorted(p.name for p in d.iterdir()) if d.is_dir() else []


# -- empty selector values --------------------------------------------------------------
def _tc(name: str, transport: str, image_id: str | None = None,
        **options: str) -> TargetConfig:
    return TargetConfig(name=name, transport=transport, address="x", image_id=image_id,
                        options=dict(options))


@pytest.mark.parametrize("selector", [
    {"image_id": ""},
    {"image_id": "   "},
    {"manufacturer": ""},
    {"manufacturer": "0x1234", "image_type": ""},
    {"": "0x1234"},
])
def test_an_empty_selector_value_matches_no_target(selector: dict[str, str]) -> None:
    image = {"transport": "zigbee", "name": "", "selector": selector, "filename": "f"}
    targets = (
        _tc("plain", "zigbee"),  # sets neither key: "" used to equal ""
        _tc("lamp", "zigbee", manufacturer="0x1234", image_type="0x0001"),
        _tc("blank", "zigbee", image_id="", manufacturer="", image_type=""),
    )
    assert not [tc.name for tc in targets if matches(tc, image)]
    jobs, unmatched = plan(targets, [image])
    assert jobs == [] and len(unmatched) == 1
    assert "empty" in unmatched[0][1] and "matches no target" in unmatched[0][1]


def test_an_empty_selector_value_does_not_match_even_by_name() -> None:
    image = {"transport": "zigbee", "name": "lamp", "selector": {"image_type": ""},
             "filename": "f"}
    assert not matches(_tc("lamp", "zigbee", manufacturer="0x1234"), image)


def test_a_set_selector_still_needs_the_target_to_have_that_value() -> None:
    image = {"transport": "zigbee", "name": "", "filename": "f",
             "selector": {"manufacturer": "0x1234", "image_type": "0x0001"}}
    assert matches(_tc("lamp", "zigbee", manufacturer="0X1234", image_type="0x0001"), image)
    assert not matches(_tc("plug", "zigbee"), image)
    assert not matches(_tc("other", "zigbee", manufacturer="0x1234", image_type="0x0002"),
                       image)


def test_bundle_with_an_empty_selector_flashes_nothing_and_says_why(gw: Gateway) -> None:
    blank_id = TargetSpec(transport="smp-serial", name="anything", format="bin",
                          version="9", selector={"image_id": ""})
    blank_mfr = TargetSpec(transport="zigbee", name="any-lamp", format="bin", version="9",
                           selector={"manufacturer": "", "image_type": ""})
    good = TargetSpec(transport="zigbee", name="lamp-fw", format="bin", version="2",
                      selector={"manufacturer": "0x1234", "image_type": "0x0001"})
    bundle = make_bundle(gw, gw.root / "b.swu", version="1.0.1", compress="zstd", targets=[
        (blank_id, b"X" * 3000), (blank_mfr, b"Y" * 3000), (good, b"G" * 3000)])
    dep_id = install(gw.config, str(bundle), ctx=make_context(gw.config), force=True)

    assert set(Recorder.flashed) == {"lamp"}  # not mcu-a, mcu-b or plug
    assert Recorder.flashed["lamp"] == b"G" * 3000
    j = Journal.open(gw.data_dir)
    rows = {t.name: t for t in j.targets(dep_id)}
    assert rows["lamp"].state == "ok"
    for name, keys in (("anything", "image_id"), ("any-lamp", "image_type, manufacturer")):
        assert rows[name].state == "failed"
        assert f"empty {keys}" in (rows[name].message or "")
    dep = j.get(dep_id)
    assert dep.result == "failure"
    assert "2 of 3 target(s) failed" in (dep.error or "")
    assert "empty image_id; an empty selector value matches no target" in (dep.error or "")


# -- staged names -----------------------------------------------------------------------
def test_names_that_sanitise_alike_get_distinct_staged_files(tmp_path: Path) -> None:
    long = "x" * 120
    pairs = [("fw v1.bin", "fw_v1.bin"), ("fw-é.bin", "fw-ü.bin"),
             (long + "a.bin", long + "b.bin"), ("a.bin", "a.bin.part")]
    for one, two in pairs:
        p1, p2 = (staging.staged_path(tmp_path, 7, n) for n in (one, two))
        assert p1 != p2, (one, two)
        assert p1 == staging.staged_path(tmp_path, 7, one)  # the same on every run
        for p in (p1, p2):
            assert p.parent == tmp_path / "staging" and p.name.startswith("7-")
            assert not p.name.endswith(".part") and len(p.name.encode()) < 200


def test_stage_refuses_to_replace_a_staged_file(tmp_path: Path) -> None:
    dest = staging.staged_path(tmp_path, 1, "fw.bin")
    staging.stage(io.BytesIO(b"first"), dest)
    with pytest.raises(staging.StagingError, match="already exists"):
        staging.stage(io.BytesIO(b"second"), dest)
    assert dest.read_bytes() == b"first"


def test_two_targets_whose_names_sanitise_alike_each_get_their_own_image(
        gw: Gateway) -> None:
    text = gw.config_path.read_text().replace('name = "mcu-a"', 'name = "fw v1"')
    gw.config_path.write_text(text.replace('name = "mcu-b"', 'name = "fw_v1"'))
    one = TargetSpec(transport="smp-serial", name="fw v1", format="bin", version="2")
    two = TargetSpec(transport="smp-serial", name="fw_v1", format="bin", version="2")
    # make_bundle names the members "fw v1.bin" and "fw_v1.bin"
    bundle = make_bundle(gw, gw.root / "n.swu", version="1.0.1", compress="zstd",
                         targets=[(one, b"1" * 4000), (two, b"2" * 5000)])
    dep_id = install(gw.config, str(bundle), ctx=make_context(gw.config), force=True)

    assert Recorder.flashed == {"fw v1": b"1" * 4000, "fw_v1": b"2" * 5000}
    j = Journal.open(gw.data_dir)
    assert j.get(dep_id).result == "success"
    paths = [s["path"] for s in j.get(dep_id).info["staged"]]
    assert len(set(paths)) == 2


# -- decompressed-size cap --------------------------------------------------------------
BOMB = 8 << 20  # zeros: a few KiB stored


def packed_zeros(kind: str, size: int = BOMB) -> bytes:
    out = io.BytesIO()
    compress_file(kind, io.BytesIO(bytes(size)), out)
    return out.getvalue()


def signed_bundle(gw: Gateway, out: Path, spec: TargetSpec, blob: bytes, kind: str, *,
                  declared: int | None) -> Path:
    """A genuinely signed targets-only bundle whose image carries ``declared`` as its
    decompressed-size (None: none) and no decompressed-sha256, built with the project's
    own description renderer, signer and cpio writer."""
    entry = ImageEntry(f"{spec.name}.bin", len(blob), hashlib.sha256(blob).hexdigest(),
                       "zlib" if kind == "gzip" else kind, "target", target=spec,
                       decompressed_size=declared)
    text = render_description(Description("1.0.1", ("test-gw",), (entry,)))
    key = load_signing_key(gw.pki_dir / "signer.key", gw.pki_dir / "signer.pem")
    buf = io.BytesIO()
    writer = cpio.CpioStreamWriter(buf)
    writer.add_bytes("sw-description", text)
    writer.add_bytes("sw-description.sig", signature.sign(text, key.key, key.cert))
    writer.add_bytes(entry.filename, blob)
    writer.finish()
    out.write_bytes(buf.getvalue())
    return out


def failed_install(gw: Gateway, bundle: Path) -> tuple[str, Any]:
    with pytest.raises(FerryError) as info:
        install(gw.config, str(bundle), ctx=make_context(gw.config), force=True)
    message = str(info.value)
    assert "\n" not in message
    j = Journal.open(gw.data_dir)
    dep = j.latest()
    assert dep is not None
    assert dep.result == "failure" and dep.error == message
    assert Recorder.flashed == {}
    assert staged_files(gw) == []  # no partial file, no .part
    return message, dep


MCU = TargetSpec(transport="smp-serial", name="mcu-a", format="bin", version="2")


@pytest.mark.parametrize("kind", ["zstd", "gzip"])
def test_bomb_without_a_signed_size_stops_at_max_target_image_size(
        gw: Gateway, kind: str) -> None:
    set_install(gw, max_target_image_size=1 << 20)
    blob = packed_zeros(kind)
    assert len(blob) < BOMB // 100
    bundle = signed_bundle(gw, gw.root / "bomb.swu", MCU, blob, kind, declared=None)
    message, _ = failed_install(gw, bundle)
    assert "'mcu-a.bin'" in message and "max_target_image_size" in message
    assert "more than 1048576 bytes" in message


def test_bomb_that_lies_about_its_signed_size_stops_at_that_size(gw: Gateway) -> None:
    blob = packed_zeros("zstd")
    bundle = signed_bundle(gw, gw.root / "lie.swu", MCU, blob, "zstd", declared=4096)
    message, _ = failed_install(gw, bundle)
    assert "signed size 4096" in message and "more than 4096 bytes" in message


def test_bomb_is_held_to_the_free_space_above_the_reserve(
        gw: Gateway, monkeypatch: pytest.MonkeyPatch) -> None:
    reserve = 16 << 20
    monkeypatch.setattr(staging, "free_bytes", lambda path: reserve + (2 << 20))
    blob = packed_zeros("gzip")
    bundle = signed_bundle(gw, gw.root / "full.swu", MCU, blob, "gzip", declared=None)
    message, _ = failed_install(gw, bundle)
    assert "free space" in message and f"more than {2 << 20} bytes" in message


def test_signed_size_over_the_free_space_is_refused_before_a_byte(
        gw: Gateway, monkeypatch: pytest.MonkeyPatch) -> None:
    set_install(gw, staging_reserve=1 << 20)
    monkeypatch.setattr(staging, "free_bytes", lambda path: (1 << 20) + 100_000)
    written: list[int] = []
    real_stage = staging.stage
    monkeypatch.setattr(staging, "stage",
                        lambda *a, **k: written.append(1) or real_stage(*a, **k))
    bundle = make_bundle(gw, gw.root / "big.swu", version="1.0.1", compress="zstd",
                         targets=[(MCU, bytes(200_000))])
    message, _ = failed_install(gw, bundle)
    assert "needs 200000 bytes" in message and "100000 free" in message
    assert written == []


def test_an_image_of_exactly_its_limit_installs(gw: Gateway) -> None:
    set_install(gw, max_target_image_size=1 << 20)
    blob = packed_zeros("zstd", 1 << 20)
    bundle = signed_bundle(gw, gw.root / "edge.swu", MCU, blob, "zstd", declared=None)
    dep_id = install(gw.config, str(bundle), ctx=make_context(gw.config), force=True)
    assert Journal.open(gw.data_dir).get(dep_id).result == "success"
    assert Recorder.flashed == {"mcu-a": bytes(1 << 20)}


def test_install_limits_are_checked_in_the_config() -> None:
    base: dict[str, Any] = {"gateway": {"compatible": "x"}}
    cfg = config_from_dict(base)
    assert cfg.install.max_target_image_size == 64 << 20
    assert cfg.install.staging_reserve == 16 << 20
    with pytest.raises(ConfigError, match="max_target_image_size = 0"):
        config_from_dict({**base, "install": {"max_target_image_size": 0}})
    with pytest.raises(ConfigError, match="staging_reserve = -1"):
        config_from_dict({**base, "install": {"staging_reserve": -1}})


def test_an_unusable_staging_directory_is_a_one_line_error(tmp_path: Path) -> None:
    from ferry.daemon.config import InstallConfig

    (tmp_path / "staging").write_text("a file where the directory should be")
    entry = ImageEntry("fw.bin", 10, "0" * 64, None, "target")
    with pytest.raises(staging.StagingError, match="cannot use the staging directory"):
        staging.image_limit(tmp_path, entry, InstallConfig())
