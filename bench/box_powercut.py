"""Power-cut soak of the gateway in a box: cuts survived / cuts made (issue #17, scenario 4).

Each round takes a factory-fresh box (tests/system/box), has it install 2.0.0 from an
update server on the host's loopback, and pulls the plug (SIGKILL of QEMU) at a random
moment of the install or of the first boot of slot B, then powers it on until
ferry-box-report prints a settled status. A cut is survived when every power-on reached
U-Boot's choice of slot with no torn env, and the gateway ended committed on B with
2.0.0 or back on A with 1.0.0 and the failure in its journal
(tests/system/box/console.py, ``CutRun.verdict``). tests/system/test_box.py runs three
fixed cuts in CI; this runs as many random ones as asked.

    .venv/bin/python bench/box_powercut.py --cuts 20 [--seed N]

About 2-3 minutes per cut under TCG on the 2-core machine.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

BOX = Path(__file__).resolve().parents[1] / "tests/system/box"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cuts", type=int, default=20)
    p.add_argument("--seed", type=int, default=None)
    args = p.parse_args(argv)
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    rng = random.Random(seed)
    sys.path.insert(0, str(BOX))  # the box's modules import each other by name
    import build
    import console
    import machine
    image = build.ensure()
    server = console.UpdateServer(image)
    survived = made = 0
    print(f"seed {seed}; image {image.name}")
    try:
        for n in range(args.cuts):
            # the install reboots ~18-25 s after its marker; B's first boot commits ~30 s
            # after U-Boot's line (TCG): a delay past the moment is no cut, and not counted
            if rng.random() < 0.6:
                cut = console.Cut(console.INSTALL_START, rng.uniform(0.0, 18.0), "install")
            else:
                cut = console.Cut(console.FIRST_BOOT_OF_B, rng.uniform(0.0, 30.0),
                                  "first boot of B")
            t0 = time.monotonic()
            with tempfile.TemporaryDirectory(prefix="ferry-cut-") as tmp:
                run = console.run_update(machine, image, Path(tmp), server,
                                      build.UPDATE_BUNDLE, cut)
                ok, how = run.verdict()
                if not ok:
                    keep = Path(f"/var/cache/ferry/box-cut-failed-{seed}-{n}.log")
                    keep.write_text("\n\n".join(c.text for c in run.boots))
                    how += f" (consoles: {keep})"
            cut_at = next((c.cut_at for c in run.boots if c.cut_at is not None), None)
            made += cut_at is not None
            survived += ok and cut_at is not None
            word = ("no cut (the moment came after the end)" if cut_at is None
                    else "survived" if ok else "FAILED")
            print(f"cut {n + 1}: {cut.label} +{cut.delay:.1f} s (power went at "
                  f"{cut_at if cut_at is None else round(cut_at, 1)} s), "
                  f"{len(run.boots)} power-ons, {time.monotonic() - t0:.0f} s: "
                  f"{word}: {how}", flush=True)
    finally:
        server.close()
    print(f"cuts survived / cuts made: {survived} / {made} ({args.cuts - made} rounds "
          "ended before their moment)")
    return 0 if survived == made else 1


if __name__ == "__main__":
    sys.exit(main())
