"""Encrypted MCUboot images made by imgtool (``imgtool sign --encrypt``) through ferry's
smp-serial transport to the simulated MCUboot, and inside a ferry bundle through the
proxy phase. imgtool makes the keys and images (ECIES-P256 with an ECDSA signature,
ECIES-X25519 with ed25519, RSA-OAEP with RSA-PSS and AES-256: imgtool insists that
signing and encryption keys are of one kind); smpclient's MCUboot enums and imgtool's
``dumpinfo`` check ferry's names for the ENC TLVs and flags. imgtool installs from
.ci/deps/smp.pip.

The simulated MCU holds the private encryption key (as MCUboot holds
``CONFIG_BOOT_ENCRYPTION_KEY_FILE``) and the public signing key: with the matching key
it boots and ferry confirms; with another key MCUboot refuses the image at boot, erases
slot 1, and ferry says so."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from ferry.daemon.cli.main import main
from ferry.proxy import mcuboot
from ferry.proxy.registry import get_transport
from ferry.proxy.transport import FlashResult, Target
from ferry.sim.mcu import McuConfig, SimMcu
from ferry.sim.mcu import image as sim_image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
from install_gateway import make_gateway

ROOT = Path(__file__).resolve().parents[2]
SLOT = 0x40000
# kind -> (imgtool signing key type, encryption key type, extra sign flags, ferry's name)
KINDS = {
    "ec256": ("ecdsa-p256", "ecdsa-p256", [], "aes128 (ec256)"),
    "x25519": ("ed25519", "x25519", [], "aes128 (x25519)"),
    "rsa": ("rsa-2048", "rsa-2048", ["--encrypt-keylen", "256"], "aes256 (rsa2048)"),
}


def imgtool() -> str:
    path = shutil.which("imgtool") or shutil.which("imgtool", path=str(ROOT / ".venv" / "bin"))
    if path is None:
        pytest.fail("imgtool is not installed; run 'bash .ci/setup' (.ci/deps/smp.pip)")
    return path


def run(*argv: str) -> str:
    r = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 0, r.stderr
    return r.stdout


def public_pem(key_file: Path) -> bytes:
    key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
    return key.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Per kind: sign key, device encryption key, a second (wrong) one, and the image."""
    tool = imgtool()
    d = tmp_path_factory.mktemp("imgtool-enc")
    app = d / "app.bin"
    app.write_bytes(os.urandom(24000))
    out: dict[str, Path] = {"app": app}
    for kind, (sign_type, enc_type, extra, _name) in KINDS.items():
        for role, ktype in (("sign", sign_type), ("enc", enc_type), ("wrong", enc_type)):
            out[f"{kind}-{role}"] = d / f"{kind}-{role}.pem"
            run(tool, "keygen", "-k", str(out[f"{kind}-{role}"]), "-t", ktype)
        enc_pub = d / f"{kind}-enc.pub.pem"  # the build host needs only the public half
        enc_pub.write_text(run(tool, "getpub", "-k", str(out[f"{kind}-enc"]), "-e", "pem"))
        image = d / f"{kind}.enc.bin"
        run(tool, "sign", "-k", str(out[f"{kind}-sign"]), "--align", "4", "-H", "0x200",
            "--pad-header", "-S", hex(SLOT), "-v", "1.2.0", "--encrypt", str(enc_pub), *extra,
            str(app), str(image))
        out[kind] = image
    return out


def start_sim(made: dict[str, Path], kind: str, enc_role: str = "enc") -> SimMcu:
    running = sim_image.build((1, 0, 0, 0), b"\x11" * 4000)
    cfg = McuConfig(baud=None, boot_seconds=0.05, slot_size=SLOT,
                    enc_key=made[f"{kind}-{enc_role}"].read_bytes())
    sim = SimMcu(cfg, running=running).start()  # boots the unsigned factory image...
    cfg.public_key_pem = public_pem(made[f"{kind}-sign"])  # ...then requires signatures
    return sim


def ferry_flash(port: str, data: bytes) -> FlashResult:
    target = Target(name="mcu", transport="smp-serial", address=port,
                    options={"timeout": "2", "boot_timeout": "10"})
    return get_transport("smp-serial").flash(target, io.BytesIO(data),
                                             progress=lambda d, t, m: None)


@pytest.mark.parametrize("kind", list(KINDS))
def test_ferry_names_the_encryption_as_imgtool_and_smpclient_do(made: dict[str, Path],
                                                               kind: str) -> None:
    from smpclient.mcuboot import IMAGE_F, IMAGE_TLV, ImageInfo

    data = made[kind].read_bytes()
    ours = mcuboot.verify_hash(data)
    assert ours.encrypted == KINDS[kind][3] and ours.hash_checked is False
    assert ours.summary() == {"encrypted": KINDS[kind][3], "hash_checked": "false"}
    theirs = ImageInfo.load_file(str(made[kind]))
    enc = ours.enc_tlv
    assert enc is not None and IMAGE_TLV(enc.type).name == mcuboot.TLV_NAMES[enc.type]
    assert theirs.get_tlv(IMAGE_TLV(enc.type)).value == enc.value
    bits = ours.aes_bits
    flag = IMAGE_F.ENCRYPTED_AES128 if bits == 128 else IMAGE_F.ENCRYPTED_AES256
    assert theirs.header.flags & flag and ours.flags & flag
    dump = run(imgtool(), "dumpinfo", str(made[kind]))
    assert f"ENCRYPTED_AES{bits}" in dump
    assert hashlib.sha256(data).digest() != ours.hash  # the TLV hashes the plaintext
    if kind != "rsa":  # ferry checks EC and ed25519 signatures: over the plaintext hash
        mcuboot.verify_signature(data, public_pem(made[f"{kind}-sign"]))


@pytest.mark.parametrize("kind", list(KINDS))
def test_matching_device_key_boots_and_ferry_confirms(made: dict[str, Path], kind: str) -> None:
    sim = start_sim(made, kind)
    try:
        result = ferry_flash(sim.port, made[kind].read_bytes())
        assert result.ok and result.version == "1.2.0", (result.message, sim.device.log)
        assert result.message.startswith("mcu runs 1.2.0, confirmed (encrypted")
        assert result.detail["encrypted"] == KINDS[kind][3]
        assert result.detail["hash_checked"] == "false"
        primary = sim.device.primary
        assert primary.image_ok and primary.data[0x200 : 0x200 + 24000] == \
            made["app"].read_bytes()  # MCUboot decrypted it into slot 0
    finally:
        sim.stop()


@pytest.mark.parametrize("kind", list(KINDS))
def test_wrong_device_key_is_refused_at_boot_and_ferry_reports_it(made: dict[str, Path],
                                                                 kind: str) -> None:
    sim = start_sim(made, kind, enc_role="wrong")
    try:
        result = ferry_flash(sim.port, made[kind].read_bytes())
        assert not result.ok and result.rolled_back and result.version == "1.0.0"
        assert "MCUboot refused the new image 1.2.0 at boot" in result.message
        assert f"encrypted {KINDS[kind][3]}" in result.message
        assert any("encryption key not loaded" in line for line in sim.device.log)
        assert sim.device.secondary.data == b""  # boot_validate_slot erased it
    finally:
        sim.stop()


def test_flash_command_against_sim_mcu_command_with_enc_key(made: dict[str, Path],
                                                            tmp_path: Path) -> None:
    link = tmp_path / "ttyMCU"
    proc = subprocess.Popen([sys.executable, "-m", "ferry.daemon.cli.main", "sim", "mcu",
                             "--baud", "0", "--port", str(link),
                             "--enc-key", str(made["ec256-enc"])],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == str(link)
        out = subprocess.run([sys.executable, "-m", "ferry.daemon.cli.main", "flash",
                              "smp-serial", str(link), str(made["ec256"]),
                              "--reset-delay", "250ms", "--boot-timeout", "30"],
                             capture_output=True, text=True, timeout=180)
        assert out.returncode == 0, out.stderr
        lines = out.stderr.rstrip().splitlines()
        assert "runs 1.2.0, confirmed (encrypted aes128 (ec256)" in lines[-2]
        assert lines[-1].startswith("image: encrypted aes128 (ec256); hash_checked: false")
    finally:
        proc.terminate()
        proc.wait(30)


def _gateway_with_mcu(tmp_path: Path, port: str):  # type: ignore[no-untyped-def]
    extra = f"""
[[target]]
name = "mcu0"
transport = "smp-serial"
address = "{port}"
baud = 115200
options = {{ timeout = "2", boot_timeout = "10" }}
"""
    return make_gateway(tmp_path / "gw", extra=extra)


def _bundle(gw, made: dict[str, Path], out: Path) -> None:  # type: ignore[no-untyped-def]
    assert main(["bundle", "create", "--key", str(gw.pki_dir / "signer.key"),
                 "--cert", str(gw.pki_dir / "signer.pem"), "--version", "1.0.1",
                 "--compatible", "test-gw", "--compress", "none",
                 "--target", f"smp-serial:mcu0={made['ec256']}", "-o", str(out)]) == 0


def test_bundle_with_an_encrypted_image_flashes_through_the_proxy_phase(
        made: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ferry.daemon.install.pipeline import install, make_context
    from ferry.daemon.journal import Journal

    sim = start_sim(made, "ec256")
    try:
        gw = _gateway_with_mcu(tmp_path, sim.port)
        monkeypatch.setenv("FERRY_BOOT_ID_PATH", str(gw.boot_id))
        bundle = tmp_path / "mcu.swu"
        _bundle(gw, made, bundle)
        assert made["ec256"].read_bytes() in bundle.read_bytes()  # carried untouched
        dep_id = install(gw.config, str(bundle), ctx=make_context(gw.config))
        j = Journal.open(gw.data_dir)
        rec = {t.name: t for t in j.targets(dep_id)}["mcu0"]
        assert rec.state == "ok" and rec.version == "1.2.0", rec.message
        assert "encrypted aes128 (ec256): ferry could not check the plaintext hash" in (
            rec.message or "")
        assert j.get(dep_id).result == "success"
        assert sim.device.primary.data[0x200 : 0x200 + 24000] == made["app"].read_bytes()
    finally:
        sim.stop()


def test_bundle_still_checks_the_sha256_of_the_encrypted_file(
        made: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """ferry cannot check the plaintext, but the bundle's hash of the ciphertext still
    guards the transfer: one flipped byte and nothing reaches the MCU."""
    from ferry.daemon.install.pipeline import install, make_context
    from ferry.errors import FerryError

    sim = start_sim(made, "ec256")
    try:
        gw = _gateway_with_mcu(tmp_path, sim.port)
        monkeypatch.setenv("FERRY_BOOT_ID_PATH", str(gw.boot_id))
        bundle = tmp_path / "mcu.swu"
        _bundle(gw, made, bundle)
        raw = bytearray(bundle.read_bytes())
        at = bytes(raw).index(made["ec256"].read_bytes()) + 0x1000  # inside the ciphertext
        raw[at] ^= 0x01
        bundle.write_bytes(bytes(raw))
        with pytest.raises(FerryError, match=r"ec256\.enc\.bin': sha256 \w+\.\.\. does not match "
                                             "sw-description"):
            install(gw.config, str(bundle), ctx=make_context(gw.config))
        assert sim.frames_in == 0 and sim.device.secondary.data == b""
    finally:
        sim.stop()
