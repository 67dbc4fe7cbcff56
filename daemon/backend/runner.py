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

Deployments may have several chunks: a gateway bundle plus separate target bundles.
Every artifact that is a ferry bundle (``.swu``) is installed, each as one deployment
of the pipeline, the gateway's ("os" chunk) first: its reboot, commit and proxy phase
come before the target-only bundles, which go straight to their proxy phase. The
action closes once, with a details line per bundle and per target. Other artifacts
(signatures, MD5SUM files) are listed in the details and otherwise ignored: nothing
unsigned reaches a device.

The server never chooses a path: an action it sends with an id that is not a plain
integer, or with a link that is not http(s), is refused when it is parsed
(``ddi.DeploymentRefused``), logged, and answered with a feedback that says why. A
bundle downloaded ahead goes to ``<data_dir>/ddi-downloads/<id>-<n>-<name>`` where the
id is that integer and the artifact's name is cut to a safe alphabet; the pipeline
adapter accepts no other local path from the backend.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ferry.daemon.backend.ddi import (
    Artifact,
    CancelRequest,
    DdiClient,
    DdiError,
    Deployment,
    DeploymentRefused,
    is_action_id,
)
from ferry.daemon.backend.health import Health, to_config_data
from ferry.errors import FerryError

# Phases of one action, in order; persisted before each side effect.
IDLE = "idle"
DOWNLOADED = "downloaded"  # bundles on disk, waiting for update != skip / the window
INSTALLING = "installing"  # a bundle is going in (the process may die in a reboot here)
REBOOTING = "rebooting"  # slot activated: from here on a cancel is refused
REPORTING = "reporting"  # final feedback not yet acknowledged by the server
AFTER_SWITCH = (REBOOTING, REPORTING)
# After the reboot was requested, the next step asks again only this many seconds later:
# systemd takes a moment to stop ferryd, and each ask repeats the journal's reboot step
# (found on the gateway in a box: three asks within a second, each with its fsyncs).
REBOOT_WAIT = 10.0

BUNDLE_SUFFIXES = (".swu",)
DOWNLOADS = "ddi-downloads"  # under the data dir: bundles fetched ahead of the window
_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9._-]")


def download_name(action_id: str, index: int, filename: str) -> str:
    """The file name of a bundle downloaded ahead: ``<id>-<n>-<name>``. Only ferry's
    characters: the id is checked to be an integer again, the server's artifact name
    keeps its last path part, letters, digits, '.', '_' and '-', at most 64 of them."""
    if not is_action_id(action_id):
        raise BackendError(f"refusing action id {action_id!r} in a file name")
    name = _UNSAFE_NAME.sub("_", filename.replace("\\", "/").rsplit("/", 1)[-1])[-64:]
    return f"{action_id}-{index}-{name or 'bundle'}"


class BackendError(FerryError):
    pass


# configData keys that change on their own; a change in them alone is not news
_VOLATILE = ("gw.uptime_s", "gw.data_free_mib", ".last_seen")


def _stable(data: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in data.items() if not k.endswith(_VOLATILE)}


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
class Outcome:
    """How one bundle's deployment ended on the gateway."""

    result: str  # success | failure | rolled-back | cancelled
    reason: str = ""
    version: str = ""  # what runs now
    targets: list[TargetOutcome] = field(default_factory=list)


@dataclass
class InstallReport:
    version: str  # the bundle's version
    rootfs: bool  # True: a slot was written and activated, and a reboot requested
    outcome: Outcome | None = None  # set when the deployment already ended (targets only)


class GatewaySide(Protocol):
    """What the runner needs from the gateway: the install pipeline behind one seam
    (ferry.daemon.backend.pipeline_adapter in ferryd and ``ferry demo``; a fake in unit tests)."""

    def installed_version(self) -> str: ...

    def install(self, source: str, *, action_id: str,
                progress: Callable[[str, int, int], None]) -> InstallReport:
        """Verify, write the inactive slot, stage target images, activate and request
        the reboot (which on a real gateway ends this process). A bundle without a
        rootfs goes straight on to the proxy phase and comes back with its outcome."""
        ...

    def resume(self, action_id: str) -> Outcome | None:
        """After a boot: boot check, commit or roll back, proxy phase. None while the
        deployment still waits for another reboot (the rollback's)."""
        ...

    def abort(self, action_id: str) -> None:
        """Drop a deployment that has not activated a slot (a cancel)."""
        ...

    def health(self) -> Health: ...


@dataclass
class ActionState:
    action_id: str = ""
    phase: str = IDLE
    bundles: list[dict[str, str]] = field(default_factory=list)  # {"name", "source"}
    index: int = 0  # next bundle to install
    previous_version: str = ""
    files: list[str] = field(default_factory=list)  # downloaded bundles (maintenance window)
    details: list[str] = field(default_factory=list)
    result: str = ""  # success | failure, once known
    started: float = 0.0
    # the running version the server last heard of (kept across actions): a change it
    # did not hear of (an offline ``ferry install``, a rollback by U-Boot alone) goes up
    # as installedBase on the next idle poll
    reported_version: str = ""


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
                 log: Log = _no_log, hw_boardname: str = "default") -> None:
        self.client = client
        self.gateway = gateway
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.state_file = StateFile(self.data_dir / "ddi-action.json")
        self.state = self.state_file.load()
        self.log = log
        self.hw_boardname = hw_boardname
        self.last_health: dict[str, str] | None = None  # configData last delivered
        if self.state.action_id and not is_action_id(self.state.action_id):
            # written by a ferry before ids were checked: never act on it
            self.log(f"backend: forgetting action {self.state.action_id!r} from "
                     f"{self.state_file.path}: not a plain integer id")
            self.state = ActionState(reported_version=self.state.reported_version)
            self._save()

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
        if st.phase in (INSTALLING, REBOOTING):
            return self._after_boot()
        if st.phase == REPORTING:
            return self._report()
        poll = self.client.poll()
        sleep = self.client.next_sleep(poll)
        self.send_health(force=bool(poll.config_data_href))
        try:
            if poll.cancel_href:
                return self._cancel(self.client.cancel_action(poll.cancel_href), sleep)
            if not poll.deployment_href:
                if st.phase == DOWNLOADED:
                    # the action vanished from the server (cancelled elsewhere)
                    self._forget()
                if self.state.phase == IDLE:
                    self._report_if_changed()
                return StepResult("idle", sleep)
            dep = self.client.deployment(poll.deployment_href)
        except DeploymentRefused as refusal:
            return self._refuse(refusal, sleep)
        return self._deployment(dep, sleep)

    def _refuse(self, refusal: DeploymentRefused, sleep: float) -> StepResult:
        """An action ferry will not carry out: log it, tell the server, touch nothing."""
        self.log(f"backend: refused {refusal.kind} {refusal.raw_id[:60]!r}: {refusal}")
        try:
            self.client.refuse(refusal)
        except DdiError as exc:
            self.log(f"backend: refusal not delivered: {exc}")
        return StepResult("refused", sleep, refusal.action_id or "", str(refusal))

    # -- phases -------------------------------------------------------------------------

    def _save(self) -> None:
        self.state_file.save(self.state)

    def _forget(self) -> None:
        for f in self.state.files:
            Path(f).unlink(missing_ok=True)
        self.state = ActionState(reported_version=self.state.reported_version)
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

    def _deployment(self, dep: Deployment, sleep: float) -> StepResult:
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
            self.state = st = ActionState(
                action_id=aid, started=time.time(),
                previous_version=self.gateway.installed_version(), details=list(ignored),
                bundles=[{"name": a.filename, "source": a.url} for a in bundles])
            self._save()
        # The install pipeline streams each bundle from its URL into the slot, with the
        # device's token when the URL is on the backend's origin (download_options).
        # Only "download now, install later" fetches to the data partition first.
        if not dep.install_allowed:
            if st.phase != DOWNLOADED:
                self._download_to_disk(aid, bundles)
                if dep.maintenance_window == "unavailable":
                    why = "downloaded; waiting for the maintenance window"
                else:
                    why = "downloaded; waiting for update permission"
                self.client.feedback(aid, "downloaded", "none", [why])
            return StepResult("waiting", sleep, aid, "downloaded, install not allowed yet")
        if st.files:
            for b, f in zip(st.bundles, st.files, strict=True):
                b["source"] = f
        self.client.feedback(aid, "download", "none",
                             [f"downloading {', '.join(b['name'] for b in st.bundles)}"])
        return self._install_next()

    def _download_to_disk(self, aid: str, bundles: list[Artifact]) -> None:
        st = self.state
        ddir = self.data_dir / DOWNLOADS
        ddir.mkdir(mode=0o700, exist_ok=True)
        self.client.feedback(aid, "download", "none",
                             [f"downloading {', '.join(a.filename for a in bundles)}"])
        files = []
        for i, art in enumerate(bundles):
            path = ddir / download_name(aid, i, art.filename)
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
                self._soft_feedback(aid, "proceeding",
                                    [f"Downloaded {pct}% of {art.filename}"], (pct, 100))
        return progress

    def _install_next(self) -> StepResult:
        """Install bundles from ``index`` on until one needs a reboot or all are in."""
        st = self.state
        aid = st.action_id
        while st.index < len(st.bundles):
            b = st.bundles[st.index]
            st.phase = INSTALLING
            self._save()
            try:
                rep = self.gateway.install(b["source"], action_id=aid,
                                           progress=self._install_progress(aid, b["name"]))
            except FerryError as exc:
                st.details.append(f"bundle {b['name']}: install failed: {exc}")
                return self._finish("failure")
            st.details.append(f"bundle {b['name']}: version {rep.version}"
                              + (", rootfs written, slot activated" if rep.rootfs else ""))
            if not st.files:
                self._soft_feedback(aid, "downloaded",
                                    [f"{b['name']} downloaded, signature and hashes checked"])
            if rep.rootfs:
                st.phase = REBOOTING
                self._save()
                self._soft_feedback(aid, "proceeding",
                                    [f"version {rep.version} installed; rebooting into the "
                                     "new slot"])
                return StepResult("rebooting", REBOOT_WAIT, aid, rep.version)
            assert rep.outcome is not None
            if not self._record(rep.outcome):
                return self._finish("failure")
            st.index += 1
            self._save()
        return self._finish("success")

    def _install_progress(self, aid: str, name: str) -> Callable[[str, int, int], None]:
        last: dict[str, int] = {}

        def progress(phase: str, done: int, total: int) -> None:
            if phase not in ("download", "write", "stage") or total <= 1:
                return  # activate/reboot are reported by the runner itself
            pct = done * 100 // total
            if pct // 25 > last.get(phase, -1):
                last[phase] = pct // 25
                self.log(f"backend: {name} {phase} {pct}%")
                word = "Downloaded" if phase in ("download", "write") else phase
                self._soft_feedback(aid, "proceeding", [f"{word} {pct}% ({name}, {phase})"],
                                    (pct, 100))
        return progress

    def _record(self, out: Outcome) -> bool:
        """Add an outcome's lines to the details; True if the action may go on."""
        st = self.state
        st.details.extend(t.line() for t in out.targets)
        if out.result == "success":
            return True
        if out.result == "rolled-back":
            st.details.append(f"gateway rolled back, running {out.version or '?'}: "
                              f"{out.reason}")
            st.details.append("targets not flashed: the gateway did not commit")
            running = out.version or st.previous_version
            if running:
                try:
                    if self.client.put_installed_base(self.gateway_name(), running):
                        st.details.append(f"installedBase set to {running}")
                except DdiError as exc:
                    self.log(f"backend: installedBase not delivered: {exc}")
        else:
            st.details.append(f"{out.result}: {out.reason}")
        return False

    def _after_boot(self) -> StepResult:
        st = self.state
        aid = st.action_id
        out = self.gateway.resume(aid)
        if out is None:
            return StepResult("rebooting", REBOOT_WAIT, aid,
                              "the reboot was asked for and has not happened yet")
        b = st.bundles[st.index] if st.index < len(st.bundles) else {"name": "?"}
        if out.result == "success":
            st.details.append(f"gateway committed version {out.version}")
        if not self._record(out):
            return self._finish("failure")
        st.index += 1
        self._save()
        self._soft_feedback(aid, "proceeding", [f"{b['name']}: gateway booted, committed, "
                                                "targets flashed"])
        if st.index < len(st.bundles):
            return self._install_next()
        return self._finish("success")

    def _finish(self, result: str) -> StepResult:
        st = self.state
        st.result = result
        st.phase = REPORTING
        self._save()
        return self._report()

    def _report(self) -> StepResult:
        st = self.state
        self.client.feedback(st.action_id, "closed", st.result or "failure", st.details)
        aid = st.action_id
        result = st.result
        st.reported_version = self.gateway.installed_version()
        self._forget()
        try:
            self.send_health()
        except DdiError as exc:
            self.log(f"backend: configData not delivered: {exc}")
        return StepResult("finished", 0.0, aid, result)

    def _soft_feedback(self, aid: str, execution: str, details: list[str],
                       progress: tuple[int, int] | None = None) -> None:
        """Intermediate feedback is best effort: the final report is the one retried."""
        try:
            self.client.feedback(aid, execution, "none", details, progress=progress)
        except DdiError as exc:
            self.log(f"backend: feedback {execution} not delivered: {exc}")

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
            self.gateway.abort(st.action_id)
            self._forget()
        self.client.cancel_feedback(cancel.action_id, "closed", "success",
                                    [f"action {cancel.stop_id} cancelled before the slot "
                                     "switch; nothing was activated"])
        return StepResult("cancelled", sleep, cancel.stop_id)

    # -- health and what runs -----------------------------------------------------------

    def gateway_name(self) -> str:
        return self.gateway.health().gateway.compatible or "ferry"

    def send_health(self, *, force: bool = True) -> dict[str, str] | None:
        """Send configData when the server asks, on the first poll, and whenever the
        picture changed (a target went away, a unit failed); not for ticking clocks."""
        data = to_config_data(self.gateway.health(), hw_boardname=self.hw_boardname)
        if not force and self.last_health is not None and \
                _stable(data) == _stable(self.last_health):
            return None
        self.client.put_config_data(data)
        self.last_health = data
        return data

    def report_installed(self) -> bool:
        """After an offline ``ferry install`` or a rollback outside a DDI action."""
        version = self.gateway.installed_version()
        ok = self.client.put_installed_base(self.gateway_name(), version)
        self.state.reported_version = version
        self._save()
        return ok

    def _report_if_changed(self) -> None:
        version = self.gateway.installed_version()
        if version and version != self.state.reported_version:
            try:
                self.report_installed()
            except DdiError as exc:
                self.log(f"backend: installedBase not delivered: {exc}")

    def status(self) -> dict[str, Any]:
        return asdict(self.state)
