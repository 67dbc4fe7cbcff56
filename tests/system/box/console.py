"""Power the box on and read its serial console; pull the plug; serve it an update.

Shared by tests/system/test_box.py and bench/box_powercut.py. Everything is judged from
outside, as issue #17 asks: U-Boot's and the guest's lines on the console (the guest's
side printed by ferry-box-report), and the requests the update server saw.

A power cut is SIGKILL of QEMU at a moment chosen from the console: ``delay`` seconds
after a line matching ``after``. The flash and the disk keep exactly what QEMU had
written (both are raw files; QEMU writes them through without a cache of its own that
survives it), so the next power-on sees what a real gateway would after losing power.
"""

from __future__ import annotations

import functools
import http.server
import json
import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")  # systemd's coloured status lines
BOOT_TIMEOUT = 300.0  # seconds; ~20 s on a quiet machine, the CPUs are shared


@dataclass
class Console:
    lines: list[tuple[float, str]]  # (seconds since QEMU start, line)
    returncode: int | None
    cut_at: float | None = None  # seconds since QEMU start when the power went

    @property
    def text(self) -> str:
        return "\n".join(line for _, line in self.lines)

    def first(self, pattern: str) -> tuple[float, re.Match[str]] | None:
        rx = re.compile(pattern)
        for t, line in self.lines:
            m = rx.search(line)
            if m:
                return t, m
        return None

    def status(self, marker: str = "FERRY_BOX_STATUS") -> dict[str, Any] | None:
        """A ``ferry --json status`` that ferry-box-report printed under ``marker``."""
        found = self.first(rf"{marker} (\{{.*\}})\s*$")
        return json.loads(found[1].group(1)) if found else None


@dataclass
class Cut:
    """Pull the plug ``delay`` seconds after the first console line matching ``after``."""

    after: str
    delay: float
    label: str = ""


def power_on(m: Any, log: Path, server_port: int | None = None,
             timeout: float = BOOT_TIMEOUT, cut: Cut | None = None) -> Console:
    """Power on once; read the console line by line, with arrival times, until QEMU exits
    (the guest's poweroff or reboot: QEMU runs with -no-reboot), or the cut."""
    argv = m.argv(server_port)
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    lines: list[tuple[float, str]] = []
    matched: list[float] = []
    rx = re.compile(cut.after) if cut else None

    def reader() -> None:
        assert proc.stdout is not None
        with open(log, "w") as out:
            for raw in proc.stdout:
                now = time.monotonic() - t0
                line = ANSI.sub("", raw.decode("utf-8", "replace")).rstrip("\r\n")
                line = line.replace("\r", "")
                lines.append((now, line))
                out.write(f"{now:8.2f} {line}\n")
                out.flush()
                if rx is not None and not matched and rx.search(line):
                    matched.append(now)

    th = threading.Thread(target=reader, daemon=True)
    th.start()
    cut_at = None
    deadline = t0 + timeout
    while proc.poll() is None:
        now = time.monotonic()
        if cut and matched and now - t0 >= matched[0] + cut.delay:
            proc.kill()  # SIGKILL: the power goes, nothing is flushed or shut down
            cut_at = now - t0
            break
        if now >= deadline:
            proc.kill()
            break
        time.sleep(0.05)
    proc.wait()
    th.join(timeout=10)
    return Console(lines, proc.returncode, cut_at)


class UpdateServer:
    """The update server on the host's loopback: a directory over HTTP, and the requests
    it saw. The guest reaches it only through QEMU's guestfwd (machine.py)."""

    def __init__(self, root: Path) -> None:
        self.requests: list[str] = []
        seen = self.requests

        class Handler(http.server.SimpleHTTPRequestHandler):
            def log_message(self, fmt: str, *args: object) -> None:
                seen.append(f"{self.command} {self.path} {args[1] if len(args) > 1 else ''}")

        class Server(http.server.ThreadingHTTPServer):
            def handle_error(self, request: Any, client_address: Any) -> None:
                # a power cut drops the guest's download: expected, and seen in the
                # requests (no 200 line), not a traceback on the test's output
                if not isinstance(sys.exc_info()[1], ConnectionError):
                    super().handle_error(request, client_address)

        self.httpd = Server(("127.0.0.1", 0),
                            functools.partial(Handler, directory=str(root)))
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


# --- issue #17, scenario 4: power cuts during an update ---------------------------------

# Where a cut lands, as the console shows it: ferry-box-report prints "FERRY_BOX net"
# just before `ferry install` (download, slot write and env switch take ~20 s under
# TCG); U-Boot prints "FERRY: boot slot=B" at the first boot of the new slot, whose
# health window and commit follow within ~40 s.
INSTALL_START = r"FERRY_BOX net "
FIRST_BOOT_OF_B = r"FERRY: boot slot=B"


@dataclass
class CutRun:
    """An update (with a cut, or none) and the power-ons after it, until the gateway
    has settled."""

    cut: Cut
    boots: list[Console] = field(default_factory=list)

    @property
    def final(self) -> dict[str, Any] | None:
        """The status of the boot that settled: nothing pending any more."""
        return self.boots[-1].status("FERRY_BOX_RESUMED_STATUS") if self.boots else None

    def verdict(self) -> tuple[bool, str]:
        """Survived: every power-on reached U-Boot's choice and the kernel, no env copy
        was lost, and the gateway ended committed on B with 2.0.0 or back on A with
        1.0.0, with the journal's result saying which."""
        for i, c in enumerate(self.boots):
            if not c.first(r"FERRY: boot slot=[AB]"):
                return False, f"power-on {i + 1}: U-Boot chose no slot"
            if "bad CRC" in c.text:
                return False, f"power-on {i + 1}: U-Boot found an env copy with a bad CRC"
        final = self.final
        if final is None:
            return False, f"not settled after {len(self.boots)} power-ons"
        boot = final["bootloader"]
        last = (final.get("install") or {}).get("last") or {}
        pending = (final.get("install") or {}).get("pending")
        if pending is not None:
            return False, f"still pending: {pending}"
        if (boot["booted"], final["version"], boot["committed"],
                last.get("result")) == ("B", "2.0.0", True, "success"):
            return True, "committed on B (2.0.0)"
        if boot["booted"] == "A" and final["version"] == "1.0.0" and last.get("result") \
                not in (None, "success"):
            return True, f"back on A (1.0.0), deployment {last.get('result')}: " \
                         f"{last.get('error')}"
        return False, (f"ended booted {boot['booted']} running {final['version']}, "
                       f"committed {boot['committed']}, last {last}")


def run_update(machine_mod: Any, image: Path, workdir: Path, server: Any,
               bundle: str | None, cut: Cut | None = None, max_boots: int = 5,
               install_timeout: float = 1200.0) -> CutRun:
    """A factory-fresh box told to install ``bundle`` (None: to wait for the backend's
    deployment, ``server`` being the backend); the power goes at ``cut`` (in the first
    power-on whose console matches it); then power-ons until one ends with
    ferry-box-report's settled status, or ``max_boots``. ``server`` has a ``port`` on
    the host's loopback."""
    m = machine_mod.Machine(workdir, image)
    m.provision(report=True, install=bundle, backend=bundle is None)
    run = CutRun(cut or Cut("$^", 0.0, "none"))
    for n in range(max_boots):
        pending_cut = cut if cut and not any(b.cut_at is not None for b in run.boots) else None
        c = power_on(m, workdir / f"boot-{n + 1}.log", server.port, install_timeout,
                     pending_cut)
        run.boots.append(c)
        if c.cut_at is None and c.status("FERRY_BOX_RESUMED_STATUS") is not None \
                and c.first(r"FERRY_BOX done"):
            break
    return run
