"""Shared pieces for the smp-serial unit tests: a simulated MCU on a pty, unthrottled."""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ferry.proxy.transport import FlashResult, Target
from ferry.sim.mcu import McuConfig, SimMcu
from ferry.sim.mcu import image as sim_image


def mcu_image(version: tuple[int, int, int, int], size: int = 6000, seed: int = 0,
              flags: int = 0) -> bytes:
    payload = bytes((i * 7 + seed) & 0xFF for i in range(size))
    return sim_image.build(version, payload, flags=flags)


OLD = mcu_image((1, 0, 0, 0), 3000, seed=1)
NEW = mcu_image((1, 1, 0, 0), 20000, seed=2)


def config(**kw: object) -> McuConfig:
    base: dict[str, object] = dict(baud=None, boot_seconds=0.05, buf_size=512, buf_count=4)
    base.update(kw)
    return McuConfig(**base)  # type: ignore[arg-type]


@contextmanager
def running_sim(tmp_path: Path | None = None, **kw: object) -> Iterator[SimMcu]:
    link = tmp_path / "ttyMCU" if tmp_path is not None else None
    sim = SimMcu(config(**kw), running=OLD, link=link).start()
    try:
        yield sim
    finally:
        sim.stop()


def target(sim: SimMcu, **options: str) -> Target:
    opts = {"timeout": "1", "boot_timeout": "10", "retries": "2"}
    opts.update(options)
    return Target(name="mcu", transport="smp-serial", address=sim.port, options=opts)


def flash(sim: SimMcu, data: bytes = NEW, **options: str) -> FlashResult:
    from ferry.proxy.registry import get_transport

    transport = get_transport("smp-serial", {})
    return transport.flash(target(sim, **options), io.BytesIO(data),
                           progress=lambda d, t, m: None)


def running_version(sim: SimMcu) -> str:
    info = sim.device.primary.info(None)
    assert info is not None
    return info.version_text

