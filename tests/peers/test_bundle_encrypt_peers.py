"""Encrypted bundles against independent tools: Debian's SWUpdate 2022.12 installs a
bundle that ``ferry bundle create --encrypt-key`` made (``swupdate -K``), and ferry
installs one that swugenerator encrypted (``swugenerator -K``, which runs ``openssl
enc -aes-256-cbc``). Neither tool shares code with ferry.packaging.encryption."""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
from install_gateway import Gateway, make_gateway

from ferry.daemon.boot.slotrecord import get_record
from ferry.daemon.install.pipeline import install, make_context
from ferry.packaging.devpki import write_dev_pki
from ferry.packaging.encryption import AesKey, DecryptError, encrypted_size
from ferry.packaging.writer import ImageInput, create_bundle, load_signing_key

ROOT = Path(__file__).resolve().parents[2]
KEY = AesKey(key=bytes.fromhex("b78cc67dd3dc13042a1b575184d4e16d6a09412c242ce253acee0f06b5ad68fc"),
             ivt=bytes.fromhex("65d793b87b6724bb27954c7664f15ff3"))
WRONG = AesKey(key=bytes(range(32)), ivt=KEY.ivt)


def tool(name: str) -> str:
    path = shutil.which(name) or shutil.which(name, path=str(ROOT / ".venv" / "bin"))
    if path is None:
        pytest.fail(f"{name} is not installed; run 'bash .ci/setup' (it installs every peer)")
    return path


def swupdate_key(path: Path, key: AesKey) -> Path:
    """SWUpdate's -K file: '<key> <ivt>' on one line (core/util.c load_decryption_key)."""
    path.write_text(f"{key.key.hex()} {key.ivt.hex()}\n")
    return path


def swupdate_install(bundle: Path, ca: Path, key_file: Path) -> str:
    """One ``swupdate -i B -K KEY`` install, in its own process group, killed after."""
    swtmp = Path(tempfile.mkdtemp(prefix="swu", dir="/tmp"))  # short: unix socket paths
    proc = subprocess.Popen(
        [tool("swupdate"), "-v", "-i", str(bundle), "-k", str(ca), "-K", str(key_file),
         "-H", "board:1.0"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "TMPDIR": str(swtmp)}, start_new_session=True,
    )  # fmt: skip
    try:
        out, _ = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"swupdate did not finish in 120 s:\n{out[-2000:]}")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        shutil.rmtree(swtmp, ignore_errors=True)
    return out


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    return write_dev_pki(tmp_path_factory.mktemp("pki"), kind="ec")


def ferry_encrypted(pki, tmp: Path, compress: str | None, device: Path) -> tuple[Path, bytes]:  # type: ignore[no-untyped-def]
    rootfs = tmp / "rootfs.img"
    data = os.urandom(300_000) + bytes(200_000) + os.urandom(77)
    rootfs.write_bytes(data)
    out = tmp / "enc.swu"
    create_bundle(out, signing=load_signing_key(pki.signer_key, pki.signer_cert),
                  version="1.2.3", compatible=["1.0"],
                  images=[ImageInput(path=rootfs, compress=compress, device=str(device))],
                  encrypt_key=KEY)
    return out, data


@pytest.mark.parametrize("compress", [None, "zstd", "zlib"])
def test_swupdate_installs_a_ferry_encrypted_bundle(pki, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                    compress: str | None) -> None:
    device = tmp_path / "device.img"
    bundle, data = ferry_encrypted(pki, tmp_path, compress, device)
    key_file = swupdate_key(tmp_path / "aes.key", KEY)
    log = ""
    for _ in range(3):  # SWUpdate 2022.12 can race with itself (test_bundle_peers.py)
        device.write_bytes(b"")
        log = swupdate_install(bundle, pki.ca_cert, key_file)
        if device.read_bytes() == data:
            break
    assert device.read_bytes() == data, log[-3000:]
    assert "SWUpdate was successful" in log and "[ERROR]" not in log
    assert re.search(r"rootfs\.img(\.zst|\.gz)?\.enc", log)


def test_swupdate_refuses_it_with_the_wrong_key(pki, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    device = tmp_path / "device.img"
    bundle, data = ferry_encrypted(pki, tmp_path, None, device)
    device.write_bytes(b"")
    log = swupdate_install(bundle, pki.ca_cert, swupdate_key(tmp_path / "wrong.key", WRONG))
    assert "Decryption error" in log and "SWUpdate *failed*" in log, log[-3000:]
    assert device.read_bytes() != data


SWUGEN_TEMPLATE = """software = {
  version = "1.1.0";
  hardware-compatibility = ["test-gw"];
  images: (
    {
      filename = "rootfs.img";
      type = "raw";
      size = SIZE;
      encrypted = true;
      installed-directly = true;
    }
  );
};
"""


def swugenerator_bundle(gw: Gateway, tmp: Path, data: bytes, *, own_ivt: bool) -> Path:
    """swugenerator reads 'key=' and 'iv=' lines (its main.extract_keys), not SWUpdate's
    one-line file. ``own_ivt``: its default, a fresh ``ivt`` per image; else ``-x``: the
    key file's iv, which swugenerator 0.6 still writes into the image's ``ivt``."""
    art = tmp / "art"
    art.mkdir(exist_ok=True)
    (art / "rootfs.img").write_bytes(data)
    # swugenerator does not write 'size'; an uncompressed image's ciphertext size is
    # known in advance (PKCS#7 adds 1..16 bytes), so the template carries it for ferry
    template = tmp / "sw-description.tmpl"
    template.write_text(SWUGEN_TEMPLATE.replace("SIZE", str(encrypted_size(len(data)))))
    keyfile = tmp / "swugen.key"
    keyfile.write_text(f"key={KEY.key.hex()}\niv={KEY.ivt.hex()}\n")
    out = tmp / "gen.swu"
    res = subprocess.run(
        [tool("swugenerator"), "-s", str(template), "-a", str(art), "-K", str(keyfile),
         *([] if own_ivt else ["-x"]),
         "-k", f"CMS,{gw.pki_dir / 'signer.key'},{gw.pki_dir / 'signer.pem'}",
         "-o", str(out), "create"],
        capture_output=True, text=True, timeout=120, cwd=tmp,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    return out


def gateway_with_key(tmp: Path, key: AesKey, monkeypatch: pytest.MonkeyPatch) -> Gateway:
    gw = make_gateway(tmp / "gw")
    monkeypatch.setenv("FERRY_BOOT_ID_PATH", str(gw.boot_id))
    path = swupdate_key(gw.root / "aes.key", key)
    text = re.sub(r"(\[keyring\]\npath = .*\n)", rf'\1decryption_key = "{path}"\n',
                  gw.config_path.read_text())
    gw.config_path.write_text(text)
    return gw


def run_install(gw: Gateway, bundle: Path) -> int:
    ctx = make_context(gw.config)
    try:
        return install(gw.config, str(bundle), ctx=ctx)
    finally:
        ctx.journal.close()


@pytest.mark.parametrize("own_ivt", [True, False], ids=["image-ivt", "keyfile-ivt"])
def test_ferry_installs_a_swugenerator_encrypted_bundle(tmp_path: Path, own_ivt: bool,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    gw = gateway_with_key(tmp_path, KEY, monkeypatch)
    data = os.urandom(150_000) + bytes(50_003)
    bundle = swugenerator_bundle(gw, tmp_path, data, own_ivt=own_ivt)
    desc = subprocess.run([tool("cpio"), "-i", "--to-stdout", "sw-description"],
                          stdin=bundle.open("rb"), capture_output=True, timeout=60).stdout
    ivt = re.search(rb'ivt = "([0-9a-f]{32})"', desc)
    assert ivt is not None and b"rootfs.img.enc" in desc
    assert (ivt.group(1).decode() != KEY.ivt.hex()) == own_ivt
    run_install(gw, bundle)
    assert gw.slot_path("B").read_bytes()[: len(data)] == data
    rec = get_record(gw.config, "rootfs.1")
    # no plaintext hash in a swugenerator bundle: the record holds the digest of the
    # bytes written from the verified ciphertext
    assert rec is not None and rec.verified
    assert rec.sha256 == hashlib.sha256(data).hexdigest() and rec.size == len(data)
    assert gw.env()["BOOT_ORDER"].split()[0] == "B"


def test_ferry_refuses_a_swugenerator_bundle_with_the_wrong_key(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gw = gateway_with_key(tmp_path, WRONG, monkeypatch)
    data = random.Random(18).randbytes(40_000)  # fixed: the garbage's last block is fixed
    bundle = swugenerator_bundle(gw, tmp_path, data, own_ivt=False)
    with pytest.raises(DecryptError, match="cannot decrypt it") as err:
        run_install(gw, bundle)
    assert "\n" not in str(err.value)
    rec = get_record(gw.config, "rootfs.1")
    assert rec is not None and not rec.verified
    assert "B" not in gw.env()["BOOT_ORDER"].split()
    assert gw.boot() == "A"
