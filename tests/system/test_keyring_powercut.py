"""Power cut while a keyring rotation is written: kill -9 the install at every point of
the rotation (the temp file's write, the rename, the env write in 512-byte pieces, its
fsync, the clean-up, every journal step), then power on again.

At every kill exactly one keyring is in force, CA 1's (factory, version 1) or CA 2's
(rotated, version 2): the trust store loads, and of two probe bundles, one signed under
each CA, exactly the one of the keyring in force verifies. ``ferry install --resume``
then always ends with CA 2 in force and the deployment a success.

Children are forked and killed as in test_install_powercut.py (its run_child and
clone are reused: the same env-writing sink with kill points, the real CLI). The env is
written here in 64-byte pieces, so a cut inside the env write leaves a torn copy whose
CRC fails (the gateway's whole env fits in the first 512 bytes) and U-Boot's rule of
the newest valid copy has to pick the old one.
"""

from __future__ import annotations

import collections
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))

import test_install_powercut
from install_gateway import Gateway
from keyring_fleet import bundle, keyring_file, make_fleet_gateway
from test_install_powercut import clone, run_child

from ferry.daemon.install import trust
from ferry.daemon.journal import Journal
from ferry.packaging.errors import BundleError
from ferry.packaging.reader import BundleReader

FW = b"\x33" * 256
POINTS = ("keyring.", "env.", "step.", "journal.")
ENV_PIECE = 64
TORN = 16  # cuts in the first 16 pieces of the env write (1 KiB), then its last piece


@pytest.fixture(scope="module", autouse=True)
def small_env_pieces() -> Iterator[None]:
    old = test_install_powercut.ENV_PIECE
    test_install_powercut.ENV_PIECE = ENV_PIECE
    yield
    test_install_powercut.ENV_PIECE = old


def verifies(gw: Gateway, probe: Path) -> bool:
    state = trust.load_trust(gw.config, gw.store())
    try:
        with probe.open("rb") as fh:
            BundleReader(fh, state.keyring_for)
    except BundleError:
        return False
    return True


def version_in_force(gw: Gateway) -> int:
    return trust.load_trust(gw.config, gw.store()).in_force.version


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path | Gateway]:
    base = tmp_path_factory.mktemp("keyring-powercut")
    gw, pki2 = make_fleet_gateway(base / "gw")
    ring = keyring_file(base / "ca2.pem", pki2.ca_cert)
    return {
        "gw": gw,
        "rotate": bundle(base / "rotate.swu", gw.pki_dir, version="1.0.1", keyring=ring,
                         keyring_version=2),
        "probe1": bundle(base / "probe1.swu", gw.pki_dir, version="1.0.2", target=FW),
        "probe2": bundle(base / "probe2.swu", pki2.ca_cert.parent, version="1.0.2",
                         target=FW),
    }


def discover(fleet: dict[str, Path | Gateway], tmp: Path) -> list[str]:
    gw = clone(fleet["gw"], tmp / "discover")  # type: ignore[arg-type]
    log = tmp / "points.log"
    assert run_child(gw, ["install", str(fleet["rotate"])], FERRY_TEST_KILL_LOG=str(log)) == 0
    assert version_in_force(gw) == 2
    shutil.rmtree(gw.root)
    counts = collections.Counter(log.read_text().split())
    return [f"{name}:{i}" for name, n in sorted(counts.items()) if name.startswith(POINTS)
            for i in range(1, n + 1) if name != "env.pwrite" or i <= TORN or i == n]


def test_power_cut_during_rotation_leaves_one_keyring(fleet, tmp_path: Path) -> None:
    points = discover(fleet, tmp_path)
    kinds = {p.rsplit(":", 1)[0] for p in points}
    for kind in ("keyring.write", "keyring.rename", "keyring.env", "keyring.clean",
                 "env.pwrite", "env.fsync", "step.keyring.begun", "step.keyring.ending"):
        assert kind in kinds, kind
    assert len(points) >= 30, points
    seen: collections.Counter[int] = collections.Counter()
    torn: collections.Counter[int] = collections.Counter()
    template: Gateway = fleet["gw"]  # type: ignore[assignment]
    for i, point in enumerate(points):
        gw = clone(template, tmp_path / f"run{i}")
        rc = run_child(gw, ["install", str(fleet["rotate"])], FERRY_TEST_KILL_AT=point)
        assert rc == "killed", f"{point} was never reached"
        # power on: exactly one keyring in force, and it is the one that verifies
        version = version_in_force(gw)
        assert version in (1, 2), point
        ok1, ok2 = verifies(gw, fleet["probe1"]), verifies(gw, fleet["probe2"])  # type: ignore[arg-type]
        assert (ok1, ok2) == ((True, False) if version == 1 else (False, True)), point
        seen[version] += 1
        if point.startswith("env.pwrite"):
            torn[version] += 1
        # the interrupted deployment resumes and the rotation completes
        gw.boot()
        rc = run_child(gw, ["install", "--resume"])
        assert rc == 0, (point, (gw.root / "child.log").read_text()[-2000:])
        j = Journal.open(gw.data_dir)
        try:
            dep = j.latest()
            assert dep is not None and dep.result == "success", (point, dep)
        finally:
            j.close()
        assert version_in_force(gw) == 2, point
        assert not verifies(gw, fleet["probe1"]) and verifies(gw, fleet["probe2"])  # type: ignore[arg-type]
        leftovers = sorted(p.name for p in (gw.data_dir / "keyring").iterdir())
        assert leftovers == ["keyring-2.json"], (point, leftovers)
        shutil.rmtree(gw.root)
    # the cut fell on both sides of the switch
    assert seen[1] and seen[2], seen
    # and inside the env write itself: a torn copy keeps the old keyring
    assert torn[1] and torn[2], torn
    print(f"\nkeyring power-cut matrix: {len(points)} kill points, in force at the cut "
          f"{dict(seen)}, of which inside the env write {dict(torn)}")
