"""Journal: durable steps, per-target rows, versioned migrations."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from ferry.daemon.journal import MIGRATIONS, SCHEMA_VERSION, Journal, JournalError, migrate


def test_steps_and_state_survive_reopen(tmp_path: Path) -> None:
    j = Journal.open(tmp_path)
    dep = j.create("https://x/b.swu", origin="backend", external_id="42", force=True)
    j.begin_step(dep, "write", state="writing", detail="rootfs -> B")
    j.update(dep, dl_offset=1234, dl_validator='"etag"', to_slot="B")
    j.close()  # as if the process died right after the commit

    j = Journal.open(tmp_path)
    d = j.pending()
    assert d is not None and d.id == dep and d.state == "writing" and d.force
    assert (d.dl_offset, d.dl_validator, d.external_id) == (1234, '"etag"', "42")
    assert [(s.name, s.status) for s in j.steps(dep)] == [("write", "started")]
    j.end_step(dep, "write", detail="done", state="written")
    j.finish(dep, "success")
    assert j.pending() is None
    assert [h.id for h in j.history()] == [dep]
    assert j.get(dep).result == "success" and j.get(dep).finished is not None


def test_wal_and_full_sync(tmp_path: Path) -> None:
    j = Journal.open(tmp_path)
    mode = j._conn.execute("PRAGMA journal_mode").fetchone()[0]
    sync = j._conn.execute("PRAGMA synchronous").fetchone()[0]
    assert (mode, sync) == ("wal", 2)


def test_targets_upsert(tmp_path: Path) -> None:
    j = Journal.open(tmp_path)
    dep = j.create("b.swu")
    j.set_target(dep, "mcu", transport="smp-serial", state="pending", image="m.bin")
    j.set_target(dep, "mcu", transport="smp-serial", state="ok", version="2.0")
    (t,) = j.targets(dep)
    assert (t.state, t.version, t.image) == ("ok", "2.0", "m.bin")


def test_migrates_an_old_schema(tmp_path: Path) -> None:
    db = tmp_path / "journal.db"
    conn = sqlite3.connect(db, isolation_level=None)
    migrate(conn, upto=1)
    conn.execute("INSERT INTO deployments (source, state, created, updated)"
                 " VALUES ('old.swu', 'done', 1, 1)")
    conn.close()
    j = Journal(db)
    assert j._conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    (old,) = j.history()
    assert old.source == "old.swu" and old.dl_offset == 0 and old.info == {}
    assert len(MIGRATIONS) == SCHEMA_VERSION


def test_refuses_a_newer_schema(tmp_path: Path) -> None:
    db = tmp_path / "journal.db"
    conn = sqlite3.connect(db)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(JournalError, match="newer than this ferry"):
        Journal(db)


def test_unknown_state_is_a_bug(tmp_path: Path) -> None:
    j = Journal.open(tmp_path)
    dep = j.create("b.swu")
    with pytest.raises(ValueError):
        j.update(dep, state="flying")
    with pytest.raises(ValueError):
        j.update(dep, result="success")


def test_write_failure_is_a_clear_error(tmp_path: Path) -> None:
    j = Journal.open(tmp_path)
    dep = j.create("b.swu")
    j._conn.execute("PRAGMA query_only = ON")  # stands in for a full or read-only disk
    with pytest.raises(JournalError, match="cannot be written"):
        j.begin_step(dep, "write", state="writing")
    j._conn.execute("PRAGMA query_only = OFF")
    j.begin_step(dep, "write", state="writing")  # usable again afterwards
    assert j.get(dep).state == "writing"


def test_advisory_writes_land_without_leaving_full_sync(tmp_path: Path) -> None:
    """progress/note_offset commit with synchronous=NORMAL, then put FULL back: the next
    step's commit must be fsynced again, or a power cut could lose a step."""
    j = Journal.open(tmp_path)
    dep = j.create("https://x/b.swu")
    j.progress(dep, 10, 100)
    j.note_offset(dep, 4096)
    assert j._conn.execute("PRAGMA synchronous").fetchone()[0] == 2
    j.close()
    d = Journal.open(tmp_path).get(dep)
    assert (d.progress_done, d.progress_total, d.dl_offset) == (10, 100, 4096)


def test_advisory_write_failure_is_only_logged(tmp_path: Path,
                                               caplog: pytest.LogCaptureFixture) -> None:
    j = Journal.open(tmp_path)
    dep = j.create("https://x/b.swu")
    j._conn.execute("DROP TABLE steps")  # any failure inside the statement will do
    j._conn.execute("ALTER TABLE deployments RENAME TO gone")
    j.progress(dep, 1, 2)  # no exception: the next real step reports a broken journal
    assert "journal progress not recorded" in caplog.text
    assert j._conn.execute("PRAGMA synchronous").fetchone()[0] == 2
