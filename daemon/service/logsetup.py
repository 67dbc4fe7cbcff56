"""Logging for ferryd: the systemd journal with structured fields when run by systemd,
plain stderr elsewhere (a developer's shell, tests, the simulator).

Structured fields travel as ``extra={"deployment_id": ..., "target": ..., "phase": ...}``
and become the journal fields FERRY_DEPLOYMENT_ID, FERRY_TARGET and FERRY_PHASE, so
``journalctl FERRY_DEPLOYMENT_ID=12`` shows one deployment across restarts.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys

FIELDS = ("deployment_id", "target", "phase")


def under_systemd() -> bool:
    return bool(os.environ.get("JOURNAL_STREAM") or os.environ.get("INVOCATION_ID"))


class _JournalFields(logging.Filter):
    """Copy ferry's structured extras into the FERRY_* names JournalHandler sends."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name in FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                setattr(record, f"FERRY_{name.upper()}", str(value))
        return True


class _PlainFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        tags = [f"{n}={getattr(record, n)}" for n in FIELDS if getattr(record, n, None)]
        return f"{text} [{' '.join(tags)}]" if tags else text


def setup(level: int = logging.INFO, *, force_stderr: bool = False) -> str:
    """Configure the root logger; returns "journal" or "stderr"."""
    root = logging.getLogger()
    root.setLevel(level)
    for handler in list(root.handlers):
        root.removeHandler(handler)
    if under_systemd() and not force_stderr:
        try:
            journal = importlib.import_module("systemd.journal")
        except ImportError:
            pass
        else:
            jh = journal.JournalHandler(SYSLOG_IDENTIFIER="ferryd")
            jh.addFilter(_JournalFields())
            root.addHandler(jh)
            return "journal"
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_PlainFormatter("ferryd: %(levelname)s %(message)s"))
    root.addHandler(handler)
    return "stderr"
