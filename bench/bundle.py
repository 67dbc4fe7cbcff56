"""Bundle benchmark: `ferry bundle verify` throughput against `openssl dgst -sha256` on the
same file in the same run, and peak RSS of verify (and create) for growing image sizes.

    .venv/bin/python bench/bundle.py            # 1 GiB throughput, RSS at 256 MiB and 2 GiB
    .venv/bin/python bench/bundle.py --quick    # 128 MiB, RSS at 64 and 256 MiB
    .venv/bin/python bench/bundle.py --encrypted [--quick]   # the encrypted rows only

Encrypted rows (issue 18): a rootfs installed into a slot file through the install
path (BundleReader -> slot writer, verify + write + fsync; encrypted: + AES-CBC decrypt,
sealed, plaintext sha256) for the same random image stored plain and encrypted, against
`openssl enc -d -aes-256-cbc` of the same ciphertext into a file. Goal: encrypted >= 0.9
of the unencrypted install, median of interleaved rounds; peak RSS flat and under 64 MiB.

The limit for throughput is `openssl dgst -sha256` over the bundle file (verify must at
least hash every byte once); the ratio is ferry's speed divided by openssl's, median of
interleaved rounds. Peak RSS is each child's ru_maxrss from wait4(); it must stay under
64 MiB and not grow with the image. Files go to a temp dir (default /tmp) and are removed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MiB = 1 << 20
RSS_LIMIT_MIB = 64
CLI = "import sys; from ferry.daemon.cli.main import main; sys.exit(main(sys.argv[1:]))"


LAST_CPU: list[float] = [0.0]  # user+system seconds of the latest run_child


def run_child(argv: list[str]) -> tuple[float, float]:
    """(wall seconds, peak RSS MiB) of one child process, from wait4's rusage; its CPU
    seconds (user + system) are left in LAST_CPU."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _pid, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode() if proc.stderr else ""
    if proc.returncode != 0:
        raise SystemExit(f"{argv[:4]}... failed ({proc.returncode}): {err.strip()}")
    LAST_CPU[0] = usage.ru_utime + usage.ru_stime
    return wall, usage.ru_maxrss / 1024


def ferry(*args: str) -> list[str]:
    return [sys.executable, "-c", CLI, *args]


def write_random(path: Path, size: int) -> None:
    with path.open("wb") as fh:
        left = size
        while left:
            n = min(left, 4 * MiB)
            fh.write(os.urandom(n))
            left -= n


def write_sparse(path: Path, size: int) -> None:
    with path.open("wb") as fh:
        fh.truncate(size)


def create(pki: Path, image: Path, out: Path, *extra: str) -> float:
    _wall, rss = run_child(
        ferry(
            "bundle", "create", "--key", str(pki / "signer.key"), "--cert",
            str(pki / "signer.pem"), "--version", "1", "--compatible", "bench",
            "--rootfs", str(image), "--compress", "none", "-o", str(out), *extra,
        )
    )  # fmt: skip
    return rss


ENCRYPTED_GOAL = 0.9


def child_install(bundle: str, keyring: str, slot: str, key: str | None) -> None:
    """One rootfs from ``bundle`` into ``slot`` as the pipeline's _write_rootfs does it
    (the journal and the bootloader left out: they cost the same either way)."""
    from ferry.daemon.install.slotwriter import write_slot
    from ferry.packaging.encryption import load_key, open_image, plaintext_is_bound
    from ferry.packaging.keyring import load_keyring
    from ferry.packaging.reader import BundleReader

    aes = load_key(key) if key else None
    with open(bundle, "rb") as fh:
        reader = BundleReader(fh, load_keyring(keyring))
        for entry, stream in reader.images():
            if entry.encrypted:
                bound = plaintext_is_bound(entry, aes)  # as pipeline._write_rootfs
                res = write_slot(stream, slot, compressed=None,
                                 expected_size=entry.decompressed_size,
                                 expected_sha256=None if bound else entry.decompressed_sha256,
                                 decompress=lambda _k, raw, e=entry: open_image(e, raw, aes))
            else:
                res = write_slot(stream, slot, expected_size=entry.size)
            assert res.size == (entry.decompressed_size or entry.size)


def encrypted_rows(work: Path, pki: Path, tp_size: int, rss_sizes: list[int],
                   rounds: int, openssl: str) -> bool:
    """The issue-18 rows: throughput ratios and RSS of installing an encrypted rootfs."""
    key = work / "aes.key"
    key.write_text(f"{os.urandom(32).hex()} {os.urandom(16).hex()}\n")
    image = work / "enc-rootfs.img"
    write_random(image, tp_size)
    plain, enc = work / "plain.swu", work / "enc.swu"
    create(pki, image, plain)
    create(pki, image, enc, "--encrypt-key", str(key))
    image.unlink()
    # the ciphertext member and its ivt, for openssl enc -d on the same bytes
    import json

    doc = json.loads(subprocess.run(
        ferry("bundle", "inspect", "--json", "--keyring", str(pki / "ca.pem"), str(enc)),
        capture_output=True, check=True, text=True).stdout)
    member = doc["images"][0]["filename"]
    subprocess.run(["cpio", "-i", "--quiet", member], stdin=enc.open("rb"), cwd=work,
                   check=True)
    text = subprocess.run(["cpio", "-i", "--quiet", "--to-stdout", "sw-description"],
                          stdin=enc.open("rb"), capture_output=True, check=True).stdout
    ivt = text.split(b'ivt = "')[1][:32].decode()
    aes_key = key.read_text().split()[0]
    slot = work / "slot.img"
    me = [sys.executable, str(Path(__file__).resolve()), "--child-install"]
    ca = str(pki / "ca.pem")
    times: dict[str, list[float]] = {"plain": [], "enc": [], "openssl": []}
    cpu: dict[str, list[float]] = {"plain": [], "enc": [], "openssl": []}
    r_plain, r_ssl = [], []
    order = ["plain", "enc", "openssl"]
    for _ in range(rounds):
        order = order[1:] + order[:1]  # rotate: no run always follows the same one
        for what in order:
            slot.unlink(missing_ok=True)
            if what == "openssl":
                argv = [openssl, "enc", "-d", "-aes-256-cbc", "-K", aes_key, "-iv", ivt,
                        "-nosalt", "-in", str(work / member), "-out", str(slot)]
            elif what == "plain":
                argv = [*me, str(plain), ca, str(slot)]
            else:
                argv = [*me, str(enc), ca, str(slot), str(key)]
            wall, _rss = run_child(argv)
            times[what].append(wall)
            cpu[what].append(LAST_CPU[0])
        r_plain.append(times["plain"][-1] / times["enc"][-1])
        r_ssl.append(times["openssl"][-1] / times["enc"][-1])
    mib = tp_size / MiB
    print(f"encrypted install, {mib:.0f} MiB random rootfs (uncompressed), "
          f"{rounds} interleaved rounds (incl. interpreter start, fsync of the slot):")
    for what, label in (("plain", "install, unencrypted    "),
                        ("enc", "install, AES-256-CBC    "),
                        ("openssl", "openssl enc -d (no hash)")):
        med = statistics.median(times[what])
        print(f"  {label} {mib / med:8.0f} MiB/s (median {med:.2f} s wall, "
              f"{statistics.median(cpu[what]):.2f} s CPU)")
    ratio = statistics.median(r_plain)
    print(f"  ratio encrypted/unencrypted {ratio:5.2f} (goal >= {ENCRYPTED_GOAL}; per-round "
          f"{', '.join(f'{r:.2f}' for r in r_plain)})")
    print(f"  ratio encrypted/openssl     {statistics.median(r_ssl):5.2f} (per-round "
          f"{', '.join(f'{r:.2f}' for r in r_ssl)})")
    for p in (plain, enc, work / member, slot):
        p.unlink(missing_ok=True)
    print(f"peak RSS of the encrypted install (limit {RSS_LIMIT_MIB} MiB, must stay flat):")
    rss_all = []
    for size in rss_sizes:
        image = work / "sparse.img"
        write_sparse(image, size)
        out = work / "rss-enc.swu"
        create(pki, image, out, "--encrypt-key", str(key))
        image.unlink()
        slot.unlink(missing_ok=True)
        _wall, rss = run_child([*me, str(out), ca, str(slot), str(key)])
        out.unlink()
        rss_all.append(rss)
        print(f"  {size // MiB:5d} MiB image: install {rss:6.1f} MiB")
    slot.unlink(missing_ok=True)
    ok = max(rss_all) < RSS_LIMIT_MIB and max(rss_all) - min(rss_all) < 8
    ok_tp = ratio >= ENCRYPTED_GOAL
    print(f"  {'PASS' if ok else 'FAIL'}: max {max(rss_all):.1f} MiB, growth "
          f"{max(rss_all) - min(rss_all):.1f} MiB; throughput goal "
          f"{'met' if ok_tp else 'NOT met'}")
    return ok and ok_tp


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--child-install":
        child_install(*sys.argv[2:5], sys.argv[5] if len(sys.argv) > 5 else None)
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes, fewer rounds")
    parser.add_argument("--dir", default="/tmp", help="where the temporary files go")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--encrypted", action="store_true",
                        help="only the encrypted-install rows (issue 18)")
    args = parser.parse_args()
    tp_size = (128 if args.quick else 1024) * MiB
    rss_sizes = [64 * MiB, 256 * MiB] if args.quick else [256 * MiB, 2048 * MiB]
    rounds = args.rounds or (2 if args.quick else 5)
    openssl = shutil.which("openssl")
    if openssl is None:
        raise SystemExit("openssl is missing; run bash .ci/setup")
    work = Path(tempfile.mkdtemp(prefix="ferry-bench-bundle-", dir=args.dir))
    try:
        pki = work / "pki"
        run_child(ferry("bundle", "dev-pki", str(pki)))
        if args.encrypted:
            return 0 if encrypted_rows(work, pki, tp_size, rss_sizes, rounds, openssl) else 1
        # -- throughput -----------------------------------------------------------------
        image = work / "rootfs.img"
        write_random(image, tp_size)
        bundle = work / "tp.swu"
        create(pki, image, bundle)
        image.unlink()
        size_mib = bundle.stat().st_size / MiB
        subprocess.run([openssl, "dgst", "-sha256", str(bundle)], capture_output=True, check=True)
        ferry_t, openssl_t, ratios = [], [], []
        for _ in range(rounds):
            f, _rss = run_child(
                ferry("bundle", "verify", "--keyring", str(pki / "ca.pem"), str(bundle))
            )
            o, _rss = run_child([openssl, "dgst", "-sha256", str(bundle)])
            ferry_t.append(f)
            openssl_t.append(o)
            ratios.append(o / f)
        print(f"verify throughput, {size_mib:.0f} MiB bundle (random data, uncompressed), "
              f"{rounds} interleaved rounds:")  # fmt: skip
        print(f"  ferry bundle verify   {size_mib / statistics.median(ferry_t):8.0f} MiB/s "
              f"(median {statistics.median(ferry_t):.2f} s, incl. interpreter start)")  # fmt: skip
        print(f"  openssl dgst -sha256  {size_mib / statistics.median(openssl_t):8.0f} MiB/s "
              f"(median {statistics.median(openssl_t):.2f} s)")  # fmt: skip
        print(f"  ratio ferry/openssl   {statistics.median(ratios):8.2f} "
              f"(per-round {', '.join(f'{r:.2f}' for r in ratios)})")  # fmt: skip
        bundle.unlink()
        # -- memory ---------------------------------------------------------------------
        print(f"peak RSS (ru_maxrss of the child; limit {RSS_LIMIT_MIB} MiB, must stay flat):")
        verify_rss = []
        for size in rss_sizes:
            image = work / "sparse.img"
            write_sparse(image, size)
            out = work / "rss.swu"
            create_rss = create(pki, image, out)
            image.unlink()
            _wall, rss = run_child(
                ferry("bundle", "verify", "--keyring", str(pki / "ca.pem"), str(out))
            )
            out.unlink()
            verify_rss.append(rss)
            print(
                f"  {size // MiB:5d} MiB image: verify {rss:6.1f} MiB, create {create_rss:6.1f} MiB"
            )
        flat = max(verify_rss) - min(verify_rss) < 8
        ok = max(verify_rss) < RSS_LIMIT_MIB and flat
        print(f"  {'PASS' if ok else 'FAIL'}: max {max(verify_rss):.1f} MiB, "
              f"growth {max(verify_rss) - min(verify_rss):.1f} MiB")  # fmt: skip
        enc_ok = encrypted_rows(work, pki, tp_size, rss_sizes, rounds, openssl)
        return 0 if ok and enc_ok else 1
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
