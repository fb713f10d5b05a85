"""Backends that really fail, on 127.0.50-59.x: an HTTP server whose answer (status, delay) and
very existence can be switched at run time, and a UDP responder that can answer wrongly."""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, *args: Any) -> None:
        pass

    def _answer(self) -> None:
        backend = self.server.backend
        agent = self.headers.get("User-Agent", "")
        if agent == "clbagent-health":
            backend.probes.append((self.command, self.path, self.headers.get("Host", ""), self.client_address[0]))
            status, delay = backend.status, backend.delay
        else:
            backend.hit_times.append(time.monotonic())
            status, delay = 200, 0.0
        if delay:
            time.sleep(delay)
        body = f'{{"backend": "{backend.label}"}}'.encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_HEAD = _answer


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    backend: HttpBackend

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # probes close with a RST; a reset while answering is expected


class HttpBackend:
    """A target whose health checks see ``status`` after ``delay``; traffic always gets 200."""

    def __init__(self, ip: str, label: str, tls: ssl.SSLContext | None = None):
        self.ip, self.label, self.port, self.tls = ip, label, 0, tls
        self.status, self.delay = 200, 0.0
        self.hit_times: list[float] = []  # requests other than health checks
        self.probes: list[tuple[str, str, str, str]] = []  # method, path, Host, source address
        self._server: _Server | None = None
        self.start()

    def start(self) -> None:
        server = _Server((self.ip, self.port), _Handler)
        server.backend = self
        if self.tls is not None:
            server.socket = self.tls.wrap_socket(server.socket, server_side=True)
        self.port = server.server_address[1]
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        self._server = server

    @property
    def hits(self) -> int:
        return len(self.hit_times)

    def stop(self) -> None:
        """The process is gone: the port refuses connections."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    @property
    def endpoint(self) -> str:
        return f"{self.ip}:{self.port}"

    def target(self, weight: int = 10) -> dict[str, Any]:
        return {"EniIp": self.ip, "Port": self.port, "Weight": weight}


class UdpResponder:
    """Answers ``reply`` to ``request``; ``wrong`` makes it answer something else."""

    def __init__(self, ip: str, request: bytes, reply: bytes):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((ip, 0))
        self.sock.settimeout(0.2)
        self.ip, self.port = ip, self.sock.getsockname()[1]
        self.request, self.reply, self.wrong = request, reply, False
        self.received = 0
        self._stop = threading.Event()
        threading.Thread(target=self._loop, daemon=True).start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                data, peer = self.sock.recvfrom(2048)
            except (TimeoutError, OSError):
                continue
            self.received += 1
            answer = self.reply if data == self.request and not self.wrong else b"\x00\x00nope"
            with contextlib.suppress(OSError):
                self.sock.sendto(answer, peer)

    @property
    def endpoint(self) -> str:
        return f"{self.ip}:{self.port}"

    def close(self) -> None:
        self._stop.set()
        self.sock.close()


def _made(make: Callable[..., Any], cleanup: Callable[[Any], None]) -> Iterator[Callable[..., Any]]:
    made: list[Any] = []

    def factory(*args: Any, **kwargs: Any) -> Any:
        made.append(make(*args, **kwargs))
        return made[-1]

    yield factory
    for thing in made:
        cleanup(thing)


@pytest.fixture
def http_backends() -> Iterator[Callable[..., HttpBackend]]:
    """``http_backends(ip, label[, tls])``: an HTTP target, stopped at the end."""
    yield from _made(HttpBackend, HttpBackend.stop)


@pytest.fixture
def udp_responders() -> Iterator[Callable[..., UdpResponder]]:
    """``udp_responders(ip, request, reply)``: a UDP target, closed at the end."""
    yield from _made(UdpResponder, UdpResponder.close)
