"""A real etcd on loopback and agents in network namespaces, for the fleet tests and benchmark.

Each agent is a gateway host of its own: a network namespace (so that every agent's nginx listens
on the same VIP, as on separate hosts), its own state directory and nginx prefix. The agents reach
etcd over its unix socket, which is a file and so crosses namespaces without any network setup.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from clbagent.nginx.controller import NginxController
from tests.agent.conftest import CLBAGENT, wait_for
from tests.agent.conftest import http_lb as agent_http_lb

BIN = Path(sys.executable).parent
ETCD, ETCDCTL = BIN / "etcd", BIN / "etcdctl"
ETCD_IP = "127.0.70.1"
VIP = "127.0.70.10"
PREFIX, STATUS_PREFIX = "/clb/desired/", "/clb/status/"


class Etcd:
    """One etcd member with its own data directory: TCP on 127.0.70.1 for the tests, a unix
    socket for the agents in their namespaces. It can be killed and started again on the same data."""

    def __init__(self, base: Path, client_port: int = 23790, tls: Path | None = None):
        """``tls``: a directory with ca.pem, server.pem/.key and client.pem/.key: clients must then
        present a certificate of that CA (and there is no unix socket)."""
        self.base = base
        self.data = base / "data"
        self.tls = tls
        self.url = f"{'https' if tls else 'http'}://{ETCD_IP}:{client_port}"
        self.peer = f"http://{ETCD_IP}:{client_port + 1}"
        self.socket = base / "etcd.sock:0"  # etcd wants host:port even for a unix socket (cwd-relative)
        self.proc: subprocess.Popen | None = None

    @property
    def agent_endpoint(self) -> str:
        return f"unix://{self.socket}"

    def start(self) -> None:
        self.socket.unlink(missing_ok=True)
        self.proc = subprocess.Popen(
            [
                str(ETCD),
                "--name=fleet",
                f"--data-dir={self.data}",
                f"--listen-client-urls={self.url}" + ("" if self.tls else f",unix://{self.socket.name}"),
                f"--advertise-client-urls={self.url}",
                f"--listen-peer-urls={self.peer}",
                f"--initial-advertise-peer-urls={self.peer}",
                f"--initial-cluster=fleet={self.peer}",
                "--log-level=error",
                *self._tls_flags(),
            ],
            stdout=subprocess.DEVNULL,
            stderr=open(self.base / "etcd.log", "a"),  # noqa: SIM115 - closed with the process
            cwd=self.base,
        )
        wait_for(self._healthy, 30, "etcd to serve", 0.1)

    def _tls_flags(self) -> list[str]:
        if self.tls is None:
            return []
        files = ("cert-file=server.pem", "key-file=server.key", "trusted-ca-file=ca.pem")
        return ["--client-cert-auth", *(f"--{flag.replace('=', f'={self.tls}/')}" for flag in files)]

    def _healthy(self) -> bool:
        up = self.ctl("endpoint", "health", check=False).returncode == 0
        return up and (self.tls is not None or self.socket.exists())

    def _ctl_tls(self) -> list[str]:
        t = self.tls
        return [] if t is None else [f"--cacert={t}/ca.pem", f"--cert={t}/client.pem", f"--key={t}/client.key"]

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None

    def ctl(self, *args: str, check: bool = True, data: bytes | None = None) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(ETCDCTL), f"--endpoints={self.url}", "--command-timeout=5s", *self._ctl_tls(), *args],
            input=data,
            capture_output=True,
            check=check,
            timeout=20,
        )

    def put(self, key: str, value: str | dict) -> int:
        """Write one value; the revision etcd gave it."""
        text = value if isinstance(value, str) else yaml.safe_dump(value)
        out = self.ctl("put", key, "-w", "json", data=text.encode())
        # etcdctl reads the value from stdin when it is not on the command line
        return int(json.loads(out.stdout)["header"]["revision"])

    def delete_prefix(self, prefix: str) -> None:
        self.ctl("del", "--prefix", prefix)

    def get_prefix(self, prefix: str) -> dict[str, tuple[int, bytes]]:
        out = json.loads(self.ctl("get", "--prefix", prefix, "-w", "json").stdout)
        return {
            base64.b64decode(kv["key"]).decode(): (int(kv["mod_revision"]), base64.b64decode(kv.get("value", "")))
            for kv in out.get("kvs", [])
        }

    def revision(self) -> int:
        out = json.loads(self.ctl("endpoint", "status", "-w", "json").stdout)
        return int(out[0]["Status"]["header"]["revision"])

    def compact(self, revision: int) -> None:
        self.ctl("compact", str(revision), "--physical")


@dataclass
class Agent:
    """One host: a network namespace with its own state directory, nginx prefix and agent."""

    name: str
    netns: str
    base: Path
    etcd: Etcd
    extra: dict[str, Any] = field(default_factory=dict)
    proc: subprocess.Popen | None = None
    log_offset: int = 0

    @property
    def config_path(self) -> Path:
        return self.base / "agent.yaml"

    @property
    def state(self) -> Path:
        return self.base / "state"

    def setup(self) -> None:
        self.base.mkdir(parents=True)
        self.base.chmod(0o755)
        subprocess.run(["ip", "netns", "add", self.netns], check=True)
        self.ns("ip", "link", "set", "lo", "up")
        config = {
            "source": "etcd",
            "etcd_endpoints": [self.etcd.agent_endpoint],
            "etcd_prefix": PREFIX,
            "etcd_status_prefix": STATUS_PREFIX,
            "etcd_lease_ttl": 5,
            "etcd_timeout": 2,
            "agent_name": self.name,
            "state_dir": "state",
            "status_socket": "run/status.sock",
            "metrics_address": "",
            "wait_min": 0.05,
            "wait_max": 0.5,
            "resync_interval": 5.0,
            "worker_shutdown_timeout": "2s",
            "l4": "off",
            **self.extra,
        }
        self.config_path.write_text(yaml.safe_dump(config))

    def ns(self, *cmd: str, check: bool = True, timeout: float = 20) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["ip", "netns", "exec", self.netns, *cmd], capture_output=True, text=True, check=check, timeout=timeout
        )

    def start(self) -> None:
        (self.base / "run" / "status.sock").unlink(missing_ok=True)
        log = self.base / "agent.log"
        self.log_offset = log.stat().st_size if log.exists() else 0
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", self.netns, *CLBAGENT, "run", "--config", str(self.config_path)],
            stdout=subprocess.DEVNULL,
            stderr=open(self.base / "agent.log", "a"),  # noqa: SIM115 - closed with the process
            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
        )

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(10)
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def pause(self, paused: bool) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP if paused else signal.SIGCONT)

    def teardown(self) -> None:
        self.stop()
        NginxController(self.state / "nginx").stop()
        subprocess.run(["ip", "netns", "del", self.netns], check=False)
        shutil.rmtree(self.base, ignore_errors=True)

    def log(self) -> str:
        path = self.base / "agent.log"
        return path.read_text() if path.exists() else ""

    def events(self, name: str) -> list[dict]:
        """The agent's events of one kind since it was last started."""
        lines = [line for line in self.log()[self.log_offset :].splitlines() if line.startswith("{")]
        return [e for line in lines if (e := json.loads(line))["event"] == name]

    def status(self) -> dict:
        from clbagent.agent.status import request

        return request(self.base / "run" / "status.sock", timeout=5)

    def served(self) -> str:
        """Every file of the generation nginx serves, as one text (to find a target in)."""
        current = self.state / "nginx" / "current"
        return "".join(p.read_text(errors="replace") for p in sorted(current.rglob("*")) if p.is_file())

    def http(self, vip: str = VIP) -> str:
        """The answer through a VIP, from inside the namespace: body and HTTP code."""
        out = self.ns(
            "curl",
            "-s",
            "-m",
            "3",
            "-H",
            "Host: www.example.com",
            "-w",
            " %{http_code}",
            f"http://{vip}:8080/",
            check=False,
        )
        return out.stdout


class Fleet:
    """etcd and n agents, each in a namespace named after this process (no clash with others)."""

    def __init__(self, n: int, base: Path | None = None, extra: dict[str, Any] | None = None):
        self.base = base or Path(tempfile.mkdtemp(prefix="clb-fleet-"))
        self.base.chmod(0o755)
        self.etcd = Etcd(self.base / "etcd")
        self.etcd.base.mkdir()
        tag = f"clbf{os.getpid() % 100000}"
        self.agents = [Agent(f"gw-{i}", f"{tag}-{i}", self.base / f"gw-{i}", self.etcd, extra or {}) for i in range(n)]

    def start(self) -> Fleet:
        self.etcd.start()
        for agent in self.agents:
            agent.setup()
            agent.start()
        return self

    def close(self) -> None:
        for agent in self.agents:
            agent.teardown()
        self.etcd.kill()
        shutil.rmtree(self.base, ignore_errors=True)

    def reports(self) -> dict[str, dict[str, Any]]:
        """The status keys: agent -> {root or '' (the agent itself) -> value}."""
        out: dict[str, dict[str, Any]] = {}
        for key, (_, value) in self.etcd.get_prefix(STATUS_PREFIX).items():
            agent, _, root = key[len(STATUS_PREFIX) :].partition("/")
            out.setdefault(agent, {})[root] = json.loads(value)
        return out

    def applied_everywhere(self, lb: str, revision: int, agents: list[Agent] | None = None) -> bool:
        reports = self.reports()
        return all(
            reports.get(a.name, {}).get(lb, {}).get("applied_revision") == revision for a in agents or self.agents
        )


def http_lb(lb_id: str, target_port: int, vip: str = VIP) -> dict:
    """One HTTP load balancer with one target on the namespace's loopback (its port marks the
    version)."""
    return agent_http_lb(lb_id, vip, [{"EniIp": "127.0.0.1", "Port": target_port, "Weight": 10}])
