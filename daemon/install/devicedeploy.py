"""A device deployment: a signed target-only bundle flashed to one device, nothing else.

When a device behind the gateway is a DDI controller of its own
(ferry.daemon.backend.devices), its deployments arrive here. The bundle is the same
``.swu`` as any other, without a rootfs, and goes the same way as the target part of a
gateway bundle, so a device deployment is no weaker than one through the gateway:

1. written to the journal first (origin ``ddi-device``, the device's name in ``info``);
2. ``sw-description`` verified against the same keyring before any payload byte is
   used; the bundle must be for this gateway's hardware (``hardware-compatibility``),
   must carry no rootfs (one that does is refused: the gateway's own controller is
   where it belongs, and a device deployment never touches a slot or the env), and
   must hold at least one image for *this* device, else it is refused with a reason;
3. the images for this device are staged (decompressed, hash-checked, fsynced) and the
   others are only read through so the reader checks their hashes;
4. the proxy phase flashes them to this device only (``info["only_targets"]``), with
   its journal rows and its resume rule: after a crash, ``pipeline.resume`` comes back
   here, an interrupted staging starts over, an interrupted flash repeats for a target
   not yet recorded ok.

A campaign (ferry.daemon.backend.campaign) is one such deployment for several
devices or nodes at once (:func:`start_campaign`): ``info["devices"]`` names its
targets, ``info["only_nodes"]`` the nodes of a radio target it is restricted to (the
transport's node list, a LoRa group's ``devices``, is cut to them for this flash), and
``info["actions"]`` the ``<controller id>:<action id>`` it carries. A target of the
campaign without an image in the bundle gets a failed row with the reason; the others
are flashed.

The gateway's version policy does not apply (the bundle's version is the device
firmware's, not the gateway's); the transport decides what is current and skips it.

The journal holds one unfinished deployment at a time, and that is how gateway and
device deployments exclude each other: :func:`start` refuses while another deployment
is pending (:class:`DeviceBusy`), and a gateway install meets a device deployment in
its flash phase as "busy". The backend's scheduler keeps them apart before either
starts (docs/backend.md says which waits for which).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ferry.daemon.config import Config, TargetConfig
from ferry.daemon.install import staging
from ferry.daemon.install.bundlesource import open_source
from ferry.daemon.install.proxyphase import TransportFactory, matches
from ferry.errors import FerryError

if TYPE_CHECKING:
    from ferry.daemon.install.context import Context
    from ferry.daemon.install.download import DownloadOptions
    from ferry.packaging.description import ImageEntry

log = logging.getLogger(__name__)

DEVICE_ORIGIN = "ddi-device"
_PREPARE_STATES = ("accepted", "verifying", "staging", "staged")


class DeviceDeployError(FerryError):
    pass


class DeviceBusy(DeviceDeployError):
    """Another deployment (the gateway's or another device's) is pending."""


class NotForThisDevice(DeviceDeployError):
    """The bundle is well signed but cannot go to this device."""


def device_download_options(config: Config, tc: TargetConfig | None = None
                            ) -> DownloadOptions:
    """The install downloader's options with the device controllers' credential: the
    GatewayToken (a TargetToken belongs to the gateway's controller, and its
    artifacts), or the device's own ``target_token`` when its target has one, on the
    backend's origin only (``OriginAuth``)."""
    from ferry.daemon.install.download import DownloadOptions

    b = config.backend
    auth = ("Authorization", f"GatewayToken {b.gateway_token}") \
        if b.url and b.gateway_token else None
    if b.url and tc is not None and tc.target_token:
        auth = ("Authorization", f"TargetToken {tc.target_token}")
    return DownloadOptions(
        stall_timeout=config.install.download_stall_timeout,
        retries=config.install.download_retries,
        backoff=min(1.0, config.install.download_stall_timeout / 4),
        ca_file=str(b.ca_file) if b.ca_file else None,
        client_cert=str(b.client_cert) if b.client_cert else None,
        client_key=str(b.client_key) if b.client_key else None,
        auth_header=auth, auth_origin=b.url if auth else None,
    )


def find_target(config: Config, name: str) -> TargetConfig:
    for tc in config.targets:
        if tc.name == name:
            return tc
    raise DeviceDeployError(f"no [[target]] named {name!r} in the config")


def _spec(entry: ImageEntry) -> dict[str, Any]:
    """An image entry in the proxy phase's shape, for ``proxyphase.matches``."""
    spec = entry.target
    return {"filename": entry.filename,
            "transport": spec.transport if spec else "", "name": spec.name if spec else "",
            "format": spec.format if spec else "", "version": spec.version if spec else "",
            "selector": dict(spec.selector) if spec else {}}


def start(ctx: Context, device: str, source: str, *, external_id: str,
          factory: TransportFactory | None = None) -> int:
    """Journal a deployment of ``source`` to the target named ``device`` and run it to
    its end; returns its id. Raises DeviceBusy (nothing journaled) while another
    deployment is pending; other errors are recorded in the journal first."""
    tc = find_target(ctx.config, device)
    pending = ctx.journal.pending()
    if pending is not None:
        raise DeviceBusy(f"deployment {pending.id} ({pending.version or pending.origin}) is "
                         f"{pending.state}; the device deployment waits for it")
    dep_id = ctx.journal.create(source, origin=DEVICE_ORIGIN, external_id=external_id,
                                info={"device": tc.name, "only_targets": [tc.name]})
    run(ctx, dep_id, factory=factory)
    return dep_id


NODES_OPTION = {"lora": "devices", "zigbee": "devices"}  # lists a radio target's nodes


def start_campaign(ctx: Context, scope: dict[str, list[str] | None], source: str, *,
                   actions: list[str], factory: TransportFactory | None = None) -> int:
    """Journal one deployment of ``source`` to every target of ``scope`` (restricted to
    the listed nodes where a list is given) and run it to its end; returns its id.
    DeviceBusy as :func:`start`."""
    names = list(scope)
    for name in names:
        find_target(ctx.config, name)
    pending = ctx.journal.pending()
    if pending is not None:
        raise DeviceBusy(f"deployment {pending.id} ({pending.version or pending.origin}) is "
                         f"{pending.state}; the campaign waits for it")
    only_nodes = {t: n for t, n in scope.items() if n is not None}
    external = actions[0] if len(actions) == 1 else \
        f"campaign:{actions[0]}+{len(actions) - 1}"
    dep_id = ctx.journal.create(source, origin=DEVICE_ORIGIN, external_id=external,
                                info={"device": names[0], "devices": names,
                                      "only_targets": names, "only_nodes": only_nodes,
                                      "actions": list(actions)})
    run(ctx, dep_id, factory=factory)
    return dep_id


def _scoped(ctx: Context, info: dict[str, Any]) -> Context:
    """The context with each restricted radio target's node list cut to the campaign's
    nodes: the transport then runs one session for exactly those."""
    only = info.get("only_nodes") or {}
    if not only:
        return ctx
    from dataclasses import replace

    targets = []
    for tc in ctx.config.targets:
        key = NODES_OPTION.get(tc.transport)
        if tc.name in only and key:
            tc = replace(tc, options={**tc.options, key: ",".join(only[tc.name])})
        targets.append(tc)
    return replace(ctx, config=replace(ctx.config, targets=tuple(targets)))


def _devices(cfg: Config, info: dict[str, Any]) -> list[TargetConfig]:
    names = info.get("devices") or [info.get("device", "")]
    return [find_target(cfg, str(n)) for n in names]


def run(ctx: Context, dep_id: int, *, factory: TransportFactory | None = None) -> None:
    """Drive device deployment ``dep_id`` from its recorded state to its end."""
    from ferry.daemon.install.proxyphase import run as proxy_run

    dep = ctx.journal.get(dep_id)
    if dep.result is not None:
        return
    if dep.state in _PREPARE_STATES:
        try:
            _prepare(ctx, dep_id)
        except FerryError as err:
            _fail(ctx, dep_id, err)
            raise
        dep = ctx.journal.get(dep_id)
    if dep.result is not None:  # superseded meanwhile by a local install: flash nothing
        return
    if dep.state in ("committed", "proxy"):
        proxy_run(_scoped(ctx, dep.info), dep_id, factory=factory)


def _fail(ctx: Context, dep_id: int, err: BaseException) -> None:
    j = ctx.journal
    steps = j.steps(dep_id)
    if steps and steps[-1].status == "started":
        j.end_step(dep_id, steps[-1].name, "failed", str(err))
    if j.get(dep_id).result is None:
        j.finish(dep_id, "failure", str(err))
    if j.pending() is None:  # never the staged images of a gateway install that took over
        staging.clean(ctx.config.gateway.data_dir, keep_deployment=None)


def _reporter(ctx: Context, total: int) -> Callable[[int], None]:
    def report(done: int) -> None:
        ctx.report("stage", done, total)
    return report


def _prepare(ctx: Context, dep_id: int) -> None:
    """Verify, check the bundle is for this device, stage its images. Repeated from
    the start after a crash (nothing was flashed yet; the staged files are scratch)."""
    from ferry.daemon.boot.bootloader import make_store
    from ferry.daemon.install import trust
    from ferry.packaging.compression import decompress_stream
    from ferry.packaging.limits import Limits
    from ferry.packaging.reader import BundleReader

    j = ctx.journal
    cfg = ctx.config
    dep = j.get(dep_id)
    tcs = _devices(cfg, dep.info)
    staging.clean(cfg.gateway.data_dir, keep_deployment=None)
    j.begin_step(dep_id, "verify", state="verifying", detail=dep.source)
    src = open_source(dep.source, device_download_options(cfg, tcs[0]))
    try:
        limits = Limits(max_bundle_size=cfg.install.max_bundle_size)
        # the keyring in force (a rotation included), as for the gateway's own bundles;
        # a keyring member is drained unused: only the gateway's deployments rotate
        keys = trust.load_trust(cfg, make_store(cfg))
        reader = BundleReader(src.stream, keys.keyring_for, limits=limits)
        desc = reader.description
        j.update(dep_id, version=desc.version)
        mine = cfg.gateway.compatible
        if mine not in desc.compatible:
            raise NotForThisDevice(
                f"bundle is for {', '.join(desc.compatible) or 'no hardware'}, this gateway "
                f"is {mine!r}; build the device bundle for this gateway's hardware")
        if desc.rootfs() is not None:
            raise NotForThisDevice(
                f"bundle {desc.version} carries a gateway rootfs; a device deployment never "
                "touches the gateway: assign it to the gateway's own controller")
        listed = ", ".join(sorted(f"{s['name'] or s['filename']} ({s['transport']})"
                                  for s in map(_spec, desc.images))) or "none"
        wanted: set[str] = set()
        missing: list[tuple[TargetConfig, str]] = []
        for tc in tcs:
            hits = {e.filename for e in desc.images if matches(tc, _spec(e))}
            wanted |= hits
            if not hits:
                missing.append((tc,
                    f"bundle {desc.version} has no image for device {tc.name} ({tc.transport}"
                    f"{', image_id ' + tc.image_id if tc.image_id else ''}); its images: "
                    f"{listed}"))
        if not wanted:
            raise NotForThisDevice("; ".join(why for _tc, why in missing))
        for tc, why in missing:  # a campaign's other targets are still flashed
            j.set_target(dep_id, tc.name, transport=tc.transport, state="failed", message=why)
        names = ", ".join(t.name for t in tcs)
        j.end_step(dep_id, "verify", detail=f"{desc.version} signed by {reader.signer}, "
                   f"{len(wanted)} image(s) for {names}")
        staged: list[dict[str, Any]] = []
        for entry, stream in reader.images():
            if entry.filename not in wanted:
                while stream.read(1 << 20):  # the reader checks its hash at the end
                    pass
                continue
            j.begin_step(dep_id, f"stage:{entry.filename}", state="staging")
            dest = staging.staged_path(cfg.gateway.data_dir, dep_id, entry.filename)
            lim = staging.image_limit(cfg.gateway.data_dir, entry, cfg.install)
            plain = decompress_stream(entry.compressed, stream, max_output=lim.size,
                                      what=lim.what)
            img = staging.stage(
                plain, dest,
                expected_sha256=entry.decompressed_sha256 if entry.compressed else None,
                progress=_reporter(ctx, entry.decompressed_size or entry.size))
            while stream.read(1 << 20):
                pass
            staged.append({**_spec(entry), "path": img.path, "size": img.size,
                           "sha256": img.sha256})
            j.end_step(dep_id, f"stage:{entry.filename}", detail=img.sha256)
        j.set_info(dep_id, staged=staged, has_rootfs=False)
        j.update(dep_id, state="staged")
    finally:
        src.stream.close()
    j.begin_step(dep_id, "commit", state="committed",
                 detail=f"device deployment to {names}: the gateway's slots are untouched")
    j.end_step(dep_id, "commit")
