"""Every device behind the gateway as a DDI controller of its own (issue #19).

With ``[backend] device_controllers = true`` each ``[[target]]`` gets a controller id
(ferry.daemon.backend.controllers) and :class:`DevicePoller` talks DDI for it with
the tenant's GatewayToken (``[backend] gateway_token``; the token goes to the
backend's origin only, through the same ``OriginAuth`` as every other DDI request and
download). For each device it:

- polls the device's controller on the device's own schedule: never sooner than the
  ``polling.sleep`` the server sent *that* controller, and all devices together no
  more than ``device_polls_per_poll`` per gateway poll interval (a token bucket refilled
  at that rate), the longest-waiting device first. N devices cost at most that many
  requests per gateway interval, not N times the gateway's rate;
- registers the device's attributes (configData: transport, address, image id,
  running version, last result) on the first poll, when the server asks, and when
  they change;
- carries out the device's deployments: a signed target-only bundle, verified,
  staged and flashed by ``ferry.daemon.install.devicedeploy`` through the device's
  transport with the proxy phase's journal and resume rules, progress and the final
  result (one details line per target and radio node) sent to the device's action;
- refuses what is not this device's: a link into another controller's path, a
  controller id the config does not know (a stale entry of the state file), a bundle
  without an image for the device (feedback says which images it has);
- leaves an action of an offline device open (``proceeding``, with the reason) and
  tries again at the device's next poll;
- records, per device, whether the server accepts the GatewayToken: a 401/403 is a
  clear line in ``ferry status`` (``auth-refused``), not a silent retry loop;
- gathers the actions of devices on a broadcast medium (a LoRa group, a Zigbee
  coordinator) that carry the same artifact, and flashes them as one campaign
  (ferry.daemon.backend.campaign), each action told its own node's result;
- with ``[backend] node_controllers``, polls each node a LoRa target lists, and each
  node a Zigbee population target discovers (at start, then every
  ``node_discovery_interval``; ferry.daemon.backend.discovery), as a controller of its
  own, so that a rollout's per-node actions meet in one campaign.

Device deployments wait while the gateway has a deployment (its runner is not idle,
or the journal holds an unfinished one), and the gateway waits while a device flashes:
both run in ferryd's one backend thread, gateway first (:func:`run_loop`). The
state (next poll, action in hand, last result, auth status) is in
``<data_dir>/ddi-devices.json``, written atomically before each side effect, so a
restart neither loses a final report nor flashes twice.
"""

from __future__ import annotations

import json
import os
import random
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from ferry.daemon.backend import campaign, discovery
from ferry.daemon.backend.campaign import GATHERING, medium
from ferry.daemon.backend.controllers import device_ids, node_ids
from ferry.daemon.backend.ddi import (
    CancelRequest,
    DdiClient,
    DdiError,
    DdiHttpError,
    DdiSettings,
    Deployment,
    DeploymentRefused,
    jittered,
    link_problem,
)
from ferry.daemon.config import Config, TargetConfig
from ferry.daemon.install.proxyphase import TransportFactory
from ferry.errors import FerryError

STATE_FILE = "ddi-devices.json"
BUNDLE_SUFFIXES = (".swu",)
_OK = ("ok", "skipped")
_VOLATILE = ("ferry.last_seen",)

# action states shown by `ferry devices` / `ferry status`
WAITING = "waiting"  # for the gateway's deployment, or for the server's permission
OFFLINE = "offline"  # the device did not answer; retried at its next poll
FLASHING = "flashing"
REPORTING = "reporting"  # the final feedback is not yet delivered


@dataclass
class DeviceState:
    """What ferry keeps about one device controller between polls and restarts."""

    controller_id: str
    target: str
    next_poll: float = 0.0  # wall-clock time of the next poll
    sleep: float = 0.0  # polling.sleep the server last sent this controller
    status: str = "unknown"  # ok | auth-refused | unreachable | error | unknown
    message: str = ""
    action_id: str = ""  # the device action in hand
    action_state: str = ""  # waiting | offline | flashing | reporting
    action_message: str = ""
    dep_id: int = 0  # its journal deployment, once started
    result: str = ""  # success | failure, once known
    details: list[str] = field(default_factory=list)
    last_action: str = ""  # "<id>: <result>" of the last action closed
    attributes: dict[str, str] = field(default_factory=dict)  # configData last delivered
    node: str = ""  # a radio node's address, for a node controller
    last_poll: float = 0.0  # when the server last answered a poll
    campaign: str = ""  # the campaign key while gathering (ferry.daemon.backend.campaign)
    gathered: float = 0.0  # when the action joined its campaign
    artifact: dict[str, str] = field(default_factory=dict)  # filename, url, sha256

    @property
    def key(self) -> str:
        """The name ``ferry status`` shows it under: target, or target/node."""
        return f"{self.target}/{self.node}" if self.node else self.target

    def row(self) -> dict[str, Any]:
        """The part ``ferry status`` / ``ferry devices`` show."""
        action = ""
        if self.action_id:
            action = f"{self.action_id} {self.action_state}".strip()
        return {"controller_id": self.controller_id, "backend": self.status,
                "backend_message": self.message, "action": action,
                "action_message": self.action_message, "last_action": self.last_action}


def state_path(data_dir: str | Path) -> Path:
    return Path(data_dir) / STATE_FILE


def load_states(data_dir: str | Path) -> dict[str, DeviceState]:
    """The saved device states by controller id; {} when none (or unreadable: the
    server still holds every open action and is asked again)."""
    try:
        raw = json.loads(state_path(data_dir).read_text())
    except (OSError, ValueError):
        return {}
    known = set(DeviceState.__dataclass_fields__)
    out: dict[str, DeviceState] = {}
    for cid, d in (raw.get("devices") or {}).items() if isinstance(raw, dict) else ():
        if isinstance(d, dict) and isinstance(d.get("target"), str):
            out[str(cid)] = DeviceState(**{k: v for k, v in d.items() if k in known})
    return out


def status_rows(config: Config, data_dir: str | Path) -> dict[str, dict[str, Any]]:
    """Per target name (and ``<target>/<node>`` for node controllers): its controller
    id and current action, for ``ferry status`` and ``ferry devices``. Empty when
    device controllers are off."""
    if not config.backend.device_controllers:
        return {}
    try:
        ids = device_ids(config)
    except FerryError as err:
        return {tc.name: {"controller_id": "", "backend": "error",
                          "backend_message": str(err), "action": ""}
                for tc in config.targets}
    saved = load_states(data_dir)
    out = {}
    for cid, tc in ids.items():
        st = saved.get(cid)
        if st is None or st.target != tc.name:
            st = DeviceState(cid, tc.name, status="not polled yet")
        out[tc.name] = st.row()
    try:
        nodes = node_ids(config, discovery.load(data_dir))
    except FerryError:
        nodes = {}
    for cid, (tc, node) in nodes.items():  # "<target>/<node>", after the targets
        st = saved.get(cid)
        if st is None or st.target != tc.name or st.node != node:
            st = DeviceState(cid, tc.name, node=node, status="not polled yet")
        out[st.key] = st.row()
    return out


Log = Callable[[str], None]


def _no_log(_msg: str) -> None:
    pass


def device_settings(settings: DdiSettings, controller_id: str,
                    target_token: str = "") -> DdiSettings:
    """The gateway's settings for a device controller: its id, and the GatewayToken
    (or no token at all on a server that allows anonymous controllers); never the
    gateway's TargetToken, which belongs to the gateway's controller alone. A target
    with a TargetToken of its own (``[[target]] target_token``: goosebit, which knows
    no gateway token) authenticates with that instead."""
    if target_token:
        return replace(settings, controller_id=controller_id, target_token=target_token,
                       gateway_token="")
    return replace(settings, controller_id=controller_id, target_token="")


class DevicePoller:
    """The device controllers of one gateway; :meth:`step` polls those that are due."""

    def __init__(self, config: Config, ctx: Any, *, settings: DdiSettings | None = None,
                 client_factory: Callable[[DdiSettings], DdiClient] | None = None,
                 busy: Callable[[], str] | None = None,
                 factory: TransportFactory | None = None,
                 inspect: Callable[[TargetConfig], str] | None = None,
                 clock: Callable[[], float] = time.time,
                 rng: Callable[[], float] = random.random, log: Log = _no_log,
                 discover: discovery.Discover | None = None) -> None:
        self.config = config
        self.ctx = ctx  # the install Context (journal, config, progress)
        self.ids = device_ids(config)
        self.nodes = node_ids(config, discovery.load(config.gateway.data_dir))
        self.targets: dict[str, TargetConfig] = {
            **self.ids, **{cid: tc for cid, (tc, _node) in self.nodes.items()}}
        base = settings or DdiSettings.from_config(config.backend)
        make = client_factory or DdiClient
        self._base_settings = base
        self._make_client = make
        self.clients = {cid: make(device_settings(base, cid, tc.target_token or ""))
                        for cid, tc in self.targets.items()}
        self.window = config.backend.campaign_window
        self.busy = busy or (lambda: "")
        self.factory = factory
        self.discover = discover or discovery.transport_discover(self._transport)
        self.next_discovery = 0.0  # at the first step
        self.inspect = inspect if inspect is not None else self._inspect
        self.clock = clock
        self.rng = rng
        self.jitter = base.poll_jitter
        self.log = log
        self.path = state_path(config.gateway.data_dir)
        self.per_poll = config.backend.device_polls_per_poll
        self.tokens = float(self.per_poll)
        self.refilled = clock()
        self.interval = 0.0  # the gateway's poll interval, from its runner
        self._turn: float | None = None  # the time of the scheduler turn polling now
        saved = load_states(config.gateway.data_dir)
        self.states: dict[str, DeviceState] = {}
        for cid, tc in self.targets.items():
            node = self.nodes[cid][1] if cid in self.nodes else ""
            st = saved.pop(cid, None)
            self.states[cid] = st if st is not None and st.target == tc.name and \
                st.node == node else DeviceState(cid, tc.name, node=node)
        for cid, st in saved.items():  # no longer in the config: never acted on
            self.log(f"backend: device controller {cid!r} (target {st.target}) is not in "
                     "the config any more; forgetting it"
                     + (f" and its action {st.action_id}" if st.action_id else ""))
        self._save()

    # -- the schedule ---------------------------------------------------------------------

    def gateway_interval(self, seconds: float) -> None:
        """The gateway's current poll interval (the server's sleep for it): the bucket
        refills ``device_polls_per_poll`` tokens per interval."""
        if seconds > 0:
            self.interval = seconds

    def _refill(self, now: float) -> None:
        if self.interval > 0:
            self.tokens = min(float(self.per_poll), self.tokens + (now - self.refilled)
                              * self.per_poll / self.interval)
        self.refilled = now

    def due(self, now: float) -> list[DeviceState]:
        """Devices whose poll is due, the longest-waiting first."""
        return sorted((s for s in self.states.values() if s.next_poll <= now),
                      key=lambda s: (s.next_poll, s.controller_id))

    def step(self) -> float | None:
        """Poll the due devices the budget allows; the time of the next due poll (None
        when the budget is spent until the gateway's next interval refills it)."""
        now = self.clock()
        self._rediscover(now)
        self._refill(now)
        self._turn = now  # polls of one turn count as simultaneous for the campaigns
        try:
            for st in self.due(now):
                if self.tokens < 1.0:
                    break
                self.tokens -= 1.0
                self.poll(st.controller_id)
        finally:
            self._turn = None
        gather = self._campaigns(self.clock())
        if not self.states:
            return None
        nxt = min(s.next_poll for s in self.states.values())
        if self.tokens < 1.0 and self.interval > 0:
            nxt = max(nxt, self.clock() + (1.0 - self.tokens) * self.interval / self.per_poll)
        return nxt if gather is None else min(nxt, gather)

    def _rediscover(self, now: float) -> None:
        """Ask the population targets for their nodes when it is time; a node found for
        the first time becomes a controller (polled in this very turn)."""
        if now < self.next_discovery or not self.config.backend.node_controllers or \
                not any(discovery.discovering(tc) for tc in self.ids.values()):
            return
        self.next_discovery = now + self.config.backend.node_discovery_interval
        known, added = discovery.refresh(self.config, self.discover)
        if not added:
            return
        self.log(f"backend: discovered {len(added)} node(s): {', '.join(added[:10])}"
                 + (" ..." if len(added) > 10 else ""))
        for cid, (tc, node) in node_ids(self.config, known).items():
            if cid in self.states:
                continue
            self.nodes[cid] = (tc, node)
            self.targets[cid] = tc
            self.clients[cid] = self._make_client(
                device_settings(self._base_settings, cid, tc.target_token or ""))
            self.states[cid] = DeviceState(cid, tc.name, node=node)
        self._save()

    def _transport(self, name: str, options: dict[str, Any]) -> Any:
        if self.factory is not None:
            return self.factory(name, options)
        from ferry.proxy.registry import get_transport

        return get_transport(name, options)

    # -- one device -------------------------------------------------------------------------

    def _save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        body = {"devices": {cid: asdict(s) for cid, s in self.states.items()}}
        with open(tmp, "w") as f:
            json.dump(body, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    def target(self, controller_id: str) -> TargetConfig:
        """The device of a controller id; UnknownController for an id the gateway's
        config does not give to any target."""
        tc = self.targets.get(controller_id)
        if tc is None:
            raise UnknownController(f"controller id {controller_id!r} is not a device of this "
                                    "gateway (see `ferry devices`)")
        return tc

    def poll(self, controller_id: str) -> None:
        """One poll of one device controller, and whatever its answer asks for."""
        tc = self.target(controller_id)
        st = self.states[controller_id]
        client = self.clients[controller_id]
        try:
            if st.action_id and st.result:
                self._report(st, client)
            poll = client.poll()
            st.last_poll = self._turn if self._turn is not None else self.clock()
            st.sleep = poll.sleep
            st.next_poll = self.clock() + jittered(poll.sleep, self.jitter, self.rng)
            st.status, st.message = "ok", ""
            self._attributes(st, client, tc, force=bool(poll.config_data_href))
            if poll.cancel_href:
                self._check_link(client, poll.cancel_href)
                self._cancel(st, client, client.cancel_action(poll.cancel_href))
            elif poll.deployment_href:
                self._check_link(client, poll.deployment_href)
                self._deployment(st, client, tc, client.deployment(poll.deployment_href))
            elif st.action_id:
                self.log(f"backend: {controller_id}: action {st.action_id} is gone from the "
                         "server")
                self._clear(st)
        except UnknownController as exc:
            st.status, st.message = "error", str(exc)
            self.log(f"backend: {controller_id}: {exc}")
            self._retry_later(st)
        except DeploymentRefused as refusal:
            self.log(f"backend: {controller_id}: refused {refusal.kind} "
                     f"{refusal.raw_id[:60]!r}: {refusal}")
            try:
                client.refuse(refusal)
            except DdiError as exc:
                self.log(f"backend: {controller_id}: refusal not delivered: {exc}")
        except DdiHttpError as exc:
            if exc.status in (401, 403):
                st.status = "auth-refused"
                token = "GatewayToken" if self.config.backend.gateway_token else "no token"
                st.message = (f"server refused {controller_id} ({exc.status}) with {token}; "
                              "enable gateway security tokens on the tenant and check "
                              "[backend] gateway_token")
            else:
                st.status, st.message = "error", str(exc)
            self._retry_later(st)
        except DdiError as exc:
            st.status, st.message = "unreachable", str(exc)
            self._retry_later(st)
        except Exception as exc:  # a bug or a transport's surprise: this device waits
            st.status, st.message = "error", f"{type(exc).__name__}: {exc}"[:300]
            self.log(f"backend: {controller_id}: {st.message}")
            self._retry_later(st)
        finally:
            self._save()

    def _retry_later(self, st: DeviceState) -> None:
        wait = st.sleep or self.interval or 300.0
        st.next_poll = self.clock() + jittered(wait, self.jitter, self.rng)

    def _check_link(self, client: DdiClient, href: str) -> None:
        """A deploymentBase or cancelAction link must lie under this controller's own
        path: the server never makes one device's poll act on another controller's
        action."""
        path = unquote(urlsplit(href).path) if "://" in href[:16] else ""
        own = unquote(urlsplit(client.base).path)
        if path and not path.startswith(own + "/"):
            raise UnknownController(f"server linked {client.settings.controller_id}'s "
                                    "deployment into another controller's path; refused")

    # -- attributes -------------------------------------------------------------------------

    def attributes(self, tc: TargetConfig) -> dict[str, str]:
        """The device's configData: goosebit's three keys (matched against the bundle's
        hardware-compatibility, which for a device bundle names the gateway), then
        ferry's own."""
        from ferry.daemon.backend.health import latest_nodes

        j = self.ctx.journal
        version, result, message = "", "never", ""
        for dep in j.history(limit=50):  # newest first
            rec = next((r for r in j.targets(dep.id) if r.name == tc.name), None)
            if rec is not None:
                version = rec.version or ""
                result = {"ok": "success", "failed": "failure"}.get(rec.state, rec.state)
                message = rec.message or ""
                break
        data = {
            "hw_boardname": "default", "hw_revision": self.config.gateway.compatible,
            "sw_version": version or "unknown",
            "ferry.gateway": self.config.backend.controller_id or "",
            "ferry.target": tc.name, "ferry.transport": tc.transport,
            "ferry.address": tc.address, "ferry.image_id": tc.image_id or "",
            "ferry.version": version, "ferry.last_result": result,
            "ferry.last_message": message[:200],
        }
        nodes = latest_nodes(j, 20).get(tc.name, [])
        if nodes:
            bad = sum(1 for n in nodes if n.state not in _OK)
            data["ferry.nodes"] = f"{len(nodes)} node(s), {bad} failed"
        return data

    def node_attributes(self, tc: TargetConfig, node: str) -> dict[str, str]:
        """A node controller's configData: its group's keys, its own address and the
        result of the last flash it took part in."""
        from ferry.daemon.backend.health import latest_nodes

        rec = next((n for n in latest_nodes(self.ctx.journal, 20).get(tc.name, [])
                    if n.node == node), None)
        version = (rec.version or "") if rec is not None else ""
        result = "never" if rec is None else \
            {"ok": "success", "failed": "failure"}.get(rec.state, rec.state)
        return {
            "hw_boardname": "default", "hw_revision": self.config.gateway.compatible,
            "sw_version": version or "unknown",
            "ferry.gateway": self.config.backend.controller_id or "",
            "ferry.target": tc.name, "ferry.transport": tc.transport,
            "ferry.group": tc.address, "ferry.address": node,
            "ferry.image_id": tc.image_id or "", "ferry.version": version,
            "ferry.last_result": result,
            "ferry.last_message": ((rec.message or "") if rec is not None else "")[:200],
        }

    def _attributes(self, st: DeviceState, client: DdiClient, tc: TargetConfig, *,
                    force: bool) -> None:
        data = self.node_attributes(tc, st.node) if st.node else self.attributes(tc)
        if not force and st.attributes == data:
            return
        client.put_config_data(data)
        st.attributes = data

    # -- actions -------------------------------------------------------------------------

    def _feedback(self, st: DeviceState, client: DdiClient, execution: str,
                  details: list[str], progress: tuple[int, int] | None = None) -> None:
        try:
            client.feedback(st.action_id, execution, "none", details, progress=progress)
        except DdiError as exc:
            self.log(f"backend: {st.controller_id}: feedback {execution} not delivered: {exc}")

    def _hold(self, st: DeviceState, client: DdiClient, state: str, message: str,
              execution: str) -> None:
        """Keep the action open with a reason; tell the server once per new reason."""
        if (st.action_state, st.action_message) != (state, message):
            st.action_state, st.action_message = state, message
            self._save()
            self._feedback(st, client, execution, [message])

    def _clear(self, st: DeviceState) -> None:
        st.action_id, st.action_state, st.action_message = "", "", ""
        st.dep_id, st.result, st.details = 0, "", []
        st.campaign, st.gathered, st.artifact = "", 0.0, {}

    def _deployment(self, st: DeviceState, client: DdiClient, tc: TargetConfig,
                    dep: Deployment) -> None:
        if st.action_id != dep.action_id:
            self._clear(st)
            st.action_id = dep.action_id
            self._save()
        if st.action_state == GATHERING:  # waits for its campaign (see step)
            return
        bundles = [a for c in dep.chunks for a in c.artifacts
                   if a.filename.endswith(BUNDLE_SUFFIXES)]
        if not bundles:
            names = ", ".join(a.filename for c in dep.chunks for a in c.artifacts) or "none"
            self._close(st, client, "failure",
                        [f"no ferry bundle (.swu) in this deployment (artifacts: {names})"])
            return
        if len(bundles) > 1:
            self._close(st, client, "failure",
                        [f"{len(bundles)} bundles in one device deployment "
                         f"({', '.join(b.filename for b in bundles)}); a device takes one "
                         "target-only bundle per action"])
            return
        started = self._journaled(st)
        if started is not None:  # a restart cut this action's deployment short
            if started.result is None:
                from ferry.daemon.install.devicedeploy import run

                try:
                    run(self.ctx, started.id, factory=self.factory)
                except FerryError as exc:
                    self.log(f"backend: {st.controller_id}: {exc}")
            st.dep_id = started.id
            self._outcome(st, client, tc, bundles[0].filename)
            return
        if not dep.download_allowed or not dep.install_allowed:
            why = ("waiting for the maintenance window"
                   if dep.maintenance_window == "unavailable"
                   else "waiting for the server's permission to install")
            self._hold(st, client, WAITING, why, "scheduled")
            return
        busy = self.busy()
        if not busy:
            pending = self.ctx.journal.pending()
            if pending is not None:
                busy = f"deployment {pending.id} is {pending.state}"
        if busy:
            self._hold(st, client, WAITING, f"waiting: the gateway is busy ({busy}); the "
                       "device deployment starts when it is done", "scheduled")
            return
        offline = self.inspect(tc)
        if offline:
            self._hold(st, client, OFFLINE, f"device {tc.name} is offline ({offline}); "
                       "ferry tries again at its next poll", "proceeding")
            return
        where = medium(tc)
        if where:
            self._gather(st, client, where, bundles[0])
            return
        self._flash(st, client, tc, bundles[0].filename, bundles[0].url)

    # -- campaigns ------------------------------------------------------------------------

    def _gather(self, st: DeviceState, client: DdiClient, where: str, bundle: Any) -> None:
        """Join (or open) the campaign of this artifact on this medium; flashed by
        :meth:`_campaigns` when its window ends or every peer was polled."""
        st.campaign = campaign.campaign_key(bundle.sha256, where, st.controller_id)
        st.gathered = st.last_poll or self.clock()  # the poll that showed the action
        st.artifact = {"filename": bundle.filename, "url": bundle.url,
                       "sha256": bundle.sha256}
        self._hold(st, client, GATHERING,
                   f"gathering: {bundle.filename} goes out in one campaign with the other "
                   f"devices on {where.split(':', 1)[0]} that get it, within "
                   f"{self.window:.0f} s", "scheduled")

    def _campaigns(self, now: float) -> float | None:
        """Flash every campaign that is ready; the time the next one will be."""
        nxt: float | None = None
        groups = campaign.gathered(self.states.values())
        for members in groups.values():
            where = medium(self.targets[members[0].controller_id])
            peers = [s for cid, s in self.states.items() if medium(self.targets[cid]) == where]
            if campaign.ready(members, peers, self.window, now):
                self._run_campaign([self.states[m.controller_id] for m in members])
            else:
                at = campaign.due_at(members, self.window)
                nxt = at if nxt is None else min(nxt, at)
        return nxt

    def _run_campaign(self, members: list[DeviceState]) -> None:
        from ferry.daemon.install.devicedeploy import DeviceBusy, start_campaign

        art = members[0].artifact
        name, url = art.get("filename", ""), art.get("url", "")
        waiting = self.busy()
        if waiting:
            for st in members:
                self._regather(st, f"waiting: the gateway is busy ({waiting}); the "
                               "campaign starts when it is done")
            return
        why = link_problem(url)
        if why:
            for st in members:
                self._close_quiet(st, "failure", [f"bundle {name}: its link {why}"])
            return
        text = f"flashing {name} in one campaign for {campaign.describe(members)}"
        self.log(f"backend: {text}")
        for st in members:
            st.action_state, st.action_message = FLASHING, text
        self._save()
        for st in members:
            self._feedback(st, self.clients[st.controller_id], "proceeding", [text])
        ctx = self.ctx
        before = ctx.progress
        last = [-1]

        def progress(phase: str, done: int, total: int) -> None:
            if before is not None:
                before(phase, done, total)
            if not phase.startswith("flash:") or total <= 0:
                return
            pct = done * 100 // total
            if pct // 25 > last[0]:
                last[0] = pct // 25
                for st in members:
                    self._feedback(st, self.clients[st.controller_id], "proceeding",
                                   [f"campaign: {pct}% ({phase.split(':', 2)[-1]})"],
                                   (pct, 100))

        ctx.progress = progress
        actions = [f"{st.controller_id}:{st.action_id}" for st in members]
        try:
            dep_id = start_campaign(ctx, campaign.scope(members), url, actions=actions,
                                    factory=self.factory)
        except DeviceBusy as exc:
            for st in members:
                self._regather(st, f"waiting: {exc}")
            return
        except FerryError as exc:
            for st in members:
                self._close_quiet(st, "failure", [f"bundle {name}: {exc}"])
            return
        except Exception as exc:  # a bug or a transport's surprise: each member's next
            # poll finds the journaled deployment (or gathers again); the others go on
            self.log(f"backend: campaign {campaign.describe(members)}: "
                     f"{type(exc).__name__}: {exc}"[:300])
            self._save()
            return
        finally:
            ctx.progress = before
        for st in members:
            st.dep_id = dep_id
            try:
                self._outcome(st, self.clients[st.controller_id],
                              self.targets[st.controller_id], name)
            except DdiError as exc:  # kept; the device's next poll delivers it
                self.log(f"backend: {st.controller_id}: final result not delivered: {exc}")
        self._save()

    def _regather(self, st: DeviceState, message: str) -> None:
        """Back to waiting: the device's next poll gathers it again."""
        st.campaign, st.gathered = "", 0.0
        self._hold(st, self.clients[st.controller_id], WAITING, message, "scheduled")

    def _close_quiet(self, st: DeviceState, result: str, details: list[str]) -> None:
        try:
            self._close(st, self.clients[st.controller_id], result, details)
        except DdiError as exc:
            self.log(f"backend: {st.controller_id}: final result not delivered: {exc}")

    def _inspect(self, tc: TargetConfig) -> str:
        """"" when the device answers, else why not (the transport's own look)."""
        from ferry.daemon.install.proxyphase import make_target
        from ferry.proxy.registry import get_transport

        try:
            make = self.factory or get_transport
            state = make(tc.transport, dict(tc.options)).inspect(make_target(tc, {}, False))
        except (FerryError, OSError) as exc:
            return str(exc)[:160] or type(exc).__name__
        return "" if state.reachable else "not reachable"

    def _flash(self, st: DeviceState, client: DdiClient, tc: TargetConfig, name: str,
               url: str) -> None:
        from ferry.daemon.install.devicedeploy import DeviceBusy, start

        why = link_problem(url)
        if why:  # parse_deployment refused these already; the pipeline never opens a path
            self._close(st, client, "failure", [f"bundle {name}: its link {why}"])
            return
        st.action_state, st.action_message = FLASHING, f"{name} to {tc.name}"
        self._save()
        self._feedback(st, client, "proceeding", [f"flashing {name} to {tc.name}"])
        ctx = self.ctx
        before = ctx.progress
        last = [-1]

        def progress(phase: str, done: int, total: int) -> None:
            if before is not None:
                before(phase, done, total)
            if not phase.startswith("flash:") or total <= 0:
                return
            pct = done * 100 // total
            if pct // 25 > last[0]:
                last[0] = pct // 25
                self._feedback(st, client, "proceeding",
                               [f"{tc.name}: {pct}% ({phase.split(':', 2)[-1]})"], (pct, 100))

        ctx.progress = progress
        try:
            dep_id = start(ctx, tc.name, url, external_id=f"{st.controller_id}:{st.action_id}",
                           factory=self.factory)
        except DeviceBusy as exc:
            self._hold(st, client, WAITING, f"waiting: {exc}", "scheduled")
            return
        except FerryError as exc:
            latest = ctx.journal.latest()
            st.dep_id = latest.id if latest is not None and \
                latest.external_id == f"{st.controller_id}:{st.action_id}" else 0
            st.details = [f"bundle {name}: {exc}"]
            self._close(st, client, "failure", st.details)
            return
        finally:
            ctx.progress = before
        st.dep_id = dep_id
        self._outcome(st, client, tc, name)

    def _outcome(self, st: DeviceState, client: DdiClient, tc: TargetConfig,
                 name: str) -> None:
        from ferry.daemon.backend.outcomes import node_outcomes, target_outcomes

        j = self.ctx.journal
        dep = j.get(st.dep_id)
        if dep.result == "cancelled":  # superseded by a gateway install: try again later
            st.dep_id = 0
            self._hold(st, client, WAITING, f"waiting: {dep.error or 'superseded'}",
                       "scheduled")
            return
        lines = [f"bundle {name}: version {dep.version or '?'} for {st.key}"]
        actions = dep.info.get("actions")
        if isinstance(actions, list):  # a campaign: this action's own node or target
            ok, own = campaign.member_outcome(j, dep.id, tc.name, st.node)
            lines += own
            lines.append(f"campaign: one flash for {len(actions)} action(s), deployment "
                         f"{dep.id}")
            self._close(st, client, "success" if ok else "failure", lines)
            return
        lines += [t.line() for t in target_outcomes(j, dep.id)]
        lines += [t.line() for t in node_outcomes(j, dep.id)]
        if dep.result != "success" and dep.error:
            lines.append(f"failure: {dep.error}")
        self._close(st, client, "success" if dep.result == "success" else "failure", lines)

    def _journaled(self, st: DeviceState) -> Any:
        """This action's deployment in the journal, if one was started and not
        superseded (a cancelled one is started again)."""
        from ferry.daemon.install.devicedeploy import DEVICE_ORIGIN

        key = f"{st.controller_id}:{st.action_id}"
        for dep in self.ctx.journal.history(limit=50):
            if dep.origin == DEVICE_ORIGIN and (dep.external_id == key
                                                or key in (dep.info.get("actions") or ())):
                return None if dep.result == "cancelled" else dep
        return None

    def _close(self, st: DeviceState, client: DdiClient, result: str,
               details: list[str]) -> None:
        st.result, st.details, st.action_state = result, details, REPORTING
        st.action_message = f"final result {result} not yet delivered"
        self._save()
        self._report(st, client)

    def _report(self, st: DeviceState, client: DdiClient) -> None:
        """The final feedback; kept and retried at the next poll until delivered."""
        client.feedback(st.action_id, "closed", st.result, st.details)
        st.last_action = f"{st.action_id}: {st.result}"
        self.log(f"backend: {st.controller_id}: action {st.action_id} closed, {st.result}")
        self._clear(st)
        self._save()
        tc = self.targets.get(st.controller_id)
        if tc is not None:
            try:
                self._attributes(st, client, tc, force=False)
            except DdiError as exc:
                self.log(f"backend: {st.controller_id}: configData not delivered: {exc}")

    def _cancel(self, st: DeviceState, client: DdiClient, cancel: CancelRequest) -> None:
        """A device action is cancelled unless it is flashing (the flash runs to its
        end in this thread, so a cancel only ever meets a waiting or finished one)."""
        if st.action_id == cancel.stop_id and st.dep_id:
            client.cancel_feedback(cancel.action_id, "rejected", "failure",
                                   [f"action {cancel.stop_id} already flashed the device; "
                                    "it reports its result"])
            return
        if st.action_id == cancel.stop_id:
            self._clear(st)
        client.cancel_feedback(cancel.action_id, "closed", "success",
                               [f"action {cancel.stop_id} cancelled; nothing was flashed"])

    def status(self) -> dict[str, dict[str, Any]]:
        return {s.key: s.row() for s in self.states.values()}


class UnknownController(DdiError):
    """A controller id (or a link into one) that is no device of this gateway: refused,
    logged and shown in ``ferry status``; no feedback goes to a controller ferry does
    not own."""


def run_loop(step_gateway: Callable[[], float], devices: DevicePoller | None,
             stop: threading.Event, *, clock: Callable[[], float] = time.time,
             log: Log = _no_log) -> None:
    """ferryd's backend loop: the gateway's runner step when it is due, then the
    device polls the budget allows, then sleep until the nearer of the two.

    One thread for both, on purpose: a device deployment never starts while the
    gateway's runner has an action in hand (``busy``), and the gateway's next step
    waits for a device flash to end."""
    gw_due = 0.0
    while not stop.is_set():
        now = clock()
        if now >= gw_due:
            try:
                sleep = step_gateway()
                if devices is not None:  # the server's sleep, never an error's retry
                    devices.gateway_interval(sleep)
            except FerryError as exc:
                log(f"backend: {exc}")
                sleep = 30.0
            gw_due = clock() + sleep
        nxt = gw_due
        if devices is not None:
            try:
                dev = devices.step()
            except Exception as exc:  # a device's trouble never stops the gateway's polls
                log(f"backend: devices: {type(exc).__name__}: {exc}")
                dev = None
            if dev is not None:
                nxt = min(nxt, dev)
        if stop.wait(max(0.0, nxt - clock())):
            break
