"""What ferryd does when asked over D-Bus, as plain blocking functions.

The D-Bus object (dbus_service.py) calls these from worker threads; the same install
pipeline, bootloader and transports serve the standalone CLI, so the daemon adds no
second path through the update logic.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, BinaryIO

from ferry.daemon.config import Config, TargetConfig
from ferry.daemon.install.pipeline import PRE_ACTIVATION, Context, make_context
from ferry.daemon.install.pipeline import install as run_install
from ferry.errors import FerryError

# pipeline phases (Context.report) after which the new slot may be active
_LATE_PHASES = ("activate", "reboot")


log = logging.getLogger("ferry.engine")


class UnknownTarget(FerryError):
    pass


class GatewayEngine:
    """One gateway's config, journal and bootloader, shared by all D-Bus calls."""

    def __init__(self, config: Config, ctx: Context | None = None) -> None:
        self.config = config
        self.ctx = ctx or make_context(config)
        self._phase = ""
        self._lock = threading.Lock()

    # install --------------------------------------------------------------------
    def install(self, source: str, *, force: bool,
                progress: Any) -> str:
        def report(phase: str, done: int, total: int) -> None:
            self._phase = phase
            progress(phase, done, total)

        self._phase = "accepted"
        self.ctx.progress = report
        log.info("install of %s requested over D-Bus%s", source, " (forced)" if force else "",
                 extra={"phase": "accepted"})
        try:
            dep_id = run_install(self.config, source, force=force, origin="dbus",
                                 progress=report, ctx=self.ctx)
        except FerryError as err:
            latest = self.ctx.journal.latest()
            log.error("install of %s failed: %s", source, err,
                      extra={"deployment_id": latest.id if latest else None,
                             "phase": self._phase})
            raise
        finally:
            self.ctx.progress = None
        dep = self.ctx.journal.get(dep_id)
        log.info("deployment %d: %s %s", dep_id, dep.version or "", dep.state,
                 extra={"deployment_id": dep_id, "phase": dep.state})
        return f"deployment {dep_id}"

    def cancellable(self) -> bool:
        """True until the bootloader may already point at the new slot."""
        if self._phase in _LATE_PHASES:
            return False
        dep = self.ctx.journal.pending()
        return dep is None or dep.state in PRE_ACTIVATION

    # mark -----------------------------------------------------------------------
    def mark(self, state: str, slot: str, *, progress: Any = None) -> tuple[str, str]:
        """The same gate as ``ferry mark``: activating the slot that is not running
        needs its verified record, the version floor and a re-hash of the slot;
        ``progress(phase, done, total)`` reports the re-hash as phase "verify-slot"."""
        from ferry.daemon.boot.slots import mark

        def report(done: int, total: int) -> None:
            if progress is not None:
                progress("verify-slot", done, total)

        with self._lock:
            return mark(self.config, self.ctx.bootloader, state, slot, progress=report)

    # status ---------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        from ferry.daemon.service.status import collect

        return collect(self.config, journal=self.ctx.journal, bootloader=self.ctx.bootloader)

    def targets(self) -> list[dict[str, Any]]:
        from ferry.daemon.service.status import targets

        return targets(self.config, self.ctx.journal)

    # flash ----------------------------------------------------------------------
    def _target(self, name: str) -> TargetConfig:
        for tc in self.config.targets:
            if tc.name == name:
                return tc
        known = ", ".join(t.name for t in self.config.targets) or "none configured"
        raise UnknownTarget(f"no target named {name!r} in the config (known: {known})")

    def check_target(self, name: str) -> None:
        """UnknownTarget unless ``name`` is a configured [[target]]: D-Bus Flash never
        reaches a device the config does not name."""
        self._target(name)

    def flash(self, target: str, image: BinaryIO, *, progress: Any) -> dict[str, Any]:
        """Flash ``image`` (the stream of a descriptor the caller opened) to ``target``.

        Unsigned by design: flashing one configured target by hand is what group
        ``ferry`` is trusted with (docs/security.md); the device's own checks (MCUboot's
        image signature, a Zigbee image's header) still apply.
        """
        from ferry.daemon.install.proxyphase import make_target
        from ferry.proxy.registry import get_transport
        from ferry.proxy.smp.settle import settle
        from ferry.proxy.transport import DEFER_CONFIRM, confirming

        tc = self._target(target)
        transport = get_transport(tc.transport, dict(tc.options))
        t = make_target(tc, {}, force=False)

        def report(done: int, total: int, message: str) -> None:
            progress(f"flash:{tc.name}:{message}", done, total)

        log.info("flashing an image passed by descriptor onto %s", tc.name,
                 extra={"target": tc.name, "phase": "flash"})
        conf = confirming(transport)  # MCUboot: confirmed only once healthy (settle)
        if conf is not None:
            t.options[DEFER_CONFIRM] = "1"
        result = transport.flash(t, image, progress=report)
        if conf is not None and result.trial is not None:
            result = settle(conf, t, result.trial, progress=report, booted=result)
        log.log(logging.INFO if result.ok else logging.ERROR, "%s: %s", tc.name,
                result.message or ("ok" if result.ok else "failed"),
                extra={"target": tc.name, "phase": "flash"})
        return {"name": tc.name, "ok": result.ok, "version": result.version,
                "message": result.message, "skipped": result.skipped,
                "rolled_back": result.rolled_back}

    # properties -----------------------------------------------------------------
    def boot_slot(self) -> str:
        try:
            return self.ctx.bootloader.booted()
        except FerryError:
            return ""

    def version(self) -> str:
        try:
            return self.config.gateway.running_version()
        except FerryError:
            return ""
