"""A hostile or broken DDI server against the gateway (issue 16, items 2, 3 and 4).

The server is trusted to say what to install (the bundle's signature decides whether it
may), not where the device's token goes, which file names ferry uses, or what ferry
opens as root. Each rule is shown on both paths where there are two: the streaming
install (the pipeline's downloader) and "download now, install later" (the DDI client).
The fixture is the OpenAPI-checked tests/ddi_server.py with its hostile switches; the
gateway is the real install pipeline on a simulated gateway where it matters.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests

from ferry.daemon.backend import ddi
from ferry.daemon.backend import runner as backend
from ferry.daemon.backend.pipeline_adapter import PipelineGateway
from ferry.daemon.boot.bootloader import make_bootloader
from ferry.daemon.config import load_config
from ferry.daemon.install.bundlesource import SourceError, open_source
from ferry.daemon.install.download import OriginAuth
from ferry.packaging.devpki import write_dev_pki
from ferry.packaging.writer import ImageInput, create_bundle, load_signing_key
from ferry.sim.gateway import SimGateway, rootfs_image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from ddi_server import ArtifactMirror, DdiFixture, validate_exchange

TOKEN = "tok-s3cret"
SECRET = b"root:$6$SECRETHASHBYTES:19000:0:99999:7:::\n"
HANG_GUARD = 60.0  # seconds: only a hang ever gets near it


@pytest.fixture
def server():
    s = DdiFixture(controller_id="gw1", target_token=TOKEN).start()
    yield s
    s.stop()
    assert s.violations == []


@pytest.fixture
def mirror(server):
    m = ArtifactMirror(server).start()
    yield m
    m.stop()


@pytest.fixture
def rig(server, tmp_path, monkeypatch):
    """The real pipeline on a simulated gateway, with the device's TargetToken."""
    pki = write_dev_pki(tmp_path / "pki")
    root = tmp_path / "gw"

    def on_boot(slot, rootfs):
        if rootfs.get("health") == "ok":
            make_bootloader(load_config(root / "ferry.toml"), warn=False).mark_good(slot)

    gw = SimGateway(root, keyring=pki.ca_cert, backend_url=server.url, controller_id="gw1",
                    on_boot=on_boot, health_window=2.0).create("1.0.0")
    monkeypatch.setenv("FERRY_BOOT_ID_PATH", str(gw.boot_id_path))
    text = gw.config_path.read_text()
    gw.config_path.write_text(text.replace("[backend]\n",
                                           f'[backend]\ntarget_token = "{TOKEN}"\n'))
    cfg = load_config(gw.config_path)
    pg = PipelineGateway(cfg, reboot=gw.reboot, boot_id=gw.boot_id, immediate_reboot=True,
                         system=("running", ()))
    client = ddi.DdiClient(ddi.DdiSettings.from_config(cfg.backend),
                           on_exchange=validate_exchange)
    r = backend.DeploymentRunner(client, pg, cfg.gateway.data_dir)
    signing = load_signing_key(pki.signer_key, pki.signer_cert)

    def bundle(version: str) -> bytes:
        out = tmp_path / f"gw-{version}.swu"
        create_bundle(out, signing=signing, version=version, compatible=["ferry-demo-gw"],
                      images=[ImageInput(rootfs_image(tmp_path / f"{version}.img", version),
                                         "zstd")])
        return out.read_bytes()

    return r, pg, bundle


class RecordingGateway:
    """A gateway side that must never be reached: records what it was asked to open."""

    def __init__(self) -> None:
        self.sources: list[str] = []
        self.version = "1.0"

    def installed_version(self) -> str:
        return self.version

    def install(self, source, *, action_id, progress):
        self.sources.append(source)
        raise AssertionError(f"the gateway was asked to install {source!r}")

    def resume(self, action_id):
        return None

    def abort(self, action_id):
        pass

    def health(self):
        from ferry.daemon.backend.health import GatewayHealth, Health

        return Health(GatewayHealth("A", True, self.version, "ferry-test", 1.0, "running",
                                    data_free_bytes=1 << 30, data_total_bytes=2 << 30), ())


def plain_runner(server, tmp_path, gw=None, *, check_answers=True):
    client = ddi.DdiClient(ddi.DdiSettings(url=server.url, controller_id="gw1",
                                           target_token=TOKEN, poll_jitter=0),
                           on_exchange=validate_exchange if check_answers else None)
    return backend.DeploymentRunner(client, gw or RecordingGateway(), tmp_path / "data")


def finish(r, limit=10):
    for _ in range(limit):
        res = r.step()
        if res.event == "finished":
            return res
    raise AssertionError("did not finish")


def no_hang(fn: Callable[[], Any], unblock: Callable[[], None] = lambda: None) -> Any:
    """Run ``fn`` in a thread; a hang fails the test (and ``unblock`` frees the thread)."""
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            out["value"] = fn()
        except BaseException as exc:  # handed to the test
            out["error"] = exc

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(HANG_GUARD)
    if t.is_alive():
        unblock()
        t.join(5)
        raise AssertionError("hung (a FIFO or tty was opened and read)")
    if "error" in out:
        raise out["error"]
    return out.get("value")


def open_fifo_writer(path: Path) -> Callable[[], None]:
    def unblock() -> None:
        with contextlib.suppress(OSError):
            os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
    return unblock


def all_feedback_text(server) -> str:
    parts = []
    for a in server.actions.values():
        for f in a.feedback:
            parts.extend(f["status"].get("details", []))
    if server.cancel is not None:
        for f in server.cancel.feedback:
            parts.extend(f["status"].get("details", []))
    return "\n".join(parts)


# -- item 2: the token goes to the backend's origin only ---------------------------------


def test_origin_auth_adds_the_header_on_the_origin_only():
    auth = OriginAuth("Authorization", "TargetToken t", "https://hawkbit.example/DEFAULT")

    def header(url):
        req = requests.Request("GET", url, headers={"Authorization": "stale"}).prepare()
        return auth(req).headers.get("Authorization")

    assert header("https://hawkbit.example:443/x") == "TargetToken t"
    assert header("https://HAWKBIT.example/other/path?q=1") == "TargetToken t"
    assert header("http://hawkbit.example/x") is None  # plain http: never
    assert header("https://hawkbit.example:8443/x") is None
    assert header("https://hawkbit.example.evil.com/x") is None
    assert header("https://cdn.example/x") is None
    assert "TargetToken" not in repr(auth)


def test_download_later_sends_no_token_to_another_origin(server, mirror, tmp_path):
    """update=skip: the DDI client downloads ahead; the artifact link is on another
    origin, so it is fetched without the token (old code: session header, sent)."""
    server.artifact_base = mirror.url
    aid = server.assign([("os", "gateway", "2.0", {"gw.swu": b"G" * 3000})], update="skip")
    r = plain_runner(server, tmp_path)
    assert r.step().event == "waiting"
    assert server.statuses(aid)[-1] == "downloaded"
    assert [auth for p, auth in mirror.requests if "/artifacts/" in p] == [""]
    assert set(server.auth_headers) == {f"TargetToken {TOKEN}"}
    [f] = r.state.files
    assert Path(f).read_bytes() == b"G" * 3000


def test_download_later_redirect_to_another_origin_drops_the_token(server, mirror,
                                                                    tmp_path):
    server.redirect_artifacts = mirror.url
    server.assign([("os", "gateway", "2.0", {"gw.swu": b"R" * 2000})], window="unavailable")
    r = plain_runner(server, tmp_path)
    assert r.step().event == "waiting"
    assert [auth for p, auth in mirror.requests] == [""]
    assert Path(r.state.files[0]).read_bytes() == b"R" * 2000


def test_download_later_refuses_a_redirect_to_file(server, tmp_path):
    server.redirect_artifacts = "file:///etc"
    server.assign([("os", "gateway", "2.0", {"gw.swu": b"R"})], window="unavailable")
    r = plain_runner(server, tmp_path)
    with pytest.raises(ddi.DdiError, match="refusing redirect"):
        r.step()


def test_streaming_install_sends_no_token_to_another_origin(server, mirror, rig):
    """The streaming path (the pipeline's downloader) with the same rule, end to end:
    the bundle is installed from the other origin, which never saw the token."""
    r, pg, bundle = rig
    server.artifact_base = mirror.url
    server.assign([("os", "gateway", "2.0.0", {"gw.swu": bundle("2.0.0")})])
    assert finish(r).detail == "success"
    assert pg.health().gateway.version == "2.0.0"
    got = [auth for p, auth in mirror.requests if "/artifacts/" in p]
    assert got and set(got) == {""}
    assert set(server.auth_headers) == {f"TargetToken {TOKEN}"}


def test_streaming_install_redirect_to_another_origin_drops_the_token(server, mirror, rig):
    r, _pg, bundle = rig
    server.redirect_artifacts = mirror.url
    server.assign([("os", "gateway", "2.0.0", {"gw.swu": bundle("2.0.0")})])
    assert finish(r).detail == "success"
    got = [auth for p, auth in mirror.requests]
    assert got and set(got) == {""}
    assert any("/artifacts/" in p for m, p in server.requests)  # the backend redirected


def test_api_link_to_another_origin_is_refused_without_the_token(server, mirror, tmp_path):
    """A deploymentBase link on another origin: the client does not follow it (old
    code: it did, with the token)."""
    server.deployment_link_base = mirror.url
    server.assign([("os", "gateway", "2.0", {"gw.swu": b"G"})])
    r = plain_runner(server, tmp_path)
    with pytest.raises(ddi.DdiError, match="not on its own origin"):
        r.step()
    assert mirror.requests == []


# -- item 3: the server's action id never becomes a path ---------------------------------


@pytest.mark.parametrize("raw", ["8", 8, "007", str((1 << 63) - 1)])
def test_action_ids_plain_integers_accepted(raw):
    assert ddi.parse_action_id(raw) == str(int(raw))


@pytest.mark.parametrize("raw", ["../../etc/x", "12abc", "-1", "+1", " 1", "1\n", "1.0",
                                 "1e3", "\uff11", "", str(1 << 63), "9" * 20, True, 1.5,
                                 None, -3, ["1"]])
def test_action_ids_anything_else_refused(raw):
    with pytest.raises(ValueError):
        ddi.parse_action_id(raw)
    body = {"id": raw, "deployment": {"download": "forced", "update": "forced",
                                      "chunks": []}}
    with pytest.raises(ddi.DeploymentRefused, match="plain integer"):
        ddi.parse_deployment(body)


@pytest.mark.parametrize("aid", ["../../etc/x", "12abc"])
def test_bad_action_id_refused_with_feedback_and_no_file(server, tmp_path, aid):
    """Download-ahead would have named a file after the id (old code: ``../../etc/x``
    walked out of ddi-downloads into <tmp>/etc)."""
    outside = tmp_path / "etc"
    outside.mkdir()
    logs: list[str] = []
    gw = RecordingGateway()
    r = plain_runner(server, tmp_path, gw)
    r.log = logs.append
    server.assign([("os", "gateway", "2.0", {"gw.swu": b"G" * 100})], aid=aid,
                  window="unavailable")
    res = r.step()
    assert res.event == "refused"
    a = server.actions[aid]
    assert (a.state, a.result) == ("closed", "failure")
    [fb] = a.feedback
    assert "plain integer" in fb["status"]["details"][0]
    assert any("refused deploymentBase" in line for line in logs)
    assert list(outside.iterdir()) == []
    assert not (tmp_path / "data" / backend.DOWNLOADS).exists()
    assert gw.sources == []
    assert not [p for m, p in server.requests if "/artifacts/" in p]


def test_bad_cancel_ids_are_rejected(server, tmp_path):
    gw = RecordingGateway()
    r = plain_runner(server, tmp_path, gw)
    server.request_cancel("../1", cid="5")
    assert r.step().event == "refused"
    assert server.cancel.feedback[-1]["status"]["execution"] == "rejected"
    assert "stopId" in server.cancel.feedback[-1]["status"]["details"][0]
    server.request_cancel("1", cid="x/../7")
    assert r.step().event == "refused"
    assert server.cancel.feedback[-1]["status"]["execution"] == "rejected"


def test_client_never_puts_a_raw_id_in_a_path(server):
    c = ddi.DdiClient(ddi.DdiSettings(url=server.url, controller_id="gw1", target_token=TOKEN))
    with pytest.raises(ddi.DdiError, match="not a plain integer"):
        c.feedback("../x", "proceeding")
    with pytest.raises(backend.BackendError):
        backend.download_name("1/../../x", 0, "gw.swu")
    assert backend.download_name("3", 0, "../../a b\\c.swu") == "3-0-c.swu"
    assert not [p for m, p in server.requests if m == "POST"]


def test_stale_state_with_a_bad_id_is_forgotten(server, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "ddi-action.json").write_text(
        '{"action_id": "../../x", "phase": "downloaded", "files": []}')
    r = plain_runner(server, tmp_path)
    assert (r.state.action_id, r.state.phase) == ("", backend.IDLE)


@pytest.mark.parametrize("answer", [b"[" * 100_000 + b"]" * 100_000,
                                    b'{"config": []}', b'{"config": {"polling": {"sleep": 5}}}',
                                    b'{"x": "' + b"a" * (5 << 20) + b'"}'])
def test_hostile_poll_answers_end_in_one_line_ddi_error(server, tmp_path, answer):
    """Old code: RecursionError / AttributeError / TypeError escaped the client, and the
    backend thread's loop (which catches FerryError) died with them."""
    server.raw_poll_answer = answer
    r = plain_runner(server, tmp_path, check_answers=False)  # they break the schema
    with pytest.raises(ddi.DdiError) as err:
        r.step()
    assert "\n" not in str(err.value) and len(str(err.value)) < 300


# -- item 4: links are http(s) URLs; nothing local is opened ----------------------------


@pytest.fixture
def secret(tmp_path):
    p = tmp_path / "shadow"
    p.write_bytes(SECRET)
    p.chmod(0o600)
    return p


@pytest.fixture
def fifo(tmp_path):
    p = tmp_path / "fifo"
    os.mkfifo(p)
    return p


@pytest.mark.parametrize("kind", ["file-url", "etc-shadow", "secret-path", "fifo",
                                  "ftp", "no-host"])
@pytest.mark.parametrize("update", ["forced", "skip"])
def test_non_http_links_refused_at_parse_time(server, rig, secret, fifo, kind, update):
    """Old code: the pipeline opened the link as a local file as root; the failure sent
    back quoted its first bytes (or its size, or that it did not exist), and a FIFO
    hung the backend thread."""
    r, pg, _bundle = rig
    link = {"file-url": f"file://{secret}", "etc-shadow": "/etc/shadow",
            "secret-path": str(secret), "fifo": str(fifo), "ftp": "ftp://127.0.0.1/gw.swu",
            "no-host": "http:///gw.swu"}[kind]
    aid = server.assign([("os", "gateway", "2.0.0", {"gw.swu": b"G" * 64})],
                        links={"gw.swu": link}, update=update)
    res = no_hang(r.step, open_fifo_writer(fifo))
    assert res.event == "refused"
    a = server.actions[aid]
    assert (a.state, a.result) == ("closed", "failure")
    text = all_feedback_text(server)
    assert "http(s)" in text
    # The refusal quotes the link the backend sent, which is no leak; what must not
    # appear is anything learned from the path (its bytes, its size, its existence).
    # The link holds pytest's numbered temp dir, which may contain the size's digits.
    text = text.replace(link, "<link>")
    assert "SECRET" not in text and "root:" not in text
    assert str(len(SECRET)) not in text
    assert "not found" not in text and "exist" not in text
    assert pg.journal.latest() is None  # the pipeline never saw it


@pytest.mark.parametrize("source", ["/etc/shadow", "/nonexistent/x.swu", "file:///etc/shadow",
                                    "ftp://h/x.swu", "../../etc/shadow"])
def test_adapter_refuses_sources_the_backend_cannot_give(rig, source):
    """Second wall: whatever reaches the adapter from the backend that is not an
    http(s) URL or the runner's own download is refused, the same way whether the path
    exists or not, before the pipeline opens anything."""
    _r, pg, _bundle = rig
    with pytest.raises(backend.BackendError) as err:
        pg.install(source, action_id="1", progress=lambda *a: None)
    assert "exist" not in str(err.value) and "not found" not in str(err.value)
    assert pg.journal.latest() is None


def test_adapter_refuses_a_fifo_among_the_downloads(rig):
    r, pg, _bundle = rig
    ddir = r.data_dir / backend.DOWNLOADS
    ddir.mkdir(exist_ok=True)
    f = ddir / "1-0-gw.swu"
    os.mkfifo(f)
    with pytest.raises(backend.BackendError, match="not a regular file"):
        no_hang(lambda: pg.install(str(f), action_id="1", progress=lambda *a: None),
                open_fifo_writer(f))
    assert pg.journal.latest() is None


def test_bundle_source_refuses_fifo_and_tty_without_hanging(fifo):
    """The pipeline's local opener (``ferry install PATH``) takes regular files only."""
    with pytest.raises(SourceError, match="not a regular file"):
        no_hang(lambda: open_source(str(fifo)), open_fifo_writer(fifo))
    master, slave = os.openpty()
    try:
        with pytest.raises(SourceError, match="not a regular file"):
            no_hang(lambda: open_source(os.ttyname(slave)))
    finally:
        os.close(master)
        os.close(slave)
