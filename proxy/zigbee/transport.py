"""The ``zigbee`` transport: discover nodes, flash one OTA image to one node, inspect.

The daemon's proxy phase and ``ferry flash zigbee`` call it through
``ferry.proxy.registry.get_transport("zigbee", options)``. ``create`` picks the adapter:
Zigbee2MQTT over MQTT (this module; the default, see docs/transport-zigbee.md for why),
or zigpy (``zigpytransport``), where ferry owns the coordinator and its own
``server.OtaServer`` serves the nodes.

Policy before anything is sent: the image's manufacturer code and image type must
match what the target expects (bundle selector or ``hardware_id`` "MFR:TYPE"), and the
image must be newer than the node's file version unless the deployment is forced.

A forced deployment's index entry is forced only while its update runs (see
``overrideindex``): the ``finally`` below makes it ordinary again whatever happens.

A target whose address is ``*`` stands for a population: the nodes its ``devices``
option lists (a campaign of node controllers sets it, daemon/install/devicedeploy.py),
or, without that option, every OTA-capable node the coordinator knows. The image is
staged once and each node is updated in turn (Zigbee2MQTT has no request that makes
all nodes of a type update at once; its index entry offers the image to each of them),
with a ``node.<ieee>`` row per node. In a whole population, a node Zigbee2MQTT has no
image for ("No image currently available": another manufacturer or image type) is
skipped, not failed; a node named in ``devices`` that gets none has failed.
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import replace
from typing import Any, BinaryIO

from ferry.proxy.transport import FlashResult, Progress, Target, TargetState, Transport
from ferry.proxy.zigbee import z2mdata
from ferry.proxy.zigbee.errors import AdapterError, OtaFileError
from ferry.proxy.zigbee.otafile import OtaHeader, read_stream
from ferry.proxy.zigbee.policy import (
    POPULATION,
    hw_str,
    policy_problem,
    version_str,
)
from ferry.proxy.zigbee.z2m import CheckResult, Z2MOptions, Zigbee2Mqtt, hardware_hint

NO_IMAGE = "No image currently available"  # Zigbee2MQTT's answer for a node of another type


class ZigbeeTransport:
    name = "zigbee"

    def __init__(self, adapter: Zigbee2Mqtt) -> None:
        self.adapter = adapter

    def discover(self) -> list[Target]:
        with contextlib.suppress(AdapterError, OSError):
            self.adapter.index.sweep()  # a forced entry a killed ferry left behind
        out = []
        for d in self.adapter.devices():
            if not d.supports_ota:
                continue
            out.append(Target(
                name=d.friendly_name or d.ieee, transport=self.name, address=d.ieee,
                options={"file_version": version_str(d.installed_version), "model": d.model,
                         "vendor": d.vendor, "software_build_id": d.software_build_id,
                         "hw_basic": hw_str(d.hw_basic), "hw_query": hw_str(d.hw_query)}))
        return out

    def _hardware_hint(self, hdr: OtaHeader, checked: CheckResult) -> str:
        if hdr.min_hardware_version is None or hdr.max_hardware_version is None:
            return ""
        basic = z2mdata.basic_hardware_versions(self.adapter.opts.data_dir).get(checked.ieee)
        return hardware_hint(self.adapter.bridge_info(),
                             (hdr.min_hardware_version, hdr.max_hardware_version),
                             basic, checked.hw_query)

    def inspect(self, target: Target) -> TargetState:
        if target.address == POPULATION:  # the coordinator answers for its nodes
            try:
                nodes = self.discover()
            except (AdapterError, OSError) as err:
                return TargetState(reachable=False, detail={"error": str(err)})
            return TargetState(reachable=True, detail={"nodes": str(len(nodes))})
        try:
            self.adapter.index.ensure_exists()
            res = self.adapter.check(target.address)
        except (AdapterError, OSError) as err:
            return TargetState(reachable=False, detail={"error": str(err)})
        detail = {"update_available": str(res.available).lower()}
        if res.hw_query is not None:
            detail["hw_query"] = hw_str(res.hw_query)
        return TargetState(reachable=True, version=version_str(res.installed), detail=detail)

    def flash(self, target: Target, image: BinaryIO, *, progress: Progress) -> FlashResult:
        if target.address == POPULATION:
            return self._flash_population(target, image, progress=progress)
        return self._flash_node(target, image, progress=progress)

    def _flash_population(self, target: Target, image: BinaryIO, *, progress: Progress
                          ) -> FlashResult:
        raw = image.read()
        listed = [n.strip().lower() for n in str(target.options.get("devices", "")).split(",")
                  if n.strip()]
        if listed:
            nodes = listed
        else:
            try:
                nodes = [t.address.lower() for t in self.discover()]
            except (AdapterError, OSError) as err:
                return FlashResult(ok=False, message=f"{target.name}: {err}")
        if not nodes:
            return FlashResult(ok=False, message=f"{target.name}: the coordinator knows no "
                                                 "OTA-capable node to update")
        detail: dict[str, str] = {}
        versions: set[str] = set()
        failed = 0
        for n, ieee in enumerate(nodes):
            def node_progress(done: int, total: int, what: str, n: int = n,
                              ieee: str = ieee) -> None:
                progress(n * len(raw) + done, len(nodes) * len(raw), f"{ieee}: {what}")

            one = self._flash_node(replace(target, name=f"{target.name}/{ieee}", address=ieee),
                                   io.BytesIO(raw), progress=node_progress)
            if one.ok:
                word = "skipped" if one.skipped else "ok"
            elif not listed and NO_IMAGE in one.message:
                word = "skipped: no image for this node's type"
            else:
                word = f"failed: {one.message}"
            detail[f"node.{ieee}"] = word
            if word.startswith("failed"):
                failed += 1
            elif one.version and one.ok:
                versions.add(one.version)
        done = len(nodes) - failed
        return FlashResult(
            ok=failed == 0, version=versions.pop() if len(versions) == 1 else "",
            detail=detail,
            message=f"{target.name}: {done} of {len(nodes)} node(s) updated or current"
                    + (f", {failed} failed" if failed else ""))

    def _flash_node(self, target: Target, image: BinaryIO, *, progress: Progress
                    ) -> FlashResult:
        try:
            ota, raw = read_stream(image)
        except OtaFileError as err:
            return FlashResult(ok=False, message=str(err))
        hdr = ota.header
        problem = policy_problem(hdr, target)
        if problem:
            return FlashResult(ok=False, message=problem)
        force = target.options.get("force") in ("1", "true", "yes")
        new = version_str(hdr.file_version)
        progress(0, len(raw), "check")
        try:
            problem = self.adapter.configuration_problem()
            if problem:
                return FlashResult(ok=False, message=f"{target.name}: {problem}")
            self.adapter.index.ensure_exists()
            checked = self.adapter.check(target.address)
            installed = checked.installed
        except (AdapterError, OSError) as err:
            return FlashResult(ok=False, message=f"{target.name}: {err}")
        if installed is not None and installed >= hdr.file_version and not force:
            return FlashResult(ok=True, skipped=True, version=version_str(installed),
                               message=f"{target.name} already runs {version_str(installed)}"
                                       f" (image {new}); not forced",
                               detail={f"node.{target.address}": "skipped"})
        index = self.adapter.index
        try:
            # A forced entry is offered to every node of this type: it may exist only
            # while this update runs, so forced updates of one type take turns.
            with index.type_lock(hdr.manufacturer_code, hdr.image_type, exclusive=force,
                                 timeout_s=self.adapter.opts.update_timeout_s):
                entry = index.stage(raw, hdr, force=force)
                try:
                    outcome = self.adapter.update(
                        target.address,
                        lambda pct: progress(int(len(raw) * min(pct, 100.0) / 100), len(raw),
                                             "upload"))
                finally:
                    if force:
                        index.unforce(entry)
        except (AdapterError, OSError) as err:
            return FlashResult(ok=False, message=f"{target.name}: {err}")
        if not outcome.ok:
            hint = self._hardware_hint(hdr, checked)
            if hint and "No image currently available" in outcome.message:
                outcome.message = f"{outcome.message.split(':', 1)[0]}: {hint}"
            return FlashResult(ok=False, version=version_str(installed),
                               message=f"{target.name}: {outcome.message}",
                               detail={**outcome.detail,
                                       f"node.{target.address}": f"failed: {outcome.message}"})
        progress(len(raw), len(raw), "done")
        running = outcome.installed_version if outcome.installed_version is not None \
            else hdr.file_version
        ok = running == hdr.file_version
        # node.<address>: the per-node key every radio transport uses (LoRa: node.<devEui>)
        node = {f"node.{target.address}": "ok" if ok else "failed: wrong version after update"}
        return FlashResult(
            ok=ok, version=version_str(running), detail={**outcome.detail, **node},
            message=(f"{target.name} now runs {version_str(running)}" if ok else
                     f"{target.name} reports {version_str(running)} after the update, "
                     f"expected {new}"))


def create(options: dict[str, Any]) -> Transport:
    adapter = str(options.get("adapter", "zigbee2mqtt"))
    if adapter == "zigpy":  # ferry owns the coordinator: see zigpytransport
        from ferry.proxy.zigbee import zigpytransport

        return zigpytransport.create(options)
    if adapter not in ("zigbee2mqtt", "z2m"):
        raise AdapterError(f"unknown zigbee adapter {adapter!r}; known: zigbee2mqtt, zigpy")
    return ZigbeeTransport(Zigbee2Mqtt(Z2MOptions.from_options(options)))
