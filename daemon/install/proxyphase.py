"""Proxy phase: the staged firmware goes to the devices behind the committed gateway.

Staged images are matched to the ``[[target]]`` entries of the config, by transport
and name, or by a selector (image id, manufacturer/image type) the bundle carries.
Targets on different ports (addresses) are flashed in parallel, those sharing a port
one after the other (a serial line or a radio coordinator carries one transfer at a
time). A failing target is recorded and does not stop the others. Targets already
recorded ok are not flashed again when the phase resumes after a restart.

A target may stand for many radio nodes (a LoRa multicast group, a Zigbee
population). Its transport reports each node in ``FlashResult.detail`` under
``node.<node id>`` as ``<state>[: <message>]``; those become journal node rows
(``Journal.set_nodes``) beside the target's row, so health, ``ferry status``,
``ferry devices`` and the backend feedback can show every node.

A deployment whose ``info`` names ``only_targets`` (a device deployment, see
``devicedeploy``) flashes those targets and no other, whatever else its images match.

A transport that can boot an image on trial (``Confirming``: smp-serial, MCUboot) is
asked to stop at "booted, not confirmed"; the target's health check then decides
between confirm and revert (``ferry.proxy.smp.settle``). Each stage is journalled in
the deployment's info under ``trial.<target>`` before its side effect: ``health`` (the
trial, before the health window), ``confirm`` / ``revert`` with the health reason
(before the confirm or the reset), ``done`` once the target's row holds the outcome.
A phase resumed after a crash or power cut picks up there: a trial without a decision
runs its health check again, a decision is carried out again (both operations are
safe to repeat), and a settled trial is not flashed again. A crash inside the flash
itself leaves no trial record; flashing again finds the image running unconfirmed and
hands back the same trial, so the health check decides in every case.

A power cut that reaches the device too (an MCU on the gateway's supply) resets it while
its image is on trial, and MCUboot brings the previous image back: nobody judged the
new image. So a resumed trial that finds the device back on its previous image without
a decision, or before a decided confirm reached it, flashes it again, at most
``MAX_REFLASH`` times per deployment (an image that crashes at every boot looks the
same from outside); after that the target is recorded rolled back as usual.
"""

from __future__ import annotations

import logging
import shlex
import threading
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ferry.daemon.config import TargetConfig
from ferry.daemon.install.staging import StagedImage, check_staged
from ferry.daemon.journal import Journal
from ferry.daemon.testhooks.killpoint import killpoint
from ferry.errors import FerryError
from ferry.proxy.smp.settle import CONFIRM, REVERT, Decision, carry_out, settle
from ferry.proxy.transport import DEFER_CONFIRM, Confirming, FlashResult, Target, Trial, confirming

if TYPE_CHECKING:
    from ferry.daemon.install.context import Context

log = logging.getLogger(__name__)

DONE_STATES = ("ok", "skipped")
MAX_REFLASH = 2  # flashes again of a trial the device reverted by itself, per target

NODE_PREFIX = "node."
# a transport's per-node words -> journal node states (ok | skipped | failed)
_NODE_OK = frozenset({"ok", "complete", "success", "updated", "done"})
_NODE_SKIPPED = frozenset({"skipped", "up-to-date", "current"})

NodeRow = tuple[str, str, str | None, str | None]  # node, state, version, message


def node_rows(tc: TargetConfig, result: FlashResult, image_version: str) -> list[NodeRow]:
    """(node, state, version, message) per ``node.<id>`` key of the result's detail.

    A node that rebuilt the image runs the image's version even when the group as a
    whole failed (the result then carries no version). A target whose only node is
    the target itself (a Zigbee target addressed by its IEEE address) gets no rows:
    its target row already says everything."""
    rows: list[NodeRow] = []
    for key, value in sorted(result.detail.items()):
        if not key.startswith(NODE_PREFIX) or len(key) == len(NODE_PREFIX):
            continue
        node = key[len(NODE_PREFIX):]
        word, _, message = str(value).partition(":")
        word = word.strip().lower()
        if word in _NODE_OK:
            state = "ok"
        elif word in _NODE_SKIPPED:
            state = "skipped"
        else:
            state = "failed"
        version = (result.version or image_version) if state == "ok" else None
        if state == "skipped":
            version = result.version or None
        rows.append((node, state, version or None, message.strip() or word))
    if len(rows) == 1 and rows[0][0].lower() == tc.address.lower():
        return []
    return rows


@dataclass(frozen=True)
class Job:
    target: TargetConfig
    image: dict[str, Any]  # one entry of the deployment's info["staged"]


NO_MATCH = "no [[target]] in the config matches this image"


def selector_problem(image: dict[str, Any]) -> str | None:
    """Why the image's selector can match nothing, or None if it is well formed.

    A selector key with an empty value (``image_id = ""``, an empty manufacturer or
    image type) would otherwise equal the empty value every target has for a key it
    does not set, so one signed image would reach every target of its transport. The
    signer is trusted for what an image is, not for "any device": such an image
    matches no target, not even by name, and its row in the result says why.
    """
    selector = image.get("selector") or {}
    empty = sorted(str(k).strip() or "(unnamed key)" for k, v in selector.items()
                   if not str(k).strip() or not str(v).strip())
    if not empty:
        return None
    return (f"the bundle's selector has an empty {', '.join(empty)}; an empty selector "
            "value matches no target")


def matches(tc: TargetConfig, image: dict[str, Any]) -> bool:
    """Same transport, and the bundle names this target, or every selector key equals
    the target's own non-empty ``image_id`` / option of that key."""
    if image.get("transport") != tc.transport or selector_problem(image) is not None:
        return False
    if image.get("name") and image["name"] == tc.name:
        return True
    selector: dict[str, str] = image.get("selector") or {}
    if not selector:
        return False
    own = {str(k): str(v) for k, v in tc.options.items()}
    if tc.image_id:
        own["image_id"] = tc.image_id
    # the target's own value must be set too: "" == "" is no match
    return all(own.get(str(k), "").strip() != "" and own[str(k)].lower() == str(v).lower()
               for k, v in selector.items())


def plan(targets: tuple[TargetConfig, ...], staged: list[dict[str, Any]]
         ) -> tuple[list[Job], list[tuple[dict[str, Any], str]]]:
    """(jobs, unmatched images with the reason each matched nothing)."""
    jobs: list[Job] = []
    unmatched: list[tuple[dict[str, Any], str]] = []
    for image in staged:
        hits = [tc for tc in targets if matches(tc, image)]
        if not hits:
            unmatched.append((image, selector_problem(image) or NO_MATCH))
        jobs.extend(Job(tc, image) for tc in hits)
    return jobs, unmatched


def _option_text(value: Any) -> str:
    """An option as the transport's string: a list (``health_command``) as shell words."""
    if isinstance(value, list | tuple):
        return shlex.join(str(v) for v in value)
    return str(value)


def make_target(tc: TargetConfig, image: dict[str, Any], force: bool) -> Target:
    options = {str(k): _option_text(v) for k, v in tc.options.items()}
    if tc.baud:
        options["baud"] = str(tc.baud)
    if force:
        options["force"] = "1"
    options["spec_version"] = str(image.get("version", ""))
    options["spec_format"] = str(image.get("format", ""))
    for k, v in (image.get("selector") or {}).items():
        options[f"spec_{k}"] = str(v)
    return Target(name=tc.name, transport=tc.transport, address=tc.address,
                  hardware_id=tc.image_id or "", options=options)


TransportFactory = Callable[[str, dict[str, Any]], Any]


def _default_factory(name: str, options: dict[str, Any]) -> Any:
    from ferry.proxy.registry import get_transport

    return get_transport(name, options)


def run(ctx: Context, dep_id: int, *, factory: TransportFactory | None = None,
        max_parallel: int = 8) -> None:
    j = ctx.journal
    dep = j.get(dep_id)
    factory = factory or _default_factory
    staged: list[dict[str, Any]] = list(dep.info.get("staged", []))
    if dep.state != "proxy":
        j.begin_step(dep_id, "proxy", state="proxy", detail=f"{len(staged)} staged image(s)")
    targets = ctx.config.targets
    only = dep.info.get("only_targets")
    if only is not None:  # a device deployment (install/devicedeploy.py): its device alone
        targets = tuple(tc for tc in targets if tc.name in only)
    jobs, unmatched = plan(targets, staged)
    done = {t.name: t.state for t in j.targets(dep_id)}
    trials = {name: _trial_record(dep.info, name) for name in done}
    for image, why in unmatched:
        name = image.get("name") or image["filename"]
        j.set_target(dep_id, name, transport=image.get("transport", ""), state="failed",
                     image=image["filename"], message=why)
    by_port: dict[str, list[Job]] = defaultdict(list)
    for job in jobs:
        stage = (trials.get(job.target.name) or {}).get("stage")
        if done.get(job.target.name) in DONE_STATES:
            if stage not in (None, "done"):  # recorded ok just before a crash
                _stage(j, dep_id, job.target.name, "done")
            continue
        if stage == "done":
            continue  # settled on trial (rolled back, or refused): its row says how
        if stage is None:
            j.set_target(dep_id, job.target.name, transport=job.target.transport,
                         state="pending", image=job.image["filename"])
        by_port[f"{job.target.transport}:{job.target.address}"].append(job)

    lock = threading.Lock()

    def flash_port(port_jobs: list[Job]) -> None:
        for job in port_jobs:
            _flash_one(ctx, dep_id, job, dep.force, factory, lock,
                       trials.get(job.target.name))

    if by_port:
        with ThreadPoolExecutor(max_workers=min(max_parallel, len(by_port)),
                                thread_name_prefix="proxy") as pool:
            for fut in [pool.submit(flash_port, js) for js in by_port.values()]:
                fut.result()
    records = j.targets(dep_id)
    failed = [r for r in records if r.state not in DONE_STATES]
    if failed:
        summary = "; ".join(f"{r.name}: {r.message or r.state}" for r in failed)
        j.end_step(dep_id, "proxy", "failed", summary)
        j.update(dep_id, state="done")
        j.finish(dep_id, "failure",
                 f"{len(failed)} of {len(records)} target(s) failed: {summary}")
    else:
        j.end_step(dep_id, "proxy", detail=f"{len(records)} target(s) ok", state="done")
        j.finish(dep_id, "success")
    from ferry.daemon.install.staging import clean

    clean(ctx.config.gateway.data_dir, keep_deployment=None)


TRIAL_PREFIX = "trial."


def _trial_record(info: dict[str, Any], name: str) -> dict[str, Any] | None:
    record = info.get(TRIAL_PREFIX + name)
    return record if isinstance(record, dict) and isinstance(record.get("trial"), dict) \
        else None


def _flash_one(ctx: Context, dep_id: int, job: Job, force: bool, factory: TransportFactory,
               lock: threading.Lock, saved: dict[str, Any] | None = None) -> None:
    j = ctx.journal
    tc, image = job.target, job.image
    target = make_target(tc, image, force)
    j.set_target(dep_id, tc.name, transport=tc.transport, state="flashing")
    log.info("flashing %s (%s at %s) with %s %s", tc.name, tc.transport, tc.address,
             image["filename"], image.get("version") or "",
             extra={"deployment_id": dep_id, "phase": "proxy"})

    def progress(done: int, total: int, message: str) -> None:
        ctx.report(f"flash:{tc.name}:{message}", done, total)

    try:
        transport = factory(tc.transport, dict(tc.options))
        conf = confirming(transport)
        if conf is not None:
            target.options[DEFER_CONFIRM] = "1"
        resumed = None
        if conf is not None and saved is not None:
            resumed = _resume_trial(j, dep_id, tc, target, conf, saved, progress)
        if resumed is not None:
            result = resumed
        else:
            check_staged(StagedImage(image["path"], image["size"], image["sha256"]))
            with open(image["path"], "rb") as f:
                result = transport.flash(target, f, progress=progress)
            if conf is not None and result.trial is not None:
                result = _settle_trial(j, dep_id, tc, target, conf, result.trial, progress,
                                       booted=result)
    except FerryError as err:
        j.set_target(dep_id, tc.name, transport=tc.transport, state="failed", message=str(err))
        log.warning("%s: failed: %s", tc.name, err,
                    extra={"deployment_id": dep_id, "phase": "proxy"})
        return
    except Exception as err:
        log.exception("flashing %s failed", tc.name)
        j.set_target(dep_id, tc.name, transport=tc.transport, state="failed",
                     message=f"{type(err).__name__}: {err}")
        return
    if result.ok:
        state = "skipped" if result.skipped else "ok"
    else:
        state = "rolled-back" if result.rolled_back else "failed"
    nodes = node_rows(tc, result, str(image.get("version", "")))
    if nodes:  # before the target row: a target recorded ok is never flashed again
        j.set_nodes(dep_id, tc.name, transport=tc.transport, nodes=nodes)
    j.set_target(dep_id, tc.name, transport=tc.transport, state=state,
                 version=result.version or None,
                 message=result.message or ("flashed" if result.ok else "flash failed"))
    log.info("%s: %s%s", tc.name, state, f" ({result.message})" if result.message else "",
             extra={"deployment_id": dep_id, "phase": "proxy"})
    if _trial_record(j.get(dep_id).info, tc.name) is not None:
        killpoint("proxy.trial.settled")
        _stage(j, dep_id, tc.name, "done")


def _stage(j: Journal, dep_id: int, name: str, stage: str, **items: Any) -> None:
    """Move a target's trial record to ``stage`` (one commit; its own info key, so
    targets settled in parallel never overwrite each other's record)."""
    record = _trial_record(j.get(dep_id).info, name) or {}
    record.update(items, stage=stage)
    j.set_info(dep_id, **{TRIAL_PREFIX + name: record})


def _settle_trial(j: Journal, dep_id: int, tc: TargetConfig, target: Target,
                  conf: Confirming, trial: Trial, progress: Any,
                  booted: FlashResult | None = None,
                  decided: list[Decision] | None = None) -> FlashResult:
    """The image booted on trial: journal it, check health, journal the decision, act.
    ``decided`` gets the decision, for a caller that wants to know why."""
    _stage(j, dep_id, tc.name, "health", trial=trial.as_dict())
    j.set_target(dep_id, tc.name, transport=tc.transport, state="flashing",
                 message=f"runs {trial.version} on trial (not confirmed); checking its health")
    killpoint("proxy.trial.booted")

    def record(d: Decision) -> None:
        if decided is not None:
            decided.append(d)
        _record_decision(j, dep_id, tc, trial, d)

    return settle(conf, target, trial, progress=progress, booted=booted, record=record)


def _record_decision(j: Journal, dep_id: int, tc: TargetConfig, trial: Trial,
                     decision: Decision) -> None:
    _stage(j, dep_id, tc.name, decision.action, reason=decision.reason)
    if decision.action == CONFIRM:
        text = f"healthy ({decision.reason}); confirming {trial.version}"
    else:
        back = trial.previous_version or "its previous image"
        text = f"unhealthy: {decision.reason}; resetting it back to {back}"
    j.set_target(dep_id, tc.name, transport=tc.transport, state="flashing", message=text)
    killpoint("proxy.trial.decided")


def _resume_trial(j: Journal, dep_id: int, tc: TargetConfig, target: Target,
                  conf: Confirming, saved: dict[str, Any], progress: Any
                  ) -> FlashResult | None:
    """Pick a trial up where the journal left it: no decision yet -> health check again;
    a decision -> carry it out again (confirm and revert are safe to repeat). None: the
    device had reverted the image by itself before it was judged (or before the
    confirm reached it), so it is to be flashed again (see the module's docstring)."""
    trial = Trial.from_dict(saved["trial"])
    stage = saved.get("stage")
    reflashed = int(saved.get("reflashed", 0) or 0)
    log.info("resuming %s on trial (%s), stage %s", tc.name, trial.version, stage)
    if stage == "revert":
        return carry_out(conf, target, trial, Decision(REVERT, str(saved.get("reason", ""))))
    if stage == "confirm":
        result = carry_out(conf, target, trial, Decision(CONFIRM, str(saved.get("reason", ""))))
        if result.ok or not result.rolled_back or reflashed >= MAX_REFLASH:
            return result
        why = result.message
    else:
        decided: list[Decision] = []
        result = _settle_trial(j, dep_id, tc, target, conf, trial, progress,
                               decided=decided)
        if not (decided and decided[0].reverted) or reflashed >= MAX_REFLASH:
            return result
        why = decided[0].reason
    log.warning("%s: reverted to %s by itself before %s was judged (%s); flashing it "
                "again (%d of %d)", tc.name, trial.previous_version or "its previous image",
                trial.version, why, reflashed + 1, MAX_REFLASH,
                extra={"deployment_id": dep_id, "phase": "proxy"})
    _stage(j, dep_id, tc.name, "reflash", reflashed=reflashed + 1)
    return None
