"""The real gateway behind the deployment runner's seam: the install pipeline.

:class:`ferry.daemon.backend.runner.DeploymentRunner` speaks DDI; this adapter turns its
requests into install pipeline deployments (``ferry.daemon.install.pipeline``) tagged with the
DDI action id (``origin="ddi"``, ``external_id``), and reads their outcome back from
the journal. The pipeline does the real work and keeps its own power-cut safety.

The backend never makes the pipeline open a local path: a source is an http(s) URL
(the artifact link, checked when the deployment was parsed) or a regular file the
runner itself downloaded into ``<data_dir>/ddi-downloads``; anything else is refused
before the pipeline sees it (:func:`check_source`). A local path, ``file:`` link, FIFO
or tty from the server is never opened, so nothing about it (its bytes, its size,
whether it exists) can come back in an error.

On a real gateway ``reboot`` ends the process and the next ferryd start calls
:meth:`resume`. The simulated gateway (``ferry demo``) passes a ``reboot`` that boots
the simulated machine at once; then :meth:`resume` keeps going through the rollback's
second reboot in one call.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ferry.daemon.backend import health as health_mod
from ferry.daemon.backend.ddi import link_problem
from ferry.daemon.backend.outcomes import MAX_NODE_LINES as MAX_NODE_LINES
from ferry.daemon.backend.outcomes import OK_STATES as _OK_STATES
from ferry.daemon.backend.outcomes import node_outcomes as node_outcomes
from ferry.daemon.backend.runner import (
    DOWNLOADS,
    BackendError,
    InstallReport,
    Outcome,
    TargetOutcome,
)
from ferry.daemon.config import Config
from ferry.daemon.journal import Deployment, Journal

if TYPE_CHECKING:
    from ferry.daemon.backend.runner import DeploymentRunner
    from ferry.daemon.install.pipeline import Context

log = logging.getLogger("ferry.backend")



class PipelineGateway:
    def __init__(self, config: Config, *, reboot: Callable[[], None] | None = None,
                 boot_id: Callable[[], str] | None = None, immediate_reboot: bool = False,
                 inspect: Any = None, journal: Journal | None = None,
                 progress: Callable[[str, int, int], None] | None = None,
                 system: tuple[str, tuple[str, ...]] | None = None,
                 uptime: Callable[[], float] | None = None, ctx: Context | None = None
                 ) -> None:
        from ferry.daemon.install.pipeline import make_context

        self.config = config
        if ctx is not None:  # ferryd shares its engine's context (one journal, one env)
            self.ctx = ctx
            self.journal = ctx.journal
        else:
            self.journal = journal or Journal.open(config.gateway.data_dir)
            self.ctx = make_context(config, journal=self.journal)
        if reboot is not None:
            self.ctx.reboot = reboot
        if boot_id is not None:
            self.ctx.boot_id = boot_id
        self.immediate_reboot = immediate_reboot
        self.inspect = inspect
        self.progress = progress  # boot check and proxy phase progress (flash:<name>:...)
        self.system = system if system is not None else (
            None if config.health.system_state else ("unknown", ()))
        self.uptime = uptime

    def installed_version(self) -> str:
        return self.config.gateway.running_version()

    def _find(self, action_id: str) -> Deployment | None:
        for dep in self.journal.history(limit=20):
            if dep.origin == "ddi" and dep.external_id == action_id:
                return dep
        return None

    def install(self, source: str, *, action_id: str,
                progress: Callable[[str, int, int], None]) -> InstallReport:
        from ferry.daemon.install.pipeline import install

        check_source(source, Path(self.config.gateway.data_dir) / DOWNLOADS)
        def both(phase: str, done: int, total: int) -> None:
            progress(phase, done, total)
            if self.progress is not None:
                self.progress(phase, done, total)

        self.ctx.progress = both
        try:
            dep_id = install(self.config, source, origin="ddi", external_id=action_id,
                             ctx=self.ctx)
        finally:
            self.ctx.progress = self.progress
        dep = self.journal.get(dep_id)
        if dep.result is not None:
            return InstallReport(dep.version or "", False, self.outcome(dep))
        return InstallReport(dep.version or "", True)

    def resume(self, action_id: str) -> Outcome | None:
        from ferry.daemon.install.pipeline import resume

        for _ in range(3 if self.immediate_reboot else 1):
            pending = self.journal.pending()
            if pending is not None and pending.external_id == action_id:
                resume(self.ctx)
            dep = self._find(action_id)
            if dep is None:
                return Outcome("failure", "the gateway has no record of this action "
                                          "(interrupted before it was journaled)")
            if dep.result is not None:
                return self.outcome(dep)
        return None

    def outcome(self, dep: Deployment) -> Outcome:
        targets = [
            TargetOutcome(r.name, r.state in _OK_STATES, r.version or "", r.message or "",
                          skipped=r.state == "skipped")
            for r in self.journal.targets(dep.id)
        ]
        targets.extend(node_outcomes(self.journal, dep.id))
        result = dep.result or "failure"
        version = self.installed_version() if result == "rolled-back" else (dep.version or "")
        return Outcome(result, dep.error or "", version, targets)

    def abort(self, action_id: str) -> None:
        from ferry.daemon.install import staging
        from ferry.daemon.install.pipeline import PRE_ACTIVATION

        dep = self.journal.pending()
        if dep is not None and dep.external_id == action_id and dep.state in PRE_ACTIVATION:
            self.journal.finish(dep.id, "cancelled", "cancelled by the backend")
            staging.clean(self.config.gateway.data_dir, keep_deployment=None)

    def health(self) -> health_mod.Health:
        return health_mod.collect(self.config, bootloader=self.ctx.bootloader,
                                  journal=self.journal, inspect=self.inspect,
                                  system=self.system,
                                  uptime_s=self.uptime() if self.uptime else None)


def check_source(source: str, downloads: Path) -> None:
    """Refuse a backend deployment's source unless it is an http(s) URL or a regular
    file directly in ``downloads`` (the runner's own). Nothing outside that directory
    is looked at, so the refusal is the same whether such a path exists or not."""
    if "://" in source[:16]:
        why = link_problem(source)
        if why:
            raise BackendError(f"refusing a backend bundle source that {why}")
        return
    where = Path(os.path.realpath(Path(source).parent))
    if where != Path(os.path.realpath(downloads)):
        raise BackendError("refusing a local path as a backend bundle source: the backend "
                           "gives http(s) links only")
    try:
        mode = os.lstat(source).st_mode
    except OSError as exc:
        raise BackendError(f"downloaded bundle {Path(source).name} is gone "
                           f"({exc.strerror})") from None
    if not stat.S_ISREG(mode):
        raise BackendError(f"downloaded bundle {Path(source).name} is not a regular file")


def make_runner(config: Config, *, ctx: Context | None = None) -> DeploymentRunner | None:
    """The DDI runner ferryd runs when ``[backend] url`` is set; None otherwise."""
    if not config.backend.url:
        return None
    from ferry.daemon.backend import ddi
    from ferry.daemon.backend.runner import DeploymentRunner

    client = ddi.DdiClient(ddi.DdiSettings.from_config(config.backend))
    gateway = PipelineGateway(config, ctx=ctx)
    return DeploymentRunner(client, gateway, config.gateway.data_dir, log=log.info)


def resume_then_poll(resume: Callable[[], None], config: Config, ctx: Context,
                     stop: Any) -> None:
    """ferryd's backend thread: finish what a reboot interrupted first, then poll the
    DDI server until ``stop`` (a threading.Event) is set. One thread for both, so the
    runner never resumes a deployment the start-up resume is still working on."""
    resume()
    try:
        runner = make_runner(config, ctx=ctx)
    except Exception as exc:  # a bad [backend] must not take the D-Bus service down
        log.error("backend: not polling: %s", exc)
        return
    if runner is None:
        return
    log.info("backend: polling %s as %s", config.backend.url, config.backend.controller_id)
    try:
        devices = make_device_poller(config, runner, ctx)
    except Exception as exc:  # the gateway's own controller goes on without its devices
        log.error("backend: not polling device controllers: %s", exc)
        devices = None
    if devices is None:
        runner.run(stop)
        return
    from ferry.daemon.backend.devices import run_loop

    log.info("backend: polling %d device controller(s): %s", len(devices.ids),
             ", ".join(devices.ids))
    run_loop(lambda: runner.step().sleep, devices, stop, log=log.info)


def make_device_poller(config: Config, runner: DeploymentRunner, ctx: Context) -> Any:
    """The device controllers' poller when ``[backend] device_controllers`` is on
    (ferry.daemon.backend.devices); device deployments wait while ``runner`` has a
    gateway action in hand."""
    if not config.backend.device_controllers or not config.targets:
        return None
    from ferry.daemon.backend.devices import DevicePoller
    from ferry.daemon.backend.runner import IDLE

    def busy() -> str:
        st = runner.state
        return "" if st.phase == IDLE else f"gateway action {st.action_id} is {st.phase}"

    return DevicePoller(config, ctx, settings=runner.client.settings, busy=busy,
                        log=log.info)
