"""The Zigbee2MQTT adapter: ferry hands the image to Zigbee2MQTT, which serves the
blocks from its own coordinator.

Steps, following Zigbee2MQTT's interface (``lib/extension/otaUpdate.ts`` of 2.2.1 and
2.14.1; guide/usage/ota_updates):
1. the OTA file and its entry go into the local override index that Z2M's
   ``ota.zigbee_ota_override_index_location`` names (``overrideindex``; Z2M re-reads it
   on every check, but reads the SETTING only at start: ``requiresRestart`` in its
   settings schema);
2. ``<base>/bridge/request/device/ota_update/update`` is published with
   ``{"id": <ieee or friendly name>, "transaction": ...}``;
3. progress comes from the device's state topic (``update.progress``), the result from
   ``<base>/bridge/response/device/ota_update/update`` (``status`` ok / error).

Z2M's answers are relayed with what to do about them (``explain``): above all
"fetch failed", which is how Z2M 2.2.x fails every check and update on a gateway
without internet (it fetches the online index before reading the override index).
"""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ferry.proxy.zigbee import z2mdata
from ferry.proxy.zigbee.errors import AdapterError
from ferry.proxy.zigbee.mqtt import Message, MqttSession
from ferry.proxy.zigbee.overrideindex import OverrideIndex
from ferry.proxy.zigbee.z2mdata import BridgeInfo


@dataclass
class Z2MOptions:
    data_dir: Path
    host: str = "127.0.0.1"
    port: int = 1883
    base_topic: str = "zigbee2mqtt"
    username: str | None = None
    password: str | None = None
    index_file: str = "ferry-ota-index.json"  # as named in Z2M's configuration.yaml
    image_dir: str = "ferry-ota"  # under data_dir
    update_timeout_s: float = 4 * 3600.0  # a 256 KiB image at Z2M's pace is 20+ minutes
    request_timeout_s: float = 120.0

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> Z2MOptions:
        data_dir = options.get("z2m_data_dir") or options.get("data_dir")
        if not data_dir:
            raise AdapterError("zigbee transport needs z2m_data_dir (Zigbee2MQTT's data "
                               "directory, where configuration.yaml lives)")
        return cls(
            data_dir=Path(str(data_dir)),
            host=str(options.get("mqtt_host", "127.0.0.1")),
            port=int(options.get("mqtt_port", 1883)),
            base_topic=str(options.get("base_topic", "zigbee2mqtt")),
            username=options.get("mqtt_username"),
            password=options.get("mqtt_password"),
            index_file=str(options.get("index_file", "ferry-ota-index.json")),
            update_timeout_s=float(options.get("update_timeout_s", 4 * 3600.0)),
            request_timeout_s=float(options.get("request_timeout_s", 120.0)),
        )


@dataclass
class Z2MDevice:
    ieee: str
    friendly_name: str
    model: str = ""
    vendor: str = ""
    supports_ota: bool = False
    software_build_id: str = ""
    installed_version: int | None = None  # OTA file version, when Z2M has reported it
    hw_basic: int | None = None  # Basic-cluster HWVersion (what Z2M 2.2 matches)
    hw_query: int | None = None  # from the node's Query Next Image Request (Z2M 2.14)


@dataclass
class CheckResult:
    available: bool
    installed: int | None
    hw_query: int | None = None
    ieee: str = ""


@dataclass
class UpdateOutcome:
    ok: bool
    message: str
    installed_version: int | None = None
    detail: dict[str, str] = field(default_factory=dict)


OFFLINE_HINT = ("Zigbee2MQTT {version}fetches its online OTA index before it reads the "
                "override index, and could not reach it (\"fetch failed\"). Give the "
                "gateway access to raw.githubusercontent.com, or upgrade Zigbee2MQTT to "
                "2.14 or later, which falls back to the override index when offline")


def explain(error: str, info: BridgeInfo) -> str:
    """Z2M's error text plus what to do about it, where ferry knows."""
    if "fetch failed" in error:
        if info.falls_back_offline:  # its own fallback covers the online index
            return (f"{error}: Zigbee2MQTT {info.version} reads the override index without "
                    "internet, so an http(s) URL it must fetch (the index location or an "
                    "entry's url) is unreachable")
        version = f"{info.version} " if info.version else ""
        return f"{error}: {OFFLINE_HINT.format(version=version)}"
    if "No image currently available" in error or "No new image available" in error:
        if info.restart_required:
            return (f"{error}: Zigbee2MQTT reports restart_required; restart it so that "
                    "a changed ota.zigbee_ota_override_index_location takes effect")
        return (f"{error}: Zigbee2MQTT found no matching entry; check "
                "ota.zigbee_ota_override_index_location (needs a Z2M restart when "
                "changed) and the node's hardware version against the image's range "
                "(Z2M 2.2 uses the Basic-cluster value, 2.14 the one in the node's query)")
    return error


def hardware_hint(info: BridgeInfo, hw_range: tuple[int, int] | None, hw_basic: int | None,
                  hw_query: int | None) -> str:
    """Why Z2M would not match an image's hardware range, from what ferry knows of the
    node; "" when it would, or when the release or the value is unknown. 2.2.1 matches
    the Basic-cluster value, 2.14.1 the query's (docs/transport-zigbee.md)."""
    if hw_range is None or not info.release:
        return ""
    if info.release >= (2, 14):
        where, value = "the hardware version in the node's Query Next Image Request", hw_query
        if value is None:
            return ""  # seen only in Z2M's debug log; unknown is not missing
    elif info.release <= (2, 2, 1):
        where, value = "the node's Basic-cluster hardware version", hw_basic
    else:
        return ""
    lo, hi = hw_range
    if value is not None and lo <= value <= hi:
        return ""
    have = "which Zigbee2MQTT does not have" if value is None else f"0x{value:04X}"
    return (f"Zigbee2MQTT {info.version} matches the image's hardware range "
            f"0x{lo:04X}-0x{hi:04X} against {where}, {have}")


class Zigbee2Mqtt:
    def __init__(self, opts: Z2MOptions) -> None:
        self.opts = opts
        self.base = opts.base_topic.rstrip("/")
        self.index = OverrideIndex(opts.data_dir, opts.index_file, opts.image_dir)
        self._info: BridgeInfo | None = None

    def _session(self) -> MqttSession:
        return MqttSession(self.opts.host, self.opts.port, username=self.opts.username,
                           password=self.opts.password)

    # ---- bridge --------------------------------------------------------------------

    def bridge_info(self, s: MqttSession | None = None) -> BridgeInfo:
        """Z2M's retained ``bridge/info`` (version and settings); empty when absent."""
        if self._info is not None:
            return self._info
        own = s is None
        s = s or self._session()
        try:
            topic = f"{self.base}/bridge/info"
            s.subscribe(topic)
            msg = s.wait_for(lambda m: m.topic == topic, 2.0)
            self._info = BridgeInfo.parse(msg.payload) if msg is not None else BridgeInfo()
            return self._info
        finally:
            if own:
                s.close()

    def configuration_problem(self) -> str:
        """Why Z2M would not read ferry's index, from its published settings; "" if
        it would or if Z2M does not say."""
        info = self.bridge_info()
        loc = info.override_index
        if info.version and loc is None:
            return (f"Zigbee2MQTT has no ota.zigbee_ota_override_index_location; set it to "
                    f"{self.opts.index_file} in configuration.yaml and restart Zigbee2MQTT "
                    "(the setting is read only at start)")
        # Z2M resolves a relative location against its data directory (setOtaConfiguration)
        if loc is not None and (Path(loc) if Path(loc).is_absolute()
                                else self.opts.data_dir / loc) != self.index.path:
            return (f"Zigbee2MQTT reads the override index {loc!r}, ferry writes "
                    f"{self.opts.index_file!r}; make them the same (index_file option, or "
                    "Z2M's ota.zigbee_ota_override_index_location and a Z2M restart)")
        return ""

    def devices(self, settle_s: float = 1.0) -> list[Z2MDevice]:
        """Devices from the retained ``bridge/devices`` list, plus any retained state
        that already tells their installed OTA file version and hardware version."""
        s = self._session()
        try:
            s.subscribe(f"{self.base}/bridge/devices")
            msg = s.wait_for(lambda m: m.topic == f"{self.base}/bridge/devices",
                             self.opts.request_timeout_s)
            if msg is None:
                raise AdapterError(f"no {self.base}/bridge/devices message from Zigbee2MQTT; "
                                   "is it running and is base_topic right?")
            out = []
            for d in json.loads(msg.payload or b"[]"):
                if d.get("type") == "Coordinator":
                    continue
                definition = d.get("definition") or {}
                out.append(Z2MDevice(
                    ieee=str(d.get("ieee_address", "")),
                    friendly_name=str(d.get("friendly_name", "")),
                    model=str(definition.get("model", d.get("model_id", "")) or ""),
                    vendor=str(definition.get("vendor", d.get("manufacturer", "")) or ""),
                    supports_ota=bool(definition.get("supports_ota", False)),
                    software_build_id=str(d.get("software_build_id") or ""),
                ))
            basic = z2mdata.basic_hardware_versions(self.opts.data_dir)
            queried = z2mdata.remembered_query_hardware(self.index.image_path)
            for dev in out:  # Z2M's cache of last states (advanced.cache_state)
                dev.installed_version = z2mdata.cached_installed_version(
                    self.opts.data_dir, dev.ieee)
                dev.hw_basic = basic.get(dev.ieee)
                dev.hw_query = queried.get(dev.ieee)
            by_name = {d.friendly_name: d for d in out}
            s.subscribe(f"{self.base}/+")
            s.subscribe(f"{self.base}/bridge/logging")
            for m in s.drain(settle_s):  # retained states (device option retain: true)
                if m.topic == f"{self.base}/bridge/logging":
                    for dev in out:
                        dev.hw_query = _first(_query_hw(m, dev.ieee), dev.hw_query)
                    continue
                known = by_name.get(m.topic[len(self.base) + 1:])
                if known is not None:
                    known.installed_version = _installed(m) or known.installed_version
                    known.hw_basic = _first(_device_info_hw(m), known.hw_basic)
            return out
        finally:
            s.close()

    def _request(self, s: MqttSession, kind: str, device: str, timeout: float,
                 on_other: Callable[[Message], None] | None = None) -> dict[str, Any]:
        tid = uuid.uuid4().hex[:12]
        rsp_topic = f"{self.base}/bridge/response/device/ota_update/{kind}"
        s.subscribe(rsp_topic)
        s.publish(f"{self.base}/bridge/request/device/ota_update/{kind}",
                  json.dumps({"id": device, "transaction": tid}))

        def mine(m: Message) -> bool:
            if m.topic != rsp_topic:
                return False
            try:
                body = json.loads(m.payload)
            except json.JSONDecodeError:
                return False
            if body.get("transaction") is not None:
                return bool(body.get("transaction") == tid)
            return bool((body.get("data") or {}).get("id") == device)

        msg = s.wait_for(mine, timeout, on_other)
        if msg is None:
            raise AdapterError(f"Zigbee2MQTT did not answer ota_update/{kind} for {device} "
                               f"within {timeout:.0f} s")
        body: dict[str, Any] = json.loads(msg.payload)
        return body

    def _state_topic(self, s: MqttSession, device: str) -> tuple[str, str]:
        """(state topic, IEEE address): Z2M publishes a device's state under its
        friendly name and logs it under its IEEE address."""
        topic = f"{self.base}/bridge/devices"
        s.subscribe(topic)
        msg = s.wait_for(lambda m: m.topic == topic, 5.0)
        name = ieee = device
        if msg is not None:
            try:
                for d in json.loads(msg.payload or b"[]"):
                    if device in (d.get("ieee_address"), d.get("friendly_name")):
                        name = str(d.get("friendly_name") or device)
                        ieee = str(d.get("ieee_address") or device)
            except (json.JSONDecodeError, AttributeError, TypeError):
                pass
        return f"{self.base}/{name}", ieee

    def check(self, device: str) -> CheckResult:
        """Whether Z2M would offer an update, and the installed file version."""
        s = self._session()
        try:
            info = self.bridge_info(s)
            state_topic, ieee = self._state_topic(s, device)
            log_topic = f"{self.base}/bridge/logging"
            s.subscribe(state_topic)
            s.subscribe(log_topic)
            seen: dict[str, int | None] = {"v": None, "hw": None}

            def other(m: Message) -> None:
                if m.topic == state_topic:
                    seen["v"] = _installed(m) or seen["v"]
                elif m.topic == log_topic:
                    seen["hw"] = _first(_query_hw(m, ieee), seen["hw"])

            body = self._request(s, "check", device, self.opts.request_timeout_s, other)
            for m in s.drain(0.3):
                other(m)
            if body.get("status") != "ok":
                raise AdapterError(explain(str(body.get("error")
                                               or f"check of {device} failed"), info))
            data = body.get("data") or {}
            avail = data.get("update_available", data.get("updateAvailable", False))
            if seen["hw"] is not None:
                with contextlib.suppress(OSError):
                    z2mdata.remember_query_hardware(self.index.image_path, ieee, seen["hw"])
            return CheckResult(bool(avail), seen["v"], seen["hw"], ieee)
        finally:
            s.close()

    def abort(self, device: str) -> bool:
        """Ask Z2M to stop a running update (2.12 and later only; see BridgeInfo)."""
        if not self.bridge_info().can_abort:
            return False
        s = self._session()
        try:
            s.publish(f"{self.base}/bridge/request/device/ota_update/update/abort",
                      json.dumps({"id": device}))
            return True
        finally:
            s.close()

    def update(self, device: str, progress: Callable[[float], None]) -> UpdateOutcome:
        s = self._session()
        requested = finished = False
        try:
            info = self.bridge_info(s)
            state_topic, _ = self._state_topic(s, device)
            s.subscribe(state_topic)
            last: dict[str, int | None] = {"v": None}

            def on_state(m: Message) -> None:
                if m.topic != state_topic:
                    return
                try:
                    upd = json.loads(m.payload).get("update") or {}
                except (json.JSONDecodeError, AttributeError):
                    return
                if upd.get("state") == "updating" and upd.get("progress") is not None:
                    progress(float(upd["progress"]))
                last["v"] = _installed(m) or last["v"]

            requested = True
            body = self._request(s, "update", device, self.opts.update_timeout_s, on_state)
            finished = True
            for m in s.drain(0.3):
                on_state(m)
            if body.get("status") != "ok":
                return UpdateOutcome(False, explain(str(body.get("error") or "update failed"),
                                                    info))
            data = body.get("data") or {}
            detail = {f"{k}_{kk}": str(vv) for k in ("from", "to")
                      for kk, vv in (data.get(k) or {}).items()}
            to_version = (data.get("to") or {}).get("file_version")
            if last["v"] is None and isinstance(to_version, int):
                last["v"] = to_version  # 2.14 answers with the file version itself
            return UpdateOutcome(True, "updated by Zigbee2MQTT", last["v"], detail)
        finally:
            s.close()
            if requested and not finished:  # timed out, cancelled or interrupted: stop Z2M too
                with contextlib.suppress(AdapterError):
                    self.abort(device)


def _first(new: int | None, old: int | None) -> int | None:
    """The newer value when there is one (hardware version 0 is a value)."""
    return new if new is not None else old


def _installed(m: Message) -> int | None:
    try:
        upd = json.loads(m.payload).get("update") or {}
    except (json.JSONDecodeError, AttributeError):
        return None
    v = upd.get("installed_version")
    return int(v) if isinstance(v, int) else None


def _device_info_hw(m: Message) -> int | None:
    """``device.hardwareVersion`` of a state published with
    ``mqtt.include_device_information: true`` (Z2M ``controller.ts``)."""
    try:
        dev = json.loads(m.payload).get("device") or {}
    except (json.JSONDecodeError, AttributeError):
        return None
    v = dev.get("hardwareVersion") if isinstance(dev, dict) else None
    return v if isinstance(v, int) else None


def _query_hw(m: Message, ieee: str) -> int | None:
    try:
        line = json.loads(m.payload).get("message")
    except (json.JSONDecodeError, AttributeError):
        return None
    return z2mdata.query_hardware_version(line, ieee) if isinstance(line, str) else None
