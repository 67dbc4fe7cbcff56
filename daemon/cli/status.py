"""``ferry status [--json]``: the gateway at a glance.

The status is a dict of sections (``slots``/``bootloader``, ``install``, ``targets``,
``health``, ...). ferryd and the standalone path (``--config``) build the same dict
(ferry.daemon.service.status); here each section has a text renderer in ``RENDERERS``, so a
new section only needs a renderer added there (unknown sections print as key: value).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

from ferry.daemon.cli import exitcodes


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "status",
        help="show slots, the running install, targets and health",
        description="Show the gateway: each rootfs slot (boot name, device, state, attempts "
        "left, installed version), the install in progress, targets and health.",
    )
    p.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                   help="machine-readable output")
    p.set_defaults(func=run)


def collect_standalone(config_path: str) -> dict[str, Any]:
    """The status without ferryd: the same dict ferryd's GetStatus returns."""
    from ferry.daemon.boot.bootloader import make_bootloader
    from ferry.daemon.config import load_config
    from ferry.daemon.service.status import slots

    config = load_config(config_path)
    bl = make_bootloader(config, warn=False)
    status: dict[str, Any] = {
        "version": _running_version(config),
        "compatible": config.gateway.compatible,
        "bootloader": slots(config, bl),
    }
    try:
        from ferry.daemon.journal import Journal
        from ferry.daemon.service.status import collect

        if (config.gateway.data_dir / "journal.db").exists():
            status = collect(config, journal=Journal.open(config.gateway.data_dir),
                             bootloader=bl)
    except ImportError:  # pragma: no cover - the journal is part of ferry
        pass
    return status


def _running_version(config: Any) -> str:
    from ferry.errors import FerryError

    try:
        return str(config.gateway.running_version())
    except FerryError:
        return ""


# --- text ---------------------------------------------------------------------------


def _table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
            for r in rows]


def _short(text: str, width: int) -> str:
    """Keep the end of a long path (the part that tells slots apart)."""
    return text if len(text) <= width else "~" + text[-(width - 1):]


def render_bootloader(section: dict[str, Any]) -> list[str]:
    out = []
    if section.get("error"):
        out.append(f"bootloader: {section['error']}")
    else:
        env = "redundant" if section.get("redundant_env") else "SINGLE COPY (not power-safe)"
        trial = "committed" if section.get("committed") else f"trying {section.get('primary')}"
        pending = section.get("pending_slot")
        if section.get("committed") and pending and pending != section.get("booted"):
            trial += f", {pending} activated for the next boot"
        canary = "" if section.get("canary") else ", canary missing (U-Boot has not saved yet)"
        out.append(f"bootloader: {section.get('scheme')}, env {env}, {trial}{canary}")
    rows = [["SLOT", "BOOT", "DEVICE", "STATE", "ATTEMPTS", "VERSION"]]
    for s in section.get("slots", []):
        left = s.get("attempts_left")
        rows.append([
            s.get("name", ""), s.get("bootname", ""), _short(str(s.get("device", "")), 24),
            " ".join(s.get("state", [])) or "?",
            "-" if left is None else str(left), s.get("version", "") or "-",
        ])
    out.extend(_table(rows))
    return out


def render_generic(name: str, value: Any) -> list[str]:
    if isinstance(value, dict):
        if not value:
            return [f"{name}: -"]
        inner = ", ".join(f"{k}={v}" for k, v in value.items()
                          if not isinstance(v, dict | list))
        return [f"{name}: {inner or '...'}"]
    if isinstance(value, list):
        return [f"{name}: {len(value)} entries"]
    return [f"{name}: {value}"]


def render_health(section: dict[str, Any]) -> list[str]:
    """Combined health (gateway + targets, overall ok/degraded/failed): daemon/health.py."""
    from ferry.daemon.backend.health import render_section

    return render_section(section)


def _deployment_line(dep: dict[str, Any]) -> str:
    version = dep.get("version") or "?"
    where = f"{dep.get('from_slot') or '?'}->{dep.get('to_slot') or '?'}"
    return f"#{dep.get('id')} {version} ({where}, from {dep.get('origin', '?')})"


def render_install(section: dict[str, Any]) -> list[str]:
    """The deployment in flight, then the last one that finished, with its reason."""
    out = []
    pending, last = section.get("pending"), section.get("last")
    if pending:
        done, total = pending.get("progress_done") or 0, pending.get("progress_total") or 0
        pct = f" {done * 100 // total}%" if total else ""
        out.append(f"install: {_deployment_line(pending)} {pending.get('state')}{pct}")
    else:
        out.append("install: none pending")
    if last and last.get("result"):
        out.append(f"last:    {_deployment_line(last)} {last.get('result')}")
        if last.get("error"):
            out.append(f"         {str(last['error'])[:70]}")
    return out


def render_operation(section: dict[str, Any]) -> list[str]:
    """ferryd's live operation (only present when status came over D-Bus)."""
    op = section.get("operation", "idle")
    if op == "idle":
        error = section.get("last_error") or ""
        return [f"ferryd: idle; last error: {error[:50]}" if error else "ferryd: idle"]
    pct, msg, _depth = (section.get("progress") or [0, "", 1])
    return [f"ferryd: {op} {pct}% {msg}"]


def render_device_controllers(section: dict[str, Any]) -> list[str]:
    """Each device's DDI controller id, the server's answer to it and its action; a
    refused GatewayToken is spelled out (docs/backend.md, "Devices as controllers")."""
    rows = section.get("controllers") or []
    out = [f"device controllers: {len(rows)} ({section.get('auth', '?')})"]
    for r in rows:
        state = str(r.get("backend") or "?")
        word = state.upper() if state in ("auth-refused", "error", "unreachable") else state
        action = f"action {r['action']}" if r.get("action") else "no action"
        out.append(f"  {r.get('target')}: {r.get('controller_id') or '-'} {word}, {action}")
        if r.get("backend_message") and state != "ok":
            out.append(f"    ! {r['backend_message']}")
        elif r.get("action_message"):
            out.append(f"    {r['action_message']}")
    return out


RENDERERS: dict[str, Callable[[dict[str, Any]], list[str]]] = {
    "device_controllers": render_device_controllers,
    "bootloader": render_bootloader,
    "install": render_install,
    "operation": render_operation,
    "health": render_health,
}
# targets are shown with their health in the health section
SKIP = {"time", "version", "compatible", "daemon", "targets"}


def render_target_problems(targets: list[dict[str, Any]]) -> list[str]:
    """Why a target's last update failed, in the device's own words. Radio nodes
    (rows with a ``group``) are counted in the health section instead: a group of a
    hundred nodes would otherwise fill the screen (``ferry devices`` lists them)."""
    return [f"  ! {t.get('name')}: {t.get('message')}" for t in targets
            if t.get("last_result") in ("failure", "failed", "rolled-back") and t.get("message")
            and not t.get("group")]


def fit(lines: list[str], width: int = 80) -> list[str]:
    """Wrap anything wider than a serial console, indenting the continuation."""
    import textwrap

    out = []
    for line in lines:
        if len(line) <= width:
            out.append(line)
            continue
        indent = " " * min(len(line) - len(line.lstrip()) + 4, 20)
        out.extend(textwrap.wrap(line, width=width, subsequent_indent=indent,
                                 break_on_hyphens=False) or [line[:width]])
    return out


def render(status: dict[str, Any]) -> str:
    lines = [f"gateway: {status.get('compatible', '')} {status.get('version', '')}".rstrip()]
    for name, value in status.items():
        if name in SKIP:
            continue
        renderer = RENDERERS.get(name)
        if renderer is not None and isinstance(value, dict):
            lines.extend(renderer(value))
        else:
            lines.extend(render_generic(name, value))
        if name == "health":
            lines.extend(render_target_problems(status.get("targets") or []))
    return "\n".join(fit(lines))


def run(args: argparse.Namespace) -> int:
    if args.config:
        status = collect_standalone(args.config)
    else:
        from ferry.daemon.cli import dbus_client as client

        try:
            status = client.get_status()
        except client.DaemonUnavailable:
            # Imported only here: the config module costs 17 ms of a 50 ms `ferry
            # status` through ferryd, which does not need it (issue 22).
            from ferry.daemon.config import DEFAULT_PATH

            if not DEFAULT_PATH.exists():
                raise
            print("ferry: ferryd is not running; reading directly", file=sys.stderr)
            status = collect_standalone(str(DEFAULT_PATH))
    if getattr(args, "json", False):
        print(json.dumps(status, indent=2, sort_keys=True, default=str))
    else:
        print(render(status))
    return exitcodes.OK
