"""smp-serial against independent peers: imgtool (MCUboot images, ed25519 and ECDSA P-256),
smpclient's MCUboot parser and SMP client, and the smpmgr CLI, all on a pty with the
simulated MCU; the ``smp`` package's enums check ferry's error names, and smpclient's
parser checks the simulator's SMP v1 and v2 error replies. Peers install from
.ci/deps/smp.pip.

The simulator resets as Zephyr does (250 ms after answering), so the peers, like ferry,
poll the image state until it shows the reset happened instead of sleeping a fixed time."""

from __future__ import annotations

import asyncio
import io
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization

from ferry.proxy import mcuboot
from ferry.proxy.registry import get_transport
from ferry.proxy.transport import Target
from ferry.sim.mcu import McuConfig, SimMcu
from ferry.sim.mcu import image as sim_image

ROOT = Path(__file__).resolve().parents[2]
SLOT = 0x40000


def tool(name: str) -> str:
    path = shutil.which(name) or shutil.which(name, path=str(ROOT / ".venv" / "bin"))
    if path is None:
        pytest.fail(f"{name} is not installed; run 'bash .ci/setup' (.ci/deps/smp.pip)")
    return path


def run(*argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)


def public_pem(key_file: Path) -> bytes:
    key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
    return key.public_key().public_bytes(serialization.Encoding.PEM,  # type: ignore[union-attr]
                                         serialization.PublicFormat.SubjectPublicKeyInfo)


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    imgtool = tool("imgtool")
    d = tmp_path_factory.mktemp("imgtool")
    out: dict[str, Path] = {}
    for kind, ktype in (("ec", "ecdsa-p256"), ("ed", "ed25519")):
        key = d / f"{kind}.pem"
        r = run(imgtool, "keygen", "-k", str(key), "-t", ktype)
        assert r.returncode == 0, r.stderr
        out[f"key-{kind}"] = key
    app = d / "app.bin"
    app.write_bytes(os.urandom(20000))
    variants = {
        "ec": ("ec", ["-v", "1.2.3+4"]),
        "ed": ("ed", ["-v", "1.2.3+4", "-s", "auto"]),
        "ec-pad": ("ec", ["-v", "1.2.4", "--align", "8", "--pad"]),
        "ec-confirm": ("ec", ["-v", "1.2.5", "--align", "8", "--pad", "--confirm"]),
    }
    for name, (kind, extra) in variants.items():
        dst = d / f"{name}.signed.bin"
        r = run(imgtool, "sign", "-k", str(out[f"key-{kind}"]), "--align", "4", "-H", "0x200",
                "--pad-header", "-S", hex(SLOT), *extra, str(app), str(dst))
        assert r.returncode == 0, r.stderr
        out[name] = dst
    return out


def old_image() -> bytes:
    return sim_image.build((1, 0, 0, 0), b"\x11" * 4000)


def start_sim(key: Path | None = None, **kw: object) -> SimMcu:
    cfg = McuConfig(baud=None, boot_seconds=0.05, slot_size=SLOT,
                    public_key_pem=public_pem(key) if key else None, **kw)  # type: ignore[arg-type]
    sim = SimMcu(cfg, running=old_image())
    # the running image is unsigned: let the sim boot it, then require signatures
    key_pem = cfg.public_key_pem
    cfg.public_key_pem = None
    sim.start()
    cfg.public_key_pem = key_pem
    return sim


async def state_after_reset(port: str, new_hash: bytes, seconds: float = 20) -> object:
    """smpclient's image state once it can only come from after the reset: slot 1 no
    longer holds the new image pending (the old image reports it pending until then)."""
    from smpclient import SMPClient
    from smpclient.generics import success
    from smpclient.requests.image_management import ImageStatesRead
    from smpclient.transport.serial import SMPSerialTransport

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            async with SMPClient(SMPSerialTransport(), port, timeout_s=1) as client:
                state = await client.request(ImageStatesRead())
        except Exception:  # port away while the MCU reboots, or a timeout
            await asyncio.sleep(0.1)
            continue
        assert success(state)
        if not any(s.slot == 1 and s.hash == new_hash and s.pending for s in state.images):
            return state
        await asyncio.sleep(0.1)
    raise AssertionError("the device never reset")


def ferry_flash(port: str, data: bytes, **options: str) -> object:
    opts = {"timeout": "2", "boot_timeout": "10", **options}
    target = Target(name="mcu", transport="smp-serial", address=port, options=opts)
    return get_transport("smp-serial").flash(target, io.BytesIO(data),
                                             progress=lambda d, t, m: None)


@pytest.mark.parametrize("name", ["ec", "ed", "ec-pad", "ec-confirm"])
def test_imgtool_images_parse_like_smpclient_and_verify(images: dict[str, Path],
                                                        name: str) -> None:
    from smpclient.mcuboot import IMAGE_TLV, ImageInfo

    data = images[name].read_bytes()
    ours = mcuboot.verify_hash(data)
    theirs = ImageInfo.load_file(str(images[name]))
    assert ours.hdr_size == theirs.header.hdr_size == 0x200
    assert ours.img_size == theirs.header.img_size == 20000
    assert ours.protect_tlv_size == theirs.header.protect_tlv_size
    v = theirs.header.ver
    assert ours.version == mcuboot.Version(v.major, v.minor, v.revision, v.build_num)
    assert ours.hash == theirs.get_tlv(IMAGE_TLV.SHA256).value
    kind = "ed" if name == "ed" else "ec"
    assert ours.signature_types == (["ED25519"] if kind == "ed" else ["ECDSA_SIG"])
    mcuboot.verify_signature(data, public_pem(images[f"key-{kind}"]))
    other = "ec" if kind == "ed" else "ed"
    with pytest.raises(mcuboot.ImageError):
        mcuboot.verify_signature(data, public_pem(images[f"key-{other}"]))
    if name.endswith("pad") or name.endswith("confirm"):
        assert len(data) == SLOT  # trailer is part of what goes to the device


def test_corrupted_image_refused_by_imgtool_ferry_and_simulated_bootloader(
        images: dict[str, Path], tmp_path: Path) -> None:
    bad = bytearray(images["ec"].read_bytes())
    bad[0x200 + 5000] ^= 0x01
    bad_file = tmp_path / "bad.bin"
    bad_file.write_bytes(bytes(bad))
    r = run(tool("imgtool"), "verify", "-k", str(images["key-ec"]), str(bad_file))
    assert r.returncode != 0
    with pytest.raises(mcuboot.ImageError, match="corrupt"):
        mcuboot.verify_hash(bytes(bad))
    # push it past ferry with smpclient: the simulated MCUboot must refuse to boot it
    sim = start_sim(images["key-ec"])
    try:
        with pytest.raises(AssertionError, match="old image"):
            asyncio.run(smpclient_upgrade(sim.port, bytes(bad)))
        assert any("invalid (SHA256 mismatch)" in line for line in sim.device.log)
        assert sim.device.primary.info(None).version_text == "1.0.0"  # type: ignore[union-attr]
    finally:
        sim.stop()


def test_wrong_key_image_does_not_boot(images: dict[str, Path]) -> None:
    sim = start_sim(images["key-ed"])  # device trusts the ed25519 key only
    try:
        with pytest.raises(AssertionError, match="old image"):
            asyncio.run(smpclient_upgrade(sim.port, images["ec"].read_bytes()))
        assert any("invalid (bad signature)" in line for line in sim.device.log)
        assert sim.device.primary.info(None).version_text == "1.0.0"  # type: ignore[union-attr]
    finally:
        sim.stop()


async def smpclient_upgrade(port: str, data: bytes) -> None:
    """Upload, test, reset with smpclient; assert the new image then runs unconfirmed."""
    from smp import error as smperr
    from smpclient import SMPClient
    from smpclient.generics import success
    from smpclient.requests.image_management import ImageStatesRead, ImageStatesWrite
    from smpclient.requests.os_management import EchoWrite, MCUMgrParametersRead, ResetWrite
    from smpclient.transport.serial import SMPSerialTransport

    async with SMPClient(SMPSerialTransport(), port, timeout_s=5) as client:
        echo = await client.request(EchoWrite(d="ferry"))
        assert success(echo) and echo.r == "ferry"
        params = await client.request(MCUMgrParametersRead())
        assert success(params) and params.buf_count == 4
        offsets = [off async for off in client.upload(data)]
        assert offsets[-1] == len(data)
        state = await client.request(ImageStatesRead())
        assert success(state)
        staged = [s for s in state.images if s.slot == 1]
        info = mcuboot.parse(data)
        assert staged and staged[0].hash == info.hash
        marked = await client.request(ImageStatesWrite(hash=info.hash, confirm=False))
        assert success(marked), marked
        assert any(s.pending for s in marked.images if s.slot == 1)
        reset = await client.request(ResetWrite())
        assert success(reset) or isinstance(reset, smperr.ErrorV1 | smperr.ErrorV2)
    assert info.hash is not None
    after: Any = await state_after_reset(port, info.hash)
    async with SMPClient(SMPSerialTransport(), port, timeout_s=5) as client:
        running = next(s for s in after.images if s.slot == 0)
        assert running.hash == info.hash, "device came back on its old image"
        assert not running.confirmed
        confirmed = await client.request(ImageStatesWrite(confirm=True))
        assert success(confirmed)
        assert next(s for s in confirmed.images if s.slot == 0).confirmed


@pytest.mark.parametrize("name", ["ec", "ed"])
def test_smpclient_upgrades_the_simulator(images: dict[str, Path], name: str) -> None:
    sim = start_sim(images[f"key-{name}"])
    try:
        asyncio.run(smpclient_upgrade(sim.port, images[name].read_bytes()))
        assert sim.device.primary.info(None).version_text == "1.2.3.4"  # type: ignore[union-attr]
        # and ferry, reading the same device, agrees and skips the upload
        result = ferry_flash(sim.port, images[name].read_bytes())
        assert result.ok and result.skipped  # type: ignore[attr-defined]
    finally:
        sim.stop()


def test_ferry_flashes_imgtool_padded_and_confirmed_images(images: dict[str, Path]) -> None:
    sim = start_sim(images["key-ec"])
    try:
        for name, version in (("ec", "1.2.3.4"), ("ec-pad", "1.2.4"), ("ec-confirm", "1.2.5")):
            result = ferry_flash(sim.port, images[name].read_bytes())
            assert result.ok, result.message  # type: ignore[attr-defined]
            assert result.version == version  # type: ignore[attr-defined]
            assert sim.device.primary.image_ok
        assert "boot: swap perm" in sim.device.log  # --confirm baked image_ok into the trailer
    finally:
        sim.stop()


def test_smpmgr_cli_against_simulator_then_ferry_confirms(images: dict[str, Path]) -> None:
    smpmgr = tool("smpmgr")
    sim = start_sim(images["key-ec"])
    try:
        r = run(smpmgr, "--port", sim.port, "--timeout", "5", "upgrade", "--slot", "1",
                str(images["ec"]))
        assert r.returncode == 0 and "Upgrade complete" in r.stdout, r.stdout + r.stderr
        deadline = time.monotonic() + 20  # smpmgr returns before the reset timer fires
        while sim.device.primary.info(None).version_text != "1.2.3.4":  # type: ignore[union-attr]
            assert time.monotonic() < deadline, "smpmgr's reset never happened"
            time.sleep(0.1)
        r = run(smpmgr, "--port", sim.port, "--timeout", "5", "image", "state-read")
        assert r.returncode == 0 and "1.2.3.4" in r.stdout, r.stdout + r.stderr
        assert not sim.device.primary.image_ok  # smpmgr left it in test mode
        result = ferry_flash(sim.port, images["ec"].read_bytes())
        assert result.ok and result.skipped  # type: ignore[attr-defined]
        assert sim.device.primary.image_ok  # ferry confirmed the running image
    finally:
        sim.stop()


def test_error_names_match_the_smp_package() -> None:
    from smp.error import MGMT_ERR
    from smp.image_management import IMG_MGMT_ERR
    from smp.os_management import OS_MGMT_RET_RC

    from ferry.proxy.smp import errors

    for theirs, ours, prefix in ((MGMT_ERR, errors.MGMT_ERR, "MGMT_ERR_"),
                                 (IMG_MGMT_ERR, errors.IMG_MGMT_ERR, "IMG_MGMT_ERR_"),
                                 (OS_MGMT_RET_RC, errors.OS_MGMT_ERR, "OS_MGMT_ERR_")):
        checked = [m for m in theirs if m.value < 256]
        assert len(checked) >= 6
        for member in checked:
            assert ours[member.value] == prefix + member.name, member


@pytest.mark.parametrize("smp_v2", [True, False], ids=["v2", "v1"])
def test_smpclient_parses_the_simulators_error_replies(smp_v2: bool) -> None:
    """Confirming while a test is pending: Zephyr answers IMG_MGMT_ERR_IMAGE_ALREADY_PENDING
    in v2 form, MGMT_ERR_EBADSTATE (translated) in v1 form."""
    from smp import error as smperr
    from smp.image_management import IMG_MGMT_ERR
    from smpclient import SMPClient
    from smpclient.requests.image_management import ImageStatesWrite
    from smpclient.transport.serial import SMPSerialTransport

    from ferry.proxy.smp.client import SmpClient

    sim = start_sim(smp_v2=smp_v2)
    new = sim_image.build((1, 1, 0, 0), b"\x22" * 3000)
    try:
        with SmpClient(sim.port, timeout=2) as c:
            c.upload(new)
            c.set_state(mcuboot.parse(new).hash, confirm=False)

        async def confirm() -> object:
            async with SMPClient(SMPSerialTransport(), sim.port, timeout_s=5) as client:
                return await client.request(ImageStatesWrite(confirm=True))

        answer = asyncio.run(confirm())
        if smp_v2:
            assert isinstance(answer, smperr.ErrorV2), answer
            assert answer.err.group == 1
            assert answer.err.rc == IMG_MGMT_ERR.IMAGE_ALREADY_PENDING
        else:
            assert isinstance(answer, smperr.ErrorV1), answer
            assert answer.rc == smperr.MGMT_ERR.EBADSTATE
        assert sim.device.secondary.magic and not sim.device.config.fails_to_boot
    finally:
        sim.stop()
