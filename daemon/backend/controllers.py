"""DDI controller ids for the devices behind the gateway.

With ``[backend] device_controllers`` on, every ``[[target]]`` is a controller of its
own on the DDI server, so an operator sees and updates each MCU with the server's own
tools. Its id is derived from the gateway's so that one look at a list of targets tells
which gateway a device hangs off, and so that it is *stable*: the same config gives the
same id on every start and every ferry version, since the server keeps a device's
history (actions, attributes) under that id and a changed id is a new device.

- default: ``<gateway controller_id>.<target name>`` (``gw-0042.mcu0``);
- per target: ``controller_id = "..."`` in its ``[[target]]`` (a device that moves to
  another gateway keeps its id that way);
- only letters, digits, '.', '_' and '-', at most 64 characters: hawkBit refuses
  whitespace and keeps 64 characters in older releases (``Target.CONTROLLER_ID_MAX_SIZE``),
  and every server puts the id in a URL path. A target name with other characters is
  mapped to '_'; a derived id over 64 characters keeps its first 55 and a digest of the
  whole, so two long names never share an id;
- radio nodes: ``<target's id>.<node address>`` with the address reduced the same way
  (``gw-0042.lora-a.70b3d57ed0000001``); with ``[backend] node_controllers`` each node
  a LoRa target lists (option ``devices``), and each node a Zigbee population target
  (``address = "*"``) lists or discovered (ferry.daemon.backend.discovery), is polled as
  a controller of its own (:func:`node_ids`), so a rollout gives each node its own
  action and ferry can run them as one campaign (ferry.daemon.backend.campaign).

Two targets whose ids come out equal, or equal to the gateway's, are refused
(:class:`ControllerIdClash`) before anything is polled: one controller must never
receive two devices' deployments.
"""

from __future__ import annotations

import hashlib
import re

from ferry.daemon.config import CONTROLLER_ID_MAX, Config, TargetConfig, controller_id_problem
from ferry.errors import FerryError

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
_DIGEST = 8  # hex digits of sha256 kept when an id is cut


class ControllerIdClash(FerryError):
    exit_code = 2


def _fit(text: str) -> str:
    if len(text) <= CONTROLLER_ID_MAX:
        return text
    tag = hashlib.sha256(text.encode()).hexdigest()[:_DIGEST]
    return f"{text[:CONTROLLER_ID_MAX - _DIGEST - 1]}-{tag}"


def safe_part(text: str) -> str:
    """A name or an address as part of an id: unsafe characters become '_'."""
    return _UNSAFE.sub("_", text) or "_"


def device_controller_id(gateway_id: str, target: TargetConfig) -> str:
    """The target's own ``controller_id`` when set (checked when the config loads),
    else ``<gateway_id>.<name>`` made safe and cut to 64 characters."""
    if target.controller_id:
        return target.controller_id
    return _fit(f"{gateway_id}.{safe_part(target.name)}")


def node_controller_id(device_id: str, node: str) -> str:
    """A radio node's id under its target's: ``<device id>.<node address>``, lower
    case (DevEUIs and IEEE addresses are written both ways)."""
    return _fit(f"{device_id}.{safe_part(node.strip().lower().removeprefix('0x'))}")


def device_ids(config: Config) -> dict[str, TargetConfig]:
    """Every target by its controller id, in config order. Raises ControllerIdClash
    when two ids are equal (or one equals the gateway's), naming both."""
    gateway_id = config.backend.controller_id or ""
    out: dict[str, TargetConfig] = {}
    for tc in config.targets:
        cid = device_controller_id(gateway_id, tc)
        why = controller_id_problem(cid)
        if why:  # a derived id is always safe; this guards a change to the rule above
            raise ControllerIdClash(f"target {tc.name}: controller id {cid!r} {why}")
        if cid == gateway_id:
            raise ControllerIdClash(f"target {tc.name}: controller id {cid!r} is the "
                                    "gateway's own; give the target another controller_id")
        if cid in out:
            raise ControllerIdClash(
                f"targets {out[cid].name} and {tc.name} both get controller id {cid!r}; "
                "set controller_id in one of their [[target]] sections")
        out[cid] = tc
    return out


def has_nodes(tc: TargetConfig) -> bool:
    """A target that stands for radio nodes of its own: a LoRa multicast group, a Zigbee
    population (address "*")."""
    return tc.transport == "lora" or (tc.transport == "zigbee" and tc.address == "*")


def target_nodes(tc: TargetConfig, discovered: list[str] | None = None) -> list[str]:
    """The node addresses a target lists (option ``devices``), then those discovered
    for it, lower case, each once."""
    if not has_nodes(tc):
        return []
    raw = str(tc.options.get("devices", ""))
    out = [n.strip().lower() for n in raw.split(",") if n.strip()]
    for node in discovered or ():
        if node not in out:
            out.append(node)
    return out


def node_ids(config: Config, discovered: dict[str, list[str]] | None = None
             ) -> dict[str, tuple[TargetConfig, str]]:
    """Every listed (or ``discovered``: target name -> addresses) radio node by its
    controller id, (target, node address), when ``[backend] node_controllers`` is on;
    {} otherwise. A node id equal to a target's or the gateway's raises
    ControllerIdClash like two targets' would."""
    if not config.backend.node_controllers:
        return {}
    targets = device_ids(config)
    taken = set(targets) | {config.backend.controller_id or ""}
    out: dict[str, tuple[TargetConfig, str]] = {}
    for tid, tc in targets.items():
        for node in target_nodes(tc, (discovered or {}).get(tc.name)):
            cid = node_controller_id(tid, node)
            if cid in taken or cid in out:
                raise ControllerIdClash(
                    f"target {tc.name}: node {node} gets controller id {cid!r}, which "
                    "another target or node has; set controller_id on the target")
            out[cid] = (tc, node)
    return out
