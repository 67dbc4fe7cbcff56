"""After ``reset``: did the target boot the new image, not reset yet, or roll back?

Zephyr's ``os_mgmt_reset`` (``subsys/mgmt/mcumgr/grp/os_mgmt/src/os_mgmt.c``) answers at
once and reboots ``CONFIG_MCUMGR_GRP_OS_RESET_MS`` later (250 ms by default, more on many
products); a USB CDC-ACM port then vanishes and re-enumerates, which takes seconds. Until
the reboot the OLD image answers every request, echo and image state included. So no
amount of waiting proves a reset happened, and an answer proves nothing by its timing.

ferry therefore decides only from image state the device cannot have produced before it
reset. Before the reset ferry saw (in the answer to its test request) slot 0 = old image,
active; slot 1 = new image, ``pending``. After it (``img_mgmt_state_read`` in Zephyr's
``img_mgmt_state.c``):

============================================  =============================================
the new image is ...                          verdict
============================================  =============================================
active (slot 0)                               BOOTED: it runs, in test mode until confirmed
in slot 1 and still ``pending``               not reset yet: keep asking until the deadline
in slot 1, neither active nor pending         ROLLED_BACK: MCUboot booted it and reverted
gone from both slots, old image active        REFUSED: MCUboot rejected it at boot (hash or
                                              signature) and erased slot 1
============================================  =============================================

A port that vanishes meanwhile is waited for. At the deadline (``reset_delay`` +
``boot_timeout`` after the reset answer) there are two distinct failures: the target kept
answering "not reset yet" (``NotReset``: refused, lost, or a reset delay longer than the
deadline), or it stopped answering and never came back (``ResetTimeout``).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from enum import Enum

from ferry.errors import FerryError
from ferry.proxy.smp.client import SlotState, SmpClient

POLL_SECONDS = 0.1


class NotReset(FerryError):
    """The target kept running its old image with the new one pending: it never reset."""


class ResetTimeout(FerryError):
    """The target went away at reset and did not answer again in time."""


class Verdict(Enum):
    BOOTED = "booted"
    NOT_RESET = "not reset yet"
    ROLLED_BACK = "rolled back"
    REFUSED = "refused at boot"
    UNEXPECTED = "unexpected image"


@dataclass
class Outcome:
    verdict: Verdict
    slots: list[SlotState]
    old_answers: int  # answers from the old image (new one still pending) before the reset
    vanished: bool  # the port disappeared meanwhile (USB re-enumeration)


def find(slots: list[SlotState], image: int, slot: int) -> SlotState | None:
    for s in slots:
        if s.image == image and s.slot == slot:
            return s
    return None


def classify(slots: list[SlotState], image: int, new_hash: bytes) -> Verdict:
    """The verdict for one image-state answer (the table in the module docstring).

    The running image is the one flagged ``active`` (slot 0 in every swap mode; a
    direct-XIP MCUboot runs from either slot), else slot 0 for servers that omit flags.
    """
    mine = [s for s in slots if s.image == image]
    running = next((s for s in mine if s.active), find(slots, image, 0))
    if running is not None and running.hash == new_hash:
        return Verdict.BOOTED
    staged = next((s for s in mine if s is not running and s.hash == new_hash), None)
    if staged is not None:
        return Verdict.NOT_RESET if staged.pending else Verdict.ROLLED_BACK
    if running is None:
        return Verdict.UNEXPECTED
    return Verdict.REFUSED


def wait_after_reset(port: str, *, baud: int, timeout: float, reset_delay: float,
                     boot_timeout: float, image: int, new_hash: bytes,
                     name: str = "") -> Outcome:
    """Poll the image state until it shows the reset happened, or fail at the deadline."""
    who = name or port
    time.sleep(reset_delay)  # the old image answers until then: asking proves nothing
    deadline = time.monotonic() + boot_timeout
    old_answers = 0
    vanished = False
    last = "no answer"
    last_was_old = False
    while time.monotonic() < deadline:
        if not os.path.exists(port):
            vanished = True
            last, last_was_old = "the port is gone", False
            time.sleep(POLL_SECONDS)
            continue
        client = SmpClient(port, baud=baud, timeout=min(timeout, 1.0))
        try:
            with client:
                slots = client.image_state(timeout=min(timeout, 1.0), retries=0)
        except FerryError as err:
            last, last_was_old = str(err), False
            time.sleep(POLL_SECONDS)
            continue
        verdict = classify(slots, image, new_hash)
        if verdict is not Verdict.NOT_RESET:
            return Outcome(verdict, slots, old_answers, vanished)
        old_answers += 1
        last, last_was_old = "the old image answered", True
        time.sleep(POLL_SECONDS)
    total = reset_delay + boot_timeout
    if last_was_old:
        raise NotReset(
            f"{who} did not reset: {total:.0f} s after the reset request it still runs its "
            f"old image with the new one pending ({old_answers} answers); the application "
            "refused or lost the reset, or resets later than reset_delay + boot_timeout. "
            "Nothing changed on the device; run the flash again")
    where = "its port vanished and did not come back" if vanished and not os.path.exists(
        port) else f"last: {last}"
    raise ResetTimeout(
        f"{who} did not come back within {total:.0f} s after reset ({where}); it may be "
        "stuck in MCUboot (a large swap takes time: raise boot_timeout) or crashed before "
        "its SMP server started")
