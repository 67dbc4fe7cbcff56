"""ferry's ChirpStack adapter against Debian's mosquitto, with paho-mqtt as the other end.

A plain paho client plays ChirpStack's MQTT integration (it knows nothing of ferry's
code): it takes ``command/down`` JSON, hands the payload to simulated nodes and
publishes their answers as ChirpStack v4 ``event/up`` JSON. A small HTTP server plays
ChirpStack's REST API for the multicast group and queue. A full FUOTA campaign runs
through both; the nodes must rebuild the image. The published TS004 vector is checked
here too, as the codec's independent oracle.
"""

from __future__ import annotations

import base64
import json
import random
import threading
import time
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import paho.mqtt.client as mqtt
import pytest

from ferry.proxy.lora.chirpstack import ChirpStack
from ferry.proxy.lora.fragmentation import encode
from ferry.proxy.lora.netserver import SystemClock
from ferry.proxy.lora.session import Campaign, Device, Options
from ferry.sim.lora.node import Node

APP = "2b6e4c0e-6b2d-4b47-9f38-4f6f3a1d9c10"
GROUP = "8f1a7c43-1c4e-4a2b-a0a4-5e5e0d2b7c11"


def peer_client(port: int) -> mqtt.Client:
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"peer-{random.random()}")
    c.connect("127.0.0.1", port)
    c.loop_start()
    return c


def up_event(dev_eui: str, fport: int, data: bytes, fcnt: int = 1,
             stamp: str = "2026-11-21T10:00:00.123456789+00:00") -> str:
    """A ChirpStack v4 uplink event, shaped as its MQTT integration publishes it."""
    return json.dumps({
        "deduplicationId": "3e0a8f2c-8d0b-4d9e-9b0e-7e6c2b0b9a11",
        "time": stamp,
        "deviceInfo": {"tenantId": "52f14cd4-c6f1-4fbd-8f87-4025e1d49242",
                       "tenantName": "ChirpStack", "applicationId": APP,
                       "applicationName": "sensors", "deviceProfileId": "x",
                       "deviceProfileName": "class-c", "deviceName": dev_eui,
                       "devEui": dev_eui},
        "devAddr": "01d2e3f4", "adr": True, "dr": 5, "fCnt": fcnt, "fPort": fport,
        "confirmed": False, "data": base64.b64encode(data).decode(),
        "rxInfo": [], "txInfo": {"frequency": 868100000},
    })


def test_published_ts004_vector():
    frags = encode(bytes(range(100)), 10, 10)
    assert frags[10].hex() == "26262222" "2e2e2222" "2626"
    assert frags[19].hex() == "22232425" "26271819" "0a0b"


def test_downlink_and_uplink_json_through_mosquitto(broker):
    got: list[mqtt.MQTTMessage] = []
    seen = threading.Event()
    peer = peer_client(broker)
    subscribed = threading.Event()
    peer.on_subscribe = lambda *_a: subscribed.set()
    peer.on_message = lambda _c, _u, m: (got.append(m), seen.set())
    peer.subscribe(f"application/{APP}/device/+/command/down", qos=1)
    assert subscribed.wait(10)
    cs = ChirpStack(application_id=APP, mqtt_port=broker)
    try:
        cs.send_unicast("0102030405060708", 201, bytes([0x01, 0x03]))
        assert seen.wait(10)
        assert got[0].topic == f"application/{APP}/device/0102030405060708/command/down"
        assert json.loads(got[0].payload) == {
            "devEui": "0102030405060708", "confirmed": False, "fPort": 201, "data": "AQM="}
        info = peer.publish(f"application/{APP}/device/0102030405060708/event/up",
                            up_event("0102030405060708", 202, bytes([1, 2, 3, 4, 5, 0x10])),
                            qos=1)
        info.wait_for_publish(10)
        up = cs.receive(10)
        assert up is not None
        assert (up.dev_eui, up.fport, up.payload) == (
            "0102030405060708", 202, bytes([1, 2, 3, 4, 5, 0x10]))
        assert up.received_at == pytest.approx(1795255200.123457, abs=1e-3)
        assert cs.receive(0.2) is None
    finally:
        cs.close()
        peer.loop_stop()
        peer.disconnect()


class FakeChirpStack:
    """The MQTT side (paho) and REST side (http.server) of a network server, over nodes."""

    def __init__(self, port: int, nodes: dict[str, Node]) -> None:
        self.nodes = nodes
        self.lock = threading.Lock()
        self.rest: list[tuple[str, str, dict]] = []
        self.members: set[str] = set()
        self.group: dict = {}
        self.mqtt = peer_client(port)
        ready = threading.Event()
        self.mqtt.on_subscribe = lambda *_a: ready.set()
        self.mqtt.on_message = self._down
        self.mqtt.subscribe(f"application/{APP}/device/+/command/down", qos=1)
        assert ready.wait(10)
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.rest.append((self.command, self.path, body))
                assert self.headers["Grpc-Metadata-Authorization"] == "Bearer tok"
                out = outer.api(self.command, self.path, body)
                data = json.dumps(out).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_PUT = _serve
            do_POST = _serve

            def log_message(self, *_a: object) -> None:
                pass

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}"
        threading.Thread(target=self.http.serve_forever, daemon=True).start()

    def _publish(self, eui: str, answers: list[tuple[float, int, bytes]], at: float) -> None:
        """Each answer stamped when the node sends it (``at`` + its delay), as
        ChirpStack's ``time`` is the gateway's reception time. The node reads its clock
        for an AppTimeReq at that moment (sim/lora/node.py: the second request of a
        resync goes a second after the answer), so a stamp taken when this thread
        publishes would be a second early, and clock sync would pass or fail with
        the fraction of the second the test happened to run at."""
        for delay, port, payload in answers:
            stamp = datetime.fromtimestamp(at + delay, UTC).isoformat()
            self.mqtt.publish(f"application/{APP}/device/{eui}/event/up",
                              up_event(eui, port, payload, stamp=stamp), qos=1)

    def _down(self, _c: object, _u: object, m: mqtt.MQTTMessage) -> None:
        msg = json.loads(m.payload)
        node = self.nodes[msg["devEui"]]
        now = time.time()
        with self.lock:
            answers = node.downlink(msg["fPort"], base64.b64decode(msg["data"]), now)
        self._publish(msg["devEui"], answers, now)

    def api(self, method: str, path: str, body: dict) -> dict:
        if method == "PUT" and path == f"/api/multicast-groups/{GROUP}":
            self.group = body["multicastGroup"]
            return {}
        if path == f"/api/multicast-groups/{GROUP}/devices":
            self.members.add(body["devEui"])
            return {}
        if path == f"/api/multicast-groups/{GROUP}/queue":
            item = body["queueItem"]
            payload = base64.b64decode(item["data"])
            now = time.time()
            for eui in sorted(self.members):
                node = self.nodes[eui]
                with self.lock:
                    grp = node.groups.get(0)
                    if (grp is None or f"{grp.addr:08x}" != self.group["mcAddr"]
                            or grp.app_s_key.hex() != self.group["mcAppSKey"]
                            or not node.listening(0, now)):
                        continue
                    answers = node.downlink(item["fPort"], payload, now)
                self._publish(eui, answers, now)
            return {"fCnt": len(self.rest)}
        raise AssertionError(f"unexpected API call {method} {path}")

    def close(self) -> None:
        self.http.shutdown()
        self.http.server_close()
        self.mqtt.loop_stop()
        self.mqtt.disconnect()


def test_fuota_campaign_through_mosquitto_and_rest(broker):
    rng = random.Random(11)
    nodes, devices = {}, []
    for i in range(3):
        eui = f"a84041000181{i:04x}"
        key = rng.randbytes(16)
        nodes[eui] = Node(eui, key, clock_offset=rng.uniform(-40, 40), ack_spread=0.05,
                          rng=random.Random(i))
        devices.append(Device(eui, key))
    fake = FakeChirpStack(broker, nodes)
    cs = ChirpStack(application_id=APP, mqtt_port=broker, api_url=fake.url, api_token="tok")
    image = rng.randbytes(700)
    try:
        opts = Options(duty_cycle=1.0, loss_estimate=0.0, answer_timeout=20, start_margin=2,
                       status_timeout=10, frag_size=100, mc_addr=0x26000042)
        report = Campaign(cs, SystemClock(), GROUP, devices, opts).run(image)
    finally:
        cs.close()
        fake.close()
    assert report.ok, report.nodes
    assert all(n.image == image for n in nodes.values())
    assert all(n.synced and abs(n.clock_offset) <= 1.5 for n in nodes.values())
    assert fake.group["mcAddr"] == "26000042" and fake.group["groupType"] == "CLASS_C"
    assert fake.group["dr"] == 5 and fake.group["frequency"] == 869525000
    assert fake.members == set(nodes)
    queue = [b["queueItem"] for m, p, b in fake.rest if p.endswith("/queue")]
    assert all(q["fPort"] == 201 and q["multicastGroupId"] == GROUP for q in queue)
    assert len(queue) == report.fragments_sent + report.status_rounds
