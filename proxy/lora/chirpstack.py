"""ChirpStack v4 as ferry's network server: MQTT integration plus the REST API.

Why ChirpStack: it is the open-source LoRaWAN network server most gateways that run
their own LNS use (it runs on the gateway itself next to the concentrator), and its
MQTT integration is plain JSON over a broker the gateway already has (mosquitto).

- Uplinks: ChirpStack publishes every uplink event on
  ``application/{applicationId}/device/{devEui}/event/up`` (JSON: ``deviceInfo.devEui``,
  ``fPort``, ``data`` base64, ``time`` RFC 3339).
- Unicast downlinks: ferry publishes ``{"devEui", "confirmed", "fPort", "data"}`` on
  ``application/{applicationId}/device/{devEui}/command/down``; ChirpStack queues it
  for the node's next receive window.
- Multicast: ChirpStack v4 has no MQTT topic for multicast, so the group is updated
  (``PUT /api/multicast-groups/{id}``), members added
  (``POST /api/multicast-groups/{id}/devices``) and each fragment enqueued
  (``POST /api/multicast-groups/{id}/queue``) through its REST API (the gRPC gateway,
  ``chirpstack-rest-api``), authenticated with an API token.
"""

from __future__ import annotations

import base64
import contextlib
import json
import queue
import threading
import time
from datetime import datetime
from typing import Any

from ferry.proxy.lora.errors import NetworkServerError
from ferry.proxy.lora.netserver import MulticastGroup, Uplink


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def uplink_topic(application_id: str, dev_eui: str = "+") -> str:
    return f"application/{application_id}/device/{dev_eui}/event/up"


def downlink_topic(application_id: str, dev_eui: str) -> str:
    return f"application/{application_id}/device/{dev_eui}/command/down"


def downlink_json(dev_eui: str, fport: int, payload: bytes) -> dict[str, Any]:
    return {"devEui": dev_eui, "confirmed": False, "fPort": fport, "data": _b64(payload)}


def parse_up_event(raw: bytes) -> Uplink | None:
    """An Uplink from one ChirpStack v4 ``event/up`` JSON message (None if it has no data)."""
    try:
        msg = json.loads(raw)
        eui = str(msg["deviceInfo"]["devEui"]).lower()
        fport = int(msg.get("fPort", 0))
        data = base64.b64decode(msg.get("data", "") or "")
    except (ValueError, KeyError, TypeError):
        return None
    if fport == 0 or not data:
        return None
    at = time.time()
    stamp = msg.get("time")
    if isinstance(stamp, str):
        with contextlib.suppress(ValueError):
            at = datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
    return Uplink(eui, fport, data, at)


class ChirpStack:
    """NetworkServer over ChirpStack v4: MQTT for unicast, REST for multicast."""

    def __init__(self, *, application_id: str, mqtt_host: str = "127.0.0.1",
                 mqtt_port: int = 1883, mqtt_username: str | None = None,
                 mqtt_password: str | None = None, api_url: str | None = None,
                 api_token: str | None = None, group_name: str = "ferry-fuota",
                 region: str = "EU868", connect_timeout: float = 10.0) -> None:
        import paho.mqtt.client as mqtt

        if not application_id:
            raise NetworkServerError("ChirpStack needs 'application_id' (the application's "
                                     "UUID) in the lora transport options")
        self.app = application_id
        self.api_url = api_url.rstrip("/") if api_url else None
        self.api_token = api_token
        self.group_name = group_name
        self.region = region
        self._inbox: queue.Queue[bytes] = queue.Queue()
        self._subscribed = threading.Event()
        self._client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2,
                                   client_id=f"ferry-fuota-{id(self):x}")
        if mqtt_username:
            self._client.username_pw_set(mqtt_username, mqtt_password)
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = lambda *_a: self._subscribed.set()
        self._client.on_message = lambda _c, _u, m: self._inbox.put(bytes(m.payload))
        try:
            self._client.connect(mqtt_host, mqtt_port, keepalive=60)
        except OSError as err:
            raise NetworkServerError(
                f"cannot reach the MQTT broker at {mqtt_host}:{mqtt_port} ({err}); is "
                "mosquitto running and is ChirpStack's MQTT integration pointed at it?"
            ) from None
        self._client.loop_start()
        if not self._subscribed.wait(connect_timeout):
            self.close()
            raise NetworkServerError(f"MQTT broker {mqtt_host}:{mqtt_port} did not accept the "
                                     f"subscription within {connect_timeout:.0f} s")

    def _on_connect(self, client: Any, _u: Any, _flags: Any, reason: Any,
                    _props: Any = None) -> None:
        if not getattr(reason, "is_failure", False):
            client.subscribe(uplink_topic(self.app), qos=1)

    # -- NetworkServer ------------------------------------------------------------

    def send_unicast(self, dev_eui: str, fport: int, payload: bytes) -> None:
        body = json.dumps(downlink_json(dev_eui, fport, payload))
        info = self._client.publish(downlink_topic(self.app, dev_eui), body, qos=1)
        info.wait_for_publish(timeout=30)
        if not info.is_published():
            raise NetworkServerError(f"MQTT broker did not take the downlink to {dev_eui}")

    def _api(self, method: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
        import requests

        if not self.api_url:
            raise NetworkServerError("multicast needs ChirpStack's REST API: set 'api_url' "
                                     "(and 'api_token') in the lora transport options")
        headers = {"Accept": "application/json"}
        if self.api_token:
            headers["Grpc-Metadata-Authorization"] = f"Bearer {self.api_token}"
            headers["Authorization"] = f"Bearer {self.api_token}"
        try:
            r = requests.request(method, self.api_url + path, json=body, headers=headers,
                                 timeout=30)
        except requests.RequestException as err:
            raise NetworkServerError(f"ChirpStack API {self.api_url} unreachable: {err}") from None
        if r.status_code >= 300:
            raise NetworkServerError(
                f"ChirpStack API {method} {path} answered {r.status_code}: {r.text[:200]}")
        try:
            out = r.json() if r.content else {}
        except ValueError:
            out = {}
        return out if isinstance(out, dict) else {}

    def configure_multicast(self, group: MulticastGroup, dev_euis: list[str]) -> None:
        gid = group.group_id
        self._api("PUT", f"/api/multicast-groups/{gid}", {"multicastGroup": {
            "id": gid,
            "name": self.group_name,
            "applicationId": self.app,
            "region": self.region,
            "mcAddr": f"{group.mc_addr:08x}",
            "mcNwkSKey": group.mc_net_s_key.hex(),
            "mcAppSKey": group.mc_app_s_key.hex(),
            "fCnt": 0,
            "groupType": "CLASS_C",
            "dr": group.dr,
            "frequency": group.frequency_hz,
            "classCSchedulingType": "DELAY",
        }})
        for eui in dev_euis:
            self._api("POST", f"/api/multicast-groups/{gid}/devices",
                      {"multicastGroupId": gid, "devEui": eui})

    def send_multicast(self, group_id: str, fport: int, payload: bytes) -> None:
        self._api("POST", f"/api/multicast-groups/{group_id}/queue", {"queueItem": {
            "multicastGroupId": group_id, "fPort": fport, "data": _b64(payload)}})

    def receive(self, timeout: float) -> Uplink | None:
        deadline = time.monotonic() + max(timeout, 0.0)
        while True:
            left = deadline - time.monotonic()
            try:
                raw = self._inbox.get(timeout=max(left, 0.0)) if left > 0 else \
                    self._inbox.get_nowait()
            except queue.Empty:
                return None
            up = parse_up_event(raw)
            if up is not None:
                return up

    def close(self) -> None:
        self._client.loop_stop()
        self._client.disconnect()
