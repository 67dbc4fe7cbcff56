"""The Zigbee2MQTT adapter: ferry hands the image to Zigbee2MQTT, which serves the
blocks from its own coordinator.

Steps, following Zigbee2MQTT's documented interface (guide/usage/ota_updates):
1. the OTA file is written (atomically) under Z2M's data directory, and an entry for it
   is merged into the local override index that Z2M's
   ``ota.zigbee_ota_override_index_location`` names (Z2M re-reads that index on every
   check, so no restart is needed); entries ferry did not write are left alone;
2. ``<base>/bridge/request/device/ota_update/update`` is published with
   ``{"id": <ieee or friendly name>, "transaction": ...}``;
3. progress comes from the device's state topic (``update.progress``), the result from
   ``<base>/bridge/response/device/ota_update/update`` (``status`` ok / error).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ferry.proxy.zigbee.errors import AdapterError
from ferry.proxy.zigbee.mqtt import Message, MqttSession
from ferry.proxy.zigbee.otafile import OtaHeader


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


@dataclass
class UpdateOutcome:
    ok: bool
    message: str
    installed_version: int | None = None
    detail: dict[str, str] = field(default_factory=dict)


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class Zigbee2Mqtt:
    def __init__(self, opts: Z2MOptions) -> None:
        self.opts = opts
        self.base = opts.base_topic.rstrip("/")

    def _session(self) -> MqttSession:
        return MqttSession(self.opts.host, self.opts.port, username=self.opts.username,
                           password=self.opts.password)

    # ---- staging -------------------------------------------------------------------

    def stage(self, raw: bytes, header: OtaHeader, *, force: bool) -> dict[str, Any]:
        """Put the file where Z2M looks and point its override index at it."""
        name = (f"{header.manufacturer_code:04x}-{header.image_type:04x}-"
                f"{header.file_version:08x}.ota")
        rel = f"{self.opts.image_dir}/{name}"
        _atomic_write(self.opts.data_dir / rel, raw)
        entry: dict[str, Any] = {
            "url": rel,
            "fileName": name,
            "manufacturerCode": header.manufacturer_code,
            "imageType": header.image_type,
            "fileVersion": header.file_version,
            "fileSize": len(raw),
            "sha512": hashlib.sha512(raw).hexdigest(),
            "otaHeaderString": header.header_string.decode("utf-8", "replace"),
        }
        if header.min_hardware_version is not None:
            entry["hardwareVersionMin"] = header.min_hardware_version
            entry["hardwareVersionMax"] = header.max_hardware_version
        if force:
            entry["force"] = True
        index_path = self.opts.data_dir / self.opts.index_file
        entries: list[dict[str, Any]] = []
        if index_path.exists():
            try:
                loaded = json.loads(index_path.read_text() or "[]")
            except json.JSONDecodeError as exc:
                raise AdapterError(f"{index_path} is not valid JSON ({exc}); fix or remove "
                                   "it, Zigbee2MQTT cannot read it either") from exc
            if not isinstance(loaded, list):
                raise AdapterError(f"{index_path} must hold a JSON list of image entries")
            entries = loaded
        prefix = f"{self.opts.image_dir}/"
        kept = [e for e in entries if not (
            str(e.get("url", "")).startswith(prefix)
            and e.get("manufacturerCode") == header.manufacturer_code
            and e.get("imageType") == header.image_type)]
        # Override entries come first in Z2M's lookup; ours first within the override.
        _atomic_write(index_path, (json.dumps([entry, *kept], indent=2) + "\n").encode())
        return entry

    # ---- bridge --------------------------------------------------------------------

    def devices(self, settle_s: float = 1.0) -> list[Z2MDevice]:
        """Devices from the retained ``bridge/devices`` list, plus any retained state
        that already tells their installed OTA file version."""
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
            for dev in out:  # Z2M's cache of last states (advanced.cache_state)
                dev.installed_version = self._cached_version(dev.ieee)
            by_name = {d.friendly_name: d for d in out}
            s.subscribe(f"{self.base}/+")
            for m in s.drain(settle_s):  # retained states (device option retain: true)
                known = by_name.get(m.topic[len(self.base) + 1:])
                if known is not None:
                    known.installed_version = _installed(m) or known.installed_version
            return out
        finally:
            s.close()

    def _cached_version(self, ieee: str) -> int | None:
        path = self.opts.data_dir / "state.json"
        try:
            states = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            return None
        upd = (states.get(ieee) or {}).get("update") or {} if isinstance(states, dict) else {}
        v = upd.get("installed_version") if isinstance(upd, dict) else None
        return v if isinstance(v, int) else None

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

    def _state_topic(self, s: MqttSession, device: str) -> str:
        """Z2M publishes a device's state under its friendly name, not its IEEE address."""
        topic = f"{self.base}/bridge/devices"
        s.subscribe(topic)
        msg = s.wait_for(lambda m: m.topic == topic, 5.0)
        name = device
        if msg is not None:
            try:
                for d in json.loads(msg.payload or b"[]"):
                    if device in (d.get("ieee_address"), d.get("friendly_name")):
                        name = str(d.get("friendly_name") or device)
            except (json.JSONDecodeError, AttributeError, TypeError):
                pass
        return f"{self.base}/{name}"

    def check(self, device: str) -> tuple[bool, int | None]:
        """(update available, installed file version) as Z2M reports them."""
        s = self._session()
        try:
            state_topic = self._state_topic(s, device)
            s.subscribe(state_topic)
            seen: dict[str, int | None] = {"v": None}

            def state(m: Message) -> None:
                if m.topic == state_topic:
                    seen["v"] = _installed(m) or seen["v"]

            body = self._request(s, "check", device, self.opts.request_timeout_s, state)
            for m in s.drain(0.3):
                state(m)
            if body.get("status") != "ok":
                raise AdapterError(str(body.get("error") or f"check of {device} failed"))
            data = body.get("data") or {}
            avail = data.get("update_available", data.get("updateAvailable", False))
            return bool(avail), seen["v"]
        finally:
            s.close()

    def update(self, device: str, progress: Callable[[float], None]) -> UpdateOutcome:
        s = self._session()
        try:
            state_topic = self._state_topic(s, device)
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

            body = self._request(s, "update", device, self.opts.update_timeout_s, on_state)
            for m in s.drain(0.3):
                on_state(m)
            if body.get("status") != "ok":
                return UpdateOutcome(False, str(body.get("error") or "update failed"))
            data = body.get("data") or {}
            detail = {f"{k}_{kk}": str(vv) for k in ("from", "to")
                      for kk, vv in (data.get(k) or {}).items()}
            return UpdateOutcome(True, "updated by Zigbee2MQTT", last["v"], detail)
        finally:
            s.close()


def _installed(m: Message) -> int | None:
    try:
        upd = json.loads(m.payload).get("update") or {}
    except (json.JSONDecodeError, AttributeError):
        return None
    v = upd.get("installed_version")
    return int(v) if isinstance(v, int) else None
