"""The agent on a real kernel: `clbagent apply` puts the VIP on the dummy interface and the
services into IPVS, a SIGKILLed agent leaves IPVS serving (never flushed) and the next one
converges, and `clbagent run` restores a service deleted by hand."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from clbagent.agent.config import AgentConfig
from clbagent.agent.engine import Engine
from clbagent.agent.source import FileSource
from tests.kernel.conftest import Conn, ipvsadm_rules, sh, spread, tcp_once
from tests.l4.build import lb_doc, tcp

VIP = "10.99.0.7"
AGENT_IFACE = "clbagent0"
CLBAGENT = [sys.executable, "-m", "clbagent.cli"]


def _layout() -> tuple[Path, Path]:
    base = Path(tempfile.mkdtemp(prefix="clb-agent-vm-"))
    base.chmod(0o755)
    (base / "documents").mkdir()
    config = base / "agent.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "documents": "documents",
                "state_dir": "state",
                "status_socket": "status.sock",
                "metrics_address": "",
                "resync_interval": 2,
                "drain_timeout": 0,
                "l4": "on",
                "vip_interface": AGENT_IFACE,  # not the topology's clb0: the agent owns what it holds
            }
        )
    )
    return base, config


def _document(base: Path, weights: tuple[int, int]) -> None:
    doc = lb_doc(
        [
            tcp(90, [("10.20.1.2", 8080, weights[0]), ("10.20.2.2", 8080, weights[1])]),
            {
                "ListenerId": "lbl-web",
                "Protocol": "HTTP",
                "Port": 8081,
                "Rules": [
                    {
                        "LocationId": "loc-web",
                        "Domain": "www.example.com",
                        "Url": "/",
                        "DefaultServer": True,
                        "HealthCheck": {"HealthSwitch": 0},
                        "Targets": [{"EniIp": "10.20.3.2", "Port": 8080, "Weight": 10 + weights[1]}],
                    }
                ],
            },
        ],
        lb_id="lb-agent",
        vips=(VIP,),
    )
    tmp = base / "documents" / ".lb.tmp"
    tmp.write_text(yaml.safe_dump(doc))
    tmp.rename(base / "documents" / "lb.yaml")


def _cleanup(base: Path) -> None:
    """Leave the VM as the other kernel tests expect it: no agent nginx, service or interface."""
    _stop_nginx(base)
    sh(f"ipvsadm -D -t {VIP}:90", check=False)
    sh(f"ip link del {AGENT_IFACE}", check=False)
    shutil.rmtree(base, ignore_errors=True)


def _stop_nginx(base: Path) -> None:
    pid = base / "state" / "nginx" / "run" / "nginx.pid"
    if pid.exists():
        subprocess.run(["kill", "-TERM", pid.read_text().strip()], check=False)
        time.sleep(0.5)


def _tail(path: Path, lines: int = 15) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def _wait(condition: Callable[[], bool], seconds: float, log: Path) -> None:
    """Poll ``condition``; on timeout fail with the tail of the agent's events."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"not within {seconds} s; the agent's last events:\n{_tail(log)}"
        time.sleep(0.2)


def _apply_in_process(config: Path) -> str:
    """One agent start and apply in this process (the VM imports the agent once: every new Python
    process costs many seconds under software emulation)."""
    engine = Engine(AgentConfig.load(config))
    engine.store.lock()
    try:
        engine.start()
        snap = FileSource([engine.config.documents]).read()
        report = engine.apply(snap.docs, snap.issues, snap.failed_files)
        return "" if report.ok and not report.quarantined else f"{report.result}: {report.error} {report.quarantined}"
    finally:
        engine.l4.close()
        engine.store.unlock()


@pytest.mark.timeout(900)
def test_apply_programs_vip_and_ipvs_and_a_killed_agent_flushes_nothing(topology: None) -> None:
    base, config = _layout()
    try:
        _document(base, (10, 10))
        assert _apply_in_process(config) == ""
        assert VIP in sh(f"ip -o addr show dev {AGENT_IFACE}")
        assert any(":90 " in r or ":90" in r for r in ipvsadm_rules((VIP,)))
        assert set(spread(tcp_once, VIP, 90, 8)) == {"b1", "b2"}
        assert sh(f"ss -Htln src {VIP}").count(":8081") >= 1  # nginx bound the VIP

        held = Conn(VIP, 90)
        _document(base, (10, 0))
        crashed = subprocess.run(
            [sys.executable, "-m", "tests.agent.crash_apply", "switched", "apply", "--config", str(config)],
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert crashed.returncode == -signal.SIGKILL
        assert ipvsadm_rules((VIP,)), "IPVS was flushed"
        assert held.ask() == held.backend  # the established connection kept working
        assert _apply_in_process(config) == ""
        assert held.ask() == held.backend
        assert set(spread(tcp_once, VIP, 90, 6)) == {"b1"}
        held.close()
    finally:
        _cleanup(base)


@pytest.mark.timeout(900)
def test_run_restores_a_service_deleted_by_hand(topology: None) -> None:
    base, config = _layout()
    agent = None
    log = base / "agent.log"
    try:
        _document(base, (10, 10))
        with log.open("wb") as events:  # the agent's JSON events, shown when a check fails
            agent = subprocess.Popen([*CLBAGENT, "run", "--config", str(config)], stderr=events)
        # Under software emulation a new agent takes a minute or more to start and finish its first
        # apply; the repair is only due once it is ready (resync every 2 s after that).
        _wait(lambda: '"event": "ready"' in log.read_text(errors="replace"), 600, log)
        assert ipvsadm_rules((VIP,))
        sh(f"ipvsadm -D -t {VIP}:90")
        _wait(lambda: bool(ipvsadm_rules((VIP,))), 180, log)
        agent.send_signal(signal.SIGTERM)
        assert agent.wait(120) == 0
        assert ipvsadm_rules((VIP,)), "stopping the agent touched IPVS"
    finally:
        if agent is not None and agent.poll() is None:
            agent.kill()
        _cleanup(base)
