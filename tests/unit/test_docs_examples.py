"""Config examples in the docs parse: a technician copies them verbatim."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = [*sorted((ROOT / "docs").glob("*.md")), ROOT / "README.md",
         ROOT / "yocto-layer" / "README.md"]
BLOCKS = [(page, i, m.group(1)) for page in PAGES
          for i, m in enumerate(re.finditer(r"```toml\n(.*?)```", page.read_text(), re.S))]


@pytest.mark.parametrize("page,index,text", BLOCKS,
                         ids=[f"{p.name}#{i}" for p, i, _ in BLOCKS])
def test_toml_example_parses(page: Path, index: int, text: str, tmp_path: Path) -> None:
    data = tomllib.loads(text)
    if "gateway" in data:  # a whole config: the loader must accept every key
        from ferry.daemon.config import load_config

        path = tmp_path / "ferry.toml"
        path.write_text(text)
        load_config(path)


def test_there_are_examples() -> None:
    assert len(BLOCKS) >= 5
