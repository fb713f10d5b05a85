"""`clbagent run`: the daemon under real nginx, with signals, a status socket and systemd's notify
protocol spoken to a real datagram socket."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest
import yaml

from tests.agent.conftest import CLBAGENT, alive, http_lb, master_pid, wait_for
from tests.l7.conftest import http_get

pytestmark = pytest.mark.nginx
VIP = "127.0.43.1"
ROOT = Path(__file__).resolve().parents[2]


def _answers(backend: str, vip: str = VIP) -> bool:
    try:
        return http_get(vip, 8080, "www.example.com", timeout=2).backend == backend
    except (OSError, ValueError, KeyError):
        return False


def _status(vip: str = VIP) -> int | None:
    try:
        return http_get(vip, 8080, "www.example.com", timeout=2).status
    except OSError:
        return None


def _events(host, name: str) -> list[dict]:
    return [e for line in host.log().splitlines() if line.startswith("{") and (e := json.loads(line))["event"] == name]


def test_run_serves_applies_edits_and_reports_status(host, backends):
    b1, b2 = backends("b1"), backends("b2")
    host.write("a.yaml", http_lb("lb-a", VIP, [b1.target()]))
    host.start_agent()
    wait_for(lambda: _answers("b1"), 30, "traffic to b1")
    host.write("a.yaml", http_lb("lb-a", VIP, [b2.target()]))
    wait_for(lambda: _answers("b2"), 30, "traffic to b2 after the edit")

    bad = http_lb("lb-a", VIP, [b1.target()])
    bad["Listeners"][0]["Rules"][0]["Targets"][0]["Weight"] = 101
    host.write("a.yaml", bad)
    status = wait_for(
        lambda: (s := host.status())["load_balancers"]["lb-a"]["result"] == "quarantined" and s, 30, "quarantine"
    )
    lb = status["load_balancers"]["lb-a"]
    assert lb["errors"][0]["code"] == "InvalidParameterValue.Range"
    assert "Weight" in lb["errors"][0]["path"]
    assert (lb["task_status"], status["agent"]["task_status"]) == (1, 0)
    assert _answers("b2")  # the last good version keeps serving
    assert status["nginx"]["master_pid"] == master_pid(host)
    assert status["nginx"]["generation"] == lb["generation"]
    assert not status["ipvs"]["available"] or status["ipvs"]["services"] is not None

    text = host.cli("status", "--config", str(host.config_path))
    assert text.returncode == 0 and "lb-a" in text.stdout and "quarantined" in text.stdout
    assert oct(host.config.status_socket.stat().st_mode & 0o777) == "0o600"


def test_burst_of_edits_is_coalesced(host, backends):
    pool = [backends(f"b{i}") for i in range(5)]
    host.write("a.yaml", http_lb("lb-a", VIP, [pool[0].target()]))
    host.start_agent()
    wait_for(lambda: _answers("b0"), 30, "first state")
    before = len([e for e in _events(host, "apply") if e["result"] == "applied"])
    for i in range(50):  # 50 edits within one second
        host.write("a.yaml", http_lb("lb-a", VIP, [pool[1 + i % 4].target(weight=1 + i)]))
        __import__("time").sleep(0.018)
    wait_for(lambda: _answers("b2"), 30, "the last edit served")  # i = 49 → pool[2]
    __import__("time").sleep(1.5)
    applies = len([e for e in _events(host, "apply") if e["result"] == "applied"]) - before
    assert 1 <= applies <= 3, host.log()  # 50 edits, a few applies (each one a reload in static mode)


def test_dead_master_is_restarted_and_sigterm_leaves_nginx_serving(host, backends):
    b1 = backends("b1")
    host.write("a.yaml", http_lb("lb-a", VIP, [b1.target()]))
    agent = host.start_agent()
    wait_for(lambda: _answers("b1"), 30, "traffic")
    first = master_pid(host)
    os.kill(first, signal.SIGKILL)
    wait_for(lambda: alive(master_pid(host)) and master_pid(host) != first, 20, "a new master (resync 2 s)")
    wait_for(lambda: _answers("b1"), 20, "traffic after the restart")

    second = master_pid(host)
    agent.send_signal(signal.SIGTERM)
    assert agent.wait(20) == 0
    assert master_pid(host) == second and _answers("b1")  # the data plane outlived the agent

    host.start_agent()  # adopts the running master: no new one, no reload needed
    wait_for(lambda: host.status()["nginx"]["master_pid"] == second, 20, "adoption")


def test_hand_edited_generated_file_is_restored(host, backends):
    b1 = backends("b1")
    host.write("a.yaml", http_lb("lb-a", VIP, [b1.target()]))
    host.start_agent()
    wait_for(lambda: _answers("b1"), 30, "traffic")
    (conf,) = (host.config.nginx_root / "current" / "conf.d").glob("*.conf")  # the pack holding lb-a
    original = conf.read_text()
    edited = original.replace("location / {", "location / {\n        return 418;", 1)
    assert edited != original
    tmp = conf.with_name("x.tmp")
    tmp.write_text(edited)
    tmp.replace(conf)
    os.kill(master_pid(host), signal.SIGHUP)  # someone reloads the hand edit
    wait_for(lambda: _status() == 418, 10, "the hand edit in force")
    wait_for(lambda: _answers("b1"), 20, "the generated file restored by the resync")
    wait_for(lambda: _events(host, "repaired"), 10, "the repair reported")


def test_sighup_rereads_the_config(host, backends):
    b1, b2 = backends("b1"), backends("b2")
    host.write("a.yaml", http_lb("lb-a", VIP, [b1.target()]))
    agent = host.start_agent()
    wait_for(lambda: _answers("b1"), 30, "traffic")
    other = host.base / "other-documents"
    other.mkdir()
    (other / "a.yaml").write_text(yaml.safe_dump(http_lb("lb-a", VIP, [b2.target()])))
    config = yaml.safe_load(host.config_path.read_text())
    host.config_path.write_text(yaml.safe_dump({**config, "documents": "other-documents"}))
    agent.send_signal(signal.SIGHUP)
    wait_for(lambda: _answers("b2"), 30, "the new documents directory applied")
    host.config_path.write_text("documents: [not, a, path")
    agent.send_signal(signal.SIGHUP)
    wait_for(lambda: _events(host, "config_error"), 10, "the bad config reported")
    assert agent.poll() is None and _answers("b2")


def test_systemd_notify_ready_and_watchdog(host, backends):
    b1 = backends("b1")
    host.write("a.yaml", http_lb("lb-a", VIP, [b1.target()]))
    path = host.base / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(30)
    env = {**os.environ, "NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "1000000"}
    proc = subprocess.Popen([*CLBAGENT, "run", "--config", str(host.config_path)], env=env, stderr=subprocess.DEVNULL)
    host.procs.append(proc)
    env["WATCHDOG_PID"] = str(proc.pid)
    try:
        messages = []
        while not any("WATCHDOG=1" in m for m in messages) or not any("READY=1" in m for m in messages):
            messages.append(sock.recv(4096).decode())
        ready = next(m for m in messages if "READY=1" in m)
        assert "generation 1" in ready
        assert _answers("b1")  # READY means the first state is served
    finally:
        sock.close()


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_unit_file_passes_systemd_analyze_verify():
    unit = (ROOT / "packaging" / "systemd" / "clbagent.service").read_text()
    with tempfile.TemporaryDirectory() as tmp:
        exe = Path(tmp) / "clbagent"
        exe.write_text("#!/bin/sh\n")
        exe.chmod(0o755)
        path = Path(tmp) / "clbagent.service"
        path.write_text(unit.replace("/usr/local/bin/clbagent", str(exe)))
        result = subprocess.run(["systemd-analyze", "verify", str(path)], capture_output=True, text=True, cwd=tmp)
    problems = [line for line in result.stderr.splitlines() if "clbagent.service" in line]
    assert result.returncode == 0 and not problems, result.stderr


def test_metrics_endpoint_on_loopback_counts_applies(host, backends):
    import httpx

    b1 = backends("b1")
    host.write("a.yaml", http_lb("lb-a", VIP, [b1.target()]))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = yaml.safe_load(host.config_path.read_text())
    host.config_path.write_text(yaml.safe_dump({**config, "metrics_address": f"127.0.0.1:{port}"}))
    host.start_agent()
    text = wait_for(lambda: _scrape(httpx, port), 30, "the metrics endpoint")
    assert 'clbagent_applies_total{result="applied"} 1.0' in text
    assert "clbagent_nginx_up 1.0" in text
    assert "clbagent_config_generation 1.0" in text
    host.write("a.yaml", http_lb("lb-a", VIP, [b1.target(weight=5)]))
    wait_for(lambda: 'clbagent_applies_total{result="applied"} 2.0' in _scrape(httpx, port), 30, "a second apply")


def _scrape(httpx, port: int) -> str:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
    except httpx.HTTPError:
        return ""


@pytest.mark.parametrize("host", ["dynamic"], indirect=True)
def test_status_upstreams_shows_what_nginx_holds(host, backends):
    b1, b2 = backends("b1"), backends("b2")
    host.write("a.yaml", http_lb("lb-a", VIP, [b1.target(), b2.target(weight=0)]))
    config = yaml.safe_load(host.config_path.read_text())
    host.config_path.write_text(yaml.safe_dump({**config, "resync_interval": 8}))  # the drift stays visible
    host.start_agent()
    wait_for(lambda: _answers("b1"), 30, "traffic")
    shown = host.cli("status", "--config", str(host.config_path), "--upstreams", "--json")
    assert shown.returncode == 0, shown.stdout + shown.stderr
    [(name, upstream)] = json.loads(shown.stdout)["load_balancers"]["lb-a"].items()
    assert upstream["in_sync"] and "lb_a_root" in name
    assert {(m["endpoint"], m["weight"], m["held_weight"]) for m in upstream["members"]} == {
        (f"{b1.ip}:{b1.port}", 10, 10),
        (f"{b2.ip}:{b2.port}", 0, 0),
    }
    from clbagent.nginx.upstreams_channel import Member, Upstream, UpstreamsChannel

    with UpstreamsChannel.of_prefix(host.config.nginx_root) as channel:  # someone else changes nginx
        channel.send({name: Upstream((Member(f"{b2.ip}:{b2.port}", 10),))})
    drift = host.cli("status", "--config", str(host.config_path), "--upstreams")
    assert drift.returncode == 3 and "DIFFERS" in drift.stdout, drift.stdout
    wait_for(lambda: _answers("b1"), 30, "the next resync putting the desired members back")
