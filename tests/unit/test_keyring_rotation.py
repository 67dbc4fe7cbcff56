"""Keyring rotation: a bundle carries a new keyring; the gateway takes it only under
its current keyring, never at an equal or lower version, keeps it on the data partition
bound by ``ferry_keyring`` in the U-Boot env, and trusts the new CA (only) from the next
bundle on. Attacks on the data partition (replace, roll back, delete, forge) end in a
refusal of every bundle, never in trust in the old CA."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from install_gateway import ROOT, Gateway, make_image
from keyring_fleet import bundle, keyring_file, make_fleet_gateway

from ferry.daemon.install import trust
from ferry.daemon.install.pipeline import install, make_context, resume
from ferry.daemon.journal import Journal
from ferry.daemon.service.status import keyring as keyring_status
from ferry.packaging import devpki, libconfig
from ferry.packaging.description import parse_description, render_description
from ferry.packaging.errors import BadDescription, BundleCreateError, KeyringError, UntrustedSigner
from ferry.packaging.keyring import Keyring
from ferry.packaging.keyringupdate import KeyringQuorum, KeyringRollback, Link, encode_store
from ferry.packaging.reader import BundleReader, read_unverified
from ferry.packaging.revocation import RevokedSigner
from ferry.packaging.signature import sign

FW = b"\x5a" * 64  # a target image, for bundles that are refused before it is read


@pytest.fixture
def fleet(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    gw, pki2 = make_fleet_gateway(tmp_path / "gw")
    monkeypatch.setenv("FERRY_BOOT_ID_PATH", str(gw.boot_id))
    return gw, pki2


def run_install(gw: Gateway, path: Path) -> int:
    ctx = make_context(gw.config)
    try:
        return install(gw.config, str(path), ctx=ctx)
    finally:
        ctx.journal.close()


def in_force(gw: Gateway) -> trust.TrustState:
    return trust.load_trust(gw.config, gw.store())


def rotate_to_ca2(gw: Gateway, pki2: devpki.DevPki, tmp: Path, version: int = 2) -> Path:
    ring = keyring_file(tmp / f"ring{version}.pem", pki2.ca_cert)
    b = bundle(tmp / f"rotate{version}.swu", gw.pki_dir, keyring=ring, keyring_version=version)
    dep = run_install(gw, b)
    j = Journal.open(gw.data_dir)
    try:
        assert j.get(dep).result == "success", j.get(dep).error
        assert [s.name for s in j.steps(dep)] == ["verify", "keyring", "commit", "proxy"]
    finally:
        j.close()
    return b


# -- the bundle format ------------------------------------------------------------------
def test_description_keyring_round_trip_and_bounds() -> None:
    sha = "ab" * 32
    text = (f'software = {{ version = "1"; hardware-compatibility = ["x"]; ferry = {{ '
            f'keyring = {{ filename = "k.pem"; version = 3; sha256 = "{sha}"; size = 10; }}; '
            f'}}; }};')
    desc = parse_description(text.encode())
    assert desc.keyring_version == 3 and desc.keyring() is not None
    assert [i.role for i in desc.images] == ["keyring"]
    assert parse_description(render_description(desc)) == desc
    for bad, why in ((text.replace("version = 3", "version = 0"), "1..2147483647"),
                     (text.replace("version = 3", 'version = "3"'), "1..2147483647"),
                     (text.replace("size = 10", "size = 2000000"), "keyring.size"),
                     (text.replace('"k.pem"', '"../k.pem"'), "keyring")):
        with pytest.raises(BadDescription, match=why):
            parse_description(bad.encode())


def test_bundle_create_checks_the_offered_keyring(tmp_path: Path) -> None:
    pki = devpki.write_dev_pki(tmp_path / "pki")
    ring = keyring_file(tmp_path / "r.pem", pki.ca_cert)
    out = bundle(tmp_path / "k.swu", tmp_path / "pki", keyring=ring, keyring_version=4)
    with out.open("rb") as fh:
        desc, raw, _sig = read_unverified(fh)
    assert desc.keyring_version == 4
    assert libconfig.loads(raw.decode())["software"]["ferry"]["keyring"]["version"] == 4
    stated = keyring_file(tmp_path / "s.pem", pki.ca_cert, extra=b"ferry-keyring-version: 5\n")
    with pytest.raises(BundleCreateError, match="states ferry-keyring-version 5, not 4"):
        bundle(tmp_path / "x.swu", tmp_path / "pki", keyring=stated, keyring_version=4)
    (tmp_path / "empty.pem").write_bytes(b"")
    with pytest.raises(BundleCreateError, match="no PEM certificate"):
        bundle(tmp_path / "x.swu", tmp_path / "pki", keyring=tmp_path / "empty.pem",
               keyring_version=4)
    with pytest.raises(BundleCreateError, match="together"):
        bundle(tmp_path / "x.swu", tmp_path / "pki", keyring=ring)


def test_cli_create_inspect_verify(tmp_path: Path) -> None:
    pki = devpki.write_dev_pki(tmp_path / "pki")
    new = devpki.write_dev_pki(tmp_path / "new")
    fw = tmp_path / "fw.bin"
    fw.write_bytes(b"\x01" * 100)
    out = tmp_path / "b.swu"

    def ferry(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "ferry.daemon.cli.main", *args],
                              capture_output=True, text=True, cwd=ROOT, timeout=120)

    res = ferry("bundle", "create", "--key", str(pki.signer_key), "--cert",
                str(pki.signer_cert), "--version", "2.0", "--compatible", "gw",
                "--target", f"smp-serial:mcu={fw}", "--keyring", str(new.ca_cert),
                "--keyring-version", "2", "-o", str(out))
    assert res.returncode == 0, res.stderr
    assert "keyring version 2" in res.stdout
    res = ferry("bundle", "inspect", "--json", str(out))
    doc = json.loads(res.stdout)
    assert doc["keyring_version"] == 2
    assert [i["role"] for i in doc["images"]] == ["target", "keyring"]
    res = ferry("bundle", "verify", "--keyring", str(pki.ca_cert), str(out))
    assert res.returncode == 0 and "carries keyring version 2" in res.stdout, res.stderr
    res = ferry("bundle", "create", "--key", str(pki.signer_key), "--cert",
                str(pki.signer_cert), "--version", "2.0", "--compatible", "gw",
                "--keyring", str(new.ca_cert), "-o", str(out))
    assert res.returncode != 0 and "--keyring-version" in res.stderr


# -- the fleet moves from CA 1 to CA 2 -------------------------------------------------
def test_rotation_from_ca1_to_ca2(fleet, tmp_path: Path) -> None:
    gw, pki2 = fleet
    assert in_force(gw).in_force.version == 1
    old_ring = keyring_file(tmp_path / "old3.pem", pki2.ca_cert)
    ca1_before = bundle(tmp_path / "ca1-before.swu", gw.pki_dir, version="1.0.2",
                        keyring=old_ring, keyring_version=3)
    rotate_to_ca2(gw, pki2, tmp_path)
    state = in_force(gw)
    assert (state.in_force.version, state.path is not None) == (2, True)
    assert gw.env()[trust.ENV_VAR].split()[0] == "2"
    st = keyring_status(gw.config, gw.store())
    assert (st["version"], st["source"], st["error"]) == (2, "rotated", None)
    assert st["anchors"] == ["CN=ferry dev CA,O=ferry development"]
    # CA 1's signer is refused now, even for a bundle built before the rotation
    with pytest.raises(UntrustedSigner, match="does not chain to the keyring"):
        run_install(gw, ca1_before)
    # CA 2's is accepted, and it can rotate further
    ring3 = keyring_file(tmp_path / "ring3.pem", pki2.ca_cert)
    dep = run_install(gw, bundle(tmp_path / "ca2.swu", pki2.ca_cert.parent, version="1.0.3",
                                 keyring=ring3, keyring_version=3))
    j = Journal.open(gw.data_dir)
    assert j.get(dep).result == "success"
    j.close()
    assert in_force(gw).in_force.version == 3
    assert [p.name for p in (gw.data_dir / "keyring").iterdir()] == ["keyring-3.json"]


def test_rotation_with_a_rootfs_survives_the_reboot(fleet, tmp_path: Path) -> None:
    gw, pki2 = fleet
    ring = keyring_file(tmp_path / "r.pem", pki2.ca_cert)
    b = bundle(tmp_path / "b.swu", gw.pki_dir, version="1.1.0",
               image=make_image("1.1.0", 200_000), keyring=ring, keyring_version=2)
    dep_id = run_install(gw, b)
    assert in_force(gw).in_force.version == 2  # before the reboot: next bundle is CA 2's
    assert gw.boot() == "B"
    ctx = make_context(gw.config)
    try:
        resume(ctx)
        assert ctx.journal.get(dep_id).result == "success"
    finally:
        ctx.journal.close()
    assert gw.running_version() == "1.1.0" and in_force(gw).in_force.version == 2


@pytest.mark.parametrize("offered", [1, 2])
def test_equal_or_lower_version_is_refused(fleet, tmp_path: Path, offered: int) -> None:
    gw, pki2 = fleet
    rotate_to_ca2(gw, pki2, tmp_path)
    ring = keyring_file(tmp_path / "again.pem", pki2.ca_cert)
    b = bundle(tmp_path / "again.swu", pki2.ca_cert.parent, version="1.0.3", keyring=ring,
               keyring_version=offered)
    with pytest.raises(KeyringRollback, match=f"keyring version {offered} but version 2 is "
                       "in force; keyring versions never go backwards"):
        run_install(gw, b)
    assert in_force(gw).in_force.version == 2


def test_factory_version_refuses_a_lower_offer(fleet, tmp_path: Path) -> None:
    gw, pki2 = fleet
    ring = keyring_file(tmp_path / "r.pem", pki2.ca_cert)
    with pytest.raises(KeyringRollback, match="version 1 is in force"):
        run_install(gw, bundle(tmp_path / "b.swu", gw.pki_dir, keyring=ring, keyring_version=1))
    assert trust.ENV_VAR not in gw.env()


def test_the_bundle_that_rotated_is_read_again_under_the_keyring_before(fleet, tmp_path):
    """A power cut after the switch re-runs the same deployment from the start: the same
    sw-description bytes verify under CA 1, and installing them again changes nothing."""
    gw, pki2 = fleet
    b = rotate_to_ca2(gw, pki2, tmp_path)
    state = in_force(gw)
    env_before = gw.env()[trust.ENV_VAR]
    with b.open("rb") as fh:
        reader = BundleReader(fh, state.keyring_for)
        assert state.chosen is state.chain[0][0]
        data = b""
        for entry, stream in reader.images():
            assert entry.role == "keyring"
            data = stream.read()
    trust.check(state, reader.description, reader.signer_info)
    trust.install(gw.config, gw.store(), state, reader.description, reader.raw_description,
                  reader.signature, data)
    assert gw.env()[trust.ENV_VAR] == env_before
    # any other bundle is read under CA 2 (the same sw-description bytes signed again
    # would be the same statement, with the same images: nothing new to trust)
    other = bundle(tmp_path / "o.swu", gw.pki_dir, version="1.0.2",
                   keyring=keyring_file(tmp_path / "x.pem", pki2.ca_cert), keyring_version=2)
    with other.open("rb") as fh, pytest.raises(UntrustedSigner):
        BundleReader(fh, in_force(gw).keyring_for)


def test_revocation_arrives_in_a_rotated_keyring(fleet, tmp_path: Path) -> None:
    from test_keyring_crl import crl_pem, make_crl

    gw, pki2 = fleet
    rotate_to_ca2(gw, pki2, tmp_path)
    ca2 = devpki.x509.load_pem_x509_certificate(pki2.ca_cert.read_bytes())
    ca2_key = devpki.serialization.load_pem_private_key(pki2.ca_key.read_bytes(), None)
    signer2 = devpki.x509.load_pem_x509_certificate(pki2.signer_cert.read_bytes())
    crl = make_crl(ca2, ca2_key, [signer2.serial_number])
    # a second signer under CA 2 carries the CRL that cuts off the first
    other = tmp_path / "pki2b"
    other.mkdir()
    skey = devpki.new_key("ec")
    cert = devpki.make_cert("second signer", skey, issuer=(ca2, ca2_key))
    (other / "signer.key").write_bytes(devpki.key_pem(skey))
    (other / "signer.pem").write_bytes(devpki.cert_pem(cert))
    ring = keyring_file(tmp_path / "r3.pem", pki2.ca_cert, extra=crl_pem(crl))
    run_install(gw, bundle(tmp_path / "crl.swu", other, version="1.0.2", keyring=ring,
                           keyring_version=3))
    assert keyring_status(gw.config, gw.store())["crls"] == 1
    with pytest.raises(RevokedSigner, match=f"ferry dev signer.*serial {signer2.serial_number:X}"):
        run_install(gw, bundle(tmp_path / "s.swu", pki2.ca_cert.parent, version="1.0.3", target=FW))
    # the second signer still installs (a keyring-only bundle: nothing to boot)
    ring4 = keyring_file(tmp_path / "r4.pem", pki2.ca_cert, extra=crl_pem(crl))
    dep = run_install(gw, bundle(tmp_path / "t.swu", other, version="1.0.3", keyring=ring4,
                                 keyring_version=4))
    j = Journal.open(gw.data_dir)
    assert j.get(dep).result == "success"
    j.close()


# -- someone with the data partition and no signing key ---------------------------------
def _store(gw: Gateway) -> Path:
    return gw.data_dir / "keyring" / "keyring-2.json"


def test_altered_store_refuses_every_bundle(fleet, tmp_path: Path) -> None:
    gw, pki2 = fleet
    rotate_to_ca2(gw, pki2, tmp_path)
    doc = json.loads(_store(gw).read_bytes())
    evil = devpki.write_dev_pki(tmp_path / "evil")
    doc["links"][0]["keyring"] = __import__("base64").b64encode(
        evil.ca_cert.read_bytes()).decode()
    _store(gw).write_text(json.dumps(doc))
    with pytest.raises(KeyringError, match="does not match the digest recorded in the U-Boot"):
        run_install(gw, bundle(tmp_path / "e.swu", evil.ca_cert.parent, version="1.0.2", target=FW))
    # not even CA 1's (factory) bundles: falling back would undo the rotation
    with pytest.raises(KeyringError, match="every bundle is refused"):
        run_install(gw, bundle(tmp_path / "c1.swu", gw.pki_dir, version="1.0.2", target=FW))
    st = keyring_status(gw.config, gw.store())
    assert st["version"] is None and "digest" in st["error"]


def test_deleted_store_does_not_fall_back_to_the_factory_keyring(fleet, tmp_path: Path) -> None:
    gw, pki2 = fleet
    rotate_to_ca2(gw, pki2, tmp_path)
    shutil.rmtree(gw.data_dir / "keyring")
    with pytest.raises(KeyringError, match="keyring version 2 recorded in the U-Boot env"):
        run_install(gw, bundle(tmp_path / "c1.swu", gw.pki_dir, version="1.0.2", target=FW))


def test_rolled_back_store_is_refused(fleet, tmp_path: Path) -> None:
    """An older, genuine chain (v2, which still names CA 2) put back after v3: the env's
    digest names v3, so the old file is not taken."""
    gw, pki2 = fleet
    rotate_to_ca2(gw, pki2, tmp_path)
    saved = _store(gw).read_bytes()
    ring3 = keyring_file(tmp_path / "ring3.pem", pki2.ca_cert)
    run_install(gw, bundle(tmp_path / "r3.swu", pki2.ca_cert.parent, version="1.0.3",
                           keyring=ring3, keyring_version=3))
    (gw.data_dir / "keyring" / "keyring-3.json").write_bytes(saved)
    with pytest.raises(KeyringError, match="does not match the digest"):
        in_force(gw)


def test_forged_chain_with_matching_env_is_refused(fleet, tmp_path: Path) -> None:
    """Someone who can write the env too, with no key CA 1 ever certified: the chain
    replay from the factory keyring refuses their keyring."""
    gw, _pki2 = fleet
    evil = devpki.write_dev_pki(tmp_path / "evil")
    desc = (b'software = { version = "9"; hardware-compatibility = ["test-gw"]; ferry = { '
            b'keyring = { filename = "k.pem"; version = 5; sha256 = "'
            + hashlib.sha256(evil.ca_cert.read_bytes()).hexdigest().encode()
            + b'"; size = ' + str(len(evil.ca_cert.read_bytes())).encode() + b'; }; }; };')
    key = devpki.serialization.load_pem_private_key(evil.signer_key.read_bytes(), None)
    cert = devpki.x509.load_pem_x509_certificate(evil.signer_cert.read_bytes())
    link = Link(version=5, keyring=evil.ca_cert.read_bytes(), description=desc,
                signature=sign(desc, key, cert))  # type: ignore[arg-type]
    blob = encode_store([link])
    d = gw.data_dir / "keyring"
    d.mkdir()
    (d / "keyring-5.json").write_bytes(blob)
    gw.store().update({trust.ENV_VAR: f"5 {hashlib.sha256(blob).hexdigest()}"})
    with pytest.raises(KeyringError, match="was not signed under keyring version 1"):
        in_force(gw)


def test_a_newer_factory_keyring_wins(fleet, tmp_path: Path) -> None:
    """A rootfs that ships keyring version >= the rotated one uses its own."""
    gw, pki2 = fleet
    rotate_to_ca2(gw, pki2, tmp_path)
    factory = gw.pki_dir / "ca.pem"
    factory.write_bytes(b"ferry-keyring-version: 2\n" + pki2.ca_cert.read_bytes())
    state = in_force(gw)
    assert state.path is None and state.in_force.version == 2
    st = keyring_status(gw.config, gw.store())
    assert st["source"] == "factory"


def test_malformed_env_value_is_one_line(fleet) -> None:
    gw, _ = fleet
    gw.store().update({trust.ENV_VAR: "two words-but-no-digest"})
    with pytest.raises(KeyringError, match="is not '<version> <sha256>'"):
        in_force(gw)


def test_bundle_class_carries_a_keyring(tmp_path: Path) -> None:
    """ferry-bundle.bbclass's task with FERRY_BUNDLE_KEYRING(_VERSION) set, run as bitbake
    would expand it (the helpers of test_yocto_layer)."""
    from test_yocto_layer import LAYER, VENV_BIN, _expand, _shell_function

    pki = devpki.write_dev_pki(tmp_path / "pki")
    new = devpki.write_dev_pki(tmp_path / "new")
    deploy = tmp_path / "deploy"
    deploy.mkdir()
    mcu = deploy / "mcu.bin"
    mcu.write_bytes(b"\x07" * 512)
    body = _shell_function((LAYER / "classes-recipe" / "ferry-bundle.bbclass").read_text(),
                           "do_ferry_bundle")
    script = _expand(body, {
        "FERRY_BUNDLE_ROOTFS_FILE": "", "FERRY_BUNDLE_TARGETS": f"smp-serial:mcu={mcu}",
        "FERRY_BUNDLE_KEY": str(pki.signer_key), "FERRY_BUNDLE_CERT": str(pki.signer_cert),
        "FERRY_BUNDLE_KEYRING": str(new.ca_cert), "FERRY_BUNDLE_KEYRING_VERSION": "7",
        "FERRY_BUNDLE_VERSION": "2.0.0", "FERRY_BUNDLE_COMPATIBLE": "gw",
        "FERRY_BUNDLE_COMPRESS": "none", "FERRY_BUNDLE_NAME": "b",
        "B": str(tmp_path / "build"), "DEPLOY_DIR_IMAGE": str(deploy),
    })
    subprocess.run(["bash", "-c", script], check=True, cwd=tmp_path,
                   env={"PATH": f"{VENV_BIN}:/usr/bin:/bin"}, capture_output=True)
    with (deploy / "b.swu").open("rb") as fh:
        desc, _raw, _sig = read_unverified(fh)
    assert desc.keyring_version == 7
    keyring = desc.keyring()
    assert keyring is not None
    assert keyring.sha256 == hashlib.sha256(new.ca_cert.read_bytes()).hexdigest()


def test_device_deployments_verify_under_the_rotated_keyring(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch):
    """A bundle for one device behind the gateway (install/devicedeploy) is verified
    against the keyring in force too: after the rotation CA 1's is refused."""
    from ferry.daemon.install import devicedeploy
    from ferry.proxy.transport import FlashResult

    gw, pki2 = make_fleet_gateway(tmp_path / "gw", extra="""
[[target]]
name = "mcu"
transport = "smp-serial"
address = "/dev/null"
""")
    monkeypatch.setenv("FERRY_BOOT_ID_PATH", str(gw.boot_id))
    rotate_to_ca2(gw, pki2, tmp_path)
    flashed: list[bytes] = []

    class Fake:
        def flash(self, target: object, image: object, *, progress: object) -> FlashResult:
            flashed.append(image.read())  # type: ignore[attr-defined]
            return FlashResult(ok=True, version="5.0.0")

    def deploy(b: Path, ext: str) -> None:
        ctx = make_context(gw.config)
        try:
            devicedeploy.start(ctx, "mcu", str(b), external_id=ext,
                               factory=lambda name, options: Fake())  # type: ignore[arg-type,return-value]
        finally:
            ctx.journal.close()

    with pytest.raises(UntrustedSigner):
        deploy(bundle(tmp_path / "d1.swu", gw.pki_dir, version="1.0.5", target=FW), "1")
    assert flashed == []
    deploy(bundle(tmp_path / "d2.swu", pki2.ca_cert.parent, version="1.0.5", target=FW), "2")
    assert flashed == [FW]


# -- k of n for keyring changes ----------------------------------------------------------
def _ferry(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ferry.daemon.cli.main", *args],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)


@pytest.fixture
def quorum(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Factory keyring: three root CAs (a = the gateway's dev PKI, b, c), 2 of 3 for a
    keyring change."""
    gw, _ = make_fleet_gateway(tmp_path / "gw")
    monkeypatch.setenv("FERRY_BOOT_ID_PATH", str(gw.boot_id))
    b = devpki.write_dev_pki(tmp_path / "b")
    c = devpki.write_dev_pki(tmp_path / "c")
    factory = gw.pki_dir / "ca.pem"
    factory.write_bytes(b"ferry-keyring-version: 1\nferry-keyring-threshold: 2\n"
                        + devpki.cert_pem(devpki.x509.load_pem_x509_certificate(
                            factory.read_bytes())) + b.ca_cert.read_bytes()
                        + c.ca_cert.read_bytes())
    assert in_force(gw).in_force.threshold == 2
    return gw, b, c


def test_a_keyring_change_needs_k_of_n_anchors(quorum, tmp_path: Path) -> None:
    gw, b, c = quorum
    new = keyring_file(tmp_path / "k2.pem", b.ca_cert, c.ca_cert)
    one = bundle(tmp_path / "one.swu", gw.pki_dir, keyring=new, keyring_version=2)
    with pytest.raises(KeyringQuorum, match="signed under 1 of the 3 anchors of keyring "
                       "version 1, which takes 2 for a keyring change"):
        run_install(gw, one)
    assert trust.ENV_VAR not in gw.env()
    two = tmp_path / "two.swu"
    res = _ferry("bundle", "cosign", "--key", str(b.signer_key), "--cert", str(b.signer_cert),
                 "-o", str(two), str(one))
    assert res.returncode == 0 and "2 signatures" in res.stdout, res.stderr
    again = _ferry("bundle", "cosign", "--key", str(b.signer_key), "--cert",
                   str(b.signer_cert), "-o", str(tmp_path / "x.swu"), str(two))
    assert again.returncode != 0 and "signed the bundle already" in again.stderr
    # nothing signed changed: the same description and images, one more SignerInfo
    with one.open("rb") as f1, two.open("rb") as f2:
        assert read_unverified(f1)[1] == read_unverified(f2)[1]
    dep = run_install(gw, two)
    j = Journal.open(gw.data_dir)
    assert j.get(dep).result == "success", j.get(dep).error
    j.close()
    state = in_force(gw)
    assert state.in_force.version == 2 and state.in_force.threshold == 1


def test_openssl_verifies_a_cosigned_signature(quorum, tmp_path: Path) -> None:
    gw, _b, c = quorum
    one = bundle(tmp_path / "one.swu", gw.pki_dir, target=FW)
    two = tmp_path / "two.swu"
    assert _ferry("bundle", "cosign", "--key", str(c.signer_key), "--cert",
                  str(c.signer_cert), "-o", str(two), str(one)).returncode == 0
    with two.open("rb") as fh:
        _desc, raw, sig = read_unverified(fh)
    (tmp_path / "d").write_bytes(raw)
    (tmp_path / "s").write_bytes(sig)
    openssl = shutil.which("openssl")
    assert openssl

    def cms_verify(cafile: Path) -> int:
        return subprocess.run(
            [openssl, "cms", "-verify", "-binary", "-inform", "DER", "-in", str(tmp_path / "s"),
             "-content", str(tmp_path / "d"), "-CAfile", str(cafile), "-out", "/dev/null"],
            capture_output=True).returncode

    assert cms_verify(gw.pki_dir / "ca.pem") == 0  # every signer chains to one of a, b, c
    assert cms_verify(c.ca_cert) != 0  # a's signer does not chain to c alone
    # a bundle that carries no keyring needs one signature, as before
    with one.open("rb") as fh:
        state = in_force(gw)
        reader = BundleReader(fh, state.keyring_for)
        trust.check(state, reader.description, reader.signer_info)


def test_a_threshold_above_the_anchors_refuses_the_keyring(tmp_path: Path) -> None:
    a = devpki.write_dev_pki(tmp_path / "a")
    with pytest.raises(KeyringError, match="asks for 2 signing anchors but has 1"):
        Keyring.from_pem(b"ferry-keyring-threshold: 2\n" + a.ca_cert.read_bytes())


def test_replay_holds_the_threshold(quorum, tmp_path: Path) -> None:
    """A chain whose link has one anchor's signature, bound in the env by someone who can
    write it: the replay refuses it as acceptance would have."""
    gw, b, _c = quorum
    new = keyring_file(tmp_path / "k2.pem", b.ca_cert)
    one = bundle(tmp_path / "one.swu", gw.pki_dir, keyring=new, keyring_version=2)
    with one.open("rb") as fh:
        reader = BundleReader(fh, in_force(gw).keyring_for)
        data = b"".join(s.read() for _e, s in reader.images())
    blob = encode_store([Link(version=2, keyring=data, description=reader.raw_description,
                              signature=reader.signature)])
    d = gw.data_dir / "keyring"
    d.mkdir()
    (d / "keyring-2.json").write_bytes(blob)
    gw.store().update({trust.ENV_VAR: f"2 {hashlib.sha256(blob).hexdigest()}"})
    with pytest.raises(KeyringError, match="lacks the 2 anchor signatures"):
        in_force(gw)
