"""hawkBit DDI client: the gateway's side of the Direct Device Integration API.

Plain blocking functions over ``requests``: the service edge calls them from a thread.
The client knows the wire format only; what to do with a deployment (download now,
install when the maintenance window opens, refuse a late cancel) is decided by
``ferry.daemon.backend.runner``. Everything the server sends is parsed into frozen dataclasses
here, so the rest of the daemon never touches raw JSON and a server that sends
something odd fails with one readable :class:`DdiError`.

Servers differ (see docs/backend.md): goosebit has no cancelAction, installedBase,
several chunks or maintenance windows; hawkBit has them all. The client treats every
link as optional.

The server is trusted to say what to install (the bundle's signature decides whether it
may), never where ferry's files go or what it reads, nor where the token goes:

- an action id is a plain integer (hawkBit's are int64), parsed once here; anything
  else is refused (:class:`DeploymentRefused`, told to the server as feedback), so no
  later use of an id as a file name or a URL path can walk anywhere;
- an artifact link is an http(s) URL with a host, or the deployment is refused: never a
  local path, ``file:`` or anything else the install pipeline would open as root;
- the token goes only to the backend's origin (:class:`OriginAuth`, shared with the
  install pipeline's downloader); API links to another origin are refused.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, BinaryIO
from urllib.parse import quote, urlsplit

import requests

from ferry.daemon.install.download import (
    DownloadError,
    DownloadOptions,
    OriginAuth,
    get_following_redirects,
    origin,
)
from ferry.errors import FerryError

DEFAULT_SLEEP = 300.0  # seconds, when the server sends no polling.sleep
# An API answer (poll, deploymentBase, cancelAction) larger than this is refused unread:
# hawkBit's deploymentBase for many chunks and artifacts is a few KiB.
MAX_ANSWER = 4 << 20
_SLEEP_RE = re.compile(r"^(\d+):(\d\d):(\d\d)$")

# Values of DdiDeployment.download / .update.
SKIP, ATTEMPT, FORCED = "skip", "attempt", "forced"
HANDLING = (SKIP, ATTEMPT, FORCED)


class DdiError(FerryError):
    """The DDI server could not be reached or answered something we cannot use."""


class DdiHttpError(DdiError):
    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class DeploymentRefused(DdiError):
    """The server sent an action ferry will not act on (a bad id, a link that is not
    http(s)). The runner logs it and tells the server why; nothing is downloaded."""

    def __init__(self, message: str, *, kind: str, raw_id: str,
                 action_id: str | None = None) -> None:
        super().__init__(message)
        self.kind = kind  # "deploymentBase" | "cancelAction": where the feedback goes
        self.raw_id = raw_id  # the id as the server sent it (only ever URL-quoted)
        self.action_id = action_id  # the parsed id, when the id itself was fine


# hawkBit action ids are Java longs (JpaAction.id); DDI sends them as JSON strings in
# deploymentBase/cancelAction and as numbers in some servers' answers.
MAX_ACTION_ID = (1 << 63) - 1
_ACTION_ID_RE = re.compile(r"[0-9]{1,19}")


def parse_action_id(value: Any) -> str:
    """The one place a server's action id becomes ferry's: a plain non-negative int64,
    returned in canonical decimal (no sign, no leading zeros). Raises ValueError."""
    if isinstance(value, bool):
        raise ValueError("a boolean is not an action id")
    if isinstance(value, int):
        n = value
    elif isinstance(value, str) and _ACTION_ID_RE.fullmatch(value):
        n = int(value)
    else:
        raise ValueError(f"{_shown(value)} is not a plain integer")
    if not 0 <= n <= MAX_ACTION_ID:
        raise ValueError(f"{_shown(value)} is out of the int64 range")
    return str(n)


def is_action_id(text: str) -> bool:
    """True for an id :func:`parse_action_id` returned (safe in a path or file name)."""
    return bool(_ACTION_ID_RE.fullmatch(text)) and int(text) <= MAX_ACTION_ID \
        and str(int(text)) == text


def _shown(value: Any, limit: int = 60) -> str:
    """A server-sent value for a message: repr'd (control characters escaped), cut."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def link_problem(url: str) -> str:
    """Why ``url`` is not a usable artifact link, or "" when it is one: http(s), a
    host, a valid port, no whitespace or control characters."""
    if any(ord(c) <= 0x20 or ord(c) == 0x7F for c in url):
        return "contains whitespace or control characters"
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("http", "https"):
        return "is not an http(s) URL"
    if not parts.hostname:
        return "has no host"
    try:
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        return "has an invalid port"
    return ""


@dataclass(frozen=True)
class DdiSettings:
    """Where the server is and how this gateway proves who it is."""

    url: str  # e.g. "https://hawkbit.example.com" (no tenant)
    tenant: str = "DEFAULT"
    controller_id: str = ""
    target_token: str = ""
    gateway_token: str = ""
    ca_file: str = ""  # PEM bundle to trust instead of the system store
    client_cert: str = ""  # mTLS
    client_key: str = ""
    poll_jitter: float = 0.1  # fraction of the sleep added or removed at random
    timeout: float = 30.0  # per request (connect and read)

    @classmethod
    def from_config(cls, backend: Any) -> DdiSettings:
        """Build from the [backend] section (ferry.daemon.config) or any object alike."""

        def get(name: str, default: Any) -> Any:
            value = getattr(backend, name, default)
            return default if value is None else value

        url = str(get("url", ""))
        if not url:
            raise DdiError("[backend] url is not set; put the DDI server's URL in the config")
        return cls(
            url=url.rstrip("/"),
            tenant=str(get("tenant", "DEFAULT")),
            controller_id=str(get("controller_id", "")),
            target_token=str(get("target_token", "")),
            gateway_token=str(get("gateway_token", "")),
            ca_file=str(get("ca_file", "")),
            client_cert=str(get("client_cert", "")),
            client_key=str(get("client_key", "")),
            poll_jitter=float(get("poll_jitter", 0.1)),
        )


@dataclass(frozen=True)
class Artifact:
    filename: str
    url: str  # "download" link, else "download-http"
    size: int | None = None
    sha1: str = ""
    md5: str = ""
    sha256: str = ""


@dataclass(frozen=True)
class Chunk:
    part: str  # "os", "bApp", "firmware", ... (hawkBit software module type)
    name: str
    version: str
    artifacts: tuple[Artifact, ...]
    metadata: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Deployment:
    action_id: str
    download: str  # skip | attempt | forced
    update: str  # skip | attempt | forced
    chunks: tuple[Chunk, ...]
    maintenance_window: str | None = None  # "available" | "unavailable" | None (no window)

    @property
    def install_allowed(self) -> bool:
        """May the gateway install now? Not with update=skip nor outside the window."""
        return self.update != SKIP and self.maintenance_window != "unavailable"

    @property
    def download_allowed(self) -> bool:
        return self.download != SKIP


@dataclass(frozen=True)
class CancelRequest:
    action_id: str  # id of the cancel action (its feedback goes here)
    stop_id: str  # id of the deployment to stop


@dataclass(frozen=True)
class PollResult:
    sleep: float  # seconds the server suggests
    deployment_href: str = ""
    cancel_href: str = ""
    config_data_href: str = ""
    installed_base_href: str = ""

    @property
    def action_id(self) -> str:
        """Action id of the pending deployment or cancel, from its link; "" when there is
        none or it is not a plain integer (the action is refused when it is fetched)."""
        href = self.deployment_href or self.cancel_href
        return _action_id_from_href(href) if href else ""


def _action_id_from_href(href: str) -> str:
    path = href.split("?", 1)[0].rstrip("/")
    try:
        return parse_action_id(path.rsplit("/", 1)[-1])
    except ValueError:
        return ""


def parse_sleep(text: Any) -> float:
    """'HH:MM:SS' to seconds; the spec's pattern is the literal 'HH:MM:SS', servers send digits."""
    if text is None or text == "":
        return DEFAULT_SLEEP
    m = _SLEEP_RE.match(text) if isinstance(text, str) else None
    if not m:
        raise DdiError(f"server sent polling.sleep {_shown(text)}, expected HH:MM:SS")
    h, mi, s = (int(g) for g in m.groups())
    return float(h * 3600 + mi * 60 + s)


def jittered(sleep: float, jitter: float, rng: Callable[[], float] = random.random) -> float:
    """Spread a fleet's polls so gateways that rebooted together do not poll together."""
    jitter = min(max(jitter, 0.0), 1.0)
    return max(0.0, sleep * (1.0 + jitter * (2.0 * rng() - 1.0)))


def _link(links: Any, name: str) -> str:
    if not isinstance(links, dict):
        return ""
    entry = links.get(name)
    if isinstance(entry, dict) and isinstance(entry.get("href"), str):
        return str(entry["href"])
    return ""


def _obj(value: Any, what: str) -> dict[str, Any]:
    """A JSON object, absent (null) meaning empty; anything else is the server's error."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise DdiError(f"server sent {what} that is not a JSON object")
    return value


def _list(value: Any, what: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise DdiError(f"server sent {what} that is not a JSON array")
    return value


def _text(value: Any, what: str) -> str:
    """A JSON string (a number is taken as its text: some servers send versions so)."""
    if isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    raise DdiError(f"server sent {what} {_shown(value)}, expected a string")


def _size(value: Any, what: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 19:
        return int(value)
    raise DdiError(f"server sent {what} {_shown(value)}, expected a byte count")


def parse_poll(body: Any) -> PollResult:
    if not isinstance(body, dict):
        raise DdiError("server sent a poll answer that is not a JSON object")
    polling = _obj(_obj(body.get("config"), "config").get("polling"), "config.polling")
    links = _obj(body.get("_links"), "_links")
    return PollResult(
        sleep=parse_sleep(polling.get("sleep")),
        deployment_href=_link(links, "deploymentBase"),
        cancel_href=_link(links, "cancelAction"),
        config_data_href=_link(links, "configData"),
        installed_base_href=_link(links, "installedBase"),
    )


def _artifact_url(a: dict[str, Any], aid: str, prefer_origin: str | None) -> str:
    """The artifact's download link. Every link the server gives must be http(s); of
    those, one on ``prefer_origin`` (the backend's, so it gets the token) wins, then
    "download" (https on hawkBit), then "download-http"."""
    links = a.get("_links")
    urls = [u for u in (_link(links, "download"), _link(links, "download-http")) if u]
    if not urls:
        raise DeploymentRefused(f"artifact {_shown(a.get('filename'))} has no download link",
                                kind="deploymentBase", raw_id=aid, action_id=aid)
    for url in urls:
        why = link_problem(url)
        if why:
            raise DeploymentRefused(
                f"artifact {_shown(a.get('filename'))}: download link {_shown(url, 80)} "
                f"{why}; ferry downloads artifacts over http(s) only",
                kind="deploymentBase", raw_id=aid, action_id=aid)
    if prefer_origin is not None:
        for url in urls:
            if origin(url) == prefer_origin:
                return url
    return urls[0]


def parse_deployment(body: Any, *, prefer_origin: str | None = None) -> Deployment:
    """A deploymentBase answer; :class:`DeploymentRefused` for an id that is not a plain
    integer or a link that is not http(s), :class:`DdiError` for anything else odd."""
    body = _obj(body, "a deploymentBase answer")
    if "id" not in body:
        raise DdiError("server sent a deploymentBase without an id")
    raw_id = body["id"]
    try:
        aid = parse_action_id(raw_id)
    except ValueError as exc:
        raise DeploymentRefused(
            f"deployment id refused: {exc}; a DDI action id must be a plain integer",
            kind="deploymentBase", raw_id=str(raw_id)) from None
    dep = _obj(body.get("deployment"), "deployment")
    if "chunks" not in dep:
        raise DdiError(f"server sent deployment {aid} without chunks")
    chunks = []
    for c in _list(dep["chunks"], "deployment.chunks"):
        c = _obj(c, "a chunk")
        arts = []
        for a in _list(c.get("artifacts"), "chunk.artifacts"):
            a = _obj(a, "an artifact")
            url = _artifact_url(a, aid, prefer_origin)
            hashes = _obj(a.get("hashes"), "artifact.hashes")
            arts.append(
                Artifact(
                    filename=_text(a.get("filename"), "artifact.filename"),
                    url=url,
                    size=_size(a.get("size"), "artifact.size"),
                    sha1=_text(hashes.get("sha1", ""), "hashes.sha1").lower(),
                    md5=_text(hashes.get("md5", ""), "hashes.md5").lower(),
                    sha256=_text(hashes.get("sha256", ""), "hashes.sha256").lower(),
                )
            )
        meta = {}
        for m in _list(c.get("metadata"), "chunk.metadata"):
            m = _obj(m, "a metadata entry")
            meta[_text(m.get("key"), "metadata.key")] = _text(m.get("value"), "metadata.value")
        chunks.append(
            Chunk(
                part=_text(c.get("part"), "chunk.part"),
                name=_text(c.get("name"), "chunk.name"),
                version=_text(c.get("version"), "chunk.version"),
                artifacts=tuple(arts),
                metadata=meta,
            )
        )
    values = {}
    for what in ("download", "update"):
        value = dep.get(what, FORCED)
        if value not in HANDLING:
            raise DdiError(f"server sent deployment.{what}={_shown(value)}, expected one of "
                           f"{', '.join(HANDLING)}")
        values[what] = str(value)
    window = dep.get("maintenanceWindow")
    return Deployment(
        action_id=aid,
        download=values["download"],
        update=values["update"],
        chunks=tuple(chunks),
        maintenance_window=_text(window, "maintenanceWindow") if window is not None else None,
    )


def parse_cancel(body: Any) -> CancelRequest:
    """A cancelAction answer; :class:`DeploymentRefused` when either id is not a plain
    integer (the cancel is rejected, the deployment it names is left alone)."""
    body = _obj(body, "a cancelAction answer")
    cancel = _obj(body.get("cancelAction"), "cancelAction")
    if "id" not in body or "stopId" not in cancel:
        raise DdiError("server sent a cancelAction without id or stopId")
    raw_id, raw_stop = body["id"], cancel["stopId"]
    try:
        cid = parse_action_id(raw_id)
    except ValueError as exc:
        raise DeploymentRefused(
            f"cancel action id refused: {exc}; a DDI action id must be a plain integer",
            kind="cancelAction", raw_id=str(raw_id)) from None
    try:
        stop = parse_action_id(raw_stop)
    except ValueError as exc:
        raise DeploymentRefused(
            f"cancel refused: stopId {exc}; a DDI action id must be a plain integer",
            kind="cancelAction", raw_id=cid, action_id=cid) from None
    return CancelRequest(action_id=cid, stop_id=stop)


def feedback_body(
    execution: str,
    finished: str = "none",
    details: list[str] | tuple[str, ...] = (),
    *,
    progress: tuple[int, int] | None = None,
    code: int | None = None,
) -> dict[str, Any]:
    """A DdiActionFeedback document (timestamps in ms, as hawkBit stores them)."""
    result: dict[str, Any] = {"finished": finished}
    if progress is not None:
        result["progress"] = {"cnt": int(progress[0]), "of": int(progress[1])}
    status: dict[str, Any] = {"execution": execution, "result": result}
    if details:
        status["details"] = [str(d) for d in details]
    if code is not None:
        status["code"] = code
    return {"timestamp": int(time.time() * 1000), "status": status}


class DdiClient:
    """One controller's conversation with a DDI server.

    ``on_exchange(method, path, request_json, status, response_json)`` lets tests see
    every request and answer (they validate both against the OpenAPI document).
    """

    def __init__(
        self,
        settings: DdiSettings,
        *,
        session: requests.Session | None = None,
        on_exchange: Callable[[str, str, Any, int, Any], None] | None = None,
    ) -> None:
        if not settings.controller_id:
            raise DdiError("[backend] controller_id is not set; give this gateway its DDI id")
        self.settings = settings
        self.session = session or requests.Session()
        self.on_exchange = on_exchange
        s = settings
        token: tuple[str, str] | None = None
        if s.target_token:
            token = ("Authorization", f"TargetToken {s.target_token}")
        elif s.gateway_token:
            token = ("Authorization", f"GatewayToken {s.gateway_token}")
        # The token is never a session header (those go to every URL): the same
        # OriginAuth as the install pipeline's downloader adds it per request, on the
        # backend's origin only; redirects of downloads are followed hop by hop.
        self.origin = origin(s.url)
        self.auth: OriginAuth | None = DownloadOptions(
            auth_header=token, auth_origin=s.url if token else None).auth
        self.session.auth = self.auth
        if s.client_cert:
            self.session.cert = (s.client_cert, s.client_key) if s.client_key else s.client_cert
        # passed on every request: a session-level verify loses to REQUESTS_CA_BUNDLE
        # in the environment (requests' merge order), and the configured CA must win
        self.verify: str | bool = s.ca_file or True
        self.session.headers["Accept"] = "application/hal+json, application/json"
        self.base = f"{s.url}/{s.tenant}/controller/v1/{s.controller_id}"

    # -- plumbing -----------------------------------------------------------------------

    def _url(self, href_or_path: str) -> str:
        if href_or_path.lower().startswith(("http://", "https://")):
            if origin(href_or_path) != self.origin:
                raise DdiError(
                    f"DDI server linked to {_shown(href_or_path, 100)}, which is not on its "
                    f"own origin {self.origin}; ferry talks DDI only to [backend] url "
                    "(behind a proxy, the server must build links with the proxy's scheme "
                    "and host)")
            return href_or_path
        return self.base + href_or_path

    def _request(self, method: str, href: str, body: Any = None) -> tuple[int, Any]:
        url = self._url(href)
        try:
            resp = self.session.request(method, url, json=body, timeout=self.settings.timeout,
                                        verify=self.verify, stream=True)
            try:
                content = _read_capped(resp, MAX_ANSWER)
            finally:
                resp.close()
        except requests.RequestException as exc:
            raise DdiError(f"cannot reach the DDI server at {self.settings.url}: {exc}") from exc
        data: Any = None
        if content and "json" in resp.headers.get("Content-Type", ""):
            try:
                data = json.loads(content)
            except (ValueError, RecursionError):  # not JSON, or nested past the stack
                data = None
        if self.on_exchange is not None:
            self.on_exchange(method, url, body, resp.status_code, data)
        if resp.status_code == 401 or resp.status_code == 403:
            raise DdiHttpError(
                f"DDI server refused {self.settings.controller_id!r} ({resp.status_code}); "
                "check target_token / gateway_token / client certificate",
                resp.status_code,
            )
        if resp.status_code >= 400:
            raise DdiHttpError(f"DDI server answered {resp.status_code} to {method} {url}",
                               resp.status_code)
        return resp.status_code, data

    # -- resources ----------------------------------------------------------------------

    def poll(self) -> PollResult:
        _, data = self._request("GET", "")
        return parse_poll(data)

    def next_sleep(self, poll: PollResult, rng: Callable[[], float] = random.random) -> float:
        return jittered(poll.sleep, self.settings.poll_jitter, rng)

    def deployment(self, href: str) -> Deployment:
        _, data = self._request("GET", href)
        return parse_deployment(data, prefer_origin=self.origin)

    def cancel_action(self, href: str) -> CancelRequest:
        _, data = self._request("GET", href)
        return parse_cancel(data)

    def feedback(self, action_id: str, execution: str, finished: str = "none",
                 details: list[str] | tuple[str, ...] = (), *,
                 progress: tuple[int, int] | None = None) -> None:
        self._request("POST", f"/deploymentBase/{_path_id(action_id)}/feedback",
                      feedback_body(execution, finished, details, progress=progress))

    def cancel_feedback(self, action_id: str, execution: str, finished: str,
                        details: list[str] | tuple[str, ...] = ()) -> None:
        self._request("POST", f"/cancelAction/{_path_id(action_id)}/feedback",
                      feedback_body(execution, finished, details))

    def refuse(self, refusal: DeploymentRefused) -> None:
        """Tell the server why ferry will not carry out an action. A deployment is
        closed as failed, a cancel rejected. An id that is not an integer goes back
        URL-quoted as one path segment (dots too), so it cannot walk the server's
        paths either."""
        segment = refusal.action_id or quote(refusal.raw_id[:200], safe="").replace(
            ".", "%2E")
        if refusal.kind == "cancelAction":
            execution, finished = "rejected", "failure"
        else:
            execution, finished = "closed", "failure"
        self._request("POST", f"/{refusal.kind}/{segment}/feedback",
                      feedback_body(execution, finished, [f"refused by the gateway: {refusal}"]))

    def put_config_data(self, data: Mapping[str, str], mode: str = "merge") -> None:
        self._request("PUT", "/configData",
                      {"mode": mode, "data": {str(k): str(v) for k, v in data.items()}})

    def put_installed_base(self, name: str, version: str) -> bool:
        """Tell the server what really runs. False when the server has no such resource."""
        try:
            self._request("PUT", "/installedBase", {"name": name, "version": version})
        except DdiHttpError as exc:
            if exc.status in (404, 405, 501):
                return False
            raise
        return True

    # -- downloads ----------------------------------------------------------------------

    def open_artifact(self, artifact: Artifact, *, offset: int = 0,
                      max_resumes: int = 5) -> ArtifactStream:
        return ArtifactStream(self, artifact, offset=offset, max_resumes=max_resumes)

    def download_to(self, artifact: Artifact, dest: BinaryIO, *,
                    progress: Callable[[int, int], None] | None = None,
                    max_resumes: int = 5) -> None:
        """Copy an artifact into ``dest`` (a file opened for append) resuming what is there.

        Used for "download now, install later" (maintenance windows): a restart resumes
        at the file's end with a Range request. Hashes cover the whole file, so the
        part already on disk is hashed first.
        """
        dest.seek(0, 2)
        have = dest.tell()
        hashers = _hashers(artifact)
        if have:
            dest.seek(0)
            while block := dest.read(1 << 16):
                for h in hashers.values():
                    h.update(block)
            dest.seek(0, 2)
        stream = ArtifactStream(self, artifact, offset=have, max_resumes=max_resumes,
                                hashers=hashers)
        total = artifact.size or 0
        done = have
        while block := stream.read(1 << 16):
            dest.write(block)
            done += len(block)
            if progress is not None:
                progress(done, total)
        dest.flush()


def _read_capped(resp: requests.Response, limit: int) -> bytes:
    out = bytearray()
    for block in resp.iter_content(1 << 16):
        out += block
        if len(out) > limit:
            raise DdiError(f"DDI server's answer to {resp.request.method} {resp.url} is over "
                           f"{limit} bytes; refusing it")
    return bytes(out)


def _path_id(action_id: str) -> str:
    if not is_action_id(action_id):
        raise DdiError(f"refusing action id {_shown(action_id)} in a URL path: not a plain "
                       "integer")
    return action_id


def _hashers(artifact: Artifact) -> dict[str, Any]:
    hs: dict[str, Any] = {}
    if artifact.sha256:
        hs["sha256"] = hashlib.sha256()
    if artifact.sha1:
        hs["sha1"] = hashlib.sha1()  # goosebit sends only sha1
    if not hs and artifact.md5:
        hs["md5"] = hashlib.md5()
    return hs


class ArtifactStream:
    """A read-only stream over one artifact: Range resume on a dropped connection,
    size and hash checks at EOF (a mismatch raises instead of returning b"").

    The bundle reader consumes it directly, so no copy of the bundle is kept.
    """

    def __init__(self, client: DdiClient, artifact: Artifact, *, offset: int = 0,
                 max_resumes: int = 5, hashers: dict[str, Any] | None = None) -> None:
        self.client = client
        self.artifact = artifact
        self.pos = offset
        self.max_resumes = max_resumes
        self.resumes = 0
        self.hashers = hashers if hashers is not None else (_hashers(artifact) if offset == 0
                                                            else {})
        self._iter: Iterator[bytes] | None = None
        self._resp: requests.Response | None = None
        self._buf = b""
        self._eof = False

    def _open(self) -> None:
        headers = {}
        if self.pos:
            headers["Range"] = f"bytes={self.pos}-"
        why = link_problem(self.artifact.url)
        if why:
            raise DdiError(f"refusing to download {self.artifact.filename}: its link {why}")
        try:
            # the install pipeline's redirect rule and token rule (OriginAuth), hop by hop
            resp = get_following_redirects(
                self.client.session, self.artifact.url, headers, auth=self.client.auth,
                timeout=self.client.settings.timeout, verify=self.client.verify)
        except (requests.RequestException, DownloadError) as exc:
            raise DdiError(f"cannot download {self.artifact.filename}: {exc}") from exc
        if resp.status_code == 416 and self.artifact.size == self.pos:
            self._iter = iter(())
            return
        if self.pos and resp.status_code == 200:
            resp.close()
            raise DdiError(f"server ignored the Range request for {self.artifact.filename}; "
                           "cannot resume")
        if resp.status_code not in (200, 206):
            resp.close()
            raise DdiError(f"download of {self.artifact.filename} failed: HTTP {resp.status_code}")
        self._resp = resp
        self._iter = resp.iter_content(1 << 16)

    def _next_block(self) -> bytes:
        while True:
            if self._iter is None:
                self._open()
            assert self._iter is not None
            try:
                return next(self._iter)
            except StopIteration:
                if self.artifact.size is not None and self.pos < self.artifact.size:
                    self._retry(f"connection closed at {self.pos} of {self.artifact.size}")
                    continue
                return b""
            except requests.RequestException as exc:
                self._retry(str(exc))

    def _retry(self, why: str) -> None:
        self.close()
        self._iter = None
        self.resumes += 1
        if self.resumes > self.max_resumes:
            raise DdiError(f"download of {self.artifact.filename} kept failing ({why}); "
                           f"gave up after {self.max_resumes} resumes")
        time.sleep(min(0.2 * self.resumes, 2.0))

    def read(self, n: int = -1) -> bytes:
        if self._eof:
            return b""
        out = bytearray(self._buf)
        self._buf = b""
        while n < 0 or len(out) < n:
            block = self._next_block()
            if not block:
                self._finish()
                break
            self.pos += len(block)
            if self.artifact.size is not None and self.pos > self.artifact.size:
                raise DdiError(f"{self.artifact.filename} is longer than the "
                               f"{self.artifact.size} bytes the server announced")
            for h in self.hashers.values():
                h.update(block)
            out += block
        if n >= 0 and len(out) > n:
            self._buf = bytes(out[n:])
            del out[n:]
        return bytes(out)

    def _finish(self) -> None:
        self._eof = True
        self.close()
        a = self.artifact
        if a.size is not None and self.pos != a.size:
            raise DdiError(f"{a.filename}: got {self.pos} bytes, server announced {a.size}")
        for name, h in self.hashers.items():
            want = getattr(a, name)
            if h.hexdigest() != want:
                raise DdiError(f"{a.filename}: {name} mismatch (got {h.hexdigest()}, "
                               f"server announced {want}); the download is corrupt")

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        if self._resp is not None:
            self._resp.close()
            self._resp = None

    def __enter__(self) -> ArtifactStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
