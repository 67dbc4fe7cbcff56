"""The daemon's durable memory: one SQLite database (WAL) on the data partition.

A deployment is written here before anything else happens, and every step is
recorded *before* its side effect, so after a power cut the daemon can tell what may
have been half done and repeat it (every step is idempotent). ``synchronous=FULL``
because a lost commit after power loss is exactly the case this file exists for.

Schema changes are numbered migrations applied in order under ``PRAGMA user_version``;
never edit a released migration, append a new one.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ferry.daemon.testhooks.killpoint import killpoint
from ferry.errors import FerryError

log = logging.getLogger(__name__)


class JournalError(FerryError):
    pass


MIGRATIONS: tuple[str, ...] = (
    # 1: deployments and their steps
    """
    CREATE TABLE deployments (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        source TEXT NOT NULL,
        origin TEXT NOT NULL DEFAULT 'cli',
        external_id TEXT,
        force INTEGER NOT NULL DEFAULT 0,
        state TEXT NOT NULL,
        result TEXT,
        error TEXT,
        version TEXT,
        from_version TEXT,
        from_slot TEXT,
        to_slot TEXT,
        created REAL NOT NULL,
        updated REAL NOT NULL,
        finished REAL
    );
    CREATE TABLE steps (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        deployment_id INTEGER NOT NULL REFERENCES deployments(id),
        name TEXT NOT NULL,
        status TEXT NOT NULL,
        started REAL NOT NULL,
        ended REAL,
        detail TEXT
    );
    CREATE INDEX steps_by_deployment ON steps(deployment_id);
    """,
    # 2: download resume, progress, boot bookkeeping, per-target results
    """
    ALTER TABLE deployments ADD COLUMN dl_offset INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE deployments ADD COLUMN dl_validator TEXT;
    ALTER TABLE deployments ADD COLUMN progress_done INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE deployments ADD COLUMN progress_total INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE deployments ADD COLUMN boot_id TEXT;
    ALTER TABLE deployments ADD COLUMN info TEXT NOT NULL DEFAULT '{}';
    CREATE TABLE targets (
        deployment_id INTEGER NOT NULL REFERENCES deployments(id),
        name TEXT NOT NULL,
        transport TEXT NOT NULL,
        image TEXT,
        state TEXT NOT NULL,
        version TEXT,
        message TEXT,
        updated REAL NOT NULL,
        PRIMARY KEY (deployment_id, name)
    );
    """,
    # 3: per-node results of targets that stand for many radio nodes (a LoRa multicast
    # group, a Zigbee population): one row per node under its target's row
    """
    CREATE TABLE nodes (
        deployment_id INTEGER NOT NULL REFERENCES deployments(id),
        target TEXT NOT NULL,
        node TEXT NOT NULL,
        transport TEXT NOT NULL,
        state TEXT NOT NULL,
        version TEXT,
        message TEXT,
        updated REAL NOT NULL,
        PRIMARY KEY (deployment_id, target, node)
    );
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)

# Deployment states in pipeline order; result is set once the deployment is over.
STATES = (
    "accepted", "verifying", "invalidating", "writing", "written", "staging", "staged",
    "activating", "rebooting", "checking", "rolling-back", "committed", "proxy", "done",
)
RESULTS = ("success", "failure", "rolled-back", "cancelled")


@dataclass(frozen=True)
class Deployment:
    id: int
    source: str
    origin: str
    external_id: str | None
    force: bool
    state: str
    result: str | None
    error: str | None
    version: str | None
    from_version: str | None
    from_slot: str | None
    to_slot: str | None
    created: float
    updated: float
    finished: float | None
    dl_offset: int
    dl_validator: str | None
    progress_done: int
    progress_total: int
    boot_id: str | None
    info: dict[str, Any]

    @property
    def pending(self) -> bool:
        return self.result is None

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


@dataclass(frozen=True)
class Step:
    deployment_id: int
    name: str
    status: str  # started | done | failed
    started: float
    ended: float | None
    detail: str | None


@dataclass(frozen=True)
class TargetRecord:
    deployment_id: int
    name: str
    transport: str
    image: str | None
    state: str  # pending | flashing | ok | skipped | failed | rolled-back
    version: str | None
    message: str | None
    updated: float


@dataclass(frozen=True)
class NodeRecord:
    """One radio node's outcome within a target's flash (``target`` is the group)."""

    deployment_id: int
    target: str
    node: str  # devEUI, IEEE address
    transport: str
    state: str  # ok | skipped | failed
    version: str | None
    message: str | None
    updated: float


def migrate(conn: sqlite3.Connection, upto: int = SCHEMA_VERSION) -> None:
    current = conn.execute("PRAGMA user_version").fetchone()[0]
    if current > SCHEMA_VERSION:
        raise JournalError(
            f"journal schema {current} is newer than this ferry ({SCHEMA_VERSION}); "
            "upgrade ferry or move the journal aside"
        )
    for n in range(current, upto):
        # executescript commits first; the whole migration plus the version bump is one
        # transaction so a power cut leaves either the old or the new schema.
        conn.executescript(f"BEGIN;\n{MIGRATIONS[n]}\nPRAGMA user_version = {n + 1};\nCOMMIT;")


class Journal:
    FILENAME = "journal.db"

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._conn = sqlite3.connect(
            str(self.path), timeout=30, isolation_level=None, check_same_thread=False
        )
        self._conn.row_factory = sqlite3.Row
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.execute("PRAGMA foreign_keys=ON")
        migrate(self._conn)

    @classmethod
    def open(cls, data_dir: str | Path) -> Journal:
        return cls(Path(data_dir) / cls.FILENAME)

    @classmethod
    def open_readonly(cls, path: str | Path) -> Journal:
        """A reader beside ferryd for someone who may read the journal but not write
        it: a technician in group ``ferry`` (files 0640 root:ferry). The default open
        sets WAL mode and migrates, which needs write access, and failed on the box with
        a traceback. ``mode=ro`` reads the WAL through a private index when the -shm
        file cannot be written (SQLite >= 3.22); a schema this ferry does not know is
        refused instead of migrated."""
        self = cls.__new__(cls)
        self.path = Path(path)
        self._lock = threading.RLock()
        try:
            self._conn = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True,
                                         timeout=30, isolation_level=None,
                                         check_same_thread=False)
            self._conn.row_factory = sqlite3.Row
            version = self._conn.execute("PRAGMA user_version").fetchone()[0]
        except sqlite3.Error as err:
            raise JournalError(
                f"cannot read the journal {self.path}: {err}; ferry history needs root or "
                "group ferry") from err
        if version != SCHEMA_VERSION:
            self._conn.close()
            raise JournalError(
                f"journal {self.path} has schema {version}, this ferry reads {SCHEMA_VERSION}; "
                "ferryd migrates it when it starts")
        return self

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                try:
                    yield self._conn
                except BaseException:
                    if self._conn.in_transaction:
                        self._conn.execute("ROLLBACK")
                    raise
                self._conn.execute("COMMIT")
            except sqlite3.Error as err:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise JournalError(
                    f"journal {self.path} cannot be written: {err}; check free space and "
                    "permissions on the data partition") from err

    # deployments ----------------------------------------------------------------

    def create(self, source: str, *, origin: str = "cli", force: bool = False,
               external_id: str | None = None, info: dict[str, Any] | None = None) -> int:
        now = time.time()
        with self._tx() as c:
            cur = c.execute(
                "INSERT INTO deployments (source, origin, external_id, force, state,"
                " created, updated, info) VALUES (?,?,?,?,?,?,?,?)",
                (source, origin, external_id, int(force), "accepted", now, now,
                 json.dumps(info or {})),
            )
            dep_id = int(cur.lastrowid or 0)
        killpoint("journal.created")
        return dep_id

    def get(self, dep_id: int) -> Deployment:
        with self._lock:
            row = self._conn.execute("SELECT * FROM deployments WHERE id=?", (dep_id,)).fetchone()
        if row is None:
            raise JournalError(f"no deployment {dep_id} in the journal")
        return _deployment(row)

    def pending(self) -> Deployment | None:
        """The one unfinished deployment, if any (the newest if several were left)."""
        with self._lock:
            row = self._conn.execute(
                "SELECT * FROM deployments WHERE result IS NULL ORDER BY id DESC LIMIT 1"
            ).fetchone()
        return _deployment(row) if row else None

    def latest(self) -> Deployment | None:
        with self._lock:
            row = self._conn.execute(
                "SELECT * FROM deployments ORDER BY id DESC LIMIT 1").fetchone()
        return _deployment(row) if row else None

    def history(self, limit: int = 50) -> list[Deployment]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT * FROM deployments ORDER BY id DESC LIMIT ?", (limit,)
            ).fetchall()
        return [_deployment(r) for r in rows]

    _UPDATABLE = frozenset({
        "state", "error", "version", "from_version", "from_slot", "to_slot", "dl_offset",
        "dl_validator", "progress_done", "progress_total", "boot_id", "force",
    })

    def update(self, dep_id: int, **fields: Any) -> None:
        bad = set(fields) - self._UPDATABLE
        if bad:
            raise ValueError(f"not updatable: {sorted(bad)}")
        if "state" in fields and fields["state"] not in STATES:
            raise ValueError(f"unknown state {fields['state']!r}")
        if "force" in fields:
            fields["force"] = int(fields["force"])
        cols = ", ".join(f"{k}=?" for k in fields)
        with self._tx() as c:
            c.execute(f"UPDATE deployments SET {cols}, updated=? WHERE id=?",
                      (*fields.values(), time.time(), dep_id))

    def set_info(self, dep_id: int, **items: Any) -> None:
        with self._tx() as c:
            row = c.execute("SELECT info FROM deployments WHERE id=?", (dep_id,)).fetchone()
            info = json.loads(row["info"]) if row else {}
            info.update(items)
            c.execute("UPDATE deployments SET info=?, updated=? WHERE id=?",
                      (json.dumps(info), time.time(), dep_id))

    def progress(self, dep_id: int, done: int, total: int) -> None:
        """Progress is advisory: it is not a step and needs no fsync-grade care."""
        self._advisory("UPDATE deployments SET progress_done=?, progress_total=?, updated=?"
                       " WHERE id=?", (done, total, time.time(), dep_id))

    def note_offset(self, dep_id: int, offset: int) -> None:
        """How far the download got, for ``ferry status``; resuming relies on the
        fsynced resume point (``set_info(resume=...)``), never on this."""
        self._advisory("UPDATE deployments SET dl_offset=?, updated=? WHERE id=?",
                       (offset, time.time(), dep_id))

    def _advisory(self, sql: str, args: tuple[Any, ...]) -> None:
        """One commit without its own fsync (``synchronous=NORMAL`` for this statement).

        In WAL mode such a commit is appended in order and made durable by the next
        FULL commit's sync, or lost with a power cut; it can never tear the journal.
        An fsync per progress tick would stall the thread that reports it (the slot
        writer, the downloader) for a disk flush each time.
        """
        with self._lock:
            try:
                self._conn.execute("PRAGMA synchronous=NORMAL")
                try:
                    self._conn.execute(sql, args)
                finally:
                    self._conn.execute("PRAGMA synchronous=FULL")
            except sqlite3.Error as err:  # advisory: the next step's write will tell
                log.warning("journal progress not recorded: %s", err)

    def finish(self, dep_id: int, result: str, error: str | None = None) -> None:
        if result not in RESULTS:
            raise ValueError(f"unknown result {result!r}")
        now = time.time()
        with self._tx() as c:
            # success clears an error a repeated step left behind (e.g. a failed reboot)
            c.execute(
                "UPDATE deployments SET result=?, error=CASE WHEN ?='success' THEN ? ELSE"
                " COALESCE(?, error) END, finished=?, updated=? WHERE id=?",
                (result, result, error, error, now, now, dep_id),
            )
        killpoint("journal.finished")

    # steps ---------------------------------------------------------------------

    def begin_step(self, dep_id: int, name: str, state: str | None = None,
                   detail: str | None = None) -> None:
        """Record that ``name`` is about to happen (and move the state) in one commit.

        Each step is also logged: the system log then tells, line by line, where an
        update was when something happened to the gateway (a power cut, a reboot)."""
        log.info("deployment %d: %s%s", dep_id, name, f" ({detail})" if detail else "",
                 extra={"deployment_id": dep_id, "phase": state or name})
        now = time.time()
        with self._tx() as c:
            c.execute(
                "INSERT INTO steps (deployment_id, name, status, started, detail)"
                " VALUES (?,?,?,?,?)",
                (dep_id, name, "started", now, detail),
            )
            if state is not None:
                if state not in STATES:
                    raise ValueError(f"unknown state {state!r}")
                c.execute("UPDATE deployments SET state=?, updated=? WHERE id=?",
                          (state, now, dep_id))
        killpoint(f"step.{name}.begun")

    def end_step(self, dep_id: int, name: str, status: str = "done",
                 detail: str | None = None, state: str | None = None) -> None:
        killpoint(f"step.{name}.ending")
        now = time.time()
        with self._tx() as c:
            c.execute(
                "UPDATE steps SET status=?, ended=?, detail=COALESCE(?, detail) WHERE id ="
                " (SELECT MAX(id) FROM steps WHERE deployment_id=? AND name=?)",
                (status, now, detail, dep_id, name),
            )
            if state is not None:
                c.execute("UPDATE deployments SET state=?, updated=? WHERE id=?",
                          (state, now, dep_id))

    def steps(self, dep_id: int) -> list[Step]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT * FROM steps WHERE deployment_id=? ORDER BY id", (dep_id,)
            ).fetchall()
        return [Step(r["deployment_id"], r["name"], r["status"], r["started"], r["ended"],
                     r["detail"]) for r in rows]

    # targets -------------------------------------------------------------------

    def set_target(self, dep_id: int, name: str, *, transport: str, state: str,
                   image: str | None = None, version: str | None = None,
                   message: str | None = None) -> None:
        with self._tx() as c:
            c.execute(
                "INSERT INTO targets (deployment_id, name, transport, image, state, version,"
                " message, updated) VALUES (?,?,?,?,?,?,?,?)"
                " ON CONFLICT(deployment_id, name) DO UPDATE SET transport=excluded.transport,"
                " image=COALESCE(excluded.image, image), state=excluded.state,"
                " version=COALESCE(excluded.version, version),"
                " message=excluded.message, updated=excluded.updated",
                (dep_id, name, transport, image, state, version, message, time.time()),
            )

    def targets(self, dep_id: int) -> list[TargetRecord]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT * FROM targets WHERE deployment_id=? ORDER BY name", (dep_id,)
            ).fetchall()
        return [TargetRecord(r["deployment_id"], r["name"], r["transport"], r["image"],
                             r["state"], r["version"], r["message"], r["updated"])
                for r in rows]


    # nodes ---------------------------------------------------------------------

    def set_nodes(self, dep_id: int, target: str, *, transport: str,
                  nodes: list[tuple[str, str, str | None, str | None]]) -> None:
        """Record (node, state, version, message) for each node of ``target`` at once:
        one commit, so a power cut leaves the whole flash's node picture or none."""
        now = time.time()
        with self._tx() as c:
            c.executemany(
                "INSERT INTO nodes (deployment_id, target, node, transport, state, version,"
                " message, updated) VALUES (?,?,?,?,?,?,?,?)"
                " ON CONFLICT(deployment_id, target, node) DO UPDATE SET"
                " transport=excluded.transport, state=excluded.state,"
                " version=COALESCE(excluded.version, version), message=excluded.message,"
                " updated=excluded.updated",
                [(dep_id, target, node, transport, state, version, message, now)
                 for node, state, version, message in nodes],
            )

    def nodes(self, dep_id: int, target: str | None = None) -> list[NodeRecord]:
        with self._lock:
            if target is None:
                rows = self._conn.execute(
                    "SELECT * FROM nodes WHERE deployment_id=? ORDER BY target, node",
                    (dep_id,)).fetchall()
            else:
                rows = self._conn.execute(
                    "SELECT * FROM nodes WHERE deployment_id=? AND target=? ORDER BY node",
                    (dep_id, target)).fetchall()
        return [NodeRecord(r["deployment_id"], r["target"], r["node"], r["transport"],
                           r["state"], r["version"], r["message"], r["updated"])
                for r in rows]


def _deployment(row: sqlite3.Row) -> Deployment:
    return Deployment(
        id=row["id"], source=row["source"], origin=row["origin"],
        external_id=row["external_id"], force=bool(row["force"]), state=row["state"],
        result=row["result"], error=row["error"], version=row["version"],
        from_version=row["from_version"], from_slot=row["from_slot"], to_slot=row["to_slot"],
        created=row["created"], updated=row["updated"], finished=row["finished"],
        dl_offset=row["dl_offset"], dl_validator=row["dl_validator"],
        progress_done=row["progress_done"], progress_total=row["progress_total"],
        boot_id=row["boot_id"], info=json.loads(row["info"] or "{}"),
    )
