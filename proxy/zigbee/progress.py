"""Per-node OTA progress and where it is kept.

The proxy must not know the daemon's journal, so the server talks to a
``ProgressStore`` Protocol; ``SqliteProgressStore`` is a ready implementation the
daemon can point at a file on its data partition (its own table, WAL mode). A restart
loads every node's record and carries on: the node itself drives the file offset
(client-driven protocol), so the record only has to say who was where, and a record
that lags by one checkpoint is harmless.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

# States a node goes through, in order; "failed" and "skipped" end it early.
IDLE = "idle"  # seen, nothing offered
OFFERED = "offered"  # Query Next Image answered with an image
DOWNLOADING = "downloading"
UPGRADING = "upgrading"  # Upgrade End answered; waiting for it to boot the image
DONE = "done"  # it queried again reporting the new version
SKIPPED = "skipped"  # already on this (or a newer) version
FAILED = "failed"

FINAL_STATES = frozenset({DONE, SKIPPED, FAILED})


@dataclass
class NodeProgress:
    node: str
    state: str = IDLE
    manufacturer_code: int = 0
    image_type: int = 0
    hardware_version: int | None = None
    current_version: int = 0  # as the node last reported it
    target_version: int = 0
    offset: int = 0
    size: int = 0
    bytes_served: int = 0  # image bytes sent, retransmissions included
    attempts: int = 0
    started: float = 0.0
    updated: float = 0.0
    finished: float = 0.0
    message: str = ""
    extra: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> NodeProgress:
        return cls(**json.loads(text))


class ProgressStore(Protocol):
    def load(self) -> dict[str, NodeProgress]: ...

    def save(self, progress: NodeProgress) -> None: ...


class MemoryProgressStore:
    """Keeps copies, so a test can drop a server and build a new one on the same store."""

    def __init__(self) -> None:
        self._rows: dict[str, str] = {}
        self.saves = 0

    def load(self) -> dict[str, NodeProgress]:
        return {k: NodeProgress.from_json(v) for k, v in self._rows.items()}

    def save(self, progress: NodeProgress) -> None:
        self.saves += 1
        self._rows[progress.node] = progress.to_json()


class SqliteProgressStore:
    """One row per node in table ``zigbee_ota_progress`` of an SQLite file (WAL)."""

    def __init__(self, path: str | Path, *, scope: str = "default") -> None:
        self.path = Path(path)
        self.scope = scope  # e.g. the deployment id, so two deployments never mix
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(self.path), check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS zigbee_ota_progress ("
            " scope TEXT NOT NULL, node TEXT NOT NULL, record TEXT NOT NULL,"
            " PRIMARY KEY (scope, node))"
        )
        self._db.commit()

    def load(self) -> dict[str, NodeProgress]:
        with self._lock:
            rows = self._db.execute(
                "SELECT node, record FROM zigbee_ota_progress WHERE scope = ?", (self.scope,)
            ).fetchall()
        return {node: NodeProgress.from_json(rec) for node, rec in rows}

    def save(self, progress: NodeProgress) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO zigbee_ota_progress (scope, node, record)"
                " VALUES (?, ?, ?)",
                (self.scope, progress.node, progress.to_json()),
            )
            self._db.commit()

    def close(self) -> None:
        with self._lock:
            self._db.close()
