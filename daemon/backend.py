"""The deployment runner: DDI actions in, install pipeline + proxy phase out.

``ferryd`` calls :meth:`DeploymentRunner.step` once per poll period (tests and
``ferry demo`` call it directly). Each step polls the server once and moves the current
action at most one phase on, and every phase is written to a small state file
(``<data_dir>/ddi-action.json``) before its side effect, so a reboot or a crash between
two steps carries on where it stopped: after the "reboot" the next step runs the boot
check, the proxy phase and the final report.

The gateway side is a :class:`GatewaySide` (the install pipeline, the bootloader and
the proxy phase behind one small seam), so the runner is tested against a fake and
against the simulated gateway, and the DDI details never leak into the pipeline.

Deployments may have several chunks. Every artifact that is a ferry bundle (``.swu``)
is installed, the one carrying a rootfs first; target-only bundles in other chunks
stage their firmware beside it and go out in the same proxy phase. Other artifacts
(signatures, MD5SUM files) are listed in the final details and otherwise ignored:
nothing unsigned reaches a device.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from ferry.daemon.ddi import (
    Artifact,
    CancelRequest,
    DdiClient,
    DdiError,
    Deployment,
    PollResult,
)
from ferry.daemon.health import Health, to_config_data
from ferry.errors import FerryError

# Phases of one action, in order; persisted before each side effect.
IDLE = "idle"
DOWNLOADED = "downloaded"  # bundles on disk, waiting for update != skip / the window
INSTALLING = "installing"
REBOOTING = "rebooting"  # slot activated: from here on a cancel is refused
BOOTED = "booted"  # health check passed, gateway committed, proxy phase next
REPORTING = "reporting"  # final feedback not yet acknowledged by the server
AFTER_SWITCH = (REBOOTING, BOOTED, REPORTING)

BUNDLE_SUFFIXES = (".swu",)


class BackendError(FerryError):
    pass


@dataclass
class TargetOutcome:
    """One target's result, as it goes into the final details line."""

    name: str
    ok: bool
    version: str = ""
    message: str = ""
    skipped: bool = False

    def line(self) -> str:
        word = "skipped" if self.skipped else ("ok" if self.ok else "FAILED")
        text = f"target {self.name}: {word}"
        if self.version:
            text += f" version {self.version}"
        if self.message:
            text += f" ({self.message})"
        return text


@dataclass
class InstallReport:
    version: str  # the bundle's version
    rootfs: bool  # True if a slot was written and activated (a reboot is needed)
    targets: list[str] = field(default_factory=list)  # staged target names


@dataclass
class BootCheck:
    ok: bool  # committed
    reason: str = ""  # why not (health check output, wrong slot booted, ...)
    version: str = ""  # what runs now


class GatewaySide(Protocol):
    """What the runner needs from the gateway; see sim/gateway.py for the simulated one."""

    def installed_version(self) -> str: ...

    def install(self, bundle: BinaryIO, *, name: str,
                progress: Callable[[int, int, str], None]) -> InstallReport:
        """Check the bundle, write the inactive slot and stage target images; the slot
        is activated (one env write) when the last bundle of a deployment is in."""
        ...

    def activate(self) -> None:
        """Make the written slot the one to try on the next boot."""
        ...

    def reboot(self) -> None: ...

    def boot_check(self) -> BootCheck:
        """After boot: expected slot? health checks -> commit, or mark bad and roll back."""
        ...

    def abort(self) -> None:
        """Forget a written-but-not-activated slot and staged images (a cancel)."""
        ...

    def proxy(self, progress: Callable[[str, int, int], None]) -> list[TargetOutcome]: ...

    def health(self) -> Health: ...


@dataclass
class ActionState:
    action_id: str = ""
    phase: str = IDLE
    version: str = ""
    previous_version: str = ""
    rootfs: bool = False
    files: list[str] = field(default_factory=list)  # downloaded bundles (maintenance window)
    details: list[str] = field(default_factory=list)
    result: str = ""  # success | failure, once known
    started: float = 0.0


class StateFile:
    """The runner's durable state: one JSON file replaced atomically."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> ActionState:
        try:
            raw = json.loads(self.path.read_text())
        except FileNotFoundError:
            return ActionState()
        except (OSError, ValueError) as exc:
            raise BackendError(f"{self.path} is unreadable ({exc}); delete it to forget the "
                               "current backend action") from exc
        known = set(ActionState.__dataclass_fields__)
        return ActionState(**{k: v for k, v in raw.items() if k in known})

    def save(self, st: ActionState) -> None:
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "w") as f:
            json.dump(asdict(st), f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)


@dataclass
class StepResult:
    """What one step did, for logs, the demo's progress display and tests."""

    event: str  # idle | downloaded | waiting | rebooted | installed | cancelled | ...
    sleep: float  # seconds until the next step should run
    action_id: str = ""
    detail: str = ""


Log = Callable[[str], None]


def _no_log(_msg: str) -> None:
    pass


class DeploymentRunner:
    def __init__(self, client: DdiClient, gateway: GatewaySide, data_dir: str | Path, *,
                 log: Log = _no_log, hw_revision: str = "") -> None:
        self.client = client
        self.gateway = gateway
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.state_file = StateFile(self.data_dir / "ddi-action.json")
        self.state = self.state_file.load()
        self.log = log
        self.hw_revision = hw_revision
        self.config_sent = False

    # -- the loop -------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Step until ``stop`` is set; errors are logged and retried at the next poll."""
        sleep = 0.0
        while not stop.wait(sleep):
            try:
                sleep = self.step().sleep
            except FerryError as exc:
                self.log(f"backend: {exc}")
                sleep = 30.0

    def step(self) -> StepResult:
        st = self.state
        if st.phase in AFTER_SWITCH:
            self._poll_for_cancel()
        if st.phase == REBOOTING:
            return self._after_boot()
        if st.phase == BOOTED:
            return self._proxy_and_report()
        if st.phase == REPORTING:
            return self._report()
        poll = self.client.poll()
        sleep = self.client.next_sleep(poll)
        if poll.config_data_href or not self.config_sent:
            self.send_health()
        if poll.cancel_href:
            return self._cancel(self.client.cancel_action(poll.cancel_href), sleep)
        if not poll.deployment_href:
            if st.phase == DOWNLOADED:
                # the action vanished from the server (cancelled elsewhere)
                self._forget()
            return StepResult("idle", sleep)
        dep = self.client.deployment(poll.deployment_href)
        return self._deployment(dep, poll, sleep)

    # -- phases -------------------------------------------------------------------------

    def _save(self) -> None:
        self.state_file.save(self.state)

    def _forget(self) -> None:
        for f in self.state.files:
            Path(f).unlink(missing_ok=True)
        self.state = ActionState()
        self._save()

    def _bundles(self, dep: Deployment) -> tuple[list[Artifact], list[str]]:
        bundles: list[tuple[int, Artifact]] = []
        ignored: list[str] = []
        for ci, chunk in enumerate(dep.chunks):
            for art in chunk.artifacts:
                if art.filename.endswith(BUNDLE_SUFFIXES):
                    # gateway ("os") chunks first; the rest keep server order
                    bundles.append((0 if chunk.part == "os" else 1 + ci, art))
                else:
                    ignored.append(f"ignored artifact {art.filename} (not a ferry bundle)")
        bundles.sort(key=lambda x: x[0])
        return [a for _, a in bundles], ignored

    def _deployment(self, dep: Deployment, poll: PollResult, sleep: float) -> StepResult:
        st = self.state
        if st.action_id and st.action_id != dep.action_id and st.phase == DOWNLOADED:
            self.log(f"backend: action {st.action_id} replaced by {dep.action_id}")
            self._forget()
            st = self.state
        aid = dep.action_id
        if not dep.download_allowed:
            return StepResult("waiting", sleep, aid, "server says download=skip")
        bundles, ignored = self._bundles(dep)
        if not bundles:
            self.client.feedback(aid, "closed", "failure",
                                 ["no ferry bundle (.swu) in this deployment", *ignored])
            return StepResult("failed", sleep, aid, "no bundle")
        if st.action_id != aid:
            self.state = st = ActionState(action_id=aid, started=time.time(),
                                          previous_version=self.gateway.installed_version(),
                                          details=list(ignored))
            self._save()
        if not dep.install_allowed:
            if st.phase != DOWNLOADED:
                self._download_to_disk(aid, bundles)
                self.client.feedback(aid, "downloaded", "none",
                                     ["downloaded; waiting for the maintenance window"
                                      if dep.maintenance_window == "unavailable"
                                      else "downloaded; waiting for update permission"])
            return StepResult("waiting", sleep, aid, "downloaded, install not allowed yet")
        return self._install(aid, bundles)

    def _download_to_disk(self, aid: str, bundles: list[Artifact]) -> None:
        st = self.state
        ddir = self.data_dir / "ddi-downloads"
        ddir.mkdir(exist_ok=True)
        self.client.feedback(aid, "download", "none",
                             [f"downloading {', '.join(a.filename for a in bundles)}"])
        files = []
        for i, art in enumerate(bundles):
            path = ddir / f"{aid}-{i}-{Path(art.filename).name}"
            with open(path, "ab+") as f:
                self.client.download_to(art, f, progress=self._download_progress(aid, art))
            files.append(str(path))
        st.files = files
        st.phase = DOWNLOADED
        self._save()

    def _download_progress(self, aid: str, art: Artifact) -> Callable[[int, int], None]:
        last = [-1]

        def progress(done: int, total: int) -> None:
            pct = done * 100 // total if total else 0
            if pct // 25 > last[0]:
                last[0] = pct // 25
                self.client.feedback(aid, "proceeding", "none",
                                     [f"Downloaded {pct}% of {art.filename}"],
                                     progress=(pct, 100))
        return progress

    def _install(self, aid: str, bundles: list[Artifact]) -> StepResult:
        st = self.state
        st.phase = INSTALLING
        self._save()
        if not st.files:
            self.client.feedback(aid, "download", "none",
                                 [f"downloading {', '.join(a.filename for a in bundles)}"])
        rootfs = False
        version = ""
        try:
            for i, art in enumerate(bundles):
                progress = self._install_progress(aid, art)
                if st.files:
                    with open(st.files[i], "rb") as f:
                        rep = self.gateway.install(f, name=art.filename, progress=progress)
                else:
                    with self.client.open_artifact(art) as stream:
                        rep = self.gateway.install(stream,  # type: ignore[arg-type]
                                                   name=art.filename, progress=progress)
                rootfs = rootfs or rep.rootfs
                version = version or rep.version
                st.details.append(f"bundle {art.filename}: version {rep.version}"
                                  + (", rootfs written" if rep.rootfs else "")
                                  + (f", staged {', '.join(rep.targets)}" if rep.targets
                                     else ""))
                if not st.files:
                    self.client.feedback(aid, "downloaded", "none",
                                         [f"downloaded and checked {art.filename}"])
        except FerryError as exc:
            self.gateway.abort()
            self._finish_failure(aid, f"install failed: {exc}")
            return StepResult("failed", 0.0, aid, str(exc))
        st.version = version
        st.rootfs = rootfs
        if rootfs:
            st.phase = REBOOTING
            self._save()
            self.gateway.activate()
            self.client.feedback(aid, "proceeding", "none",
                                 [f"version {version} installed; rebooting into the new slot"])
            self.gateway.reboot()
            return StepResult("rebooting", 0.0, aid, version)
        st.phase = BOOTED  # targets only: no reboot, go straight to the proxy phase
        self._save()
        return StepResult("installed", 0.0, aid, version)

    def _install_progress(self, aid: str, art: Artifact) -> Callable[[int, int, str], None]:
        last = [-1]

        def progress(done: int, total: int, message: str) -> None:
            pct = done * 100 // total if total else 0
            if pct // 25 > last[0]:
                last[0] = pct // 25
                try:
                    self.client.feedback(aid, "proceeding", "none",
                                         [f"Downloaded {pct}% of {art.filename}"
                                          + (f" ({message})" if message else "")],
                                         progress=(pct, 100))
                except DdiError as exc:  # progress is best effort; the install goes on
                    self.log(f"backend: progress feedback failed: {exc}")
        return progress

    def _after_boot(self) -> StepResult:
        st = self.state
        check = self.gateway.boot_check()
        if not check.ok:
            st.details.append(f"gateway rolled back to {check.version or 'the old slot'}: "
                              f"{check.reason}")
            st.details.append("targets not flashed: the gateway did not commit")
            st.result = "failure"
            st.phase = REPORTING
            self._save()
            running = check.version or st.previous_version
            if running:
                self.client.put_installed_base(self.gateway_name(), running)
            return self._report()
        st.details.append(f"gateway committed version {check.version or st.version}")
        st.phase = BOOTED
        self._save()
        self._soft_feedback(st.action_id, "proceeding",
                            ["gateway booted and committed; flashing targets"])
        return StepResult("committed", 0.0, st.action_id)

    def _soft_feedback(self, aid: str, execution: str, details: list[str]) -> None:
        """Intermediate feedback is best effort: the final report is the one retried."""
        try:
            self.client.feedback(aid, execution, "none", details)
        except DdiError as exc:
            self.log(f"backend: feedback {execution} not delivered: {exc}")

    def _proxy_and_report(self) -> StepResult:
        st = self.state

        def progress(name: str, done: int, total: int) -> None:
            self.log(f"backend: {name} {done}/{total}")

        outcomes = self.gateway.proxy(progress)
        st.details.extend(o.line() for o in outcomes)
        st.result = "success" if all(o.ok or o.skipped for o in outcomes) else "failure"
        st.phase = REPORTING
        self._save()
        return self._report()

    def _report(self) -> StepResult:
        st = self.state
        self.client.feedback(st.action_id, "closed", st.result or "failure", st.details)
        aid = st.action_id
        result = st.result
        self._forget()
        self.send_health()
        return StepResult("finished", 0.0, aid, result)

    def _finish_failure(self, aid: str, why: str) -> None:
        st = self.state
        st.details.append(why)
        st.result = "failure"
        st.phase = REPORTING
        self._save()
        self._report()

    def _poll_for_cancel(self) -> None:
        """Mid-action after the slot switch: answer a cancel (with a refusal) but never
        let an unreachable server hold up the boot check or the proxy phase."""
        try:
            poll = self.client.poll()
            if poll.cancel_href:
                self._cancel(self.client.cancel_action(poll.cancel_href), poll.sleep)
        except DdiError as exc:
            self.log(f"backend: poll failed, going on offline: {exc}")

    def _cancel(self, cancel: CancelRequest, sleep: float) -> StepResult:
        st = self.state
        if st.action_id == cancel.stop_id and st.phase in AFTER_SWITCH:
            self.client.cancel_feedback(
                cancel.action_id, "rejected", "failure",
                [f"action {cancel.stop_id} already switched the boot slot; it cannot be "
                 "cancelled, it will finish and report"])
            return StepResult("cancel-rejected", sleep, cancel.stop_id)
        if st.action_id == cancel.stop_id:
            self.gateway.abort()
            self._forget()
        self.client.cancel_feedback(cancel.action_id, "closed", "success",
                                    [f"action {cancel.stop_id} cancelled before the slot "
                                     "switch; nothing was activated"])
        return StepResult("cancelled", sleep, cancel.stop_id)

    # -- health and what runs -----------------------------------------------------------

    def gateway_name(self) -> str:
        return self.gateway.health().gateway.compatible or "ferry"

    def send_health(self) -> dict[str, str]:
        data = to_config_data(self.gateway.health(), hw_revision=self.hw_revision)
        self.client.put_config_data(data)
        self.config_sent = True
        return data

    def report_installed(self) -> bool:
        """After an offline ``ferry install`` or a rollback outside a DDI action."""
        return self.client.put_installed_base(self.gateway_name(),
                                              self.gateway.installed_version())

    def status(self) -> dict[str, Any]:
        return asdict(self.state)
