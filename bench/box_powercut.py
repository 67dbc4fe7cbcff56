"""Power-cut soak of the gateway in a box: cuts survived / cuts made (issue #17, scenario 4).

Each round takes a factory-fresh box (tests/system/box) with its MCU on the second UART,
has goosebit on the host's loopback assign it 2.0.0, and pulls the plug (SIGKILL of QEMU;
the MCU loses its RAM too) at a random moment of one of the phases issue #17 names,
picked in turn: the download, the slot write, the env switch, the first boot of B, the
health window, the commit, the MCU flash. Each moment is a random delay after the
console line that starts the phase (ferry's journal step, or U-Boot's choice of B).
Then it powers the box on until ferry-box-report prints a settled status. A cut is
survived when every power-on reached U-Boot's choice of slot with no torn env, and the
gateway ended committed on B with 2.0.0 and the MCU on 2.0.0 confirmed, or back on A
with 1.0.0 and the MCU untouched, the journal and goosebit both saying which
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

# (phase, console pattern name in console.py, longest delay after it in seconds): a
# delay past the phase's end is a cut in the next phase or none at all, and the round
# reports where the power went.
PHASES = [
    ("download", "DOWNLOAD", 6.0),
    ("slot write", "SLOT_WRITE", 15.0),
    ("env switch", "ENV_SWITCH", 1.5),
    ("first boot of B", "FIRST_BOOT_OF_B", 25.0),
    ("health window", "HEALTH_WINDOW", 3.0),
    ("commit", "COMMIT", 3.0),
    ("MCU flash", "MCU_FLASH", 12.0),
]


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
    survived = made = 0
    by_phase: dict[str, list[int]] = {}
    print(f"seed {seed}; image {image.name}")
    for n in range(args.cuts):
        phase, pattern, longest = PHASES[n % len(PHASES)]
        cut = console.Cut(getattr(console, pattern), rng.uniform(0.0, longest), phase)
        t0 = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="ferry-cut-") as tmp:
            server = console.Backend(Path(tmp) / "goosebit", build.CONTROLLER_ID,
                                     build.TARGET_TOKEN, image / build.UPDATE_BUNDLE)
            try:
                run = console.run_update(machine, image, Path(tmp) / "box", server, None,
                                         cut)
            finally:
                server.close()
            ok, how = run.verdict()
            if not ok:
                keep = Path(f"/var/cache/ferry/box-cut-failed-{seed}-{n}.log")
                keep.write_text("\n\n".join(c.text for c in run.boots))
                how += f" (consoles: {keep})"
        cut_boot = next((c for c in run.boots if c.cut_at is not None), None)
        cut_at = cut_boot.cut_at if cut_boot else None
        made += cut_at is not None
        survived += ok and cut_at is not None
        if cut_at is not None:
            by_phase.setdefault(phase, [0, 0])[0] += ok
            by_phase[phase][1] += 1
        word = ("no cut (the moment never came)" if cut_at is None
                else "survived" if ok else "FAILED")
        print(f"cut {n + 1}: {cut.label} +{cut.delay:.1f} s (power went at "
              f"{cut_at if cut_at is None else round(cut_at, 1)} s, "
              f"{cut_boot.landed() if cut_boot else '-'}), "
              f"{len(run.boots)} power-ons, {time.monotonic() - t0:.0f} s: "
              f"{word}: {how}", flush=True)
    for phase, (ok_n, n_cuts) in by_phase.items():
        print(f"  {phase}: {ok_n} / {n_cuts}")
    print(f"cuts survived / cuts made: {survived} / {made} ({args.cuts - made} rounds "
          "ended before their moment)")
    return 0 if survived == made else 1


if __name__ == "__main__":
    sys.exit(main())
