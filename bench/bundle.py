"""Bundle benchmark: `ferry bundle verify` throughput against `openssl dgst -sha256` on the
same file in the same run, and peak RSS of verify (and create) for growing image sizes.

    .venv/bin/python bench/bundle.py            # 1 GiB throughput, RSS at 256 MiB and 2 GiB
    .venv/bin/python bench/bundle.py --quick    # 128 MiB, RSS at 64 and 256 MiB

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


def run_child(argv: list[str]) -> tuple[float, float]:
    """(wall seconds, peak RSS MiB) of one child process, from wait4's rusage."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _pid, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode() if proc.stderr else ""
    if proc.returncode != 0:
        raise SystemExit(f"{argv[:4]}... failed ({proc.returncode}): {err.strip()}")
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


def create(pki: Path, image: Path, out: Path) -> float:
    _wall, rss = run_child(
        ferry(
            "bundle", "create", "--key", str(pki / "signer.key"), "--cert",
            str(pki / "signer.pem"), "--version", "1", "--compatible", "bench",
            "--rootfs", str(image), "--compress", "none", "-o", str(out),
        )
    )  # fmt: skip
    return rss


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes, fewer rounds")
    parser.add_argument("--dir", default="/tmp", help="where the temporary files go")
    parser.add_argument("--rounds", type=int, default=None)
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
        return 0 if ok else 1
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
