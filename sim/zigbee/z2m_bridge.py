"""A stand-in for Zigbee2MQTT on an MQTT broker, for tests and ``ferry sim zigbee z2m``.

It speaks the topics and payload shapes of Zigbee2MQTT's bridge API as its source
(lib/extension/otaUpdate.ts) and docs define them: retained ``bridge/devices``, device
state with ``update.{state,progress,remaining,installed_version,latest_version}``,
``bridge/request/device/ota_update/{check,update}`` answered on
``bridge/response/...`` with ``{data, status, error?, transaction?}``, a local override
index whose ``url`` is relative to the data directory, and ``state.json`` as its state
cache. It checks the staged file the way Z2M and a node would (sha512, size, header
match), then reports progress and the new version. The block transfer itself is what
the population simulation covers; here the subject is the MQTT contract.
"""

from __future__ import annotations

import hashlib
import json
import struct
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ferry.sim.zigbee.wire import check_ota_file


@dataclass
class BridgeDevice:
    ieee: str
    friendly_name: str
    manufacturer_code: int
    image_type: int
    file_version: int
    fail: str = ""  # when set, updates of this device fail with this reason
    supports_ota: bool = True


class FakeZigbee2Mqtt:
    def __init__(self, host: str, port: int, data_dir: Path, devices: list[BridgeDevice], *,
                 base_topic: str = "zigbee2mqtt", index_file: str = "ferry-ota-index.json",
                 step_delay_s: float = 0.05) -> None:
        import paho.mqtt.client as mqtt

        self.base = base_topic
        self.data_dir = Path(data_dir)
        self.index_file = index_file
        self.devices = {d.ieee: d for d in devices}
        self.step_delay_s = step_delay_s
        self.requests: list[tuple[str, Any]] = []
        api = getattr(mqtt, "CallbackAPIVersion", None)
        self.client: Any = (mqtt.Client(api.VERSION2, client_id="fake-z2m") if api
                            else mqtt.Client(client_id="fake-z2m"))
        self.client.on_message = self._on_message
        self._ready = threading.Event()
        self.client.on_subscribe = lambda *a: self._ready.set()
        self.client.connect(host, port)
        self.client.loop_start()
        self.client.subscribe(f"{self.base}/bridge/request/device/ota_update/+")
        if not self._ready.wait(10):
            raise RuntimeError("fake Zigbee2MQTT could not subscribe on the broker")
        self._publish_devices()
        self._save_state()

    # ---- what Z2M publishes ------------------------------------------------------

    def _resolve(self, ident: str) -> BridgeDevice | None:
        for d in self.devices.values():
            if ident in (d.ieee, d.friendly_name):
                return d
        return None

    def _publish_devices(self) -> None:
        listing: list[dict[str, Any]] = [{"ieee_address": "0x00124b0000000000",
                                          "friendly_name": "Coordinator", "type": "Coordinator"}]
        for d in self.devices.values():
            listing.append({
                "ieee_address": d.ieee, "friendly_name": d.friendly_name, "type": "EndDevice",
                "supported": True, "manufacturer": "ferry-sim", "model_id": "SIM-1",
                "software_build_id": f"{d.file_version:08x}",
                "definition": {"model": "SIM-1", "vendor": "ferry-sim",
                               "description": "simulated node", "supports_ota": d.supports_ota},
            })
        self.client.publish(f"{self.base}/bridge/devices", json.dumps(listing), qos=1,
                            retain=True).wait_for_publish(5)

    def _state(self, d: BridgeDevice, state: str, latest: int | None = None,
               **extra: Any) -> None:
        upd = {"state": state, "installed_version": d.file_version,
               "latest_version": latest if latest is not None else d.file_version, **extra}
        self.client.publish(f"{self.base}/{d.friendly_name}", json.dumps({"update": upd}),
                            qos=1)

    def _save_state(self) -> None:
        states = {d.ieee: {"update": {"state": "idle", "installed_version": d.file_version,
                                      "latest_version": d.file_version}}
                  for d in self.devices.values()}
        (self.data_dir / "state.json").write_text(json.dumps(states))

    def _respond(self, kind: str, msg: Any, data: dict[str, Any], error: str = "") -> None:
        body: dict[str, Any] = {"data": data if not error else {},
                                "status": "error" if error else "ok"}
        if error:
            body["error"] = error
        if isinstance(msg, dict) and "transaction" in msg:
            body["transaction"] = msg["transaction"]
        self.client.publish(f"{self.base}/bridge/response/device/ota_update/{kind}",
                            json.dumps(body), qos=1)

    # ---- index lookup, as zigbee-herdsman-converters' ota.ts does it --------------

    def _image_for(self, d: BridgeDevice) -> tuple[dict[str, Any], bytes] | None:
        path = self.data_dir / self.index_file
        if not path.exists():
            return None
        for entry in json.loads(path.read_text()):
            url = str(entry["url"])
            file = Path(url) if Path(url).is_absolute() else self.data_dir / url
            data = file.read_bytes()
            _m, _h, _l, _fc, mfr, itype, ver = struct.unpack_from("<IHHHHHI", data)
            meta = {"manufacturerCode": mfr, "imageType": itype, "fileVersion": ver, **entry}
            if (meta["manufacturerCode"], meta["imageType"]) != (d.manufacturer_code,
                                                                 d.image_type):
                continue
            if meta["fileVersion"] > d.file_version or meta.get("force"):
                return meta, data
            return None
        return None

    def _on_message(self, _c: Any, _u: Any, m: Any) -> None:
        kind = m.topic.rsplit("/", 1)[-1]
        try:
            msg: Any = json.loads(m.payload)
        except json.JSONDecodeError:
            msg = m.payload.decode()
        self.requests.append((m.topic, msg))
        ident = msg["id"] if isinstance(msg, dict) else str(msg)
        threading.Thread(target=self._handle, args=(kind, msg, ident), daemon=True).start()

    def _handle(self, kind: str, msg: Any, ident: str) -> None:
        d = self._resolve(ident)
        if d is None:
            self._respond(kind, msg, {}, f"Device '{ident}' does not exist")
            return
        if not d.supports_ota:
            self._respond(kind, msg, {}, f"Device '{d.friendly_name}' does not support OTA updates")
            return
        found = self._image_for(d)
        if kind == "check":
            latest = found[0]["fileVersion"] if found else None
            self._state(d, "available" if found else "idle", latest)
            self._respond(kind, msg, {"id": ident, "update_available": bool(found)})
            return
        if kind != "update":
            self._respond(kind, msg, {"id": ident})
            return
        if found is None:
            self._respond(kind, msg, {}, f"Update of '{d.friendly_name}' failed "
                                         "(No image currently available)")
            return
        meta, data = found
        problem = ""
        if "sha512" in meta and hashlib.sha512(data).hexdigest() != meta["sha512"]:
            problem = "File checksum validation failed"
        elif "fileSize" in meta and meta["fileSize"] != len(data):
            problem = "File size mismatch"
        else:
            problem = check_ota_file(data, d.manufacturer_code, d.image_type,
                                     meta["fileVersion"])
        problem = problem or d.fail
        before = f"{d.file_version:08x}"
        for pct in (0.0, 25.0, 50.0, 75.0):
            self._state(d, "updating", meta["fileVersion"], progress=pct, remaining=60)
            time.sleep(self.step_delay_s)
        if problem:
            self._state(d, "available", meta["fileVersion"])
            self._respond(kind, msg, {}, f"Update of '{d.friendly_name}' failed ({problem})")
            return
        d.file_version = meta["fileVersion"]
        self._state(d, "idle", d.file_version)
        self._save_state()
        after = f"{d.file_version:08x}"
        self._respond(kind, msg, {"id": ident,
                                  "from": {"software_build_id": before, "date_code": ""},
                                  "to": {"software_build_id": after, "date_code": ""}})

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()
