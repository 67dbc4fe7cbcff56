"""Journal rows as lines of a DDI action's final details: one per target, one per node.

Shared by the gateway's runner (ferry.daemon.backend.pipeline_adapter) and the device
controllers (ferry.daemon.backend.devices), so an operator reads a node's result the
same way whichever controller's action carried it.
"""

from __future__ import annotations

from typing import Any

from ferry.daemon.backend.runner import TargetOutcome
from ferry.daemon.journal import Journal

OK_STATES = ("ok", "skipped")
# Node lines in one outcome's details: hawkBit keeps at most 50 messages per action
# status (hawkbit.server.security.dos.maxMessagesPerActionStatus), and the bundle and
# target lines need room too. Failing nodes come first; the rest are counted.
MAX_NODE_LINES = 24


def target_outcomes(journal: Journal, dep_id: int) -> list[TargetOutcome]:
    """One outcome per target row of deployment ``dep_id``."""
    return [TargetOutcome(r.name, r.state in OK_STATES, r.version or "", r.message or "",
                          skipped=r.state == "skipped") for r in journal.targets(dep_id)]


def node_outcomes(journal: Journal, dep_id: int,
                  limit: int = MAX_NODE_LINES) -> list[TargetOutcome]:
    """One details line per radio node ("target <group>/<node>: ok version ..."),
    failing nodes first, at most ``limit`` lines; one more line per group counts the
    nodes left out, so the feedback always accounts for every node."""
    by_target: dict[str, list[Any]] = {}
    for n in journal.nodes(dep_id):
        by_target.setdefault(n.target, []).append(n)
    out: list[TargetOutcome] = []
    left = limit
    for target, nodes in by_target.items():
        nodes.sort(key=lambda n: (n.state in OK_STATES, n.node))
        shown, rest = nodes[:max(left, 0)], nodes[max(left, 0):]
        left -= len(shown)
        out.extend(TargetOutcome(f"{target}/{n.node}", n.state in OK_STATES,
                                 n.version or "", n.message or "",
                                 skipped=n.state == "skipped") for n in shown)
        if rest:
            bad = sum(1 for n in rest if n.state not in OK_STATES)
            out.append(TargetOutcome(
                f"{target}/*", bad == 0, "",
                f"{len(rest)} more node(s) not listed, {bad} of them failed"))
    return out
