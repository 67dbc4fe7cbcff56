"""A misbehaving-on-demand HTTP server on 127.0.0.1 for the download tests.

``Server.mode`` picks the behaviour per request: honest with Range/ETag support, or
dropping the connection once, always truncating, ignoring Range, stalling, failing
with a status, or redirecting somewhere.
"""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class Handler(BaseHTTPRequestHandler):
    server: Server  # type: ignore[assignment]
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        srv = self.server
        srv.requests.append((self.path, dict(self.headers)))
        mode = srv.script.pop(0) if srv.script else srv.mode
        if mode.startswith("status:"):
            code = int(mode.split(":")[1])
            self.send_response(code)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if mode.startswith("redirect:"):
            self.send_response(302)
            self.send_header("Location", mode.split(":", 1)[1])
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        data = srv.payload()
        start = 0
        rng = self.headers.get("Range")
        if_range = self.headers.get("If-Range")
        honour = rng and mode != "ignore-range" and (if_range in (None, srv.etag))
        if honour and rng:
            start = int(rng.split("=")[1].split("-")[0])
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(data) - start))
        self.send_header("ETag", srv.etag)
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        body = data[start:]
        cut = len(body)
        if mode == "drop-once" and not srv.dropped:
            srv.dropped = True
            cut = min(len(body), srv.cut_at)
        elif mode == "truncate":
            cut = min(len(body), srv.cut_at)
        try:
            if mode == "slow":
                self.wfile.write(body[:1024])
                self.wfile.flush()
                time.sleep(srv.stall)
            else:
                view = memoryview(body)[:cut]
                for off in range(0, len(view), 1 << 16):
                    self.wfile.write(view[off:off + (1 << 16)])
                if cut < len(body):
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(2)
        except (BrokenPipeError, ConnectionResetError, OSError):
            pass


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, path: Path) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.path = path
        self.mode = "ok"
        self.script: list[str] = []  # modes for the next requests, then ``mode``
        self.etag = '"v1"'
        self.dropped = False
        self.cut_at = 100_000
        self.stall = 30.0
        self.requests: list[tuple[str, dict[str, str]]] = []
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)

    def payload(self) -> bytes:
        return self.path.read_bytes()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/{self.path.name}"

    def __enter__(self) -> Server:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
        self.server_close()
