"""An MCUboot image booted on trial: check its health, then confirm it or revert it.

After ``flash`` with ``defer_confirm`` the new image runs in test mode: MCUboot's
primary trailer has ``copy_done`` set and ``image_ok`` unset, so the next reset swaps
the old image back (REVERT; mcu-tools/mcuboot ``docs/design.md``, "Swap types", and
``boot_swap_type_multi`` in ``boot/bootutil/src/bootutil_public.c``). That makes the
three operations here simple and safe to repeat:

- ``health``: the trial image answers an SMP echo and is the active image in the list
  (``img_mgmt_state_read``), then the configured application check (``healthspec``);
- ``confirm``: ``{confirm: true}`` (``boot_set_confirmed``, image_ok in the primary
  trailer), only while the trial image is the one running, and read back;
- ``revert``: one ``reset`` request (never resent, as in the flash), then the image
  state until the old image is active again. The trial image answers until Zephyr's
  reset timer fires (``reset_delay``), so "trial image active, not confirmed" means
  "not reset yet", exactly as after the flash's reset (``reboot``).

An application that confirms itself at start-up (Zephyr ``boot_write_img_confirmed()``)
takes the decision away: MCUboot will not revert a confirmed image, and ``revert``
says so instead of resetting it for nothing.
"""

from __future__ import annotations

import dataclasses
import os
import secrets
import time

from ferry.errors import FerryError
from ferry.proxy.smp import errors as smp_errors
from ferry.proxy.smp.client import LinkError, SlotState, SmpClient, TargetTimeout
from ferry.proxy.smp.header import Op
from ferry.proxy.smp.healthspec import HealthSpec, poll, run_command
from ferry.proxy.smp.reboot import POLL_SECONDS, NotReset, ResetTimeout, find
from ferry.proxy.smp.smp import SmpError
from ferry.proxy.transport import FlashResult, HealthReport, Progress, Target, Trial


def running(slots: list[SlotState], image: int) -> SlotState | None:
    """The active image (slot 0 for servers that omit the flag)."""
    mine = [s for s in slots if s.image == image]
    return next((s for s in mine if s.active), find(slots, image, 0))


def health(target: Target, *, baud: int, timeout: float, image: int, spec: HealthSpec,
           trial: Trial, progress: Progress | None = None) -> HealthReport:
    """The target's health window (``healthspec.poll``) with SMP probes."""
    want = bytes.fromhex(trial.hash)
    reverted: list[bool] = []

    def probe(left: float) -> tuple[bool, str, bool]:
        wait = min(timeout, max(left, 1.0))
        client = SmpClient(target.address, baud=baud, timeout=wait)
        try:
            with client:
                if not _echo(client, wait):
                    return False, "SMP echo answered something else than it was sent", False
                slots = client.image_state(timeout=wait, retries=0)
                now = running(slots, image)
                if now is None or now.hash != want:
                    reverted[:] = [now is not None and bool(trial.previous_hash)
                                   and now.hash.hex() == trial.previous_hash]
                    what = f"{now.version} ({now.hash.hex()[:12]})" if now else "no image"
                    return False, (f"it runs {what}, not the trial image {trial.version}: it "
                                   "reset while on trial and MCUboot reverted it"), True
                if spec.kind == "smp-group":
                    ok, why, final = _group(client, spec, wait)
                    if not ok:
                        return False, why, final
        except (TargetTimeout, LinkError) as err:
            return False, f"no SMP answer on the trial image ({err})", False
        except SmpError as err:
            return False, f"SMP error on the trial image: {err}", False
        if spec.kind == "command":  # the port is closed again: the command may use it
            ok, why = run_command(spec, target, trial, left)
            return ok, why, False
        return True, f"{spec.describe()} passed", False

    report = poll(probe, spec, progress=progress)
    if not report.healthy and report.final and reverted == [True]:
        return dataclasses.replace(report, reverted=True)
    return report


def _echo(client: SmpClient, wait: float) -> bool:
    """True when the echo comes back; also when the build has no echo handler
    (``CONFIG_MCUMGR_GRP_OS_ECHO`` off: ``MGMT_ERR_ENOTSUP``), since answering that proves
    the SMP server runs and the image list then decides."""
    token = f"ferry-health-{secrets.token_hex(4)}"
    try:
        return client.echo(token, timeout=wait, retries=0) == token
    except SmpError as err:
        if err.group is None and err.rc == smp_errors.MGMT_ERR_ENOTSUP:
            return True
        raise


def _group(client: SmpClient, spec: HealthSpec, wait: float) -> tuple[bool, str, bool]:
    """Read the application's health group; any SMP error is unhealthy.

    ``MGMT_ERR_ENOTSUP`` means no handler for that group/command is registered
    (``smp_handle_single_payload``): Zephyr registers handlers before its SMP transport
    starts, so asking again cannot help.
    """
    what = f"application health (SMP group {spec.smp_group} command {spec.smp_command})"
    try:
        client.request(Op.READ, (spec.smp_group, spec.smp_command), {}, what, timeout=wait,
                       retries=0)
    except SmpError as err:
        if err.group is None and err.rc == smp_errors.MGMT_ERR_ENOTSUP:
            return False, (f"{err}: the application has no handler for it; check "
                           "health_smp_group / health_smp_command"), True
        return False, str(err), False
    return True, "", False


def confirm(target: Target, *, baud: int, timeout: float, image: int, trial: Trial
            ) -> FlashResult:
    """Confirm the trial image if (and only if) it is still the one running."""
    want = bytes.fromhex(trial.hash)
    detail = {"hash": trial.hash}
    client = SmpClient(target.address, baud=baud, timeout=timeout)
    with client:
        now = running(client.image_state(), image)
        if now is None or now.hash != want:
            back = now.version if now else "?"
            return FlashResult(
                ok=False, version=back, detail=detail,
                rolled_back=now is not None and now.hash.hex() == trial.previous_hash,
                message=f"{target.name} came back on {back} before {trial.version} was "
                        "confirmed (it reset while on trial and MCUboot reverted it)")
        if not now.confirmed:
            slots = client.set_state(None, confirm=True)
            now = running(slots, image)
            if now is None or not now.confirmed:
                now = running(client.image_state(), image)
    if now is None or now.hash != want or not now.confirmed:
        return FlashResult(ok=False, version=now.version if now else "", detail=detail,
                           message=f"{target.name} did not confirm {trial.version}")
    return FlashResult(ok=True, version=now.version, detail=detail,
                       message=f"{target.name} runs {trial.version}, confirmed" + trial.note)


def revert(target: Target, *, baud: int, timeout: float, image: int, reset_delay: float,
           boot_timeout: float, trial: Trial) -> FlashResult:
    """Reset the target so MCUboot reverts the unconfirmed trial image; read back."""
    want = bytes.fromhex(trial.hash)
    old = trial.previous_version or "its previous image"
    slots: list[SlotState] | None
    acknowledged = False
    client = SmpClient(target.address, baud=baud, timeout=timeout)
    try:
        with client:
            slots = client.image_state()
            now = running(slots, image)
            if now is not None and now.hash == want and now.confirmed:
                return FlashResult(
                    ok=False, version=now.version, detail={"hash": trial.hash},
                    message=f"{target.name} cannot be rolled back: its application confirmed "
                            f"{trial.version} itself, so MCUboot keeps it")
            if now is not None and now.hash != want:
                return _back(target, trial, now, reset=False)
            acknowledged = client.reset()
    except (TargetTimeout, LinkError):
        slots = None  # no SMP answer: only a reset from elsewhere (watchdog) can help
    now = _wait_until_back(target, baud=baud, timeout=timeout, image=image, want=want,
                           reset_delay=reset_delay if slots is not None else 0.0,
                           boot_timeout=boot_timeout, asked=slots is not None, old=old)
    result = _back(target, trial, now, reset=True)
    result.detail["reset_acknowledged"] = str(acknowledged).lower()
    return result


def _back(target: Target, trial: Trial, now: SlotState, *, reset: bool) -> FlashResult:
    detail = {"hash": trial.hash, "running_hash": now.hash.hex()}
    if trial.previous_hash and now.hash.hex() != trial.previous_hash:
        return FlashResult(ok=False, version=now.version, detail=detail,
                           message=f"{target.name} runs {now.version}, neither the trial "
                                   f"image {trial.version} nor the previous "
                                   f"{trial.previous_version}")
    how = "after a reset" if reset else "already"
    return FlashResult(ok=False, version=now.version, rolled_back=True, detail=detail,
                       message=f"{target.name} runs {now.version} again ({how}; MCUboot "
                               f"reverted {trial.version})")


def _wait_until_back(target: Target, *, baud: int, timeout: float, image: int, want: bytes,
                     reset_delay: float, boot_timeout: float, asked: bool, old: str
                     ) -> SlotState:
    """Poll until another image than the trial one is active (``reboot`` explains why
    polling, not a sleep or a first answer, tells that a reset happened)."""
    time.sleep(reset_delay)
    deadline = time.monotonic() + boot_timeout
    trial_answers = 0
    last = "no answer"
    while time.monotonic() < deadline:
        if not os.path.exists(target.address):
            last = "the port is gone"
            time.sleep(POLL_SECONDS)
            continue
        client = SmpClient(target.address, baud=baud, timeout=min(timeout, 1.0))
        try:
            with client:
                now = running(client.image_state(timeout=min(timeout, 1.0), retries=0),
                              image)
        except FerryError as err:
            last = str(err)
            time.sleep(POLL_SECONDS)
            continue
        if now is not None and now.hash != want:
            return now
        trial_answers += 1
        last = "the trial image answered"
        time.sleep(POLL_SECONDS)
    total = reset_delay + boot_timeout
    if not asked:
        raise ResetTimeout(
            f"{target.name} does not answer SMP, so it could not be reset ({last}); its "
            f"trial image is not confirmed, so its next reset (watchdog, power cycle) "
            f"brings back {old}")
    if trial_answers and last == "the trial image answered":
        raise NotReset(
            f"{target.name} did not reset: {total:.0f} s after the reset request it still "
            f"runs the trial image ({trial_answers} answers); it is not confirmed, so its "
            f"next reset brings back {old}")
    raise ResetTimeout(
        f"{target.name} did not come back within {total:.0f} s after the reset (last: "
        f"{last}); MCUboot reverts the unconfirmed trial image on this boot")
