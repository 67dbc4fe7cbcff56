"""What every ``ferry flash <transport>`` does around its transport's ``flash``.

The image check, the progress bar, a failure that ends the bar's line with its reason,
the one-line verdict, ``--json`` and the exit code are the same for SMP, DFU, Zigbee and
LoRa, so a technician reads every transport's outcome the same way; each command only
builds its transport and target.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ferry.daemon.cli import exitcodes
from ferry.daemon.cli.progress import ProgressBar
from ferry.errors import FerryError

# (bar, done, total, message) -> None: a command's own way of drawing a progress step
Step = Callable[[ProgressBar, int, int, str], None]


def _plain(bar: ProgressBar, done: int, total: int, message: str) -> None:
    bar.update(done, message)


def flash_image(transport: Any, target: Any, image: str, *, label: str, as_json: bool,
                step: Step = _plain, after: Callable[[Any], None] | None = None) -> int:
    """Flash ``image`` to ``target`` with a progress bar (none with ``as_json``).

    The bar is sized by the first progress report's total (the transport knows what it
    sends: a DfuSe file's payload, an SMP upload). ``after(result)`` prints extra lines
    under the verdict (LoRa's per-node results).
    """
    path = Path(image)
    if not path.is_file():
        print(f"ferry: image {path} does not exist", file=sys.stderr)
        return exitcodes.FAILED
    bar: ProgressBar | None = None

    def progress(done: int, total: int, message: str) -> None:
        nonlocal bar
        if as_json:
            return
        if bar is None:
            bar = ProgressBar(label, total or path.stat().st_size)
        step(bar, done, total, message)

    try:
        with path.open("rb") as stream:
            result = transport.flash(target, stream, progress=progress)
    except FerryError as err:
        if bar is not None:  # end the bar's line with the reason, not a half-drawn bar
            bar.finish(f"FAILED: {err}")
            return err.exit_code
        raise
    except OSError as err:
        raise FerryError(f"cannot read {image}: {err.strerror}") from err
    if as_json:
        print(json.dumps({"ok": result.ok, "version": result.version,
                          "message": result.message, "skipped": result.skipped,
                          "rolled_back": result.rolled_back, "detail": result.detail}))
        return exitcodes.OK if result.ok else exitcodes.FAILED
    line = ("done: " if result.ok else "FAILED: ") + result.message
    if bar is not None:
        bar.finish(line)
    else:
        print(line, file=sys.stderr)
    if after is not None:
        after(result)
    return exitcodes.OK if result.ok else exitcodes.FAILED
