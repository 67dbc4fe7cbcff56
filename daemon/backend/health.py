"""Combined health: the gateway and every target behind it, as one picture.

One model feeds three outputs: ``ferry status`` (text or ``--json``), the DDI
``configData`` attributes (flat string keys, documented in docs/backend.md) and, once
the service exists, D-Bus. The overall state follows one written rule
(:func:`overall`) so the backend operator, the technician and the daemon agree.

Probing the live system (systemd, /proc/uptime, statvfs) lives in small functions
that take their inputs explicitly, so tests and the simulated gateway feed the model
without a real systemd.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

OK, DEGRADED, FAILED = "ok", "degraded", "failed"

# Free space on the data partition below which the gateway is degraded / failed:
# a deployment needs room to stage target images, and the journal must keep writing.
DEGRADED_FREE_FRACTION = 0.10
FAILED_FREE_BYTES = 4 << 20

# systemd "is-system-running" answers that mean the system itself is not working.
FAILED_SYSTEM_STATES = ("maintenance", "stopping", "offline")

# Results of a target's last flash that count against it (journal words + FlashResult).
BAD_RESULTS = ("failure", "failed", "rolled-back")

# configData values longer than this are cut: hawkBit stores at most 128 characters.
MAX_VALUE = 128
# hawkBit refuses a configData update that leaves a target with more attributes than
# this (hawkbit.server.security.dos.maxAttributeEntriesPerTarget, default 100), so
# per-node keys are sent only while the whole set stays within it.
MAX_ATTRIBUTES = 100
# node lines per group in the text view; the rest are counted (``ferry devices`` lists all)
NODE_LINES = 8


@dataclass(frozen=True)
class GatewayHealth:
    booted_slot: str  # boot name ("A"), "" if unknown
    committed: bool  # False while the slot is on trial (booted, not yet marked good)
    version: str
    compatible: str
    uptime_s: float
    system_state: str  # systemd is-system-running: running, degraded, starting, unknown...
    failed_units: tuple[str, ...] = ()
    required_units: tuple[str, ...] = ()  # config.health.required_units
    data_free_bytes: int = 0
    data_total_bytes: int = 0


@dataclass(frozen=True)
class TargetHealth:
    name: str
    transport: str
    address: str
    hardware_id: str = ""
    version: str = ""
    last_result: str = "never"  # success | failure | rolled-back | skipped | never
    last_seen: float | None = None  # unix time of the last successful contact
    reachable: bool | None = None  # None: not probed
    group: str = ""  # a radio node: the [[target]] (LoRa group, Zigbee population) it is in

    @property
    def node(self) -> str:
        """The node id within its group ("" for a configured target)."""
        return self.address if self.group else ""


@dataclass(frozen=True)
class Health:
    gateway: GatewayHealth
    targets: tuple[TargetHealth, ...] = ()
    checked_at: float = field(default_factory=time.time)

    @property
    def state(self) -> str:
        return overall(self)[0]

    @property
    def reasons(self) -> list[str]:
        return overall(self)[1]

    def as_dict(self) -> dict[str, Any]:
        state, reasons = overall(self)
        return {
            "overall": state,
            "reasons": reasons,
            "checked_at": self.checked_at,
            "gateway": {**asdict(self.gateway), "failed_units": list(self.gateway.failed_units),
                        "required_units": list(self.gateway.required_units)},
            "targets": [asdict(t) for t in self.targets],
        }


def overall(h: Health) -> tuple[str, list[str]]:
    """The overall state and the reasons for it (the rule in docs/backend.md).

    failed   - the gateway itself is not doing its job: systemd is in maintenance,
               stopping or offline; a required unit has failed; the data partition
               has less than 4 MiB free; or a target whose last flash failed is
               now unreachable (nothing behind it is known to run).
    degraded - everything works but something needs a look: the slot is still on
               trial; systemd says degraded (a unit that is not required failed);
               less than 10 % free on the data partition; a target is unreachable;
               a target's last flash failed or rolled back; a radio node of a
               group failed its last flash (one reason per group, with counts).
    ok       - none of the above.
    """
    g = h.gateway
    failed: list[str] = []
    degraded: list[str] = []
    if g.system_state in FAILED_SYSTEM_STATES:
        failed.append(f"systemd is {g.system_state}")
    bad_required = [u for u in g.failed_units if u in g.required_units]
    if bad_required:
        failed.append("required unit failed: " + ", ".join(bad_required))
    if g.data_total_bytes and g.data_free_bytes < FAILED_FREE_BYTES:
        failed.append(f"data partition full ({g.data_free_bytes} bytes free)")
    elif g.data_total_bytes and g.data_free_bytes < DEGRADED_FREE_FRACTION * g.data_total_bytes:
        degraded.append(f"data partition {100 * g.data_free_bytes // g.data_total_bytes}% free")
    if not g.committed:
        degraded.append(f"slot {g.booted_slot or '?'} on trial (not committed)")
    other_failed = [u for u in g.failed_units if u not in g.required_units]
    if other_failed:
        degraded.append("failed units: " + ", ".join(other_failed))
    elif g.system_state == "degraded" and not bad_required:
        degraded.append("systemd is degraded")
    for group, nodes in node_groups(h).items():
        bad_nodes = [t for t in nodes if t.last_result in BAD_RESULTS]
        if bad_nodes:
            degraded.append(f"target {group}: {len(bad_nodes)} of {len(nodes)} nodes "
                            "failed their last flash")
    for t in h.targets:
        if t.group:
            continue
        bad = t.last_result in BAD_RESULTS
        if t.reachable is False and bad:
            failed.append(f"target {t.name}: last flash {t.last_result} and unreachable")
        elif t.reachable is False:
            degraded.append(f"target {t.name} unreachable")
        elif bad:
            degraded.append(f"target {t.name}: last flash {t.last_result}")
    if failed:
        return FAILED, failed + degraded
    if degraded:
        return DEGRADED, degraded
    return OK, []


def node_groups(h: Health) -> dict[str, list[TargetHealth]]:
    """The radio nodes by the target (group) they belong to, in the order given."""
    out: dict[str, list[TargetHealth]] = {}
    for t in h.targets:
        if t.group:
            out.setdefault(t.group, []).append(t)
    return out


def node_summary(nodes: list[TargetHealth]) -> str:
    """"3 success, 1 failure": counts of last results, most common first."""
    counts: dict[str, int] = {}
    for t in nodes:
        counts[t.last_result] = counts.get(t.last_result, 0) + 1
    return ", ".join(f"{n} {word}" for word, n in
                     sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def _bad_first(nodes: list[TargetHealth]) -> list[TargetHealth]:
    return sorted(nodes, key=lambda t: (t.last_result not in BAD_RESULTS, t.node))


def _cut(value: str) -> str:
    return value if len(value) <= MAX_VALUE else value[: MAX_VALUE - 3] + "..."


def _iso(ts: float | None) -> str:
    if ts is None:
        return ""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def _yesno(v: bool | None) -> str:
    return "unknown" if v is None else ("yes" if v else "no")


def to_config_data(h: Health, *, hw_boardname: str = "default") -> dict[str, str]:
    """Flat configData attributes (keys documented in docs/backend.md).

    ``hw_boardname``/``hw_revision``/``sw_version`` are the three keys goosebit keeps
    and matches software by: a bundle's ``hardware-compatibility`` list is a list of
    hardware *revisions* of board "default" in SWUpdate's (and goosebit's) reading, so
    the gateway's compatible string goes in ``hw_revision``. The ``ferry.*``, ``gw.*``
    and ``target.<name>.*`` keys carry the full picture for hawkBit.
    """
    g = h.gateway
    state, reasons = overall(h)
    data = {
        "hw_boardname": hw_boardname,
        "hw_revision": g.compatible,
        "sw_version": g.version,
        "ferry.overall": state,
        "ferry.reasons": "; ".join(reasons),
        "gw.slot": g.booted_slot,
        "gw.committed": _yesno(g.committed),
        "gw.version": g.version,
        "gw.compatible": g.compatible,
        "gw.uptime_s": str(int(g.uptime_s)),
        "gw.systemd": g.system_state,
        "gw.failed_units": ",".join(g.failed_units),
        "gw.data_free_mib": str(g.data_free_bytes >> 20),
    }
    groups = node_groups(h)
    for t in h.targets:
        if t.group:
            continue
        p = f"target.{t.name}."
        if t.name in groups:
            data[p + "nodes"] = node_summary(groups[t.name])
        data.update({
            p + "transport": t.transport,
            p + "address": t.address,
            p + "hwid": t.hardware_id,
            p + "version": t.version,
            p + "result": t.last_result,
            p + "last_seen": _iso(t.last_seen),
            p + "reachable": _yesno(t.reachable),
        })
    # one key per node, failing nodes first, as far as hawkBit's attribute quota allows
    for group, nodes in groups.items():
        for t in _bad_first(nodes):
            if len(data) >= MAX_ATTRIBUTES:
                break
            data[f"node.{group}.{t.node}"] = f"{t.last_result} {t.version}".strip()
    return {k: _cut(v) for k, v in data.items()}


def render_text(h: Health) -> str:
    """The combined-health block of ``ferry status``: fits an 80-column console."""
    g = h.gateway
    state, reasons = overall(h)
    trial = "committed" if g.committed else "ON TRIAL"
    lines = [
        f"overall:   {state.upper()}" + (f"  ({'; '.join(reasons)})" if reasons else ""),
        f"gateway:   {g.compatible} {g.version or '?'}  slot {g.booted_slot or '?'} ({trial})",
        f"system:    {g.system_state}, up {_duration(g.uptime_s)}"
        + (f", failed units: {', '.join(g.failed_units)}" if g.failed_units else ""),
    ]
    if g.data_total_bytes:
        lines.append(f"data:      {g.data_free_bytes >> 20} MiB free of "
                     f"{g.data_total_bytes >> 20} MiB")
    groups = node_groups(h)
    configured = [t for t in h.targets if not t.group]
    if configured:
        lines.append("targets:")
        w = max(len(t.name) for t in configured)
        for t in configured:
            reach = {True: "reachable", False: "UNREACHABLE", None: "not probed"}[t.reachable]
            seen = _iso(t.last_seen) or "never"
            lines.append(f"  {t.name.ljust(w)}  {t.transport:<10} {t.version or '?':<10} "
                         f"last {t.last_result:<11} {reach}")
            lines.append(f"  {' ' * w}  at {t.address}"
                         + (f", hw {t.hardware_id}" if t.hardware_id else "")
                         + f", seen {seen}")
            if t.name in groups:
                lines.extend(_node_lines(groups[t.name]))
    else:
        lines.append("targets:   none configured")
    return "\n".join(lines)


def _node_lines(nodes: list[TargetHealth]) -> list[str]:
    """A group's nodes under its target: counts, then the failing ones first."""
    out = [f"    nodes: {len(nodes)} ({node_summary(nodes)})"]
    shown = _bad_first(nodes)[:NODE_LINES]
    for t in shown:
        out.append(f"    {t.node[:23]:<23} {(t.version or '?')[:12]:<12} {t.last_result}")
    if len(nodes) > len(shown):
        out.append(f"    ... {len(nodes) - len(shown)} more (ferry devices lists all)")
    return out


def _duration(s: float) -> str:
    s = int(s)
    d, rem = divmod(s, 86400)
    hh, rem = divmod(rem, 3600)
    mm, ss = divmod(rem, 60)
    return f"{d}d{hh:02d}h{mm:02d}m" if d else f"{hh}h{mm:02d}m{ss:02d}s"


# -- probes of the live system --------------------------------------------------------


def read_uptime(path: str | Path = "/proc/uptime") -> float:
    try:
        return float(Path(path).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0.0


def data_space(path: str | Path) -> tuple[int, int]:
    """(free, total) bytes of the filesystem holding ``path``; (0, 0) if it is missing."""
    try:
        st = os.statvfs(path)
    except OSError:
        return 0, 0
    return st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize


def systemd_state(run: Any = subprocess.run) -> tuple[str, tuple[str, ...]]:
    """(is-system-running, failed units) from systemctl; ("unknown", ()) without systemd."""
    systemctl = shutil.which("systemctl")
    if systemctl is None or not Path("/run/systemd/system").is_dir():
        return "unknown", ()
    try:
        state = run([systemctl, "is-system-running"], capture_output=True, text=True,
                    timeout=10).stdout.strip() or "unknown"
        out = run([systemctl, "list-units", "--failed", "--plain", "--no-legend"],
                  capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown", ()
    units = tuple(line.split()[0] for line in out.splitlines() if line.strip())
    return state, units


def gateway_health(
    *,
    booted_slot: str,
    committed: bool,
    version: str,
    compatible: str,
    data_dir: str | Path,
    required_units: Sequence[str] = (),
    system: tuple[str, tuple[str, ...]] | None = None,
    uptime_s: float | None = None,
) -> GatewayHealth:
    """Gather what the gateway knows about itself; ``system``/``uptime_s`` override probes."""
    state, failed = system if system is not None else systemd_state()
    free, total = data_space(data_dir)
    return GatewayHealth(
        booted_slot=booted_slot,
        committed=committed,
        version=version,
        compatible=compatible,
        uptime_s=read_uptime() if uptime_s is None else uptime_s,
        system_state=state,
        failed_units=tuple(failed),
        required_units=tuple(required_units),
        data_free_bytes=free,
        data_total_bytes=total,
    )


# -- gathering from config, bootloader, journal and transports ------------------------

# journal target states -> last_result words
_RESULT_WORDS = {"ok": "success", "skipped": "skipped", "failed": "failure",
                 "rolled-back": "rolled-back", "pending": "in-progress",
                 "flashing": "in-progress"}

Inspect = Any  # (TargetConfig) -> ferry.proxy.transport.TargetState | None


def collect(config: Any, *, bootloader: Any = None, journal: Any = None,
            inspect: Inspect = None, system: tuple[str, tuple[str, ...]] | None = None,
            uptime_s: float | None = None, history: int = 50) -> Health:
    """The combined picture from the config, the bootloader, the journal and, when
    ``inspect`` is given, a live look at each target. A part that cannot be read
    leaves its field empty instead of failing the whole status."""
    from ferry.errors import FerryError

    booted, committed = "", True
    if bootloader is not None:
        try:
            state = bootloader.state()
            booted = state.booted or bootloader.booted()
            # on trial only while the running slot is the one being tried; a slot
            # activated for the next boot leaves the running one committed
            committed = not (state.pending and state.primary == booted)
        except FerryError:
            pass
    try:
        version = config.gateway.running_version()
    except FerryError:
        version = ""
    gw = gateway_health(booted_slot=booted, committed=committed, version=version,
                        compatible=config.gateway.compatible,
                        data_dir=config.gateway.data_dir,
                        required_units=config.health.required_units, system=system,
                        uptime_s=uptime_s)
    last: dict[str, Any] = {}
    if journal is not None:
        for dep in journal.history(limit=history):  # newest first
            for rec in journal.targets(dep.id):
                last.setdefault(rec.name, rec)
    nodes_of = latest_nodes(journal, history) if journal is not None else {}
    targets = []
    for tc in config.targets:
        rec = last.get(tc.name)
        version_t = (rec.version or "") if rec is not None else ""
        result = _RESULT_WORDS.get(rec.state, rec.state) if rec is not None else "never"
        seen = rec.updated if rec is not None and rec.state in ("ok", "skipped") else None
        reachable = None
        if inspect is not None:
            try:
                st = inspect(tc)
            except Exception:  # a broken link is "unreachable", not a crash
                st = None
                reachable = False
            if st is not None:
                reachable = bool(st.reachable)
                if st.reachable:
                    seen = time.time()
                    version_t = st.version or version_t
        targets.append(TargetHealth(
            name=tc.name, transport=tc.transport, address=tc.address,
            hardware_id=tc.image_id or str(tc.options.get("hardware_id", "")),
            version=version_t, last_result=result, last_seen=seen, reachable=reachable))
        for n in nodes_of.get(tc.name, []):
            targets.append(TargetHealth(
                name=f"{tc.name}/{n.node}", transport=n.transport, address=n.node,
                version=n.version or "", last_result=_RESULT_WORDS.get(n.state, n.state),
                last_seen=n.updated if n.state in ("ok", "skipped") else None,
                group=tc.name))
    return Health(gw, tuple(targets))


def latest_nodes(journal: Any, history: int) -> dict[str, list[Any]]:
    """The newest node record per (target, node) over the last deployments, by target.

    A node keeps the result of the last flash it took part in: a later campaign that
    skipped the group (already on that version) records no nodes and hides nothing."""
    if not hasattr(journal, "nodes"):
        return {}
    latest: dict[tuple[str, str], Any] = {}
    for dep in journal.history(limit=history):  # newest first
        for rec in journal.nodes(dep.id):
            latest.setdefault((rec.target, rec.node), rec)
    out: dict[str, list[Any]] = {}
    for (target, _), rec in sorted(latest.items()):
        out.setdefault(target, []).append(rec)
    return out


def transport_inspect(tc: Any) -> Any:
    """Ask the target's transport what runs on it (used by ``ferry status``)."""
    from ferry.proxy.registry import get_transport
    from ferry.proxy.transport import Target

    options = {str(k): str(v) for k, v in tc.options.items()}
    if getattr(tc, "baud", None):
        options["baud"] = str(tc.baud)
    transport = get_transport(tc.transport, dict(tc.options))
    return transport.inspect(Target(name=tc.name, transport=tc.transport, address=tc.address,
                                    hardware_id=tc.image_id or "", options=options))


def from_dict(d: dict[str, Any]) -> Health:
    """Inverse of :meth:`Health.as_dict` (what ferryd sends over D-Bus as JSON)."""
    g = dict(d["gateway"])
    g["failed_units"] = tuple(g.get("failed_units") or ())
    g["required_units"] = tuple(g.get("required_units") or ())
    known = set(GatewayHealth.__dataclass_fields__)
    gw = GatewayHealth(**{k: v for k, v in g.items() if k in known})
    tknown = set(TargetHealth.__dataclass_fields__)
    targets = tuple(TargetHealth(**{k: v for k, v in t.items() if k in tknown})
                    for t in d.get("targets") or ())
    return Health(gw, targets, checked_at=float(d.get("checked_at") or time.time()))


def render_section(d: dict[str, Any]) -> list[str]:
    """The ``health`` section of ``ferry status`` as text lines."""
    return ["health:", *("  " + line for line in render_text(from_dict(d)).splitlines())]
