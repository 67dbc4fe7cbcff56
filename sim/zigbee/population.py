"""A reproducible mix of node profiles: routers and sleepy end devices, block and page
requesters, fast and slow pacers, one to three hops, some that power-cycle mid-transfer,
plus a few nodes of another vendor that must never be touched."""

from __future__ import annotations

import random

from ferry.sim.zigbee.node import NodeProfile


def make_profiles(n: int, *, manufacturer_code: int, image_type: int, file_version: int,
                  seed: int = 1, others: int = 0, hardware_version: int | None = None,
                  sleepy_share: float = 0.2, page_share: float = 0.2,
                  reboot_share: float = 0.1) -> list[NodeProfile]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        r = rng.random()
        out.append(NodeProfile(
            ieee=f"00124b00{0x100000 + i:08x}",
            manufacturer_code=manufacturer_code,
            image_type=image_type,
            file_version=file_version,
            hardware_version=hardware_version,
            max_data_size=rng.choice((48, 50, 64, 64)),
            block_period_ms=rng.choice((0, 0, 50, 100, 250)),
            page_size=rng.choice((256, 512)) if r < page_share else 0,
            sleepy=page_share <= r < page_share + sleepy_share,
            slow_poll_s=rng.choice((5.0, 30.0, 300.0)),
            reboot_at=rng.uniform(0.2, 0.8) if rng.random() < reboot_share else None,
            persist_offset=rng.random() < 0.5,
            hops=rng.choice((1, 1, 2, 3)),
            query_interval_s=rng.choice((300.0, 600.0, 1800.0)),
        ))
    for j in range(others):
        out.append(NodeProfile(
            ieee=f"00158d00{0x200000 + j:08x}",
            manufacturer_code=(manufacturer_code + 1) & 0xFFFF,
            image_type=image_type, file_version=1,
        ))
    return out
