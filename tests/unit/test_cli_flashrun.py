"""The shared part of every ``ferry flash <transport>``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ferry.daemon.cli import exitcodes
from ferry.daemon.cli.flashrun import flash_image
from ferry.errors import FerryError
from ferry.proxy.transport import FlashResult


class Fake:
    def __init__(self, result: FlashResult | None = None, fail_at: int | None = None) -> None:
        self.result, self.fail_at = result, fail_at

    def flash(self, target: Any, stream: Any, *, progress: Any) -> FlashResult:
        data = stream.read()
        for done in range(0, len(data) + 1, 256):
            if self.fail_at is not None and done >= self.fail_at:
                raise FerryError("device stopped answering at block 3")
            progress(done, len(data), "download")
        assert self.result is not None
        return self.result


@pytest.fixture
def image(tmp_path: Path) -> str:
    p = tmp_path / "fw.bin"
    p.write_bytes(bytes(2048))
    return str(p)


def test_json_has_every_result_field(image: str, capsys: pytest.CaptureFixture[str]) -> None:
    res = FlashResult(ok=True, version="1.2.3", message="runs 1.2.3", detail={"k": "v"})
    assert flash_image(Fake(res), None, image, label="x", as_json=True) == exitcodes.OK
    out = json.loads(capsys.readouterr().out)
    assert out == {"ok": True, "version": "1.2.3", "message": "runs 1.2.3", "skipped": False,
                   "rolled_back": False, "detail": {"k": "v"}}


def test_verdict_line_and_extra_lines(image: str, capsys: pytest.CaptureFixture[str]) -> None:
    res = FlashResult(ok=False, message="1 of 2 nodes", detail={"node.a": "missing"})
    seen: list[FlashResult] = []
    code = flash_image(Fake(res), None, image, label="x", as_json=False, after=seen.append)
    assert code == exitcodes.FAILED and seen == [res]
    assert "FAILED: 1 of 2 nodes" in capsys.readouterr().err


def test_an_error_mid_flash_ends_the_bar_with_its_reason(
        image: str, capsys: pytest.CaptureFixture[str]) -> None:
    code = flash_image(Fake(fail_at=768), None, image, label="x", as_json=False)
    assert code == exitcodes.FAILED
    assert "FAILED: device stopped answering at block 3" in capsys.readouterr().err


def test_a_missing_image_is_said_plainly(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    code = flash_image(Fake(), None, str(tmp_path / "nope.bin"), label="x", as_json=False)
    assert code == exitcodes.FAILED
    assert "nope.bin does not exist" in capsys.readouterr().err
