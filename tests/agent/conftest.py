"""Fixtures of the agent tests: a host layout (documents, state directory, agent config) in a
directory nginx workers can reach, documents that route to real backends, the real nginx."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml

from clbagent.agent.config import AgentConfig
from clbagent.agent.engine import Engine
from clbagent.agent.source import FileSource
from clbagent.nginx.controller import NginxController
from tests.l7.conftest import NGINX_AVAILABLE, backends, http_get  # noqa: F401 - fixtures

CLBAGENT = [sys.executable, "-m", "clbagent.cli"]


def http_lb(lb_id: str, vip: str, targets: list[dict], port: int = 8080, domain: str = "www.example.com") -> dict:
    return {
        "LoadBalancerId": lb_id,
        "LoadBalancerVips": [vip],
        "Listeners": [
            {
                "ListenerId": f"{lb_id}-http",
                "Protocol": "HTTP",
                "Port": port,
                "Rules": [
                    {
                        "LocationId": f"{lb_id}-root",
                        "Domain": domain,
                        "Url": "/",
                        "DefaultServer": True,
                        "HealthCheck": {"HealthSwitch": 0},
                        "Targets": targets,
                    }
                ],
            }
        ],
    }


@dataclass
class Host:
    """One gateway host's agent layout under a temporary directory."""

    base: Path
    config_path: Path
    config: AgentConfig
    procs: list[subprocess.Popen] = field(default_factory=list)

    @property
    def documents(self) -> Path:
        return self.config.documents

    def write(self, name: str, doc: Any) -> Path:
        path = self.documents / name
        tmp = path.with_name(f".{name}.tmp")
        tmp.write_text(yaml.safe_dump(doc) if not isinstance(doc, str) else doc)
        tmp.rename(path)
        return path

    def engine(self) -> Engine:
        engine = Engine(self.config)
        engine.start()
        return engine

    def apply_once(self, engine: Engine):
        snap = FileSource([self.documents]).read()
        return engine.apply(snap.docs, snap.issues, snap.failed_files)

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run([*CLBAGENT, *args], capture_output=True, text=True, timeout=timeout)

    def nginx(self) -> NginxController:
        return NginxController(self.config.nginx_root)

    def start_agent(self) -> subprocess.Popen:
        proc = subprocess.Popen(
            [*CLBAGENT, "run", "--config", str(self.config_path)],
            stdout=subprocess.DEVNULL,
            stderr=open(self.base / "agent.log", "a"),  # noqa: SIM115 - closed with the process
        )
        self.procs.append(proc)
        wait_for(lambda: self.config.status_socket.exists(), 60, "the agent's status socket")
        return proc

    def status(self) -> dict:
        from clbagent.agent.status import request

        return request(self.config.status_socket)

    def log(self) -> str:
        path = self.base / "agent.log"
        return path.read_text() if path.exists() else ""


def wait_for(cond: Callable[[], Any], timeout: float, what: str, step: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@pytest.fixture
def host(request: pytest.FixtureRequest) -> Iterator[Host]:
    """A host layout; parametrise indirectly with ``static`` or ``dynamic`` to choose the upstream
    mode (default: the agent's ``auto``)."""
    if not NGINX_AVAILABLE:
        pytest.skip("nginx is not installed")
    base = Path(tempfile.mkdtemp(prefix="clb-agent-"))
    base.chmod(0o755)
    (base / "documents").mkdir()
    config_path = base / "agent.yaml"
    config_path.write_text(
        yaml.safe_dump(
            {
                "documents": "documents",
                "state_dir": "state",
                "status_socket": "run/status.sock",
                "metrics_address": "",
                "wait_min": 0.1,
                "wait_max": 1.0,
                "resync_interval": 2.0,
                "worker_shutdown_timeout": "5s",
                "l4": "auto",
                "upstreams": getattr(request, "param", "auto"),
            }
        )
    )
    h = Host(base, config_path, AgentConfig.load(config_path))
    yield h
    for proc in h.procs:
        if proc.poll() is None:
            proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)
            if proc.poll() is None:
                proc.kill()
    h.nginx().stop()
    shutil.rmtree(base, ignore_errors=True)


class Load:
    """A client sending requests in a loop (a new connection each, or keep-alive with one retry of
    an idempotent request, as browsers do) and counting failures."""

    def __init__(self, vip: str, port: int, host: str, keepalive: bool = False):
        self.vip, self.port, self.host, self.keepalive = vip, port, host, keepalive
        self.sent = self.failed = self.retries = 0
        self.errors: list[str] = []
        self.backends: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)

    def _loop(self) -> None:
        import http.client

        conn = None
        while not self._stop.is_set():
            for attempt in (0, 1):
                try:
                    if conn is None or not self.keepalive:
                        conn = http.client.HTTPConnection(self.vip, self.port, timeout=10)
                    conn.request("GET", "/", headers={"Host": self.host})
                    resp = conn.getresponse()
                    body = resp.read()
                    if not self.keepalive:
                        conn.close()
                    self.sent += 1
                    if resp.status != 200:
                        self.failed += 1
                        self.errors.append(f"HTTP {resp.status}")
                    else:
                        label = body.split(b'"backend": "', 1)[-1].split(b'"', 1)[0].decode()
                        self.backends[label] = self.backends.get(label, 0) + 1
                    break
                except (OSError, http.client.HTTPException) as exc:
                    conn = None
                    if self.keepalive and attempt == 0:
                        self.retries += 1
                        continue
                    self.sent += 1
                    self.failed += 1
                    self.errors.append(repr(exc))
                    break


def worker_pids(host: Host) -> set[int]:
    """The master's current workers, once they are all up (a new master forks them one by one)."""
    deadline = time.monotonic() + 5
    seen = set(host.nginx().workers()[0])
    while time.monotonic() < deadline:
        time.sleep(0.1)
        again = set(host.nginx().workers()[0])
        if again == seen and seen:
            break
        seen = again
    return seen


def master_pid(host: Host) -> int | None:
    m = host.nginx().master()
    return m.pid if m else None


def alive(pid: int | None) -> bool:
    return pid is not None and psutil.pid_exists(pid)
