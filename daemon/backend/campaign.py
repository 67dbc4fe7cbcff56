"""Campaigns: several device actions with one image on one broadcast medium, flashed once.

A hawkBit rollout assigns one distribution set to many targets at once: 100 node
controllers get 100 actions whose bundle artifact has the same sha256. Flashed one by
one, a LoRa group would hear 100 multicast sessions (each a full set of fragments at
a 10 % duty cycle) and a Zigbee coordinator would stage the same OTA file 100 times.
Radio is the scarce resource, so ferry gathers such actions and runs them as one
campaign, then reports each node's own result to its own action.

- Which actions go together: the same artifact sha256 (the server's hash of the
  bundle, so "same image" is the server's word, checked again by the bundle's
  signature and per-image hashes) on the same :func:`medium`. An artifact without a
  sha256 never joins another action.
- How long ferry gathers: from the first action's arrival, ``[backend]
  campaign_window`` seconds at most, and no longer than it takes to poll every other
  controller on that medium once (:func:`ready`): by then each peer has had its chance
  to show its action, and waiting more only delays the flash. The poll budget
  (``device_polls_per_poll``) bounds how long that is, so the window is "bounded by
  the poll schedule" in both directions.
- What is flashed: one deployment for the union of the members (:func:`scope`): a
  LoRa target with only the nodes that have actions (a node controller) or all of
  them (the group's own controller had one), a Zigbee target per member node.
- What each action hears: :func:`member_outcome`, its own node's row (or its
  target's), never the campaign's overall result: one dead node fails its own action
  only.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any, Protocol

from ferry.daemon.backend.outcomes import node_outcomes, target_outcomes
from ferry.daemon.config import TargetConfig
from ferry.daemon.journal import Journal

GATHERING = "gathering"  # action state: waiting for the campaign window


class Member(Protocol):
    """What the campaign needs of a device state (devices.DeviceState has it)."""

    controller_id: str
    target: str
    node: str
    action_id: str
    action_state: str
    campaign: str
    gathered: float
    last_poll: float


def medium(tc: TargetConfig) -> str:
    """The broadcast medium a target is flashed over; "" for a unicast transport.

    lora: the multicast group (its id on the network server's application): the nodes
    of one group hear one session. zigbee: the coordinator (Zigbee2MQTT's broker and
    base topic, or the zigpy adapter's serial port): its nodes share one staged OTA
    image, and with zigpy one broadcast notify."""
    o = tc.options
    if tc.transport == "lora":
        server = o.get("api_url") or f"{o.get('mqtt_host', '127.0.0.1')}:{o.get('mqtt_port', 1883)}"
        return f"lora:{server}/{o.get('application_id', '')}/{tc.address}"
    if tc.transport == "zigbee" and o.get("adapter") == "zigpy":
        return f"zigbee:zigpy:{o.get('port', '')}"
    if tc.transport == "zigbee":
        return (f"zigbee:{o.get('mqtt_host', '127.0.0.1')}:{o.get('mqtt_port', 1883)}/"
                f"{o.get('base_topic', 'zigbee2mqtt')}")
    return ""


def campaign_key(sha256: str, where: str, controller_id: str) -> str:
    """The key of the campaign an action joins: its artifact hash on its medium; an
    artifact without a hash is a campaign of its own."""
    if not sha256:
        return f"{where}#{controller_id}"
    return f"{sha256.lower()}@{where}"


def ready(members: Sequence[Member], peers: Iterable[Member], window: float,
          now: float) -> bool:
    """Flash now: the window since the first member joined is over, or every peer on
    the medium (members included) has been polled since then."""
    if not members:
        return False
    first = min(m.gathered for m in members)
    if now >= first + window:
        return True
    return all(p.last_poll >= first for p in peers)


def due_at(members: Sequence[Member], window: float) -> float:
    """When the window of these members ends."""
    return min(m.gathered for m in members) + window


def gathered(states: Iterable[Member]) -> dict[str, list[Member]]:
    """Members gathering, by campaign key, in a stable order."""
    out: dict[str, list[Member]] = defaultdict(list)
    for s in states:
        if s.action_state == GATHERING and s.campaign:
            out[s.campaign].append(s)
    for members in out.values():
        members.sort(key=lambda m: m.controller_id)
    return dict(out)


def scope(members: Sequence[Member]) -> dict[str, list[str] | None]:
    """Per target name: the nodes to flash (sorted), or None for all its nodes (its
    own controller's action is in the campaign, or it has no nodes of its own)."""
    out: dict[str, list[str] | None] = {}
    for m in members:
        if not m.node:
            out[m.target] = None
        elif m.target not in out:
            out[m.target] = [m.node]
        else:
            have = out[m.target]
            if have is not None and m.node not in have:
                have.append(m.node)
    return {t: (sorted(n) if n is not None else None) for t, n in out.items()}


def member_outcome(journal: Journal, dep_id: int, target: str, node: str
                   ) -> tuple[bool, list[str]]:
    """(success, details lines) for one action of a campaign deployment.

    A node's action: its node row (it rebuilt the image, or why not); before any node
    row (the bundle had no image for the target, the transport failed at the start)
    the target's row. A target's action: its target row and all its node lines."""
    targets = {t.name: t for t in target_outcomes(journal, dep_id)}
    own = targets.get(target)
    if node:
        name = f"{target}/{node}"
        row = next((n for n in node_outcomes(journal, dep_id, limit=1 << 30)
                    if n.name == name), None)
        if row is not None:
            return row.ok, [row.line()]
        if own is not None:
            return False, [f"target {name}: {'not reached' if own.ok else 'failed'}: "
                           f"{own.message or 'no result for this node'}"]
        return False, [f"target {name}: no result"]
    if own is None:
        return False, [f"target {target}: no result"]
    lines = [own.line()] + [n.line() for n in node_outcomes(journal, dep_id)
                            if n.name.startswith(f"{target}/")]
    return own.ok, lines


def describe(members: Sequence[Any]) -> str:
    """"3 action(s): gw1.lora-a.0000...01, ..." for feedback and logs."""
    ids = [m.controller_id for m in members]
    shown = ", ".join(ids[:4]) + (f", +{len(ids) - 4} more" if len(ids) > 4 else "")
    return f"{len(ids)} action(s): {shown}"
