"""The key envelope against independent tools, both directions: ``openssl cms -decrypt``
opens what ferry wraps (RSA-OAEP, ECDH), ferry opens what ``openssl cms -encrypt`` wraps
(``-keyopt rsa_padding_mode:oaep``, ECDH with its default and SHA-256 KDFs, AES key wrap,
``-keyid``) and installs a bundle carrying such an envelope; a re-wrapped bundle still
passes ``openssl cms -verify``; and Debian's SWUpdate, which skips the unsigned envelope
member, installs an enveloped bundle with the key file openssl took out of it."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
from install_gateway import Gateway, make_gateway, make_image
from test_bundle_envelope import Who, make_who, members

from ferry.daemon.boot.slotrecord import get_record
from ferry.daemon.cli.main import main
from ferry.daemon.install.pipeline import install, make_context
from ferry.packaging.description import parse_description
from ferry.packaging.devpki import write_dev_pki
from ferry.packaging.encryption import AesKey, check_key, parse_key
from ferry.packaging.envelope import EnvelopeError, open_envelope, recipients
from ferry.packaging.writer import ImageInput, create_bundle, load_signing_key

ROOT = Path(__file__).resolve().parents[2]
KEY = AesKey(key=bytes.fromhex("3c" * 32), ivt=bytes.fromhex("a5" * 16))


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed; run 'bash .ci/setup' (it installs every peer)")
    return path


def run(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(list(args), capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def people(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Who]:
    d = tmp_path_factory.mktemp("recipients")
    return {"rsa": make_who(d, "gw-rsa", "rsa"), "ec": make_who(d, "gw-ec", "ec"),
            "p384": make_who(d, "gw-p384", "p384")}


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("pki")
    assert main(["bundle", "dev-pki", str(d)]) == 0
    return d


def ferry_bundle(pki: Path, tmp: Path, *to: Who) -> Path:
    img = tmp / "rootfs.img"
    img.write_bytes(make_image("1.1.0", 70_001))
    out = tmp / "a.swu"
    args = ["bundle", "create", "--key", str(pki / "signer.key"), "--cert",
            str(pki / "signer.pem"), "--version", "1.1.0", "--compatible", "test-gw",
            "--rootfs", str(img), "-o", str(out)]
    for who in to:
        args += ["--to", str(who.cert)]
    assert main(args) == 0
    return out


# -- openssl opens ferry's ------------------------------------------------------------------
def test_openssl_cms_decrypt_opens_ferrys_envelope(pki: Path, tmp_path: Path,
                                                   people: dict[str, Who]) -> None:
    bundle = ferry_bundle(pki, tmp_path, people["rsa"], people["ec"], people["p384"])
    m = dict(members(bundle))
    env = tmp_path / "env.der"
    env.write_bytes(m["sw-description.key"])
    entry = parse_description(m["sw-description"]).images[0]
    for who in people.values():
        got = run(tool("openssl"), "cms", "-decrypt", "-in", str(env), "-inform", "DER",
                  "-recip", str(who.cert), "-inkey", str(who.key))
        assert got.returncode == 0, got.stderr
        key = parse_key(got.stdout.decode())  # SWUpdate's key file, as it says
        assert check_key(entry, key) and key == open_envelope(env.read_bytes(), who.recipient)
    # and openssl refuses it for a key that is not a recipient: the check above can fail
    stranger = make_who(tmp_path, "stranger", "ec")
    bad = run(tool("openssl"), "cms", "-decrypt", "-in", str(env), "-inform", "DER",
              "-recip", str(stranger.cert), "-inkey", str(stranger.key))
    assert bad.returncode != 0


# -- ferry opens openssl's ------------------------------------------------------------------
OAEP = ["-keyopt", "rsa_padding_mode:oaep"]
# case: (options before the recipients, [(recipient, its -keyopt options), ...])
OPENSSL_CASES: dict[str, tuple[list[str], list[tuple[str, list[str]]]]] = {
    "rsa-oaep-sha256": (["-aes256"], [("rsa", [*OAEP, "-keyopt", "rsa_oaep_md:sha256"])]),
    "rsa-oaep-sha1": (["-aes128"], [("rsa", OAEP)]),
    "ecdh-default": (["-aes256", "-wrap", "aes256-wrap"], [("ec", [])]),
    "ecdh-sha256kdf": (["-aes192", "-wrap", "aes128-wrap"],
                       [("p384", ["-keyopt", "ecdh_kdf_md:sha256"])]),
    "keyid-both": (["-keyid", "-aes256"], [("rsa", OAEP), ("ec", [])]),
}


def openssl_envelope(tmp: Path, people: dict[str, Who], opts: list[str],
                     recips: list[tuple[str, list[str]]]) -> bytes:
    keyfile = tmp / "key.txt"
    keyfile.write_text(f"{KEY.key.hex()} {KEY.ivt.hex()}\n")
    cmd = [tool("openssl"), "cms", "-encrypt", "-binary", "-outform", "DER", "-in",
           str(keyfile), "-out", str(tmp / "env.der"), *opts]
    for name, keyopts in recips:  # -keyopt applies to the -recip right before it
        cmd += ["-recip", str(people[name].cert), *keyopts]
    got = subprocess.run(cmd, capture_output=True, timeout=60)
    assert got.returncode == 0, got.stderr
    return (tmp / "env.der").read_bytes()


@pytest.mark.parametrize("case", sorted(OPENSSL_CASES))
def test_ferry_opens_openssls_envelope(tmp_path: Path, people: dict[str, Who],
                                       case: str) -> None:
    opts, recips = OPENSSL_CASES[case]
    der = openssl_envelope(tmp_path, people, opts, recips)
    for name, _ in recips:
        assert open_envelope(der, people[name].recipient) == KEY
    if "-keyid" in opts:
        assert all("subject key id" in r for r in recipients(der))


def test_ferry_refuses_openssls_pkcs1v15_envelope_in_one_line(tmp_path: Path,
                                                              people: dict[str, Who]) -> None:
    der = openssl_envelope(tmp_path, people, ["-aes256"], [("rsa", [])])  # its default
    with pytest.raises(EnvelopeError, match="not RSA-OAEP") as err:
        open_envelope(der, people["rsa"].recipient)
    assert "\n" not in str(err.value)


@pytest.fixture
def gw(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Gateway:
    g = make_gateway(tmp_path / "gw")
    monkeypatch.setenv("FERRY_BOOT_ID_PATH", str(g.boot_id))
    return g


@pytest.mark.parametrize("who", ["rsa", "ec"])
def test_gateway_installs_a_bundle_with_openssls_envelope(gw: Gateway, tmp_path: Path,
                                                          people: dict[str, Who],
                                                          who: str) -> None:
    der = openssl_envelope(tmp_path, people, ["-aes256"], [(who, OAEP if who == "rsa" else [])])
    image = make_image("1.1.0", 200_001)
    (tmp_path / "r.img").write_bytes(image)
    bundle = tmp_path / "b.swu"
    create_bundle(bundle, signing=load_signing_key(gw.pki_dir / "signer.key",
                                                   gw.pki_dir / "signer.pem"),
                  version="1.1.0", compatible=["test-gw"],
                  images=[ImageInput(path=tmp_path / "r.img", compress="zstd")],
                  encrypt_key=KEY, envelope=der)
    text = gw.config_path.read_text().replace(
        "[keyring]\n", f'[keyring]\nrecipient_key = "{people[who].key}"\n'
        f'recipient_cert = "{people[who].cert}"\n', 1)
    gw.config_path.write_text(text)
    ctx = make_context(gw.config)
    try:
        install(gw.config, str(bundle), ctx=ctx)
    finally:
        ctx.journal.close()
    assert gw.slot_path("B").read_bytes()[: len(image)] == image
    rec = get_record(gw.config, "rootfs.1")
    assert rec is not None and rec.verified and rec.sha256 == hashlib.sha256(image).hexdigest()


# -- the signature survives a re-wrap -------------------------------------------------------
def test_rewrapped_bundle_passes_openssl_cms_verify(pki: Path, tmp_path: Path,
                                                    people: dict[str, Who]) -> None:
    a = ferry_bundle(pki, tmp_path, people["rsa"])
    b = tmp_path / "b.swu"
    assert main(["bundle", "encrypt", "--to", str(people["ec"].cert), "--key",
                 str(people["rsa"].key), "--cert", str(people["rsa"].cert), str(a),
                 str(b)]) == 0
    ma, mb = dict(members(a)), dict(members(b))
    assert mb["sw-description.sig"] == ma["sw-description.sig"]
    assert mb["sw-description.key"] != ma["sw-description.key"]
    x = tmp_path / "x"
    x.mkdir()
    (x / "d").write_bytes(mb["sw-description"])
    (x / "s").write_bytes(mb["sw-description.sig"])
    cmd = [tool("openssl"), "cms", "-verify", "-binary", "-inform", "DER", "-in",
           str(x / "s"), "-content", str(x / "d"), "-CAfile", str(pki / "ca.pem"),
           "-out", os.devnull]
    ok = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0 and "Verification successful" in ok.stderr, ok.stderr
    (x / "d").write_bytes(mb["sw-description"].replace(b"1.1.0", b"9.9.9"))
    assert subprocess.run(cmd, capture_output=True, timeout=60).returncode != 0


# -- SWUpdate skips the envelope ------------------------------------------------------------
def test_swupdate_installs_an_enveloped_bundle_with_the_key_openssl_unwrapped(
        tmp_path: Path, people: dict[str, Who]) -> None:
    pki = write_dev_pki(tmp_path / "pki", kind="ec")
    device = tmp_path / "device.img"
    data = os.urandom(150_000)
    (tmp_path / "rootfs.img").write_bytes(data)
    bundle = tmp_path / "b.swu"
    assert main(["bundle", "create", "--key", str(pki.signer_key), "--cert",
                 str(pki.signer_cert), "--version", "1.2.3", "--compatible", "1.0",
                 "--rootfs", str(tmp_path / "rootfs.img"), "--to", str(people["ec"].cert),
                 "-o", str(tmp_path / "plain.swu")]) == 0
    # the same, with the device path SWUpdate writes to (the CLI has no --device)
    env = dict(members(tmp_path / "plain.swu"))["sw-description.key"]
    key = open_envelope(env, people["ec"].recipient)
    create_bundle(bundle, signing=load_signing_key(pki.signer_key, pki.signer_cert),
                  version="1.2.3", compatible=["1.0"],
                  images=[ImageInput(path=tmp_path / "rootfs.img", compress="zstd",
                                     device=str(device))], encrypt_key=key, envelope=env)
    (tmp_path / "env.der").write_bytes(env)
    got = run(tool("openssl"), "cms", "-decrypt", "-in", str(tmp_path / "env.der"),
              "-inform", "DER", "-recip", str(people["ec"].cert), "-inkey",
              str(people["ec"].key), "-out", str(tmp_path / "k.txt"))
    assert got.returncode == 0, got.stderr
    log = ""
    for _ in range(3):  # SWUpdate 2022.12 can race with itself (test_bundle_peers.py)
        device.write_bytes(b"")
        log = swupdate_install(bundle, pki.ca_cert, tmp_path / "k.txt")
        if device.read_bytes() == data:
            break
    assert device.read_bytes() == data, log[-3000:]
    assert "sw-description.key" in log and "Not required: skipping" in log
    assert "SWUpdate was successful" in log


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
