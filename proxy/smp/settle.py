"""From "booted, not confirmed" to confirmed or rolled back: the one decision.

The proxy phase and ``ferry flash smp-serial`` settle a trial image the same way, so a
technician's flash is as safe as a deployment: check health, then confirm when it
passed, else revert and say why. The caller is told the decision (``record``) after
the health check and before the confirm or the reset, so the daemon can journal it
first: a daemon killed after that point carries out the recorded decision on resume
(both operations are safe to repeat); one killed before it runs the health check
again. Works with any transport that has the ``Confirming`` capability.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ferry.errors import FerryError
from ferry.proxy.transport import Confirming, FlashResult, Progress, Target, Trial

CONFIRM = "confirm"
REVERT = "revert"


@dataclass(frozen=True)
class Decision:
    action: str  # CONFIRM | REVERT
    reason: str  # the health check's last word, for a person
    # REVERT because the target had already reverted by itself (HealthReport.reverted):
    # the image was never judged, so a caller resuming after a power cut may flash again
    reverted: bool = False


Record = Callable[[Decision], None]


def decide(conf: Confirming, target: Target, trial: Trial, *, progress: Progress
           ) -> Decision:
    """Run the target's health window; a health check that errors counts as failed."""
    try:
        report = conf.health(target, trial, progress=progress)
    except FerryError as err:
        return Decision(REVERT, f"health check failed: {err}")
    return Decision(CONFIRM if report.healthy else REVERT, report.reason,
                    reverted=report.reverted)


def carry_out(conf: Confirming, target: Target, trial: Trial, decision: Decision, *,
              booted: FlashResult | None = None) -> FlashResult:
    """Confirm or revert as decided; the result's message names the health reason.

    ``booted`` (the flash's own result, when this process has it) lends its detail
    (image facts such as encryption) to the final result.
    """
    before = dict(booted.detail) if booted is not None else {}
    if decision.action == CONFIRM:
        result = conf.confirm(target, trial)
        result.detail = {**before, **result.detail}
        if result.ok:
            result.detail["health"] = decision.reason
        return result
    try:
        result = conf.revert(target, trial, decision.reason)
    except FerryError as err:
        return FlashResult(ok=False, version=trial.version,
                           detail={**before, "health": decision.reason},
                           message=f"unhealthy, not confirmed: {decision.reason}; the revert "
                                   f"did not finish: {err}")
    result.detail = {**before, **result.detail, "health": decision.reason}
    if result.rolled_back:
        result.message = f"rolled back: {decision.reason}; {result.message}"
    else:
        result.message = f"unhealthy, not confirmed: {decision.reason}; {result.message}"
    return result


def settle(conf: Confirming, target: Target, trial: Trial, *, progress: Progress,
           record: Record | None = None, booted: FlashResult | None = None) -> FlashResult:
    decision = decide(conf, target, trial, progress=progress)
    if record is not None:
        record(decision)
    progress(0, 0, decision.action)
    return carry_out(conf, target, trial, decision, booted=booted)
