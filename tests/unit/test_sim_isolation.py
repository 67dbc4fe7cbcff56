"""ferry.sim is the far end of every wire: it must not share ferry's protocol code, or a
misunderstanding of a spec could pass its own test (DESIGN.md, "Which way imports go")."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SIM = Path(__file__).resolve().parents[2] / "sim"
FORBIDDEN = ("ferry.proxy", "ferry.packaging", "ferry.daemon")


def _imports(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return names


@pytest.mark.parametrize("path", sorted(SIM.rglob("*.py")), ids=lambda p: str(p.relative_to(SIM)))
def test_simulators_do_not_import_ferrys_protocol_code(path: Path) -> None:
    bad = [n for n in _imports(path) if n.startswith(FORBIDDEN)]
    assert not bad, f"sim/{path.relative_to(SIM)} imports {bad}"
