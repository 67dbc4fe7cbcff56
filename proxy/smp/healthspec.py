"""A target's health check: what "the new image works" means before it is confirmed.

A bootloader that boots a new image on trial (MCUboot's test swap) keeps the old one
until the image is confirmed; once confirmed it can never be rolled back. So the
confirm waits for a check of the application, not just of the boot: an image can
boot and answer its management protocol while its sensor task has crashed or its
radio never joins. Three kinds, chosen per ``[[target]]`` in its options:

- ``smp-echo`` (default): the trial image answers an SMP echo and its image list shows
  it running (what a flash checked before health checks existed);
- ``command``: ``health_command`` runs on the gateway after the echo check, with the
  target's name, transport, port and the trial version in its environment; exit 0 is
  healthy, anything else is not and its last output line is the reason;
- ``smp-group``: after the echo check, a read of the application-defined SMP group
  ``health_smp_group`` (Zephyr's user groups start at 64), command
  ``health_smp_command`` (0); a success answer is healthy, an SMP error is not.

Every check is retried every ``health_interval_s`` until it passes or
``health_timeout_s`` has passed since the first try (an application may need a while
to join its network); the last failure is the reason. A check that finds the trial
image no longer running stops at once: there is nothing left to wait for.

This module holds the transport-neutral part (the options, the window, the command);
``ferry.proxy.smp.trial`` asks the target. It lives under ``smp`` because smp-serial is
the only transport that can boot an image on trial (``ferry.proxy.transport``,
``Confirming``); it moves up beside ``transport`` when a second one can.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ferry.errors import FerryError
from ferry.proxy.transport import HealthReport, Progress, Target, Trial

KINDS = ("smp-echo", "command", "smp-group")
DEFAULT_TIMEOUT = 30.0
DEFAULT_INTERVAL = 1.0
OUTPUT_LIMIT = 200  # characters of a failing command's output kept as the reason


class HealthConfigError(FerryError):
    """A target's health options are wrong; raised before anything is flashed."""


@dataclass(frozen=True)
class HealthSpec:
    kind: str = "smp-echo"
    command: tuple[str, ...] = ()
    smp_group: int = 0
    smp_command: int = 0
    timeout: float = DEFAULT_TIMEOUT  # the health window, from the first try
    interval: float = DEFAULT_INTERVAL  # pause between tries

    def describe(self) -> str:
        if self.kind == "command":
            return f"health command {shlex.join(self.command)}"
        if self.kind == "smp-group":
            return f"SMP group {self.smp_group} command {self.smp_command}"
        return "SMP echo"


def parse(options: dict[str, Any], who: str = "target") -> HealthSpec:
    """The health spec from a target's options; HealthConfigError names the bad key.

    ``health`` picks the kind; without it, ``health_command`` implies ``command`` and
    ``health_smp_group`` implies ``smp-group``.
    """
    command = _command(options.get("health_command"), who)
    group_raw = options.get("health_smp_group", "")
    kind = str(options.get("health", "") or "").strip()
    if not kind:
        kind = "command" if command else "smp-group" if str(group_raw).strip() else "smp-echo"
    if kind not in KINDS:
        raise HealthConfigError(f"{who}: health = {kind!r}; use one of {', '.join(KINDS)}")
    if kind == "command" and not command:
        raise HealthConfigError(f"{who}: health = \"command\" needs health_command, e.g. "
                                "[\"/usr/libexec/check-sensor\"]")
    group = command_id = 0
    if kind == "smp-group":
        if not str(group_raw).strip():
            raise HealthConfigError(f"{who}: health = \"smp-group\" needs health_smp_group "
                                    "(the application's SMP group id, 64 or above)")
        group = _integer(group_raw, "health_smp_group", who, 0, 0xFFFF)
        command_id = _integer(options.get("health_smp_command", 0) or 0,
                              "health_smp_command", who, 0, 0xFF)
    timeout = _seconds(options.get("health_timeout_s", DEFAULT_TIMEOUT), "health_timeout_s",
                       who)
    interval = _seconds(options.get("health_interval_s", DEFAULT_INTERVAL),
                        "health_interval_s", who)
    return HealthSpec(kind, command, group, command_id, timeout, max(interval, 0.05))


def _command(value: Any, who: str) -> tuple[str, ...]:
    """A list of arguments (no shell), or a string split as a shell would split it."""
    if value is None or value == "" or value == []:
        return ()
    if isinstance(value, list | tuple):
        if not all(isinstance(v, str) and v for v in value):
            raise HealthConfigError(f"{who}: health_command must be a list of non-empty "
                                    "strings")
        return tuple(value)
    try:
        parts = shlex.split(str(value))
    except ValueError as err:
        raise HealthConfigError(f"{who}: health_command {value!r}: {err}") from None
    if not parts:
        raise HealthConfigError(f"{who}: health_command is empty")
    return tuple(parts)


def _integer(value: Any, key: str, who: str, low: int, high: int) -> int:
    try:
        number = int(str(value).strip(), 0)
    except ValueError:
        raise HealthConfigError(f"{who}: {key} = {value!r} is not a number") from None
    if not low <= number <= high:
        raise HealthConfigError(f"{who}: {key} = {number} is outside {low}..{high}")
    return number


def _seconds(value: Any, key: str, who: str) -> float:
    try:
        number = float(str(value).strip().removesuffix("s"))
    except ValueError:
        raise HealthConfigError(f"{who}: {key} = {value!r} is not a number of seconds"
                                ) from None
    if number < 0:
        raise HealthConfigError(f"{who}: {key} = {value!r} is negative")
    return number


# One try: (healthy, reason, final). ``final``: asking again cannot help.
Probe = Callable[[float], tuple[bool, str, bool]]


def poll(probe: Probe, spec: HealthSpec, *, progress: Progress | None = None,
         clock: Callable[[], float] = time.monotonic,
         sleep: Callable[[float], None] = time.sleep) -> HealthReport:
    """Try ``probe`` until it passes, says stop, or the window closes.

    ``probe`` gets the seconds left in the window (at least one try always runs, even
    with ``health_timeout_s = 0``).
    """
    deadline = clock() + spec.timeout
    attempts = 0
    while True:
        attempts += 1
        ok, reason, final = probe(max(deadline - clock(), 0.0))
        if ok:
            return HealthReport(True, reason, attempts)
        if final:
            return HealthReport(False, reason, attempts, final=True)
        if clock() + spec.interval > deadline:
            window = f"{spec.timeout:g} s"
            return HealthReport(False, f"{reason} (after {attempts} tries in {window})",
                                attempts)
        if progress is not None:
            progress(attempts, 0, f"health: {reason}")
        sleep(spec.interval)


def run_command(spec: HealthSpec, target: Target, trial: Trial, left: float
                ) -> tuple[bool, str]:
    """Run ``health_command`` once, bounded by what is left of the window (>= 1 s).

    The environment names the target (``FERRY_TARGET``, ``FERRY_TARGET_TRANSPORT``,
    ``FERRY_TARGET_PORT``) and what should run on it (``FERRY_TARGET_VERSION``,
    ``FERRY_TARGET_HASH``); the port is closed while it runs, so it may use it.
    """
    env = dict(os.environ, FERRY_TARGET=target.name, FERRY_TARGET_TRANSPORT=target.transport,
               FERRY_TARGET_PORT=target.address, FERRY_TARGET_VERSION=trial.version,
               FERRY_TARGET_HASH=trial.hash)
    try:
        done = subprocess.run(list(spec.command), env=env, stdin=subprocess.DEVNULL,
                              capture_output=True, timeout=max(left, 1.0), check=False)
    except FileNotFoundError:
        return False, f"health command {spec.command[0]} not found"
    except PermissionError:
        return False, f"health command {spec.command[0]} is not executable"
    except subprocess.TimeoutExpired:
        return False, f"health command did not finish within {max(left, 1.0):.0f} s"
    if done.returncode == 0:
        return True, "health command passed"
    text = (done.stderr or b"").decode(errors="replace").strip() or (
        done.stdout or b"").decode(errors="replace").strip()
    last = text.splitlines()[-1].strip() if text else ""
    how = (f"killed by signal {-done.returncode}" if done.returncode < 0
           else f"exited {done.returncode}")
    return False, f"health command {how}" + (f": {last[:OUTPUT_LIMIT]}" if last else "")
