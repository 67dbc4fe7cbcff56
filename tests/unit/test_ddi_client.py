"""The DDI client against the OpenAPI-checked fixture server (tests/ddi_server.py)."""

from __future__ import annotations

import hashlib
import io
import sys
from pathlib import Path

import jsonschema
import pytest

from ferry.daemon.backend import ddi

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from ddi_server import DdiFixture, validate, validate_exchange


@pytest.fixture
def server():
    s = DdiFixture().start()
    yield s
    s.stop()
    assert s.violations == []


def make_client(server, exchanges=None, **kw):
    settings = ddi.DdiSettings(url=server.url, tenant="DEFAULT", controller_id="gw1", **kw)

    def record(method, url, req, status, resp):
        validate_exchange(method, url, req, status, resp)
        if exchanges is not None:
            exchanges.append((method, url, status))

    return ddi.DdiClient(settings, on_exchange=record)


def test_parse_sleep_and_jitter():
    assert ddi.parse_sleep("00:01:30") == 90
    assert ddi.parse_sleep("12:00:00") == 43200
    assert ddi.parse_sleep(None) == ddi.DEFAULT_SLEEP
    with pytest.raises(ddi.DdiError, match="HH:MM:SS"):
        ddi.parse_sleep("HH:MM:SS")
    assert ddi.jittered(100, 0.1, rng=lambda: 0.0) == pytest.approx(90)
    assert ddi.jittered(100, 0.1, rng=lambda: 1.0) == pytest.approx(110)
    assert ddi.jittered(100, 0.0, rng=lambda: 1.0) == pytest.approx(100)


def test_poll_honours_server_sleep(server):
    server.sleep = "00:02:00"
    c = make_client(server, poll_jitter=0.25)
    poll = c.poll()
    assert poll.sleep == 120
    assert poll.config_data_href.endswith("/configData")
    assert not poll.deployment_href
    sleeps = {round(c.next_sleep(poll, rng=lambda v=v: v)) for v in (0.0, 0.5, 1.0)}
    assert sleeps == {90, 120, 150}


def test_target_token_header_and_refusal(server):
    server.target_token = "s3cret"
    c = make_client(server, target_token="s3cret")
    c.poll()
    assert server.auth_headers[-1] == "TargetToken s3cret"
    bad = make_client(server, target_token="wrong")
    with pytest.raises(ddi.DdiError, match="refused"):
        bad.poll()


def test_gateway_token_header(server):
    c = make_client(server, gateway_token="tenant-wide")
    c.poll()
    assert server.auth_headers[-1] == "GatewayToken tenant-wide"


def test_deployment_with_several_chunks(server):
    aid = server.assign([("os", "gateway", "2.0", {"gw.swu": b"G" * 100}),
                         ("firmware", "mcu", "1.4", {"mcu.swu": b"M" * 50,
                                                     "mcu.sig": b"S"})],
                        download="attempt", update="skip", window="unavailable")
    c = make_client(server)
    poll = c.poll()
    assert poll.action_id == aid
    dep = c.deployment(poll.deployment_href)
    assert dep.action_id == aid
    assert [ch.part for ch in dep.chunks] == ["os", "firmware"]
    assert [a.filename for a in dep.chunks[1].artifacts] == ["mcu.swu", "mcu.sig"]
    assert dep.chunks[0].artifacts[0].sha256 == hashlib.sha256(b"G" * 100).hexdigest()
    assert dep.download == "attempt" and dep.update == "skip"
    assert dep.download_allowed and not dep.install_allowed


def test_feedback_config_data_installed_base(server):
    aid = server.assign([("os", "gw", "2.0", {"gw.swu": b"x"})])
    c = make_client(server)
    c.feedback(aid, "proceeding", "none", ["Downloaded 50%"], progress=(50, 100))
    c.feedback(aid, "closed", "success", ["target mcu0: ok"])
    assert server.statuses(aid) == ["proceeding", "closed"]
    assert server.actions[aid].result == "success"
    c.put_config_data({"ferry.overall": "ok", "gw.slot": "B"})
    assert server.config_data == {"ferry.overall": "ok", "gw.slot": "B"}
    assert c.put_installed_base("gw", "1.0") is True
    assert server.installed == [{"name": "gw", "version": "1.0"}]
    server.supports_installed_base = False
    assert c.put_installed_base("gw", "1.0") is False


def test_download_stream_resumes_and_checks_hash(server):
    data = bytes(range(256)) * 1600  # the cut falls after whole 64 KiB blocks
    aid = server.assign([("os", "gw", "2.0", {"gw.swu": data})])
    server.drop_once.add("gw.swu")
    c = make_client(server)
    dep = c.deployment(c.poll().deployment_href)
    with c.open_artifact(dep.chunks[0].artifacts[0]) as s:
        got = s.read()
    assert got == data
    assert server.range_requests and server.range_requests[0].startswith("bytes=")
    assert aid


def test_download_detects_corruption(server):
    server.assign([("os", "gw", "2.0", {"gw.swu": b"good" * 100})])
    c = make_client(server)
    dep = c.deployment(c.poll().deployment_href)
    art = dep.chunks[0].artifacts[0]
    lying = ddi.Artifact(art.filename, art.url, art.size, sha1=art.sha1,
                         sha256=hashlib.sha256(b"other").hexdigest())
    with pytest.raises(ddi.DdiError, match="sha256 mismatch"), c.open_artifact(lying) as s:
        s.read()


def test_download_to_file_resumes_from_partial(server):
    data = b"abcdefgh" * 5000
    server.assign([("os", "gw", "2.0", {"gw.swu": data})])
    c = make_client(server)
    dep = c.deployment(c.poll().deployment_href)
    f = io.BytesIO(data[:1000])
    c.download_to(dep.chunks[0].artifacts[0], f)
    assert f.getvalue() == data
    assert server.range_requests == ["bytes=1000-"]


def test_cancel_action_parsed(server):
    aid = server.assign([("os", "gw", "2.0", {"gw.swu": b"x"})])
    cid = server.request_cancel(aid)
    c = make_client(server)
    poll = c.poll()
    assert poll.cancel_href and not poll.deployment_href
    cancel = c.cancel_action(poll.cancel_href)
    assert (cancel.action_id, cancel.stop_id) == (cid, aid)
    c.cancel_feedback(cid, "closed", "success", ["cancelled"])
    assert server.actions[aid].state == "canceled"


def test_schema_validation_catches_bad_bodies():
    with pytest.raises(jsonschema.ValidationError):
        validate("DdiActionFeedback", {"status": {"execution": "finished",
                                                  "result": {"finished": "success"}}})
    with pytest.raises(jsonschema.ValidationError):
        validate("DdiControllerBase", {"config": {"polling": {"sleep": "soon"}}})
    body = ddi.feedback_body("proceeding", "none", ["x"], progress=(1, 5))
    validate("DdiActionFeedback", body)


def test_unreachable_server_is_one_readable_error():
    c = ddi.DdiClient(ddi.DdiSettings(url="http://127.0.0.1:9", controller_id="gw1",
                                      timeout=2))
    with pytest.raises(ddi.DdiError, match="cannot reach"):
        c.poll()


def test_settings_from_config_section():
    from ferry.daemon.config import config_from_dict
    cfg = config_from_dict({"gateway": {"compatible": "x"},
                            "backend": {"url": "https://h/", "controller_id": "gw9",
                                        "target_token": "t"}})
    s = ddi.DdiSettings.from_config(cfg.backend)
    assert (s.url, s.controller_id, s.target_token, s.tenant) == ("https://h", "gw9", "t",
                                                                  "DEFAULT")
    empty = config_from_dict({"gateway": {"compatible": "x"}})
    with pytest.raises(ddi.DdiError, match="url"):
        ddi.DdiSettings.from_config(empty.backend)
