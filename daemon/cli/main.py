"""Entry point of the ``ferry`` command.

Commands live in one module each (``ferry.daemon.cli.<name>``) exposing
``register(subparsers)``; the parser sets ``func`` to a callable taking the parsed
namespace and returning an exit code. Modules are imported here by name so that a
command's heavy imports (pyusb, dbus-next, ...) happen only inside its ``func``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import sys
import threading
from collections.abc import Sequence
from typing import NoReturn

from ferry import __version__
from ferry.daemon.cli import exitcodes
from ferry.errors import FerryError

COMMANDS = (
    "status",
    "install",
    "cancel",
    "mark",
    "history",
    "devices",
    "flash",
    "bundle",
    "demo",
    "sim",
)


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The whole CLI, or with ``only`` just that command's part of it.

    A command's parser is all one invocation needs; importing and building the other
    nine (``demo`` alone imports ~20 ms of modules) would be paid by every
    ``ferry install`` and ``ferry status``. ``ferry --help`` and unknown commands get
    the whole parser.
    """
    parser = argparse.ArgumentParser(
        prog="ferry",
        description="ferry: update the whole gateway, its A/B rootfs and every device behind it.",
        epilog="Run 'ferry COMMAND --help' for the options of one command. "
        "Exit codes: see docs/cli.md.",
    )
    parser.add_argument("--version", action="version", version=f"ferry {__version__}")
    parser.add_argument(
        "--config",
        metavar="PATH",
        help="gateway config (default /etc/ferry/ferry.toml); with it, status and mark "
        "work standalone without ferryd",
    )
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS if only is None else (only,):
        try:
            module = importlib.import_module(f"ferry.daemon.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"ferry.daemon.cli.{name}":
                continue  # command not built yet
            raise
        module.register(sub)
    for command in sub.choices.values():
        _add_json(command)
    return parser


def _add_json(parser: argparse.ArgumentParser) -> None:
    """``--json`` is accepted after the command too (``ferry status --json``)."""
    if "--json" not in parser._option_string_actions:
        parser.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                            help="machine-readable output (see docs/cli.md)")
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                _add_json(child)


def _command(argv: Sequence[str]) -> str | None:
    """The command word in ``argv`` if it names one of ours, past the global options."""
    it = iter(argv)
    for token in it:
        if token == "--config":
            next(it, None)
        elif token == "--":
            return None
        elif not token.startswith("-"):
            return token if token in COMMANDS else None
    return None


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(only=_command(argv))
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return exitcodes.USAGE
    if getattr(args, "config", None) is not None:
        # standalone, the CLI is the gateway: its journal and state files get ferryd's modes
        from ferry.daemon.config import STATE_UMASK

        os.umask(STATE_UMASK)
    try:
        return int(func(args) or 0)
    except FerryError as err:
        print(f"ferry: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("ferry: interrupted", file=sys.stderr)
        return exitcodes.INTERRUPTED


def run() -> NoReturn:
    """The console script: ``main()``, then exit without the interpreter's teardown.

    Tearing down the modules an install imports (requests, cryptography, sqlite3)
    costs a command ~80 ms after its work is done, a fifth of a 256 MiB install.
    Nothing is lost by skipping it: the journal, the env and the slot are fsynced
    before their step ends, and the output streams are flushed here. A command that
    left a non-daemon thread behind exits normally, so that thread can finish.
    """
    code = main()
    if any(not t.daemon for t in threading.enumerate() if t is not threading.main_thread()):
        sys.exit(code)
    if "logging" in sys.modules:
        sys.modules["logging"].shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed pipe: no one to tell
            stream.flush()
    os._exit(code)


if __name__ == "__main__":
    run()
