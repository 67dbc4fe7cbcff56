"""The ``zigbee`` transport with ``adapter = "zigpy"``: ferry owns the coordinator.

With Zigbee2MQTT, ferry can only ask for one node's update at a time. With a radio
that zigpy drives, ferry serves cluster 0x0019 itself (``server.OtaServer`` over
``zigpylink.ZigpyLink``), so a rollout to many nodes is a campaign: one broadcast
Image Notify (payload type 3: manufacturer, image type, new version), every matching
node queries and downloads from the one staged image, and each node's outcome is a
``node.<ieee>`` row, as with every radio transport. A named node that has not asked
after ``renotify_s`` gets a unicast notify (a sleepy node may have slept through the
broadcast); in a whole population, a node still silent ``settle_s`` after the
broadcast is taken to be of another type and skipped. A forced re-install of the
version a node runs needs unicasts: clients ignore a broadcast of their own version.

The radio is opened for each call and shut after it, so the serial port is held only
while ferry works; the network itself (keys, devices) stays in zigpy's database,
which the gateway's integrator names. Nothing here comes from the backend: the radio
type, port and database are ``ferry.toml`` options.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import threading
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, BinaryIO, TypeVar

from ferry.proxy.transport import FlashResult, Progress, Target, TargetState
from ferry.proxy.zigbee.errors import AdapterError, OtaFileError
from ferry.proxy.zigbee.otafile import IMAGE_TYPE_WILDCARD, read_stream
from ferry.proxy.zigbee.policy import POPULATION, policy_problem, version_str
from ferry.proxy.zigbee.progress import DONE, FAILED, FINAL_STATES, IDLE, SKIPPED, NodeProgress
from ferry.proxy.zigbee.server import OtaServer, ServedImage, ServerConfig
from ferry.proxy.zigbee.zigpylink import (
    LoopClock,
    ZigpyLink,
    ieee_key,
    ota_client,
    ota_nodes,
)

T = TypeVar("T")

# radio option -> (zigpy radio library module, its PyPI name)
RADIOS = {
    "znp": ("zigpy_znp.zigbee.application", "zigpy-znp"),
    "ezsp": ("bellows.zigbee.application", "bellows"),
    "deconz": ("zigpy_deconz.zigbee.application", "zigpy-deconz"),
    "xbee": ("zigpy_xbee.zigbee.application", "zigpy-xbee"),
    "zigate": ("zigpy_zigate.zigbee.application", "zigpy-zigate"),
}

AppOpener = Callable[[], contextlib.AbstractAsyncContextManager[Any]]


@dataclass
class ZigpyOptions:
    radio: str = ""
    port: str = ""
    baudrate: int = 115200
    database: str = ""
    campaign_timeout_s: float = 4 * 3600.0
    renotify_s: float = 300.0
    settle_s: float = 120.0
    poll_s: float = 0.5
    jitter: int = 100

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> ZigpyOptions:
        radio = str(options.get("radio", ""))
        if radio not in RADIOS:
            raise AdapterError(f"zigbee adapter zigpy needs radio = one of "
                               f"{', '.join(sorted(RADIOS))} (got {radio!r})")
        port = str(options.get("port", ""))
        if not port:
            raise AdapterError("zigbee adapter zigpy needs port (the coordinator's "
                               "serial device, e.g. /dev/ttyUSB0)")
        database = str(options.get("database", ""))
        if not database:
            raise AdapterError("zigbee adapter zigpy needs database (zigpy's network "
                               "database, e.g. /var/lib/ferry/zigbee.db)")
        jitter = int(options.get("query_jitter", 100))
        if not 1 <= jitter <= 100:
            raise AdapterError(f"query_jitter must be 1..100, not {jitter}")
        return cls(radio=radio, port=port, baudrate=int(options.get("baudrate", 115200)),
                   database=database,
                   campaign_timeout_s=float(options.get("campaign_timeout_s", 4 * 3600.0)),
                   renotify_s=float(options.get("renotify_s", 300.0)),
                   settle_s=float(options.get("settle_s", 120.0)), jitter=jitter)


def radio_opener(opts: ZigpyOptions) -> AppOpener:
    """Open the configured radio through its zigpy library, and shut it afterwards."""

    @contextlib.asynccontextmanager
    async def open_app() -> AsyncIterator[Any]:
        module, package = RADIOS[opts.radio]
        try:
            lib = importlib.import_module(module)
        except ImportError:
            raise AdapterError(f"radio {opts.radio!r} needs the {package} package "
                               f"(pip install {package})") from None
        import zigpy.config as conf

        config = {conf.CONF_DEVICE: {conf.CONF_DEVICE_PATH: opts.port,
                                     conf.CONF_DEVICE_BAUDRATE: opts.baudrate},
                  conf.CONF_DATABASE: opts.database,
                  conf.CONF_OTA: {conf.CONF_OTA_ENABLED: False}}
        try:
            app = await lib.ControllerApplication.new(config, auto_form=False,
                                                      start_radio=True)
        except Exception as err:
            raise AdapterError(f"cannot start the {opts.radio} coordinator on {opts.port}: "
                               f"{err}") from err
        try:
            yield app
        finally:
            await app.shutdown()

    return open_app


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` on an event loop of its own, in a thread of its own, so a caller
    that is itself on a loop (ferryd's D-Bus side) is never blocked re-entrantly."""
    out: list[T] = []
    errors: list[BaseException] = []

    def main() -> None:
        try:
            out.append(asyncio.run(coro))
        except BaseException as err:
            errors.append(err)

    th = threading.Thread(target=main, name="zigpy", daemon=True)
    th.start()
    th.join()
    if errors:
        raise errors[0]
    return out[0]


@dataclass
class CampaignResult:
    nodes: dict[str, NodeProgress]
    words: dict[str, str]  # node -> "ok" | "skipped..." | "failed: ..."
    broadcasts: int
    unicast_notifies: int


async def campaign(app: Any, image: ServedImage, nodes: list[str], *, named: bool,
                   force: bool, opts: ZigpyOptions, progress: Progress) -> CampaignResult:
    """Serve ``image`` to ``nodes`` until each has an outcome or the time runs out."""
    loop = asyncio.get_running_loop()
    wanted = [ieee_key(n) for n in nodes]
    # the link hands frames to the server, which answers through the link
    link = ZigpyLink(app, lambda node, frame: server.handle_frame(node, frame))
    server = OtaServer(link=link, clock=LoopClock(loop),
                       config=ServerConfig(nodes=set(wanted), force=force,
                                           notify_jitter=opts.jitter))
    server.add_image(image)
    link.claim(wanted)
    unicasts = 0
    try:
        start = last_notify = loop.time()
        if named and (force or len(wanted) == 1):
            server.notify(wanted)  # one node, or a re-install a broadcast cannot ask for
            unicasts += len(wanted)
        else:
            server.notify_all(image)
        waiting = list(wanted)
        while True:
            await asyncio.sleep(opts.poll_s)
            now = loop.time()
            records = [server.nodes.get(n) for n in wanted]
            done_bytes = sum(min(r.offset, image.size) for r in records if r is not None)
            finished = sum(1 for r in records if r is not None and r.state in FINAL_STATES)
            progress(done_bytes, image.size * len(wanted),
                     f"{finished} of {len(wanted)} node(s) finished")
            if not named and now - start >= opts.settle_s:
                waiting = [n for n in waiting if n in server.nodes]
            if all(_settled(server.nodes.get(n), image) for n in waiting):
                break
            if now - start >= opts.campaign_timeout_s:
                break
            if now - last_notify >= opts.renotify_s:
                silent = [n for n in waiting if server.nodes.get(n) is None
                          or (server.nodes[n].state == IDLE
                              and _matches(server.nodes[n], image))]
                server.notify(silent)
                unicasts += len(silent)
                last_notify = now
    finally:
        await link.close()
    words = {n: _word(server.nodes.get(n), image, named, opts) for n in wanted}
    return CampaignResult(dict(server.nodes), words, link.broadcasts, unicasts)


def _matches(p: NodeProgress, image: ServedImage) -> bool:
    """Whether the node's last query (manufacturer, type, hardware) fits the image."""
    h = image.header
    return (p.manufacturer_code == h.manufacturer_code
            and p.image_type in (h.image_type, IMAGE_TYPE_WILDCARD)
            and h.hardware_ok(p.hardware_version))


def _settled(p: NodeProgress | None, image: ServedImage) -> bool:
    return p is not None and (p.state in FINAL_STATES
                              or (p.state == IDLE and not _matches(p, image)))


def _word(p: NodeProgress | None, image: ServedImage, named: bool,
          opts: ZigpyOptions) -> str:
    if p is None:
        if named:
            return (f"failed: no answer to the image notify within "
                    f"{opts.campaign_timeout_s:.0f} s (offline or asleep)")
        return "skipped: did not ask for this image (another type, or asleep)"
    if p.state == IDLE and not _matches(p, image):
        what = (f"the node reports manufacturer 0x{p.manufacturer_code:04X} type "
                f"0x{p.image_type:04X}"
                + (f" hardware 0x{p.hardware_version:04X}"
                   if p.hardware_version is not None else ""))
        return f"failed: {what}; no image for it" if named else f"skipped: {what}"
    if p.state == DONE:
        return "ok"
    if p.state == SKIPPED:
        return "skipped"
    if p.state == FAILED:
        return f"failed: {p.message}"
    return (f"failed: still {p.state} ({p.offset} of {p.size} bytes) after "
            f"{opts.campaign_timeout_s:.0f} s")


class ZigpyTransport:
    name = "zigbee"

    def __init__(self, opener: AppOpener, opts: ZigpyOptions) -> None:
        self.opener = opener
        self.opts = opts

    def _with_app(self, fn: Callable[[Any], Coroutine[Any, Any, T]]) -> T:
        async def main() -> T:
            async with self.opener() as app:
                return await fn(app)
        return run_sync(main())

    def discover(self) -> list[Target]:
        async def scan(app: Any) -> list[Target]:
            return [Target(name=ieee_key(str(d.ieee)), transport=self.name,
                           address=ieee_key(str(d.ieee)),
                           options={"file_version": version_str(_file_version(d)),
                                    "model": str(getattr(d, "model", "") or ""),
                                    "vendor": str(getattr(d, "manufacturer", "") or "")})
                    for d in ota_nodes(app)]
        return self._with_app(scan)

    def inspect(self, target: Target) -> TargetState:
        try:
            if target.address == POPULATION:
                nodes = self.discover()
                return TargetState(reachable=True, detail={"nodes": str(len(nodes))})
            address = ieee_key(target.address)
            found = [t for t in self.discover() if t.address == address]
        except (AdapterError, OSError, ValueError) as err:
            return TargetState(reachable=False, detail={"error": str(err)})
        if not found:
            return TargetState(reachable=False, detail={
                "error": f"{target.address} is not in the coordinator's network"})
        return TargetState(reachable=True, version=found[0].options["file_version"])

    def flash(self, target: Target, image: BinaryIO, *, progress: Progress) -> FlashResult:
        try:
            ota, raw = read_stream(image)
        except OtaFileError as err:
            return FlashResult(ok=False, message=str(err))
        problem = policy_problem(ota.header, target)
        if problem:
            return FlashResult(ok=False, message=problem)
        force = target.options.get("force") in ("1", "true", "yes")
        population = target.address == POPULATION
        try:
            listed = [ieee_key(n) for n in str(target.options.get("devices", "")).split(",")
                      if n.strip()]
            single = "" if population else ieee_key(target.address)
        except ValueError as err:
            return FlashResult(ok=False, message=f"{target.name}: {err}")
        served = ServedImage(raw)

        async def run(app: Any) -> CampaignResult | str:
            known = {ieee_key(str(d.ieee)) for d in ota_nodes(app)}
            nodes = listed if population and listed else (
                sorted(known) if population else [single])
            unknown = [n for n in nodes if n not in known]
            if population and not listed:
                named = False
            else:
                named = True
                if unknown:
                    return (f"{', '.join(unknown)} not in the coordinator's network "
                            "(or has no OTA client)")
            if not nodes:
                return "the coordinator knows no OTA-capable node to update"
            return await campaign(app, served, nodes, named=named, force=force,
                                  opts=self.opts, progress=progress)

        try:
            res = self._with_app(run)
        except (AdapterError, OSError) as err:
            return FlashResult(ok=False, message=f"{target.name}: {err}")
        if isinstance(res, str):
            return FlashResult(ok=False, message=f"{target.name}: {res}")
        return _result(target, res, ota.header.file_version, population)


def _result(target: Target, res: CampaignResult, new: int, population: bool) -> FlashResult:
    detail = {f"node.{n}": w for n, w in res.words.items()}
    detail["notify"] = f"{res.broadcasts} broadcast, {res.unicast_notifies} unicast"
    failed = [n for n, w in res.words.items() if w.startswith("failed")]
    if not population:
        node = ieee_key(target.address)
        word = res.words[node]
        p = res.nodes.get(node)
        if word == "skipped":
            running = p.current_version if p is not None else new
            return FlashResult(ok=True, skipped=True, version=version_str(running),
                               detail=detail, message=f"{target.name} already runs "
                               f"{version_str(running)} (image {version_str(new)}); not forced")
        if failed:
            why = word.removeprefix("failed: ")
            return FlashResult(ok=False, detail=detail, message=f"{target.name}: {why}")
        return FlashResult(ok=True, version=version_str(new), detail=detail,
                           message=f"{target.name} now runs {version_str(new)}")
    updated = sum(1 for w in res.words.values() if w == "ok")
    skipped = len(res.words) - updated - len(failed)
    return FlashResult(
        ok=not failed, version=version_str(new) if not failed else "", detail=detail,
        message=f"{target.name}: {updated} of {len(res.words)} node(s) updated, "
                f"{skipped} skipped, {len(failed)} failed; one campaign "
                f"({detail['notify']} notify)")


def _file_version(device: Any) -> int | None:
    """The node's OTA CurrentFileVersion (attribute 0x0002) as zigpy last cached it."""
    found = ota_client(device)
    if found is None:
        return None
    try:
        value = found[1].get_cached_value(0x0002)
    except KeyError:  # never read or reported
        return None
    return int(value) if value is not None else None


def create(options: dict[str, Any], opener: AppOpener | None = None) -> ZigpyTransport:
    opts = ZigpyOptions.from_options(options)
    return ZigpyTransport(opener or radio_opener(opts), opts)

