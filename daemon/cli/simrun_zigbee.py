"""``ferry sim zigbee``: ferry's OTA server against a simulated node population.

The run is a discrete-event simulation, so it reports simulated seconds; a 100-node
update that would take hours on air finishes in seconds of wall time. ``simulate`` is
the one place where ferry.proxy's server and ferry.sim's nodes meet (tests and
bench/zigbee.py use it too).
"""

from __future__ import annotations

import argparse
import json
import random
from dataclasses import asdict, dataclass, field
from typing import Any

from ferry.proxy.zigbee import otafile
from ferry.proxy.zigbee.progress import DONE, DOWNLOADING, MemoryProgressStore, ProgressStore
from ferry.proxy.zigbee.server import OtaServer, ServedImage, ServerConfig
from ferry.sim.zigbee.clock import SimClock
from ferry.sim.zigbee.network import Network, RadioModel
from ferry.sim.zigbee.node import NodeProfile
from ferry.sim.zigbee.population import make_profiles


@dataclass
class SimResult:
    nodes: int
    updated: int
    all_done: bool
    seconds: float  # simulated seconds from first notify to the last node on the new version
    image_size: int
    bytes_on_air: int
    frames: int
    lost: int
    blocks: int
    wait_for_data: int
    restarts: int = 0
    per_node_done_s: list[float] = field(default_factory=list)
    versions: dict[str, int] = field(default_factory=dict)  # every node, by IEEE
    image_sha256: dict[str, str] = field(default_factory=dict)  # what each node booted
    reboots: int = 0  # mid-transfer power cycles
    resumed: int = 0  # nodes a restarted server loaded mid-download (offset > 0)
    notify_frames: int = 0  # Image Notify frames the server sent at the start

    @property
    def air_per_image_byte(self) -> float:
        return self.bytes_on_air / max(1, self.image_size * max(self.updated, 1))


def make_image(size: int, *, manufacturer_code: int = 0x1234, image_type: int = 0x0001,
               file_version: int = 0x00020000, seed: int = 1) -> bytes:
    """An OTA file whose whole size is ``size`` bytes (header and sub-element included)."""
    payload = random.Random(seed).randbytes(max(0, size - otafile.BASE_HEADER_LEN - 6))
    hdr = otafile.OtaHeader(manufacturer_code, image_type, file_version,
                            header_string=b"ferry simulated image")
    return otafile.build_simple(hdr, payload).serialize()


def simulate(image: bytes, profiles: list[NodeProfile], *, loss: float = 0.0, seed: int = 1,
             config: ServerConfig | None = None, store: ProgressStore | None = None,
             limit_s: float = 6 * 3600.0, restart_every_s: float | None = None,
             spread_s: float = 30.0, notify: str = "unicast") -> SimResult:
    """Serve ``image`` to the population until every matching node runs it (or limit).

    ``notify`` is how the run starts: "unicast" (one Image Notify per wanted node) or
    "broadcast" (one for all, as ferry's zigpy adapter does); nodes that miss it come
    in with their periodic query.

    ``restart_every_s`` drops the server object at that simulated period and builds a
    new one from the same ProgressStore, as a gateway restart would; frames in flight to
    the old server are lost.
    """
    clock = SimClock()
    net = Network(clock, RadioModel(loss=loss), seed=seed)
    for prof in profiles:
        net.add(prof)
    store = store if store is not None else MemoryProgressStore()
    cfg = config or ServerConfig()
    served = ServedImage(image)
    hdr = served.header

    def new_server() -> OtaServer:
        srv = OtaServer(link=net, clock=clock, store=store, config=cfg)
        srv.add_image(served)
        net.attach(srv.handle_frame)
        return srv

    state: dict[str, Any] = {"server": new_server(), "restarts": 0, "blocks": 0, "waits": 0,
                             "resumed": 0}
    wanted = [n for n in net.nodes.values()
              if (n.p.manufacturer_code, n.p.image_type) == (hdr.manufacturer_code,
                                                             hdr.image_type)
              and (n.version < hdr.file_version or cfg.force)]

    def finished() -> bool:
        return all(n.version == hdr.file_version and n.state == "idle" and n.powered
                   for n in wanted)

    if restart_every_s:
        def restart() -> None:
            old: OtaServer = state["server"]
            state["blocks"] += old.stats.blocks
            state["waits"] += old.stats.wait_for_data
            state["restarts"] += 1
            srv = new_server()
            state["resumed"] += sum(1 for p in srv.nodes.values()
                                    if p.state == DOWNLOADING and p.offset > 0)
            srv.notify()  # wake the nodes the old server was serving
            state["server"] = srv
            clock.call_later(restart_every_s, restart)
        clock.call_later(restart_every_s, restart)

    start = clock.now()
    if notify == "broadcast":
        state["server"].notify_all(served)
        notify_frames = 1
    else:
        state["server"].notify([n.ieee for n in wanted])
        notify_frames = len(wanted)
    net.start(spread_s)
    clock.run(until=start + limit_s, stop=finished, check_every=200)
    srv = state["server"]
    done_times = sorted((n.upgraded_at or 0) - start for n in wanted if n.upgraded_at)
    updated = sum(1 for n in wanted if n.version == hdr.file_version)
    return SimResult(
        nodes=len(wanted), updated=updated, all_done=finished(),
        seconds=(done_times[-1] if done_times else clock.now() - start),
        image_size=served.size, bytes_on_air=net.stats.bytes_on_air,
        frames=net.stats.frames, lost=net.stats.lost,
        blocks=state["blocks"] + srv.stats.blocks,
        wait_for_data=state["waits"] + srv.stats.wait_for_data,
        restarts=state["restarts"], per_node_done_s=done_times,
        versions={k: n.version for k, n in net.nodes.items()},
        image_sha256={k: n.last_image_sha256 for k, n in net.nodes.items()},
        reboots=sum(n.stats.reboots for n in net.nodes.values()),
        resumed=state["resumed"], notify_frames=notify_frames,
    )


def _run_bridge(args: argparse.Namespace) -> int:
    """Serve a Zigbee2MQTT stand-in with ``--nodes`` devices until interrupted."""
    import time
    from pathlib import Path

    from ferry.sim.zigbee.z2m_bridge import BridgeDevice, FakeZigbee2Mqtt

    host, _, port = args.z2m.rpartition(":")
    data = Path(args.z2m_data_dir)
    data.mkdir(parents=True, exist_ok=True)
    devices = [BridgeDevice(f"0x00124b00{0x100000 + i:08x}", f"sensor_{i}", 0x1234, 0x0001,
                            0x00010000) for i in range(args.nodes)]
    bridge = FakeZigbee2Mqtt(host or "127.0.0.1", int(port), data, devices, step_delay_s=0.5,
                             version=args.z2m_version, online=args.online)
    print(f"simulated Zigbee2MQTT {bridge.release.version} "
          f"({'online' if args.online else 'offline'}) with {len(devices)} nodes "
          f"(manufacturer 0x1234, image type 0x0001, version 0x00010000) on {args.z2m}, "
          f"data dir {data}; Ctrl-C stops", flush=True)
    try:
        while True:
            time.sleep(3600)
    finally:
        bridge.close()


def _run(args: argparse.Namespace) -> int:
    if args.z2m:
        return _run_bridge(args)
    image = make_image(args.image_size)
    profiles = make_profiles(args.nodes, manufacturer_code=0x1234, image_type=0x0001,
                             file_version=0x00010000, seed=args.seed, others=args.others)
    cfg = ServerConfig(min_block_period_ms=args.min_block_period,
                       max_concurrent=args.max_concurrent)
    res = simulate(image, profiles, loss=args.loss, seed=args.seed, config=cfg)
    if args.json:
        out = asdict(res)
        for key in ("per_node_done_s", "versions", "image_sha256"):
            out.pop(key)
        print(json.dumps(out, indent=2))
    else:
        print(f"{res.updated}/{res.nodes} nodes on the new version after "
              f"{res.seconds:.0f} simulated s ({res.seconds / 60:.1f} min); "
              f"{res.lost} frames lost of {res.frames}; "
              f"{res.air_per_image_byte:.2f} bytes on air per image byte")
    return 0 if res.all_done else 1


__all__ = ["DONE", "SimResult", "make_image", "simulate"]
