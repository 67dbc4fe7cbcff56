"""Everything `ferry status` shows, as one dict: slots, the install, targets, health,
and the keyring in force (its version: a rotation must be visible on every gateway).

ferryd's GetStatus and the standalone CLI (``--config``) both build it here, so the
two views of a gateway can never disagree. The shape is documented in docs/cli.md;
``device_controllers`` (issue #19) in docs/backend.md.
"""

from __future__ import annotations

import time
from typing import Any

from ferry.daemon.boot.bootloader import Bootloader
from ferry.daemon.config import Config
from ferry.daemon.journal import Journal, TargetRecord
from ferry.errors import FerryError

_RESULT = {"ok": "success", "failed": "failure", "rolled-back": "rolled-back",
           "skipped": "skipped"}


def latest_target_records(journal: Journal, limit: int = 20) -> dict[str, TargetRecord]:
    """The newest journal record per target name over the last ``limit`` deployments."""
    latest: dict[str, TargetRecord] = {}
    for dep in reversed(journal.history(limit=limit)):
        for record in journal.targets(dep.id):
            latest[record.name] = record
    return latest


def targets(config: Config, journal: Journal) -> list[dict[str, Any]]:
    """Each configured target, followed by its radio nodes (rows with a ``group``)."""
    from ferry.daemon.backend.devices import status_rows
    from ferry.daemon.backend.discovery import load as load_discovered
    from ferry.daemon.backend.health import latest_nodes

    discovered = load_discovered(config.gateway.data_dir)
    latest = latest_target_records(journal)
    nodes = latest_nodes(journal, 20)
    controllers = status_rows(config, config.gateway.data_dir)
    out = []
    for tc in config.targets:
        rec = latest.get(tc.name)
        out.append({**controllers.get(tc.name, {}),
            "name": tc.name, "transport": tc.transport, "address": tc.address,
            "hardware_id": tc.image_id or "",
            "version": (rec.version if rec else None) or "",
            "last_result": _RESULT.get(rec.state, rec.state) if rec else "never",
            "message": (rec.message if rec else None) or "",
            "last_seen": rec.updated if rec and rec.state in ("ok", "skipped") else None,
        })
        rows = {n.node: {
            "name": f"{tc.name}/{n.node}", "transport": n.transport, "address": n.node,
            "hardware_id": "", "group": tc.name, "version": n.version or "",
            "last_result": _RESULT.get(n.state, n.state), "message": n.message or "",
            "last_seen": n.updated if n.state in ("ok", "skipped") else None,
        } for n in nodes.get(tc.name, [])}
        for node in configured_nodes(tc, discovered.get(tc.name)):  # before a first campaign
            rows.setdefault(node, {
                "name": f"{tc.name}/{node}", "transport": tc.transport, "address": node,
                "hardware_id": "", "group": tc.name, "version": "", "last_result": "never",
                "message": "", "last_seen": None})
        out.extend(rows[k] for k in sorted(rows))
    return out


def configured_nodes(tc: Any, discovered: list[str] | None = None) -> list[str]:
    """The nodes a LoRa group's config names (option ``devices``: DevEUIs, commas), or
    a Zigbee population target lists or discovered (ferry.daemon.backend.discovery)."""
    from ferry.daemon.backend.controllers import target_nodes

    return target_nodes(tc, discovered)


def slots(config: Config, bootloader: Bootloader) -> dict[str, Any]:
    from ferry.daemon.boot.slots import slot_versions

    versions = slot_versions(config)
    try:
        state = bootloader.state()
    except FerryError as err:
        return {"error": str(err), "slots": [
            {"name": s.name, "bootname": s.bootname, "device": str(s.device),
             "version": versions.get(s.name, "")} for s in config.slots]}
    rows = []
    for s in config.slots:
        try:
            bs = state.slot(s.bootname)
        except FerryError:
            continue
        rows.append({
            "name": s.name, "bootname": s.bootname, "device": str(s.device),
            "state": bs.words, "booted": bs.booted, "primary": bs.primary, "good": bs.good,
            "attempts_left": bs.attempts_left,
            "version": versions.get(s.name, "") or (_running(config) if bs.booted else ""),
        })
    # the running slot is on trial only while it is the one being tried; a slot that is
    # activated for the next boot does not make the running one uncommitted
    on_trial = state.pending and state.primary == state.booted
    return {"scheme": state.scheme, "booted": state.booted, "primary": state.primary,
            "committed": not on_trial, "pending_slot": state.primary if state.pending else None,
            "redundant_env": state.redundant,
            "canary": state.canary, "slots": rows}


def _running(config: Config) -> str:
    try:
        return config.gateway.running_version()
    except FerryError:
        return ""


def install(journal: Journal) -> dict[str, Any]:
    pending = journal.pending()
    latest = journal.latest()
    return {
        "pending": pending.as_dict() if pending else None,
        "last": latest.as_dict() if latest else None,
    }


def collect(config: Config, *, journal: Journal, bootloader: Bootloader) -> dict[str, Any]:
    from ferry.daemon.backend import health as health_mod

    try:
        version = config.gateway.running_version()
    except FerryError:
        version = ""
    health = health_mod.collect(
        config, bootloader=bootloader, journal=journal,
        system=None if config.health.system_state else ("unknown", ()))
    return {
        "time": time.time(),
        "version": version,
        "compatible": config.gateway.compatible,
        "bootloader": slots(config, bootloader),
        "install": install(journal),
        "targets": targets(config, journal),
        "health": health.as_dict(),
        "keyring": keyring(config, bootloader),
        **device_controllers(config),
    }


def device_controllers(config: Config) -> dict[str, Any]:
    """``device_controllers`` (when ``[backend] device_controllers`` is on): each
    target's DDI controller id, whether the server accepts ferry for it, and its
    current action (ferry.daemon.backend.devices)."""
    from ferry.daemon.backend.devices import status_rows

    rows = status_rows(config, config.gateway.data_dir)
    if not rows:
        return {}
    return {"device_controllers": {
        "auth": _device_auth(config),
        "controllers": [{"target": name, **row} for name, row in rows.items()]}}


def _device_auth(config: Config) -> str:
    """How the device controllers authenticate, as devices.device_settings decides it: a
    target's own TargetToken first (goosebit, which knows no GatewayToken), else the
    tenant's GatewayToken."""
    own = sum(1 for t in config.targets if t.target_token)
    if config.targets and own == len(config.targets):
        return "TargetToken (per target)"
    shared = "GatewayToken" if config.backend.gateway_token else "none"
    return f"{shared}, TargetToken for {own} target(s)" if own else shared


def keyring(config: Config, bootloader: Bootloader) -> dict[str, Any]:
    """Version and source of the keyring in force (ferry.daemon.install.trust), or why
    none can be established (then every bundle is refused)."""
    from ferry.daemon.install.trust import status

    store = getattr(bootloader, "store", None)
    if store is None:
        from ferry.daemon.boot.bootloader import make_store

        store = make_store(config)
    return status(config, store)
