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


def test_history_reads_as_a_group_member_who_cannot_write(tmp_path: Path) -> None:
    """The box (issue #17): ``ferry history`` as a technician in group ferry (journal
    0640 root:ferry in a 0750 directory, ferryd holding it open in WAL mode) died with
    a traceback, because the reader set WAL mode and migrated, which needs write
    access. uid/gid 65534 stands in for the technician here."""
    import os
    import shutil
    import subprocess
    import sys
    import tempfile

    base = Path(tempfile.mkdtemp(prefix="ferry-hist-"))
    try:
        base.chmod(0o755)
        data = base / "data"
        data.mkdir()
        writer = Journal.open(data)  # stays open, as ferryd's: -wal and -shm exist
        dep = writer.create("https://x/b.swu", origin="cli", external_id=None, force=False)
        writer.finish(dep, "success")
        cfg = base / "ferry.toml"
        cfg.write_text(f'[gateway]\ncompatible = "t"\nversion = "1.0.0"\n'
                       f'data_dir = "{data}"\n')
        for f in (cfg, *data.iterdir()):
            os.chown(f, 0, 65534)
            f.chmod(0o640)
        os.chown(data, 0, 65534)
        data.chmod(0o750)
        argv = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                str(Path(sys.executable).parent / "ferry"), "--config", str(cfg),
                "history", "--json"]
        env = {"PATH": "/usr/bin:/bin", "HOME": "/nonexistent",
               "PYTHONDONTWRITEBYTECODE": "1"}
        out = subprocess.run(argv, capture_output=True, text=True, env=env)
        assert out.returncode == 0, out.stderr
        assert '"result": "success"' in out.stdout
        # the reader changed nothing the writer owns
        assert all(f.stat().st_uid == 0 for f in data.iterdir())
        # someone outside the group: one line naming who may read it, no traceback
        data.chmod(0o700)
        denied = subprocess.run(argv, capture_output=True, text=True, env=env)
        assert denied.returncode != 0 and "Traceback" not in denied.stderr
        assert denied.stderr.startswith("ferry: ")
        writer.close()
    finally:
        shutil.rmtree(base, ignore_errors=True)
