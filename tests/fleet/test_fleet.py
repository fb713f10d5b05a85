"""Agents fed from a real etcd, each in its own network namespace with its own nginx: a write
reaches all of them, etcd outages and compaction lose nothing, a bad document is quarantined and
reported by every agent, and a dead agent's status expires."""

from __future__ import annotations

import json
import subprocess
import threading
import time

import pytest

from tests.fleet.conftest import BACKEND_PORT
from tests.fleet.harness import CLBAGENT, PREFIX, STATUS_PREFIX, Fleet, http_lb, wait_for

pytestmark = pytest.mark.nginx
LB_B_VIP = "127.0.70.11"


def _fleet_status(fleet: Fleet, *args: str) -> subprocess.CompletedProcess:
    config = fleet.agents[0].config_path
    return subprocess.run(
        [*CLBAGENT, "fleet", "status", "--config", str(config), *args], capture_output=True, text=True, timeout=60
    )


def _put_lb_b(fleet: Fleet, port: int) -> int:
    return fleet.etcd.put(f"{PREFIX}lb-b", http_lb("lb-b", port, LB_B_VIP))


def _converged(fleet: Fleet, lb: str, revision: int, marker: str) -> bool:
    return fleet.applied_everywhere(lb, revision) and all(marker in a.served() for a in fleet.agents)


def test_one_write_is_applied_by_every_agent(fleet: Fleet):
    revision = _put_lb_b(fleet, 18101)
    wait_for(lambda: _converged(fleet, "lb-b", revision, ":18101"), 30, "lb-b applied by every agent")
    reports = fleet.reports()
    for agent in fleet.agents:
        mine = reports[agent.name]
        assert mine["lb-b"]["desired_revision"] == revision and mine["lb-b"]["result"] == "applied"
        assert set(mine["lb-b"]["health"]) <= {"Alive", "Dead", "Unknown"}  # the health monitor's summary
        assert mine[""]["seen_revision"] >= revision and mine[""]["last_apply"]["result"] == "applied"
        link = agent.status()["agent"]["etcd"]
        assert link["connected"] and link["revision"] >= revision
    assert "fleet-backend 200" in fleet.agents[0].http()  # through nginx in the namespace, to the backend

    out = _fleet_status(fleet)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "lb-b" in out.stdout and all(a.name in out.stdout for a in fleet.agents)


def test_invalid_document_is_quarantined_and_reported_by_every_agent(fleet: Fleet):
    bad = http_lb("lb-c", 18102, "127.0.70.12")
    bad["Listeners"][0]["Rules"][0]["Targets"][0]["Weight"] = 101
    fleet.etcd.put(f"{PREFIX}lb-c", bad)
    fleet.etcd.put(f"{PREFIX}broken", "Listeners: [unclosed")
    good = _put_lb_b(fleet, 18103)

    def reported() -> bool:
        reports = fleet.reports()
        return all(
            reports.get(a.name, {}).get("lb-c", {}).get("result") == "quarantined"
            and reports[a.name].get("%2Fclb%2Fdesired%2Fbroken", {}).get("result") == "quarantined"
            for a in fleet.agents
        )

    wait_for(reported, 30, "both bad documents reported by every agent")
    wait_for(lambda: _converged(fleet, "lb-b", good, ":18103"), 30, "the good document applied meanwhile")
    for agent in fleet.agents:
        mine = fleet.reports()[agent.name]
        (weight,) = mine["lb-c"]["errors"]
        assert weight["code"] == "InvalidParameterValue.Range" and weight["path"].endswith("Targets[0]/Weight")
        assert mine["lb-c"]["applied_revision"] is None  # never served
        (broken,) = mine["%2Fclb%2Fdesired%2Fbroken"]["errors"]
        assert broken["code"] == "InvalidParameter.FormatError" and broken["path"] == f"{PREFIX}broken"
        assert "fleet-backend 200" in fleet.agents[0].http()

    out = _fleet_status(fleet)
    assert out.returncode == 3, out.stdout + out.stderr
    assert "InvalidParameterValue.Range" in out.stdout and "some agents are behind or report errors" in out.stdout
    view = json.loads(_fleet_status(fleet, "--json").stdout)
    assert not view["ok"]
    assert {s["state"] for s in view["load_balancers"]["lb-c"]["agents"].values()} == {"error"}
    assert {s["state"] for s in view["load_balancers"]["lb-b"]["agents"].values()} == {"ok"}

    fleet.etcd.ctl("del", f"{PREFIX}lb-c")
    fleet.etcd.ctl("del", f"{PREFIX}broken")
    wait_for(lambda: _fleet_status(fleet).returncode == 0, 30, "the fleet clean again once both are deleted")


def test_no_write_is_lost_when_etcd_is_killed_during_a_stream_of_writes(fleet: Fleet):
    acknowledged: list[tuple[int, int]] = []

    def writer() -> None:
        for port in range(18200, 18240):
            while True:  # a write counts once etcd acknowledged it
                try:
                    acknowledged.append((port, _put_lb_b(fleet, port)))
                    break
                except subprocess.CalledProcessError:
                    time.sleep(0.1)
            time.sleep(0.03)

    thread = threading.Thread(target=writer)
    thread.start()
    wait_for(lambda: len(acknowledged) >= 10, 30, "the first writes")
    fleet.etcd.kill()
    time.sleep(1.5)
    assert "fleet-backend 200" in fleet.agents[0].http()  # serving on without etcd
    assert all(a.status()["agent"]["etcd"]["connected"] is False for a in fleet.agents)
    fleet.etcd.start()
    thread.join(120)
    port, revision = acknowledged[-1]
    assert [p for p, _ in acknowledged] == list(range(18200, 18240))
    assert fleet.etcd.get_prefix(f"{PREFIX}lb-b")[f"{PREFIX}lb-b"][0] == revision
    wait_for(lambda: _converged(fleet, "lb-b", revision, f":{port}"), 60, "every agent on the final revision")
    assert all(a.events("etcd_unreachable") for a in fleet.agents)


def test_compaction_while_agents_are_behind_forces_a_new_listing(fleet: Fleet):
    for agent in fleet.agents:
        agent.pause(True)
    try:
        fleet.etcd.kill()  # the agents' watch streams die while they cannot notice
        fleet.etcd.start()
        for port in (18300, 18301, 18302):
            revision = _put_lb_b(fleet, port)
        fleet.etcd.compact(revision)
    finally:
        for agent in fleet.agents:
            agent.pause(False)
    wait_for(lambda: _converged(fleet, "lb-b", revision, ":18302"), 60, "every agent on the compacted revision")
    for agent in fleet.agents:
        (compacted, *_) = agent.events("etcd_compacted")
        assert compacted["compacted"] == revision


def test_dead_agent_status_expires_and_an_agent_starts_with_etcd_down(fleet: Fleet):
    first = fleet.agents[0]
    assert first.proc is not None
    first.proc.kill()  # the host's agent dies: its lease is no longer kept alive
    first.proc.wait(10)
    wait_for(lambda: first.name not in fleet.reports(), 15, "the dead agent's status keys to expire")

    fleet.etcd.kill()
    first.start()
    up = ("source_not_ready", "ready", "etcd_unreachable")
    wait_for(lambda: all(first.events(e) for e in up), 30, "the agent up without etcd")
    assert "fleet-backend 200" in first.http()  # serving the last good state from its state directory
    assert first.status()["load_balancers"]["lb-a"]["result"] == "applied"

    fleet.etcd.start()
    revision = fleet.etcd.get_prefix(f"{PREFIX}lb-a")[f"{PREFIX}lb-a"][0]
    wait_for(lambda: fleet.applied_everywhere("lb-a", revision, [first]), 30, "its status back once etcd is")
    assert fleet.etcd.get_prefix(f"{STATUS_PREFIX}{first.name}/")  # keys under a new lease
    assert f":{BACKEND_PORT}" in first.served()
