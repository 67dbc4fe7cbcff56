"""Encrypted MCUboot images over smp-serial: ferry's parser names the encryption and says
it could not check the plaintext hash; the simulated MCUboot decrypts at swap time and
boots or refuses. The images here are sealed by ``seal`` below, which follows imgtool's
``Image.create`` (``--encrypt``) step by step; the peers file checks the same paths with
imgtool-made images (ECIES-P256, X25519, RSA-OAEP). AES-KW images are made only here:
imgtool cannot make them (MCUboot's own simulator, ``sim/src/tlv.rs``, wraps the key
with RFC 3394 the same way)."""

from __future__ import annotations

import hashlib
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, hmac, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.keywrap import aes_key_wrap
from smp_helpers import flash, running_sim, running_version

from ferry.daemon.cli.main import main
from ferry.proxy import mcuboot
from ferry.sim.mcu import image as sim_image

KEK = bytes(range(16))  # the device's AES-KW key
OTHER_KEK = bytes(range(1, 17))
EC_KEY = ec.generate_private_key(ec.SECP256R1())
EC_PEM = EC_KEY.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption())
PAYLOAD = os.urandom(9000)


def _ctr(key: bytes, data: bytes) -> bytes:
    enc = Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor()
    return enc.update(data) + enc.finalize()


def seal(version: tuple[int, int, int, int], payload: bytes = PAYLOAD, *, kek: bytes | None = KEK,
         ec_public: ec.EllipticCurvePublicKey | None = None, key_len: int = 16,
         clear: bool = False, flags: int | None = None, enc_tlv: bytes | None = None) -> bytes:
    """An encrypted MCUboot image: header flag, hash over the PLAINTEXT, payload in AES-CTR
    (zero nonce), the AES key wrapped in an ENC TLV, as imgtool does."""
    hdr = 0x200
    if flags is None:
        flags = 0x04 if key_len == 16 else 0x08
    header = struct.pack("<IIHHIIBBHII", 0x96F3B83D, 0, hdr, 0, len(payload), flags, *version, 0)
    plain = header.ljust(hdr, b"\0") + payload
    digest = hashlib.sha256(plain).digest()
    aes = os.urandom(key_len)
    if enc_tlv is not None:
        tlv_type, value = 0x31, enc_tlv
    elif ec_public is not None:  # imgtool Image.ecies_hkdf
        eph = ec.generate_private_key(ec.SECP256R1())
        shared = eph.exchange(ec.ECDH(), ec_public)
        derived = HKDF(hashes.SHA256(), key_len + 32, None, b"MCUBoot_ECIES_v1").derive(shared)
        cipherkey = _ctr(derived[:key_len], aes)
        mac = hmac.HMAC(derived[key_len:], hashes.SHA256())
        mac.update(cipherkey)
        point = eph.public_key().public_bytes(serialization.Encoding.X962,
                                              serialization.PublicFormat.UncompressedPoint)
        tlv_type, value = 0x32, point + mac.finalize() + cipherkey
    else:
        assert kek is not None
        tlv_type, value = 0x31, aes_key_wrap(kek, aes)
    body = plain if clear else plain[:hdr] + _ctr(aes, payload)
    entries = (struct.pack("<HH", 0x10, 32) + digest
               + struct.pack("<HH", tlv_type, len(value)) + value)
    return body + struct.pack("<HH", 0x6907, 4 + len(entries)) + entries


SEALED = seal((1, 1, 0, 0))


# -- ferry's parser -------------------------------------------------------------------------

def test_parser_names_the_encryption_and_does_not_claim_the_hash() -> None:
    img = mcuboot.verify_hash(SEALED)
    assert img.encrypted == "aes128 (aes-kw)" and img.hash_checked is False
    assert img.summary() == {"encrypted": "aes128 (aes-kw)", "hash_checked": "false"}
    ec_img = mcuboot.verify_hash(seal((1, 1, 0, 0), ec_public=EC_KEY.public_key(), key_len=32))
    assert ec_img.summary()["encrypted"] == "aes256 (ec256)"
    assert mcuboot.TLV_NAMES[ec_img.enc_tlv.type] == "ENC_EC256"  # type: ignore[union-attr]
    plain = mcuboot.verify_hash(sim_image.build((1, 0, 0, 0), b"x" * 100))
    assert plain.summary() == {"encrypted": "no", "hash_checked": "true"}


def test_payload_in_clear_is_recognised_and_checked() -> None:
    img = mcuboot.verify_hash(seal((1, 1, 0, 0), clear=True))  # imgtool --clear
    assert img.hash_checked and img.payload_in_clear
    assert img.summary()["encrypted"] == "aes128 (aes-kw), payload in clear (imgtool --clear)"


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"enc_tlv": b"\x01" * 23}, "ENC_KW is 23 bytes, MCUboot expects 24"),
    ({"flags": 0x0C}, "both AES-128 and AES-256"),
    ({"key_len": 32, "enc_tlv": b"\x01" * 24}, "expects 40 for AES-256"),
])
def test_unusable_encrypted_images_are_refused_before_sending(kwargs: dict[str, object],
                                                              message: str) -> None:
    with pytest.raises(mcuboot.ImageError, match=message):
        mcuboot.verify_hash(seal((1, 1, 0, 0), **kwargs))  # type: ignore[arg-type]


def test_encrypted_flag_without_enc_tlv_is_refused() -> None:
    data = seal((1, 1, 0, 0))
    img = mcuboot.parse(data)
    tlv_off = img.hdr_size + img.img_size
    assert img.hash is not None
    no_enc = (data[:tlv_off] + struct.pack("<HH", 0x6907, 40) + struct.pack("<HH", 0x10, 32)
              + img.hash)
    with pytest.raises(mcuboot.ImageError, match="no ENC TLV"):
        mcuboot.verify_hash(no_enc)


def test_enc_tlv_without_the_flag_is_a_plain_image_whose_hash_is_checked() -> None:
    data = bytearray(seal((1, 1, 0, 0), flags=0, clear=True))
    assert mcuboot.verify_hash(bytes(data)).summary()["hash_checked"] == "true"
    data[0x300] ^= 1
    with pytest.raises(mcuboot.ImageError, match="corrupt"):
        mcuboot.verify_hash(bytes(data))


# -- through the transport to the simulated MCUboot -----------------------------------------

def test_matching_key_boots_the_new_version_confirmed() -> None:
    with running_sim(enc_key=KEK) as sim:
        result = flash(sim, SEALED)
        assert result.ok and result.version == "1.1.0", result.message
        assert result.detail["encrypted"] == "aes128 (aes-kw)"
        assert result.detail["hash_checked"] == "false"
        assert "ferry could not check the plaintext hash" in result.message
        assert running_version(sim) == "1.1.0"
        dev = sim.device
        assert dev.primary.data[0x200 : 0x200 + len(PAYLOAD)] == PAYLOAD  # decrypted at swap
        assert dev.primary.sealed == SEALED and dev.primary.image_ok
        assert any("swap test (decrypted)" in line for line in dev.log)


def test_ecies_p256_image_boots_with_the_matching_pem_key() -> None:
    with running_sim(enc_key=EC_PEM) as sim:
        result = flash(sim, seal((1, 2, 0, 0), ec_public=EC_KEY.public_key()))
        assert result.ok and running_version(sim) == "1.2.0", result.message
        assert result.detail["encrypted"] == "aes128 (ec256)"


@pytest.mark.parametrize(("enc_key", "why"), [
    (OTHER_KEK, "AES-KW unwrap failed"),
    (EC_PEM, "no ENC TLV 0x32"),  # an ECIES build looks for its own TLV only
    (None, "SHA256 mismatch (encrypted image, no key in this build)"),
], ids=["other-kek", "other-exchange", "no-encryption-build"])
def test_wrong_device_key_is_refused_at_boot_and_reported(enc_key: bytes | None,
                                                          why: str) -> None:
    with running_sim(enc_key=enc_key) as sim:
        result = flash(sim, SEALED)
        assert not result.ok and result.rolled_back
        assert "MCUboot refused the new image 1.1.0 at boot" in result.message
        assert "the device's key does not decrypt it" in result.message
        assert result.detail["hash_checked"] == "false"
        assert running_version(sim) == "1.0.0" and sim.device.secondary.data == b""
        assert any(why in line for line in sim.device.log), sim.device.log


def test_ciphertext_damaged_after_signing_passes_ferry_and_mcuboot_refuses_it() -> None:
    """What ferry cannot check: a flipped ciphertext byte changes no TLV, so only the
    device, hashing the plaintext, finds it (the bundle's sha256 guards the transfer)."""
    data = bytearray(SEALED)
    data[0x400] ^= 0x40
    assert mcuboot.verify_hash(bytes(data)).hash_checked is False
    with running_sim(enc_key=KEK) as sim:
        result = flash(sim, bytes(data))
        assert result.rolled_back and "refused" in result.message
        assert any("SHA256 mismatch" in line for line in sim.device.log)


def test_revert_decrypts_the_image_it_moved_back() -> None:
    with running_sim(enc_key=KEK, fails_to_boot=True) as sim:
        result = flash(sim, SEALED)
        assert result.rolled_back and "rolled back" in result.message
        assert running_version(sim) == "1.0.0"
        assert sim.device.secondary.data == SEALED  # re-encrypted: the bytes it came as


# -- command line -----------------------------------------------------------------------------

def test_flash_command_says_what_it_could_not_check(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    image = tmp_path / "app.enc.bin"
    image.write_bytes(SEALED)
    with running_sim(enc_key=KEK) as sim:
        assert main(["flash", "smp-serial", sim.port, str(image), "--timeout", "2"]) == 0
        lines = capsys.readouterr().err.rstrip().splitlines()
        assert lines[-2].startswith(f"done: {sim.port} runs 1.1.0, confirmed (encrypted")
        assert lines[-1].startswith("image: encrypted aes128 (aes-kw); hash_checked: false")
    with running_sim(enc_key=KEK) as sim:
        assert main(["--json", "flash", "smp-serial", sim.port, str(image)]) == 0
        doc = json.loads(capsys.readouterr().out)
        assert doc["detail"]["encrypted"] == "aes128 (aes-kw)"
        assert doc["detail"]["hash_checked"] == "false"


def test_sim_mcu_refuses_an_unusable_enc_key(tmp_path: Path) -> None:
    bad = tmp_path / "key.bin"
    bad.write_bytes(b"not a key")
    out = subprocess.run([sys.executable, "-m", "ferry.daemon.cli.main", "sim", "mcu",
                          "--baud", "0", "--enc-key", str(bad)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "--enc-key" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
