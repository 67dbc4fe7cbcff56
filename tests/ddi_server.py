"""A small DDI server built from the hawkBit DDI OpenAPI document, for what goosebit lacks.

goosebit (the real DDI server in tests/peers/) has no cancelAction, installedBase,
several chunks, maintenance windows or update=skip/attempt. This fixture serves those
parts of ``shared/specs/hawkbit-ddi-openapi.json`` and checks every request body it
receives and every JSON answer it sends against the document's schemas, so the client
is held to the published contract rather than to this file's reading of it.

Single deviation from the document, on purpose: ``DdiPolling.sleep`` has the literal
pattern "HH:MM:SS" in the document; we check ``^\\d\\d:\\d\\d:\\d\\d$`` as real
servers (hawkBit, goosebit) send digits.

Several controllers share one server, as on a real tenant: the fixture is the gateway's
controller, and :meth:`DdiFixture.device` (or the first poll of an unknown id, as
hawkBit registers a controller that polls; off with ``auto_register=False``) adds the
controllers of the devices behind it, each with its own actions, feedback, configData
and ``sleep``. ``gateway_token`` is hawkBit's tenant-wide GatewayToken: with it set,
``Authorization: GatewayToken <token>`` authenticates every controller of the tenant
(hawkBit's ``GatewayTokenAuthenticator``); a controller's ``target_token`` still works
for that controller alone; a request with neither is answered 401. ``log`` records
(controller id, method, path) of every request to any controller, in order.

A hostile or broken server is one switch away (tests/unit/test_ddi_security.py): any
action id (hrefs carry it URL-quoted, as one path segment), any artifact link,
artifact links or a redirect to another origin (:class:`ArtifactMirror`, which records
the Authorization header it is sent), and a deploymentBase link on another origin.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import jsonschema

# Eclipse hawkBit's DDI OpenAPI document, kept in the repo (docs/specs/) so the tests do
# not depend on anything outside the checkout.
SPEC_PATH = Path(__file__).resolve().parent.parent / "docs" / "specs" / \
    "hawkbit-ddi-openapi.json"


def load_spec() -> dict[str, Any]:
    spec = json.loads(SPEC_PATH.read_text())
    comps = copy.deepcopy(spec["components"])
    comps["schemas"]["DdiPolling"]["properties"]["sleep"]["pattern"] = r"^\d\d:\d\d:\d\d$"
    spec["components"] = comps
    return spec


_SPEC: dict[str, Any] | None = None


def spec() -> dict[str, Any]:
    global _SPEC
    if _SPEC is None:
        _SPEC = load_spec()
    return _SPEC


def validate(schema_name: str, body: Any) -> None:
    """Raise jsonschema.ValidationError unless ``body`` matches components/schemas/NAME."""
    s = spec()
    schema = {"$ref": f"#/components/schemas/{schema_name}", "components": s["components"]}
    jsonschema.Draft4Validator(schema).validate(body)


# (method, path regex below /{tenant}/controller/v1/{id}) -> (request schema, response schema)
OPERATIONS: list[tuple[str, re.Pattern[str], str | None, str | None]] = [
    ("GET", re.compile(r"^$"), None, "DdiControllerBase"),
    ("GET", re.compile(r"^/deploymentBase/[^/]+$"), None, "DdiDeploymentBase"),
    ("POST", re.compile(r"^/deploymentBase/[^/]+/feedback$"), "DdiActionFeedback", None),
    ("GET", re.compile(r"^/cancelAction/[^/]+$"), None, "DdiCancel"),
    ("POST", re.compile(r"^/cancelAction/[^/]+/feedback$"), "DdiActionFeedback", None),
    ("PUT", re.compile(r"^/configData$"), "DdiConfigData", None),
    ("PUT", re.compile(r"^/installedBase$"), "DdiAssignedVersion", None),
    ("GET", re.compile(r"^/installedBase/[^/]+$"), None, "DdiDeploymentBase"),
]
_PREFIX = re.compile(r"^(?:https?://[^/]+)?/[^/]+/controller/v1/[^/?]+(?P<rest>[^?]*)")


def validate_exchange(method: str, url: str, request: Any, status: int, response: Any) -> None:
    """Check one client exchange against the OpenAPI document (the client's view)."""
    m = _PREFIX.match(url)
    if m is None:
        raise AssertionError(f"request to {url} is outside the DDI controller API")
    rest = m.group("rest").rstrip("/")
    for meth, pat, req_schema, resp_schema in OPERATIONS:
        if meth == method and pat.match(rest):
            if req_schema is not None:
                validate(req_schema, request)
            elif request is not None:
                raise AssertionError(f"{method} {rest} takes no body, client sent one")
            if resp_schema is not None and status == 200:
                validate(resp_schema, response)
            return
    raise AssertionError(f"{method} {rest or '/'} is not an operation of the DDI API")


@dataclass
class Action:
    id: str
    chunks: list[dict[str, Any]]  # DdiChunk with "_data": {filename: bytes} per artifact
    download: str = "forced"
    update: str = "forced"
    maintenance_window: str | None = None
    feedback: list[dict[str, Any]] = field(default_factory=list)
    state: str = "open"  # open | closed | canceled
    result: str = ""


@dataclass
class Cancel:
    id: str
    stop_id: str
    feedback: list[dict[str, Any]] = field(default_factory=list)
    state: str = "open"


class DdiFixture:
    """State of one tenant with one controller; tests change it between polls."""

    def __init__(self, *, tenant: str = "DEFAULT", controller_id: str = "gw1",
                 target_token: str = "", installed_base: bool = True,
                 gateway_token: str = "", auto_register: bool = True,
                 parent: DdiFixture | None = None) -> None:
        self.tenant = tenant
        self.controller_id = controller_id
        self.target_token = target_token
        self.gateway_token = gateway_token  # tenant-wide; the root fixture's counts
        self.auto_register = auto_register
        self.parent = parent
        self.devices: dict[str, DdiFixture] = {}  # other controllers on this tenant
        self.log: list[tuple[str, str, str]] = []  # (controller id, method, path)
        self.supports_installed_base = installed_base
        self.sleep = "00:00:01"
        self.actions: dict[str, Action] = {}
        self.current: str | None = None
        self.cancel: Cancel | None = None
        self.config_data: dict[str, str] = {}
        self.config_data_requested = True
        self.installed: list[dict[str, str]] = []
        self.violations: list[str] = []
        self.requests: list[tuple[str, str]] = []
        self.auth_headers: list[str] = []
        self.drop_once: set[str] = set()  # artifact filenames whose first GET is cut short
        self.range_requests: list[str] = []
        self.unavailable = False  # answer 503 to everything (server down for maintenance)
        self.scheme = "http"
        self.client_certs: list[Any] = []  # peer certificates seen (mTLS)
        # hostile-server switches: artifact links under another base URL (another
        # origin), a 302 from every artifact to another base, the deploymentBase link
        # under another base
        self.artifact_base: str | None = None
        self.redirect_artifacts: str | None = None
        self.deployment_link_base: str | None = None
        self.raw_poll_answer: bytes | None = None  # sent as-is (JSON type) to a poll
        self._next = 1
        self.lock = threading.Lock()
        self.httpd: ThreadingHTTPServer | None = None
        self.thread: threading.Thread | None = None

    # -- set-up helpers ---------------------------------------------------------------

    def device(self, controller_id: str) -> DdiFixture:
        """The controller ``controller_id`` of this tenant (created when new)."""
        root = self.parent or self
        if controller_id == root.controller_id:
            return root
        with root.lock:
            if controller_id not in root.devices:
                root.devices[controller_id] = DdiFixture(
                    tenant=root.tenant, controller_id=controller_id,
                    installed_base=root.supports_installed_base, parent=root)
            return root.devices[controller_id]

    def polls(self, controller_id: str | None = None) -> int:
        """Polls (GET of the controller base) seen, of one controller or of all."""
        root = self.parent or self
        return sum(1 for cid, m, rest in root.log if m == "GET" and rest == ""
                   and (controller_id is None or cid == controller_id))

    @property
    def url(self) -> str:
        if self.parent is not None:
            return self.parent.url
        assert self.httpd is not None
        return f"{self.scheme}://127.0.0.1:{self.httpd.server_address[1]}"

    def assign(self, chunks: list[tuple[str, str, str, dict[str, bytes]]], *,
               download: str = "forced", update: str = "forced",
               window: str | None = None, aid: str | None = None,
               links: dict[str, str] | None = None) -> str:
        """chunks: (part, name, version, {filename: data}); returns the action id.

        ``aid``: the id to send (any string, for a hostile server); ``links``: the
        download link to send for some filenames instead of the server's own."""
        with self.lock:
            if aid is None:
                aid = str(self._next)
            self._next += 1
            dd = []
            for part, name, version, files in chunks:
                arts = []
                for fname, data in files.items():
                    arts.append({
                        "filename": fname,
                        "hashes": {"sha1": hashlib.sha1(data).hexdigest(),
                                   "md5": hashlib.md5(data).hexdigest(),
                                   "sha256": hashlib.sha256(data).hexdigest()},
                        "size": len(data),
                        "_data": data,
                        "_sm": aid,
                        "_href": (links or {}).get(fname),
                    })
                dd.append({"part": part, "name": name, "version": version, "artifacts": arts})
            self.actions[aid] = Action(aid, dd, download, update, window)
            self.current = aid
            return aid

    def request_cancel(self, stop_id: str, *, cid: str | None = None) -> str:
        with self.lock:
            if cid is None:
                cid = str(self._next)
            self._next += 1
            self.cancel = Cancel(cid, stop_id)
            return cid

    def statuses(self, aid: str) -> list[str]:
        return [f["status"]["execution"] for f in self.actions[aid].feedback]

    # -- server -----------------------------------------------------------------------

    def start(self, ssl_context: Any = None) -> DdiFixture:
        """Serve on 127.0.0.1; with an ``ssl.SSLContext``, HTTPS (and mTLS if it
        requires client certificates)."""
        fixture = self
        self.scheme = "https" if ssl_context is not None else "http"

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                fixture._handle(self, "GET")

            def do_POST(self) -> None:
                fixture._handle(self, "POST")

            def do_PUT(self) -> None:
                fixture._handle(self, "PUT")

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        if ssl_context is not None:
            self.httpd.socket = ssl_context.wrap_socket(self.httpd.socket, server_side=True)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,),
                                       daemon=True)
        self.thread.start()
        return self

    def stop(self) -> None:
        if self.httpd is not None:
            self.httpd.shutdown()
            self.httpd.server_close()

    def _base(self) -> str:
        return f"{self.url}/{self.tenant}/controller/v1/{self.controller_id}"

    def _send(self, h: BaseHTTPRequestHandler, status: int, body: Any = None,
              schema: str | None = None) -> None:
        if schema is not None and body is not None:
            try:
                validate(schema, body)
            except jsonschema.ValidationError as exc:
                self.violations.append(f"response {schema}: {exc.message}")
        data = json.dumps(body).encode() if body is not None else b""
        h.send_response(status)
        h.send_header("Content-Type", "application/hal+json")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)

    def _handle(self, h: BaseHTTPRequestHandler, method: str) -> None:
        path = h.path.split("?", 1)[0]
        m = re.match(rf"^/{re.escape(self.tenant)}/controller/v1/([^/]+)(.*)$", path)
        cid = unquote(m.group(1)) if m else ""
        target = self
        if m and cid != self.controller_id:
            known = cid in self.devices
            if not known and not (self.auto_register and method == "GET" and
                                  m.group(2) == ""):
                self.requests.append((method, path))
                return self._send(h, 404, {"message": "unknown controller"})
            target = self.device(cid)
        self.log.append((cid, method, m.group(2).rstrip("/") if m else path))
        target._serve(h, method, path, authorize=self._authorized)

    def _authorized(self, h: BaseHTTPRequestHandler, controller: DdiFixture) -> bool:
        got = h.headers.get("Authorization") or ""
        wanted = []
        if self.gateway_token:
            wanted.append(f"GatewayToken {self.gateway_token}")
        if controller.target_token:
            wanted.append(f"TargetToken {controller.target_token}")
        return not wanted or got in wanted

    def _serve(self, h: BaseHTTPRequestHandler, method: str, path: str, *,
               authorize: Any) -> None:
        self.requests.append((method, path))
        getpeercert = getattr(h.connection, "getpeercert", None)
        if getpeercert is not None:
            self.client_certs.append(getpeercert())
        self.auth_headers.append(h.headers.get("Authorization", ""))
        prefix = f"/{self.tenant}/controller/v1/{self.controller_id}"
        if self.unavailable or (self.parent is not None and self.parent.unavailable):
            return self._send(h, 503)
        if not path.startswith(prefix):
            return self._send(h, 404, {"message": "unknown controller"})
        if not authorize(h, self):
            return self._send(h, 401)
        rest = path[len(prefix):]
        body: Any = None
        length = int(h.headers.get("Content-Length") or 0)
        if length:
            raw = h.rfile.read(length)
            try:
                body = json.loads(raw)
            except ValueError:
                self.violations.append(f"{method} {rest}: body is not JSON")
                return self._send(h, 400)
        with self.lock:
            self._route(h, method, rest, body)

    def _route(self, h: BaseHTTPRequestHandler, method: str, rest: str, body: Any) -> None:
        for meth, pat, req_schema, _resp in OPERATIONS:
            if meth == method and pat.match(rest) and req_schema is not None:
                try:
                    validate(req_schema, body)
                except jsonschema.ValidationError as exc:
                    self.violations.append(f"request {req_schema}: {exc.message}")
                    return self._send(h, 400, {"message": exc.message})
        base = self._base()
        if method == "GET" and rest == "" and self.raw_poll_answer is not None:
            h.send_response(200)
            h.send_header("Content-Type", "application/hal+json")
            h.send_header("Content-Length", str(len(self.raw_poll_answer)))
            h.end_headers()
            h.wfile.write(self.raw_poll_answer)
            return None
        if method == "GET" and rest == "":
            links: dict[str, Any] = {}
            if self.cancel is not None and self.cancel.state == "open":
                links["cancelAction"] = {"href": f"{base}/cancelAction/{_seg(self.cancel.id)}"}
            elif self.current and self.actions[self.current].state == "open":
                dbase = self.deployment_link_base or base
                links["deploymentBase"] = {
                    "href": f"{dbase}/deploymentBase/{_seg(self.current)}?c=7"}
            if self.config_data_requested:
                links["configData"] = {"href": f"{base}/configData"}
            done = [a for a in self.actions.values() if a.state == "closed"
                    and a.result == "success"]
            if done:
                links["installedBase"] = {"href": f"{base}/installedBase/{done[-1].id}"}
            return self._send(h, 200, {"config": {"polling": {"sleep": self.sleep}},
                                       "_links": links}, "DdiControllerBase")
        m = re.match(r"^/deploymentBase/([^/]+)$", rest)
        if method == "GET" and m and unquote(m.group(1)) in self.actions:
            return self._send(h, 200, self._deployment_base(self.actions[unquote(m.group(1))]),
                              "DdiDeploymentBase")
        m = re.match(r"^/deploymentBase/([^/]+)/feedback$", rest)
        if method == "POST" and m and unquote(m.group(1)) in self.actions:
            a = self.actions[unquote(m.group(1))]
            if a.state != "open":
                return self._send(h, 410, {"message": "action is not active"})
            a.feedback.append(body)
            st = body["status"]
            if st["execution"] == "closed":
                a.state = "closed"
                a.result = st["result"]["finished"]
                if a.result == "success":
                    self.config_data_requested = True
            return self._send(h, 200)
        m = re.match(r"^/cancelAction/([^/]+)$", rest)
        if method == "GET" and m and self.cancel and self.cancel.id == unquote(m.group(1)):
            return self._send(h, 200, {"id": self.cancel.id,
                                       "cancelAction": {"stopId": self.cancel.stop_id}},
                              "DdiCancel")
        m = re.match(r"^/cancelAction/([^/]+)/feedback$", rest)
        if method == "POST" and m and self.cancel and \
                self.cancel.id == unquote(m.group(1)):
            c = self.cancel
            c.feedback.append(body)
            st = body["status"]
            if st["execution"] == "closed" and st["result"]["finished"] == "success":
                c.state = "closed"
                stopped = self.actions.get(c.stop_id)
                if stopped is not None:
                    stopped.state = "canceled"
            elif st["execution"] == "rejected":
                c.state = "rejected"
            return self._send(h, 200)
        if method == "PUT" and rest == "/configData":
            mode = body.get("mode", "merge")
            if mode == "replace":
                self.config_data = dict(body["data"])
            elif mode == "remove":
                for k in body["data"]:
                    self.config_data.pop(k, None)
            else:
                self.config_data.update(body["data"])
            self.config_data_requested = False
            return self._send(h, 200)
        if method == "PUT" and rest == "/installedBase":
            if not self.supports_installed_base:
                return self._send(h, 404)
            self.installed.append(dict(body))
            return self._send(h, 200)
        m = re.match(r"^/softwaremodules/([^/]+)/artifacts/([^/]+)$", rest)
        if method == "GET" and m and self.redirect_artifacts:
            h.send_response(302)
            h.send_header("Location", f"{self.redirect_artifacts}{rest}")
            h.send_header("Content-Length", "0")
            h.end_headers()
            return None
        if method == "GET" and m:
            return self._artifact(h, unquote(m.group(1)), unquote(m.group(2)))
        return self._send(h, 404, {"message": f"no {method} {rest}"})

    def _deployment_base(self, a: Action) -> dict[str, Any]:
        base = self._base()
        chunks = []
        for c in a.chunks:
            arts = []
            for art in c["artifacts"]:
                abase = self.artifact_base or base
                href = art["_href"] or \
                    f"{abase}/softwaremodules/{_seg(art['_sm'])}/artifacts/{art['filename']}"
                arts.append({k: v for k, v in art.items() if not k.startswith("_")}
                            | {"_links": {"download-http": {"href": href}}})
            chunks.append({**c, "artifacts": arts})
        dep: dict[str, Any] = {"download": a.download, "update": a.update, "chunks": chunks}
        if a.maintenance_window is not None:
            dep["maintenanceWindow"] = a.maintenance_window
        return {"id": a.id, "deployment": dep}

    def _artifact(self, h: BaseHTTPRequestHandler, sm: str, fname: str) -> None:
        a = self.actions.get(sm)
        art = None
        if a is not None:
            for c in a.chunks:
                for x in c["artifacts"]:
                    if x["filename"] == fname:
                        art = x
        if art is None:
            return self._send(h, 404)
        data: bytes = art["_data"]
        start = 0
        rng = h.headers.get("Range")
        if rng:
            self.range_requests.append(rng)
            m = re.match(r"bytes=(\d+)-$", rng)
            assert m, rng
            start = int(m.group(1))
            if start >= len(data):
                h.send_response(416)
                h.send_header("Content-Length", "0")
                h.end_headers()
                return
        part = data[start:]
        h.send_response(206 if rng else 200)
        h.send_header("Content-Type", "application/octet-stream")
        h.send_header("Content-Length", str(len(part)))
        if rng:
            h.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        h.end_headers()
        if fname in self.drop_once and not rng:
            self.drop_once.discard(fname)
            h.wfile.write(part[: len(part) // 2])
            h.wfile.flush()
            h.close_connection = True
            h.connection.shutdown(2)
            return
        h.wfile.write(part)


def _seg(text: str) -> str:
    """An id as one URL path segment, as a server that quotes its ids would send it."""
    return quote(text, safe="")


class ArtifactMirror:
    """Another origin (same host, another port) serving the fixture's artifacts at the
    same paths: a CDN, or a hostile host a deployment points at. Records the
    Authorization header of every request it gets."""

    def __init__(self, fixture: DdiFixture) -> None:
        self.fixture = fixture
        self.requests: list[tuple[str, str]] = []  # (path, Authorization or "")
        mirror = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                mirror.requests.append((self.path, self.headers.get("Authorization", "")))
                m = re.search(r"/softwaremodules/([^/]+)/artifacts/([^/?]+)$",
                              self.path.split("?", 1)[0])
                if m is None:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                fixture._artifact(self, unquote(m.group(1)), unquote(m.group(2)))

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,),
                                       daemon=True)

    @property
    def url(self) -> str:
        """Base under which the artifact paths mirror the fixture's controller paths."""
        f = self.fixture
        return (f"http://127.0.0.1:{self.httpd.server_address[1]}"
                f"/{f.tenant}/controller/v1/{f.controller_id}")

    def start(self) -> ArtifactMirror:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
