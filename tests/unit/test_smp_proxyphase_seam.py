"""smp-serial through the daemon's seam: proxyphase.make_target + registry.get_transport."""

from __future__ import annotations

import pytest
from smp_helpers import NEW, running_sim, running_version

from ferry.daemon.config import TargetConfig
from ferry.daemon.install.proxyphase import make_target
from ferry.proxy.registry import get_transport
from ferry.proxy.smp.transport import RefusedImage


def staged(**kw: object) -> dict[str, object]:
    image: dict[str, object] = {"transport": "smp-serial", "name": "sensor", "format": "mcuboot",
                                "version": "1.1.0", "selector": {"image_id": "sensor-v2"}}
    image.update(kw)
    return image


def test_config_target_flashes_through_the_registry() -> None:
    with running_sim() as sim:
        tc = TargetConfig(name="sensor", transport="smp-serial", address=sim.port, baud=115200,
                          image_id="sensor-v2", options={"timeout": "2", "boot_timeout": "10"})
        target = make_target(tc, staged(), force=False)
        transport = get_transport("smp-serial", dict(tc.options))
        with open_bytes(NEW) as f:
            result = transport.flash(target, f, progress=lambda d, t, m: None)
        assert result.ok and result.version == "1.1.0" and running_version(sim) == "1.1.0"


def test_selector_for_another_board_is_refused_before_sending() -> None:
    with running_sim() as sim:
        tc = TargetConfig(name="sensor", transport="smp-serial", address=sim.port,
                          image_id="sensor-v1")
        target = make_target(tc, staged(), force=False)
        with open_bytes(NEW) as f, pytest.raises(RefusedImage, match="sensor-v1"):
            get_transport("smp-serial", {}).flash(target, f, progress=lambda d, t, m: None)
        assert sim.frames_in == 0 and running_version(sim) == "1.0.0"


def open_bytes(data: bytes):  # type: ignore[no-untyped-def]
    import io

    return io.BytesIO(data)
