"""Fixtures of the metrics tests: a compiled prefix served by the real nginx, a backend answering
the status its path asks for, a real Prometheus server. Addresses: 127.0.60-69.x only."""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from clbagent.l7 import write_prefix
from clbagent.nginx.process import Nginx, check_config
from tests.agent.conftest import wait_for
from tests.l7.conftest import LUA_AVAILABLE, NGINX_AVAILABLE, compile_docs

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"


def free_port(ip: str) -> int:
    with socket.socket() as s:
        s.bind((ip, 0))
        return s.getsockname()[1]


class _StatusHandler(BaseHTTPRequestHandler):
    """``/status/<code>`` answers that code, anything else 200; the body names the path."""

    protocol_version = "HTTP/1.1"
    wbufsize = 1 << 16  # header and body in one write: two would wait for the delayed ACK (Nagle)

    def log_message(self, *args: Any) -> None:  # quiet
        pass

    def do_GET(self) -> None:
        parts = self.path.split("/")
        code = int(parts[2]) if len(parts) > 2 and parts[1] == "status" and parts[2].isdigit() else 200
        body = json.dumps({"path": self.path}).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@dataclass
class StatusBackend:
    ip: str
    port: int
    server: ThreadingHTTPServer

    def target(self) -> dict[str, Any]:
        return {"EniIp": self.ip, "Port": self.port, "Weight": 10}

    @property
    def endpoint(self) -> str:
        return f"{self.ip}:{self.port}"


@pytest.fixture
def status_backend() -> Iterator[Callable[[str], StatusBackend]]:
    started: list[ThreadingHTTPServer] = []

    def make(ip: str) -> StatusBackend:
        server = ThreadingHTTPServer((ip, 0), _StatusHandler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True).start()
        started.append(server)
        return StatusBackend(ip, server.server_address[1], server)

    yield make
    for s in started:
        s.shutdown()
        s.server_close()


@dataclass
class Served:
    prefix: Path
    nginx: Nginx

    def access_log(self) -> list[bytes]:
        return (self.prefix / "logs" / "access.log").read_bytes().splitlines()


@pytest.fixture
def serve() -> Iterator[Callable[..., Served]]:
    """``serve(docs, dynamic=True)``: compile, write the prefix, ``nginx -t``, start nginx."""
    if not NGINX_AVAILABLE:
        pytest.skip("nginx is not installed")
    base = Path(tempfile.mkdtemp(prefix="clb-metrics-"))
    base.chmod(0o755)
    running: list[Nginx] = []

    def start(docs: list[dict], dynamic: bool = True) -> Served:
        if dynamic and not LUA_AVAILABLE:
            pytest.skip("nginx's Lua module is not installed")
        prefix = base / "nginx"
        write_prefix(compile_docs(docs, prefix=str(prefix), dynamic=dynamic), prefix)
        result = check_config(prefix)
        assert result.ok, result.output
        n = Nginx(prefix)
        n.start()
        running.append(n)
        return Served(prefix, n)

    yield start
    for n in running:
        n.stop()
    shutil.rmtree(base, ignore_errors=True)


class Prometheus:
    """A Prometheus server of the test's own: loopback, its own storage, one scrape job."""

    def __init__(self, base: Path, target: str, interval: str = "1s", ip: str = "127.0.60.250"):
        self.base = base
        self.address = f"{ip}:{free_port(ip)}"
        config = base / "prometheus.yml"
        config.write_text(
            json.dumps(  # JSON is YAML
                {
                    "global": {"scrape_interval": interval, "scrape_timeout": interval},
                    "scrape_configs": [{"job_name": "clbagent", "static_configs": [{"targets": [target]}]}],
                }
            )
        )
        self.log = open(base / "prometheus.log", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={config}",
                f"--storage.tsdb.path={base / 'data'}",
                f"--web.listen-address={self.address}",
                "--storage.tsdb.retention.time=1h",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        self.http = httpx.Client(base_url=f"http://{self.address}", timeout=5)
        wait_for(self._ready, 30, "Prometheus to be ready")

    def _ready(self) -> bool:
        try:
            return self.http.get("/-/ready").status_code == 200
        except httpx.HTTPError:
            return False

    def api(self, path: str, **params: str) -> Any:
        resp = self.http.get(f"/api/v1/{path}", params=params)
        data = resp.json()
        assert data["status"] == "success", data
        return data["data"]

    def query(self, expr: str) -> dict[tuple[tuple[str, str], ...], float]:
        """An instant query: each series' labels (without __name__) → value."""
        out = {}
        for r in self.api("query", query=expr)["result"]:
            labels = tuple(sorted((k, v) for k, v in r["metric"].items() if k != "__name__"))
            out[labels] = float(r["value"][1])
        return out

    def value(self, expr: str) -> float | None:
        """The single value of a query that sums to one series (None: no series yet)."""
        result = self.query(f"sum({expr})")
        return next(iter(result.values()), None)

    def scraped(self) -> bool:
        targets = self.api("targets")["activeTargets"]
        return bool(targets) and all(t["health"] == "up" for t in targets)

    def stop(self) -> None:
        self.http.close()
        self.proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)
        if self.proc.poll() is None:
            self.proc.kill()
        self.log.close()


@pytest.fixture
def prometheus() -> Iterator[Callable[[str], Prometheus]]:
    """``prometheus("127.0.60.1:9489")``: a started Prometheus scraping that target every second."""
    if not Path(PROMETHEUS).exists():
        pytest.fail("prometheus is not installed: scripts/setup.sh installs it (scripts/apt-packages-metrics.txt)")
    base = Path(tempfile.mkdtemp(prefix="clb-prom-"))
    started: list[Prometheus] = []

    def start(target: str) -> Prometheus:
        p = Prometheus(base, target)
        started.append(p)
        return p

    yield start
    for p in started:
        p.stop()
    shutil.rmtree(base, ignore_errors=True)
