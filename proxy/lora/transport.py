"""The ``lora`` transport: one FUOTA campaign per flash, to a multicast group of nodes.

Target.address is the network server's multicast group id (ChirpStack: its UUID). The
members and their root keys come from options, because the multicast key has to be
sent to each node encrypted under a key derived from its own GenAppKey/AppKey:

- ``devices``: DevEUIs of the members, comma separated;
- ``keys_file``: JSON ``{"<devEui>": "<GenAppKey hex>"}`` or
  ``{"<devEui>": {"app_key": "<hex>", "lorawan": "1.1"}}`` (keep it mode 0600);
- ``application_id``, ``mqtt_host``, ``mqtt_port``, ``mqtt_username``, ``mqtt_password``,
  ``api_url``, ``api_token`` / ``api_token_file``: the ChirpStack adapter;
- ``dr`` (5), ``frequency`` (869525000), ``duty_cycle`` (0.1), ``loss_estimate`` (0.1),
  ``answer_timeout`` (600 s), ``start_margin`` (660 s), ``status_timeout`` (40 s),
  ``max_rounds`` (8);
- the nodes' FragDecoder build limits, so ferry plans sessions they accept:
  ``frag_max_size`` (FRAG_MAX_SIZE), ``frag_max_nb`` (FRAG_MAX_NB),
  ``frag_max_redundancy`` (FRAG_MAX_REDUNDANCY), or ``node_limits = "stock"`` for
  LoRaMac-node's shipped 50 / 21 / 5;
- ``ts004_version`` (ask each node), ``session_cnt`` (v2; default: last + 1 from
  state_dir, else 1), ``done_gap`` (v1 completion rule; default from each node's loss);
- ``state_dir``: where the last campaign's result per group is kept, for ``inspect``,
  to skip a group that already has this version (unless forced), and to plan the next
  campaign's first redundancy for the loss its nodes reported (FragSessionStatusAns).

A completed node has *rebuilt the data block*; what it does with it (verify, swap,
reboot) is the node firmware's business. TS006 (firmware management: version query,
reboot) is not implemented yet, so the version reported is the one ferry delivered.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from ferry.proxy.lora.errors import LoraError
from ferry.proxy.lora.netserver import Clock, NetworkServer, SystemClock
from ferry.proxy.lora.scheduler import STOCK_LIMITS, NodeLimits
from ferry.proxy.lora.session import Campaign, Device, Options, Report
from ferry.proxy.transport import FlashResult, Progress, Target, TargetState

NetworkFactory = Callable[[dict[str, str]], NetworkServer]


def chirpstack_from_options(opts: dict[str, str]) -> NetworkServer:
    from ferry.proxy.lora.chirpstack import ChirpStack

    token = opts.get("api_token")
    if not token and opts.get("api_token_file"):
        token = Path(opts["api_token_file"]).read_text().strip()
    return ChirpStack(
        application_id=opts.get("application_id", ""),
        mqtt_host=opts.get("mqtt_host", "127.0.0.1"),
        mqtt_port=int(opts.get("mqtt_port", "1883")),
        mqtt_username=opts.get("mqtt_username") or None,
        mqtt_password=opts.get("mqtt_password") or None,
        api_url=opts.get("api_url") or None,
        api_token=token or None,
        connect_timeout=float(opts.get("connect_timeout", "10")),
    )


def _num(opts: dict[str, str], key: str, default: float) -> float:
    try:
        return float(opts.get(key, default))
    except ValueError:
        raise LoraError(f"lora option {key}={opts[key]!r} is not a number") from None


def campaign_options(opts: dict[str, str]) -> Options:
    o = Options()
    o.dr = int(_num(opts, "dr", o.dr))
    o.frequency_hz = int(_num(opts, "frequency", o.frequency_hz))
    o.duty_cycle = _num(opts, "duty_cycle", o.duty_cycle)
    o.loss_estimate = _num(opts, "loss_estimate", o.loss_estimate)
    o.answer_timeout = _num(opts, "answer_timeout", o.answer_timeout)
    o.start_margin = _num(opts, "start_margin", o.start_margin)
    o.status_timeout = _num(opts, "status_timeout", o.status_timeout)
    o.max_rounds = int(_num(opts, "max_rounds", o.max_rounds))
    o.attempts = int(_num(opts, "attempts", o.attempts))
    if opts.get("frag_size"):
        o.frag_size = int(opts["frag_size"])
    if opts.get("mc_addr"):
        o.mc_addr = int(opts["mc_addr"], 16)
    if opts.get("descriptor"):
        o.descriptor = int(opts["descriptor"], 0)
    o.limits = node_limits(opts)
    if opts.get("ts004_version"):
        o.ts004_version = int(_num(opts, "ts004_version", 1))
        if o.ts004_version not in (1, 2):
            raise LoraError(f"lora option ts004_version={opts['ts004_version']!r}: use 1 or 2")
    if opts.get("session_cnt"):
        o.session_cnt = int(_num(opts, "session_cnt", 1))
        if not 0 <= o.session_cnt <= 0xFFFF:
            raise LoraError("lora option session_cnt is 16 bits (0..65535)")
    if opts.get("done_gap"):
        o.done_gap = max(1, int(_num(opts, "done_gap", 3)))
    return o


def node_limits(opts: dict[str, str]) -> NodeLimits:
    """FragDecoder limits of the nodes' build, from the target's options."""
    base = STOCK_LIMITS if opts.get("node_limits") == "stock" else NodeLimits()
    if opts.get("node_limits") not in (None, "", "stock"):
        raise LoraError(f"lora option node_limits={opts['node_limits']!r}: only 'stock' "
                        "(LoRaMac-node's FRAG_MAX_SIZE 50, FRAG_MAX_NB 21, "
                        "FRAG_MAX_REDUNDANCY 5) is known; give frag_max_* instead")

    def pick(key: str, default: int | None, top: int) -> int | None:
        if not opts.get(key):
            return default
        v = int(_num(opts, key, 0))
        if not 1 <= v <= top:
            raise LoraError(f"lora option {key}={opts[key]!r} must be 1..{top}")
        return v

    return NodeLimits(pick("frag_max_size", base.max_frag_size, 255),
                      pick("frag_max_nb", base.max_nb_frag, 16383),
                      pick("frag_max_redundancy", base.max_redundancy, 16383))


def load_devices(opts: dict[str, str]) -> list[Device]:
    euis = [e.strip().lower() for e in opts.get("devices", "").split(",") if e.strip()]
    if not euis:
        raise LoraError("no LoRa devices: set option 'devices' to the group's DevEUIs")
    path = opts.get("keys_file")
    if not path:
        raise LoraError("set option 'keys_file' to a JSON file of each device's GenAppKey")
    try:
        raw = json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise LoraError(f"cannot read LoRa keys file {path}: {err}") from None
    keys = {str(k).lower(): v for k, v in raw.items()}
    out = []
    for eui in euis:
        entry = keys.get(eui)
        if entry is None:
            raise LoraError(f"no key for LoRa device {eui} in {path}")
        v11 = False
        if isinstance(entry, dict):
            v11 = str(entry.get("lorawan", "1.0")).startswith("1.1")
            entry = entry.get("app_key" if v11 else "gen_app_key", entry.get("app_key"))
        try:
            key = bytes.fromhex(str(entry))
        except ValueError:
            key = b""
        if len(key) != 16:
            raise LoraError(f"key of LoRa device {eui} in {path} is not 32 hex digits")
        out.append(Device(eui, key, v11))
    return out


class LoraTransport:
    name = "lora"

    def __init__(self, options: dict[str, Any] | None = None, *,
                 network_factory: NetworkFactory | None = None,
                 clock: Clock | None = None, log: Callable[[str], None] | None = None) -> None:
        self.options = {str(k): str(v) for k, v in (options or {}).items()}
        self.network_factory = network_factory or chirpstack_from_options
        self.clock = clock or SystemClock()
        self.log = log
        self.last_report: Report | None = None

    def _opts(self, target: Target | None) -> dict[str, str]:
        merged = dict(self.options)
        if target is not None:
            merged.update(target.options)
        return merged

    def _state_path(self, opts: dict[str, str], group: str) -> Path | None:
        d = opts.get("state_dir")
        return Path(d) / f"lora-{group}.json" if d else None

    def _load_state(self, opts: dict[str, str], group: str) -> dict[str, Any]:
        path = self._state_path(opts, group)
        if path is None or not path.exists():
            return {}
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def discover(self) -> list[Target]:
        group = self.options.get("group")
        if not group:
            return []
        return [Target(name=self.options.get("name", f"lora-{group}"), transport="lora",
                       address=group, options={"devices": self.options.get("devices", "")})]

    def flash(self, target: Target, image: BinaryIO, *, progress: Progress) -> FlashResult:
        opts = self._opts(target)
        if not target.address:
            raise LoraError(f"target {target.name}: address must be the multicast group id")
        version = opts.get("spec_version", "")
        state = self._load_state(opts, target.address)
        wanted = [e.strip().lower() for e in opts.get("devices", "").split(",") if e.strip()]
        if version and opts.get("force") != "1" and wanted and \
                all(node_version(state, e) == version for e in wanted):
            return FlashResult(ok=True, version=version, skipped=True,
                               message=f"group {target.address} already has {version}",
                               detail={f"node.{e}": "skipped" for e in wanted})
        devices = load_devices(opts)
        if "loss_estimate" not in opts and state.get("loss") is not None:
            # plan the first redundancy for the loss the nodes reported last time
            opts["loss_estimate"] = str(min(max(float(state["loss"]), 0.02), 0.5))
        data = image.read()
        copts = campaign_options(opts)
        if not opts.get("session_cnt") and state.get("session_cnt") is not None:
            # v2 nodes refuse a SessionCnt they have seen (replay): count on from the last
            copts.session_cnt = (int(state["session_cnt"]) + 1) & 0xFFFF
        ns = self.network_factory(opts)
        try:
            campaign = Campaign(ns, self.clock, target.address, devices, copts,
                                log=self.log, progress=progress)
            report = campaign.run(data)
        finally:
            ns.close()
        self.last_report = report
        done = sum(1 for n in report.nodes.values() if n.state == "complete")
        detail = {f"node.{e}": (n.state + (f": {n.message}" if n.message else ""))
                  for e, n in report.nodes.items()}
        detail.update({
            "fragments_sent": str(report.fragments_sent),
            "fragments_uncoded": str(report.plan.m),
            "frag_size": str(report.plan.frag_size),
            "airtime_s": f"{report.airtime:.1f}",
            "wall_s": f"{report.wall_time:.1f}",
            "status_rounds": str(report.status_rounds),
        })
        message = (f"{done}/{len(report.nodes)} nodes rebuilt the image from "
                   f"{report.fragments_sent} fragments ({report.plan.m} uncoded), airtime "
                   f"{report.airtime:.0f} s, {report.wall_time:.0f} s wall")
        self._save_state(opts, target.address, version, report)
        return FlashResult(ok=report.ok, version=version if report.ok else "", message=message,
                           detail=detail)

    def _save_state(self, opts: dict[str, str], group: str, version: str,
                    report: Report) -> None:
        path = self._state_path(opts, group)
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        seen = [n.loss for n in report.nodes.values()
                if n.state == "complete" and n.sent_seen > 0]
        # a campaign may reach some of the group's nodes only (ferry's device
        # campaigns): the others keep what the last campaign that reached them left
        old = self._load_state(opts, group).get("nodes")
        nodes: dict[str, Any] = dict(old) if isinstance(old, dict) else {}
        for e, n in report.nodes.items():
            before = nodes.get(e) if isinstance(nodes.get(e), dict) else {}
            nodes[e] = {"state": n.state, "message": n.message, "loss": round(n.loss, 3),
                        "version": version if n.state == "complete"
                        else str((before or {}).get("version", ""))}
        tmp.write_text(json.dumps({
            "version": version, "ok": report.ok and all(
                v.get("version") == version for v in nodes.values() if isinstance(v, dict)),
            "finished": report.finished,
            "session_cnt": report.session_cnt,
            "loss": round(max(seen), 3) if seen else None,
            "nodes": nodes,
        }, indent=1))
        os.replace(tmp, path)

    def inspect(self, target: Target) -> TargetState:
        """Reachable = the network server answers; version = the last complete campaign's."""
        opts = self._opts(target)
        state = self._load_state(opts, target.address)
        detail = {f"node.{e}": str(v.get("state", "")) for e, v in
                  state.get("nodes", {}).items()} if state else {}
        try:
            ns = self.network_factory(opts)
            ns.close()
        except LoraError as err:
            detail["error"] = str(err)
            return TargetState(reachable=False, version="", detail=detail)
        version = str(state.get("version", "")) if state.get("ok") else ""
        return TargetState(reachable=True, version=version, detail=detail)


def node_version(state: dict[str, Any], eui: str) -> str:
    """The version a node rebuilt in the last campaign that reached it; state files
    written before per-node versions give the group's version to its complete nodes."""
    nodes = state.get("nodes")
    rec = nodes.get(eui) if isinstance(nodes, dict) else None
    if not isinstance(rec, dict):
        return ""
    if "version" in rec:
        return str(rec["version"])
    return str(state.get("version", "")) if state.get("ok") and rec.get("state") == "complete" \
        else ""


def create(options: dict[str, Any]) -> LoraTransport:
    return LoraTransport(options)
