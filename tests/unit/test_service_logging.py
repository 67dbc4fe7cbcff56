"""ferryd's logging: structured journal fields under systemd, plain stderr elsewhere."""

from __future__ import annotations

import importlib
import logging

import pytest

from ferry.daemon.service import logsetup


@pytest.fixture(autouse=True)
def _restore_root_logger():
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_under_systemd_logs_to_journal_with_ferry_fields(monkeypatch):
    journal = importlib.import_module("systemd.journal")
    sent: list[dict[str, object]] = []
    monkeypatch.setenv("INVOCATION_ID", "0123456789abcdef")
    assert logsetup.setup() == "journal"
    (handler,) = logging.getLogger().handlers
    assert isinstance(handler, journal.JournalHandler)
    # capture what would go to sd_journal_send
    handler.send = lambda text, /, **kw: sent.append({**kw, "MESSAGE": text})
    logging.getLogger("ferry.engine").info(
        "deployment %d: rebooting", 7,
        extra={"deployment_id": 7, "target": "sensor-mcu", "phase": "rebooting"})
    assert len(sent) == 1
    entry = sent[0]
    assert entry["MESSAGE"] == "deployment 7: rebooting"
    assert entry["FERRY_DEPLOYMENT_ID"] == "7"
    assert entry["FERRY_TARGET"] == "sensor-mcu"
    assert entry["FERRY_PHASE"] == "rebooting"
    assert entry["SYSLOG_IDENTIFIER"] == "ferryd"


def test_elsewhere_logs_plain_lines_to_stderr(monkeypatch, capsys):
    monkeypatch.delenv("INVOCATION_ID", raising=False)
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    assert logsetup.setup() == "stderr"
    logging.getLogger("ferry.engine").warning("slot B: %s", "write failed",
                                              extra={"deployment_id": 3, "phase": "write"})
    err = capsys.readouterr().err
    assert "ferryd: WARNING slot B: write failed [deployment_id=3 phase=write]" in err
