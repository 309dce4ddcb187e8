"""A loopback HTTP server for download tests: Range requests, cut transfers, stalls, 5xx and HTML pages.

It listens on 127.0.0.1 on a free port in a background thread, serves bytes registered per path, and
counts requests and body bytes per path so a test can prove how many downloads happened.
"""

from __future__ import annotations

import re
import secrets
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

RANGE_PATTERN = re.compile(r"^bytes=(\d+)-(\d*)$")


@dataclass
class Route:
    """What one path serves and how it misbehaves.

    ``cut_after``: close the connection after that many body bytes, for the first ``cut_times`` responses.
    ``stall_after``: stop sending after that many body bytes and wait ``stall_seconds`` (or until the
    server closes), for the first ``stall_times`` responses. ``fail_first``: return ``fail_status`` to the
    first K requests. ``html``: serve a fresh HTML page with a random nonce each time. ``ranges``: honour
    Range requests. ``throttle``: seconds to sleep between chunks, to keep a transfer running.
    """

    body: bytes = b""
    content_type: str = "application/octet-stream"
    cut_after: int | None = None
    cut_times: int = 1
    stall_after: int | None = None
    stall_seconds: float = 3600.0
    stall_times: int = 1
    fail_first: int = 0
    fail_status: int = 503
    html: bool = False
    ranges: bool = True
    throttle: float = 0.0
    chunk_size: int = 1 << 20
    # Counters, written by the server threads.
    requests: int = 0
    bytes_sent: int = 0
    range_headers: list[str] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)


class _QuietServer(ThreadingHTTPServer):
    """Ignores clients that hang up mid-response, which the cut-short and stall tests cause on purpose."""

    def handle_error(self, request, client_address) -> None:
        error = sys.exc_info()[1]
        if isinstance(error, (ConnectionResetError, BrokenPipeError)):
            return
        super().handle_error(request, client_address)


class LoopbackServer:
    """A ``ThreadingHTTPServer`` on 127.0.0.1 with per-path behaviour and counters."""

    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.server = _QuietServer(("127.0.0.1", 0), _make_handler(self))
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), name="loopback-http", daemon=True)
        self.thread.start()

    @property
    def base_url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def url(self, path: str) -> str:
        return f"{self.base_url}/{path.lstrip('/')}"

    def add(self, path: str, body: bytes = b"", **options) -> Route:
        """Serve ``body`` at ``path`` with the ``Route`` options given; return the route for its counters."""
        route = Route(body=body, **options)
        with self.lock:
            self.routes["/" + path.lstrip("/")] = route
        return route

    def route(self, path: str) -> Route:
        return self.routes["/" + path.lstrip("/")]

    def total_requests(self) -> int:
        with self.lock:
            return sum(route.requests for route in self.routes.values())

    def close(self) -> None:
        self.stopping.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def _make_handler(owner: LoopbackServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
            pass

        def do_GET(self) -> None:  # noqa: N802 - the base class's name
            route = owner.routes.get(self.path.split("?", 1)[0])
            if route is None:
                self._answer_status(404)
                return
            with owner.lock:
                route.requests += 1
                number = route.requests
                route.range_headers.append(self.headers.get("Range", ""))
            if number <= route.fail_first:
                self._answer_status(route.fail_status, route)
                return
            if route.html:
                page = f"<!DOCTYPE html><html><body><p>sign in</p><!-- {secrets.token_hex(16)} --></body></html>"
                self._send_body(route, page.encode(), 200, number)
                return
            self._send_file(route, number)

        def _answer_status(self, status: int, route: Route | None = None) -> None:
            body = f"status {status}\n".encode()
            if route is not None:
                with owner.lock:
                    route.statuses.append(status)
            self.send_response(status)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _send_file(self, route: Route, number: int) -> None:
            total = len(route.body)
            start, end = 0, total - 1
            range_header = self.headers.get("Range", "")
            match = RANGE_PATTERN.match(range_header) if route.ranges and range_header else None
            if match:
                start = int(match.group(1))
                if match.group(2):
                    end = min(int(match.group(2)), total - 1)
                if start >= total:
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{total}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    with owner.lock:
                        route.statuses.append(416)
                    return
            status = 206 if match else 200
            extra = {"Content-Range": f"bytes {start}-{end}/{total}"} if match else {}
            self._send_body(route, route.body[start:end + 1], status, number, extra)

        def _send_body(self, route: Route, body: bytes, status: int, number: int, extra: dict | None = None) -> None:
            with owner.lock:
                route.statuses.append(status)
            self.send_response(status)
            self.send_header("Content-Type", "text/html; charset=utf-8" if route.html else route.content_type)
            self.send_header("Content-Length", str(len(body)))
            if route.ranges:
                self.send_header("Accept-Ranges", "bytes")
            for key, value in (extra or {}).items():
                self.send_header(key, value)
            self.end_headers()

            limit = len(body)
            cut = route.cut_after is not None and number <= route.fail_first + route.cut_times
            stall = route.stall_after is not None and number <= route.fail_first + route.stall_times
            if cut:
                limit = min(limit, route.cut_after)
            view = memoryview(body)
            sent = 0
            try:
                while sent < limit:
                    if stall and sent >= route.stall_after:
                        owner.stopping.wait(route.stall_seconds)
                        stall = False
                        if owner.stopping.is_set():
                            break
                    stop = min(limit, sent + route.chunk_size)
                    if stall:
                        stop = min(stop, route.stall_after)
                    self.wfile.write(view[sent:stop])
                    with owner.lock:
                        route.bytes_sent += stop - sent
                    sent = stop
                    if route.throttle:
                        time.sleep(route.throttle)
                self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True
                return
            if sent < len(body):
                self.close_connection = True

    return Handler
