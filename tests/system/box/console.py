"""Power the box on and read its serial console; pull the plug; serve it an update.

Shared by tests/system/test_box.py and bench/box_powercut.py. Everything is judged from
outside, as issue #17 asks: U-Boot's and the guest's lines on the console (the guest's
side printed by ferry-box-report, and ferry's own log lines that ferry-box-follow copies
there as ``FERRY_BOX_J``), what goosebit's REST API shows, and the MCU on the second
UART as its own flash holds it.

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

    def landed(self) -> str:
        """Where the cut landed: the last step ferry logged (or U-Boot's choice of slot)
        that reached the console before the power went."""
        if self.cut_at is None:
            return "no cut"
        rx = re.compile(r"(deployment \d+: \S+|flashing \S+|\S+: (?:ok|failed|rolled-back)"
                        r"|FERRY: boot slot=\S+)")
        last = "power-on"
        for t, line in self.lines:
            if t > self.cut_at:
                break
            m = rx.search(line)
            if m:
                last = m.group(1)
        return f"after '{last}'"

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


class Backend:
    """goosebit (a real hawkBit DDI server) on the host's loopback, with ``bundle``
    uploaded and assigned to the box by an operator who retries: goosebit refuses the
    assignment ("not compatible with the device's hardware") until the box's first
    poll has told it its hardware (configData), as an operator would find in the UI."""

    def __init__(self, workdir: Path, controller: str, token: str, bundle: Path) -> None:
        from ferry.sim.goosebit import Goosebit

        self.controller = controller
        self.gb = Goosebit(workdir, poll_time="00:00:05", device_auth="lax").start()
        self.gb.register_device(controller, token)
        self.software = self.gb.upload(bundle)
        self.assigned: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._operator, daemon=True)
        self._thread.start()

    @property
    def port(self) -> int:
        return self.gb.port

    def _operator(self) -> None:
        from ferry.sim.goosebit import GoosebitError

        while not self._stop.is_set():
            try:
                self.gb.assign(self.controller, self.software)
                self.assigned[:] = ["yes"]
                return
            except GoosebitError as err:
                self.assigned[:] = [str(err)]
                self._stop.wait(2)

    def view(self) -> dict[str, Any]:
        """The device as goosebit's API shows it, and its log (ferry's feedback)."""
        device = self.gb.device(self.controller)
        return {**device, "log": self.gb.log(self.controller)}

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.gb.stop()


# --- issue #17, scenario 4: power cuts during an update ---------------------------------

# Where a cut lands, as the console shows it. ferryd's journal steps (logged as
# "deployment N: <step>", copied to the console by ferry-box-follow): verify (the
# download streams through it), write (the slot), activate (the env switch), health,
# commit; U-Boot's "FERRY: boot slot=B" at the first boot of the new slot; the proxy
# phase's "flashing mcu0" for the MCU.
DOWNLOAD = r"FERRY_BOX_J .*deployment \d+: verify"
SLOT_WRITE = r"FERRY_BOX_J .*deployment \d+: write"
ENV_SWITCH = r"FERRY_BOX_J .*deployment \d+: activate"
FIRST_BOOT_OF_B = r"FERRY: boot slot=B"
HEALTH_WINDOW = r"FERRY_BOX_J .*deployment \d+: health"
COMMIT = r"FERRY_BOX_J .*deployment \d+: commit"
MCU_FLASH = r"FERRY_BOX_J .*flashing mcu0"


@dataclass
class CutRun:
    """An update (with a cut, or none) and the power-ons after it, until the gateway
    has settled."""

    cut: Cut
    boots: list[Console] = field(default_factory=list)
    mcu: dict[str, Any] = field(default_factory=dict)  # mcu_state() at the end
    backend: dict[str, Any] = field(default_factory=dict)  # Backend.view() at the end

    @property
    def final(self) -> dict[str, Any] | None:
        """The status of the boot that settled: nothing pending any more."""
        return self.boots[-1].status("FERRY_BOX_RESUMED_STATUS") if self.boots else None

    def verdict(self) -> tuple[bool, str]:
        """Survived: every power-on reached U-Boot's choice and the kernel, no env copy
        was lost, and the gateway ended committed on B with 2.0.0 and the MCU on 2.0.0,
        confirmed, or back on A with 1.0.0 and the MCU untouched on 1.0.0; the journal's
        result says which, and so does goosebit (when it drove the update)."""
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
        mcu = self.mcu
        goosebit = self.backend.get("last_state")
        if (boot["booted"], final["version"], boot["committed"],
                last.get("result")) == ("B", "2.0.0", True, "success"):
            if mcu and (mcu["version"], mcu["confirmed"]) != ("2.0.0", True):
                return False, f"committed on B, but the MCU is {mcu}"
            if self.backend and (goosebit, self.backend.get("sw_version")) != \
                    ("Finished", "2.0.0"):
                return False, f"committed on B, but goosebit shows {goosebit}, " \
                              f"sw_version {self.backend.get('sw_version')}"
            return True, "committed on B (2.0.0)" + (", MCU 2.0.0 confirmed" if mcu else "")
        if boot["booted"] == "A" and final["version"] == "1.0.0" and last.get("result") \
                not in (None, "success"):
            if mcu and (mcu["version"], mcu["confirmed"]) != ("1.0.0", True):
                return False, f"back on A, but the MCU is {mcu}"
            if self.backend and goosebit != "Error":
                return False, f"back on A, but goosebit shows {goosebit}"
            return True, f"back on A (1.0.0), deployment {last.get('result')}: " \
                         f"{last.get('error')}"
        return False, (f"ended booted {boot['booted']} running {final['version']}, "
                       f"committed {boot['committed']}, last {last}, MCU {mcu}, "
                       f"goosebit {goosebit}")


def mcu_state(mcu: Any) -> dict[str, Any]:
    """What the MCU's own flash holds: the running image's version, whether it is
    confirmed (MCUboot's image_ok), whether an image waits in slot 1, its boots."""
    with mcu.device.lock:
        primary, secondary = mcu.device.primary, mcu.device.secondary
        info = primary.info(mcu.config.public_key_pem)
        version = ".".join(map(str, info.version[:3])) if info and info.valid else None
        waiting = secondary.info(mcu.config.public_key_pem) if secondary.data else None
        return {"version": version, "confirmed": primary.image_ok,
                "slot1": ".".join(map(str, waiting.version[:3]))
                if waiting and waiting.valid else None,
                "boots": mcu.device.boots, "log": list(mcu.device.log)}


def run_update(machine_mod: Any, image: Path, workdir: Path, server: Any,
               bundle: str | None, cut: Cut | None = None, max_boots: int = 5,
               install_timeout: float = 1200.0) -> CutRun:
    """A factory-fresh box, its MCU on the second UART, told to install ``bundle``
    (None: to wait for the backend's deployment, ``server`` being a ``Backend``); the
    power goes at ``cut`` (in the first power-on whose console matches it), for the
    gateway and the MCU alike; then power-ons until one ends with ferry-box-report's
    settled status, or ``max_boots``. ``server`` has a ``port`` on the host's
    loopback."""
    m = machine_mod.Machine(workdir, image)
    m.provision(report=True, install=bundle, backend=bundle is None)
    run = CutRun(cut or Cut("$^", 0.0, "none"))
    mcu = m.attach_mcu()
    try:
        for n in range(max_boots):
            pending_cut = cut if cut and not any(b.cut_at is not None
                                                 for b in run.boots) else None
            c = power_on(m, workdir / f"boot-{n + 1}.log", server.port, install_timeout,
                         pending_cut)
            run.boots.append(c)
            if c.cut_at is not None:
                m.power_cut()
            if c.cut_at is None and c.status("FERRY_BOX_RESUMED_STATUS") is not None \
                    and c.first(r"FERRY_BOX done"):
                break
        run.mcu = mcu_state(mcu)
    finally:
        m.close()
    if isinstance(server, Backend):
        run.backend = server.view()
    return run
