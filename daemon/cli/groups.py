"""A command whose sub-commands come from sibling modules (``flash``, ``sim``).

Each module in ``modules`` (``ferry.daemon.cli.<name>``) exposes ``register(sub)``; a
module that is not there yet is skipped, so a transport can land on its own.
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Sequence
from typing import Any


def register_group(sub: Any, name: str, *, help: str, description: str, metavar: str,
                   dest: str, modules: Sequence[str]) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = sub.add_parser(name, help=help, description=description)
    children = parser.add_subparsers(dest=dest, metavar=metavar)
    for module_name in modules:
        try:
            module = importlib.import_module(f"ferry.daemon.cli.{module_name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"ferry.daemon.cli.{module_name}":
                continue
            raise
        module.register(children)

    def show_help(_args: argparse.Namespace) -> int:
        parser.print_help()
        return 2

    parser.set_defaults(func=show_help)
    return parser
