"""Zigbee2MQTT's override index as ferry writes it: file modes Z2M can read, forced
entries that do not outlive their update, superseded images deleted, forced updates of
one type serialised, and entries left forced by a killed ferry repaired."""

from __future__ import annotations

import json
import os
import stat
import threading
from pathlib import Path

import pytest

from ferry.proxy.zigbee import otafile
from ferry.proxy.zigbee.errors import AdapterError
from ferry.proxy.zigbee.files import atomic_write
from ferry.proxy.zigbee.overrideindex import OverrideIndex


def _image(version: int, itype: int = 1, hw: tuple[int, int] | None = None) -> tuple[
        bytes, otafile.OtaHeader]:
    hdr = otafile.OtaHeader(0x1234, itype, version, header_string=b"fw",
                            min_hardware_version=hw[0] if hw else None,
                            max_hardware_version=hw[1] if hw else None)
    raw = otafile.build_simple(hdr, b"\x55" * 300).serialize()
    return raw, otafile.parse(raw).header


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


@pytest.fixture
def umask_077():  # type: ignore[no-untyped-def]
    old = os.umask(0o077)  # stricter than ferryd's 027: new files must still be 0644
    try:
        yield
    finally:
        os.umask(old)


def test_new_files_and_dirs_are_readable_by_another_user(tmp_path: Path, umask_077) -> None:  # type: ignore[no-untyped-def]
    idx = OverrideIndex(tmp_path)
    raw, hdr = _image(2)
    entry = idx.stage(raw, hdr, force=False)
    assert _mode(idx.path) == 0o644  # mkstemp alone gives 0600
    assert _mode(tmp_path / entry["url"]) == 0o644
    assert _mode(tmp_path / "ferry-ota") == 0o755


def test_replaced_files_keep_mode_and_owner(tmp_path: Path, umask_077) -> None:  # type: ignore[no-untyped-def]
    target = tmp_path / "ferry-ota-index.json"
    target.write_text("[]")
    os.chmod(target, 0o640)
    owner = (65534, 65534) if os.geteuid() == 0 else (os.getuid(), os.getgid())
    if os.geteuid() == 0:
        os.chown(target, *owner)
    atomic_write(target, b"[1]\n")
    st = target.stat()
    assert target.read_bytes() == b"[1]\n"
    assert stat.S_IMODE(st.st_mode) == 0o640
    assert (st.st_uid, st.st_gid) == owner


def test_forced_entry_is_first_and_unforce_keeps_it_ordinary(tmp_path: Path) -> None:
    idx = OverrideIndex(tmp_path)
    foreign = {"url": "vendor/other.ota", "manufacturerCode": 0x1234, "imageType": 1,
               "fileVersion": 9}
    idx.path.write_text(json.dumps([foreign]))
    raw, hdr = _image(0x900, hw=(1, 3))
    with idx.type_lock(0x1234, 1, exclusive=True, timeout_s=5):
        entry = idx.stage(raw, hdr, force=True)
        loaded = idx.load()
        assert loaded[0]["force"] is True and loaded[1] == foreign
        assert (loaded[0]["hardwareVersionMin"], loaded[0]["hardwareVersionMax"]) == (1, 3)
        idx.unforce(entry)
    loaded = idx.load()
    assert "force" not in loaded[0] and loaded[0]["fileVersion"] == 0x900
    assert loaded[1] == foreign  # never touched


def test_replacing_an_entry_deletes_the_superseded_file(tmp_path: Path) -> None:
    idx = OverrideIndex(tmp_path)
    raw1, hdr1 = _image(2)
    raw2, hdr2 = _image(3)
    raw_other, hdr_other = _image(5, itype=2)
    first = idx.stage(raw1, hdr1, force=False)
    other = idx.stage(raw_other, hdr_other, force=False)
    second = idx.stage(raw2, hdr2, force=False)
    assert not (tmp_path / first["url"]).exists()
    assert (tmp_path / second["url"]).read_bytes() == raw2
    assert (tmp_path / other["url"]).exists()  # another image type stays
    assert [e["url"] for e in idx.load()] == [second["url"], other["url"]]


def test_forced_entry_of_a_killed_ferry_is_unforced(tmp_path: Path) -> None:
    idx = OverrideIndex(tmp_path)
    raw, hdr = _image(2)
    idx.stage(raw, hdr, force=True)  # no lock held: as if its ferry had died
    assert idx.load()[0]["force"] is True
    assert idx.sweep() is True
    assert "force" not in idx.load()[0]
    # ...but not while a running update holds the type's lock
    with idx.type_lock(0x1234, 1, exclusive=True, timeout_s=5):
        idx.stage(raw, hdr, force=True)
        assert idx.sweep() is False
        assert idx.load()[0]["force"] is True


def test_forced_updates_of_one_type_take_turns(tmp_path: Path) -> None:
    idx = OverrideIndex(tmp_path)
    inside = 0
    most = 0
    guard = threading.Lock()
    go = threading.Barrier(4)

    def one(exclusive: bool) -> None:
        nonlocal inside, most
        go.wait()
        with idx.type_lock(0x1234, 1, exclusive=exclusive, timeout_s=30):
            with guard:
                inside += 1
                most = max(most, inside)
            threading.Event().wait(0.05)
            with guard:
                inside -= 1

    threads = [threading.Thread(target=one, args=(True,)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert most == 1
    with idx.type_lock(0x1234, 1, exclusive=True, timeout_s=5):
        with (pytest.raises(AdapterError, match="another ferry update of manufacturer"),
              idx.type_lock(0x1234, 1, exclusive=False, timeout_s=0.2)):
            pass
        with idx.type_lock(0x1234, 2, exclusive=True, timeout_s=0.2):
            pass  # another image type is independent


def test_bad_index_is_a_clear_error(tmp_path: Path) -> None:
    idx = OverrideIndex(tmp_path)
    idx.path.write_text("{not json")
    raw, hdr = _image(2)
    with pytest.raises(AdapterError, match="not valid JSON"):
        idx.stage(raw, hdr, force=False)
    assert idx.path.read_text() == "{not json"  # nothing lost
    idx.path.write_text('{"a": 1}')
    with pytest.raises(AdapterError, match="JSON list"):
        idx.stage(raw, hdr, force=False)
