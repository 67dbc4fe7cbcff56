"""Radio nodes a transport discovered, kept so that each is a controller of its own.

A Zigbee population target (``address = "*"``: every node its Zigbee2MQTT knows) has
no node list in the config: nodes join and leave the network without the gateway's
config changing. With ``[backend] node_controllers`` the device poller asks the
target's transport (``discover``) at start and every ``node_discovery_interval``
seconds, and each node it finds gets a controller ``<target id>.<ieee>``
(ferry.daemon.backend.controllers), so an operator can assign firmware to one node, a
group or all of them with the backend's own tools.

Discovery only adds: a node that does not answer one discovery (asleep, out of range)
keeps its controller and its history on the server. The list lives in
``<data_dir>/discovered-nodes.json`` (replaced atomically), so a restart, ``ferry
status`` and ``ferry devices`` see the same controllers as the running poller. A
discovery that fails keeps the list as it was and says why in the log.

Nothing discovered chooses a path or a device the config does not allow: a node
address only ever reaches its own target's transport (as the ``devices`` option of a
population target), and it is made safe for a controller id like any address.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ferry.daemon.config import Config, TargetConfig

log = logging.getLogger(__name__)

FILE = "discovered-nodes.json"
POPULATION = "*"  # a Zigbee target's address: every node of its coordinator

Discover = Callable[[TargetConfig], list[str]]


def discovering(tc: TargetConfig) -> bool:
    """Whether the target's nodes come from discovery rather than the config."""
    return tc.transport == "zigbee" and tc.address == POPULATION


def path(data_dir: str | Path) -> Path:
    return Path(data_dir) / FILE


def load(data_dir: str | Path) -> dict[str, list[str]]:
    """Target name -> the node addresses discovered for it (lower case)."""
    try:
        raw = json.loads(path(data_dir).read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as err:
        log.warning("%s is unreadable (%s); discovering again", path(data_dir), err)
        return {}
    if not isinstance(raw, dict):
        return {}
    return {str(k): [str(n).lower() for n in v if isinstance(n, str) and n.strip()]
            for k, v in raw.items() if isinstance(v, list)}


def save(data_dir: str | Path, nodes: dict[str, list[str]]) -> None:
    p = path(data_dir)
    tmp = p.with_suffix(".tmp")
    with open(tmp, "w") as f:
        json.dump(nodes, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, p)


def transport_discover(factory: Callable[[str, dict[str, Any]], Any]) -> Discover:
    """Discovery through the target's transport (``discover()``: Target per node)."""
    def run(tc: TargetConfig) -> list[str]:
        transport = factory(tc.transport, dict(tc.options))
        return [t.address.strip().lower() for t in transport.discover() if t.address.strip()]
    return run


def refresh(config: Config, discover: Discover) -> tuple[dict[str, list[str]], list[str]]:
    """Ask every discovering target for its nodes; returns (all nodes by target, the
    addresses that are new as "<target>/<node>"). Saved when anything was added."""
    known = load(config.gateway.data_dir)
    added: list[str] = []
    for tc in config.targets:
        if not discovering(tc):
            continue
        try:
            found = discover(tc)
        except Exception as err:  # a coordinator that does not answer: keep what we had
            log.warning("discovering the nodes of %s failed: %s", tc.name, err)
            continue
        have = known.setdefault(tc.name, [])
        for node in found:
            if node not in have:
                have.append(node)
                added.append(f"{tc.name}/{node}")
    if added:
        save(config.gateway.data_dir, known)
    return known, added
