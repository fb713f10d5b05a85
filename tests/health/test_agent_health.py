"""Health checks in the running agent, with real nginx, real backends that really fail and a real
client: dead targets stop getting traffic within the bound and come back after recovery; a rule
whose targets are all dead serves all of them; a restart of the agent and a reload of nginx flip
nothing; `clbagent health --json` reports it all.

Bounds: IntervalTime 5 (the smallest allowed), UnHealthNum 2 and HealthNum 2, so a target goes out
within 5 x 2 + 1 = 11 s and returns within 11 s. A probe that times out ends TimeOut seconds after
it started, so the bound of a target slower than TimeOut is 5 x 2 + TimeOut.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from typing import Any

import pytest

from clbagent.agent.status import request
from tests.agent.conftest import Host, host, wait_for  # noqa: F401 - fixture
from tests.health.conftest import HttpBackend
from tests.l7.conftest import LUA_AVAILABLE

VIP, PORT, DOMAIN = "127.0.50.1", 8080, "www.health.test"
INTERVAL, FALL, RISE, TIMEOUT = 5, 2, 2, 2
BOUND_DOWN, BOUND_UP = INTERVAL * FALL + 1, INTERVAL * RISE + 1
CHECK = {"IntervalTime": INTERVAL, "UnHealthNum": FALL, "HealthNum": RISE}


def rule(loc: str, backends: list[HttpBackend], **check: Any) -> dict[str, Any]:
    return {
        "LocationId": loc,
        "Domain": DOMAIN,
        "Url": f"/{loc}",
        "HealthCheck": {**CHECK, **check},
        "Targets": [b.target() for b in backends],
    }


def document(rules: list[dict], udp: dict | None = None) -> dict[str, Any]:
    listeners: list[dict[str, Any]] = [
        {
            "ListenerId": "web",
            "Protocol": "HTTP",
            "Port": PORT,
            "Rules": [{**rules[0], "DefaultServer": True}, *rules[1:]],
        }
    ]
    if udp is not None:
        listeners.append(udp)
    return {"LoadBalancerId": "lb-health", "LoadBalancerVips": [VIP], "Listeners": listeners}


class Traffic:
    """Requests to every rule in turn, a new connection each; every answer but 200 is counted."""

    def __init__(self, paths: list[str]):
        self.paths, self.sent, self.errors = paths, 0, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _loop(self) -> None:
        while not self._stop.is_set():
            for path in self.paths:
                try:
                    conn = http.client.HTTPConnection(VIP, PORT, timeout=10)
                    conn.request("GET", path, headers={"Host": DOMAIN})
                    status = conn.getresponse().status
                    conn.close()
                except (OSError, http.client.HTTPException) as exc:
                    status = repr(exc)
                self.sent += 1
                if status != 200:
                    self.errors.append((round(time.monotonic(), 2), path, status))
            time.sleep(0.02)


def health(h: Host) -> dict[str, Any]:
    return request(h.config.status_socket, "health")["health"]


def targets(report: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    """(rule or listener, ip:port) -> target."""
    return {
        (rule["LocationId"] or lis["ListenerId"], t["TargetId"]): t
        for lb in report["LoadBalancers"]
        for lis in lb["Listeners"]
        for rule in lis["Rules"]
        for t in rule["Targets"]
    }


def held_down(h: Host, endpoint: str) -> bool | None:
    """Whether nginx holds the member marked down (dynamic upstreams)."""
    report = request(h.config.status_socket, "upstreams")["upstreams"]
    for upstreams in report["load_balancers"].values():
        for upstream in upstreams.values():
            for m in upstream["members"]:
                if m["endpoint"] == endpoint:
                    return m["held_down"]
    return None


def stops_at(b: HttpBackend, after: float, quiet: float = 2.0) -> float:
    """Seconds after ``after`` of the last request ``b`` got, once it has had none for ``quiet`` s."""
    wait_for(lambda: b.hit_times and time.monotonic() - b.hit_times[-1] > quiet, 30, f"{b.label} to get no traffic")
    return b.hit_times[-1] - after


def resumes_at(b: HttpBackend, after: float) -> float:
    wait_for(lambda: any(t > after for t in b.hit_times), 30, f"{b.label} to get traffic again")
    return next(t for t in b.hit_times if t > after) - after


def events(h: Host, name: str) -> list[dict[str, Any]]:
    return [e for line in h.log().splitlines() if line.startswith("{") and (e := json.loads(line))["event"] == name]


def health_applies(h: Host) -> list[dict[str, Any]]:
    """The applies a health transition asked for (possibly coalesced with a periodic resync)."""
    return [e for e in events(h, "apply") if "health" in e["reason"].split(",") and e["result"] == "applied"]


@pytest.mark.skipif(not LUA_AVAILABLE, reason="dynamic upstreams need nginx's Lua module")
@pytest.mark.parametrize("host", ["dynamic"], indirect=True)
def test_failures_recoveries_restart_and_reload(host: Host, http_backends, udp_responders) -> None:  # noqa: F811
    mk = http_backends
    a1, a2 = mk("127.0.50.11", "a1"), mk("127.0.50.12", "a2")  # a1 is killed
    b1, b2 = mk("127.0.50.13", "b1"), mk("127.0.50.14", "b2")  # b1 answers checks with 500
    c1, c2 = mk("127.0.50.15", "c1"), mk("127.0.50.16", "c2")  # c1 answers checks after TimeOut
    d1, d2 = mk("127.0.50.17", "d1"), mk("127.0.50.18", "d2")  # both fail: all dead, all alive
    dns = udp_responders("127.0.50.19", bytes.fromhex("F13E0100"), bytes.fromhex("F13E8180"))
    udp = {
        "ListenerId": "dns",
        "Protocol": "UDP",
        "Port": 5353,
        "HealthCheck": {
            **CHECK,
            "CheckType": "CUSTOM",
            "ContextType": "HEX",
            "SendContext": "F13E0100",
            "RecvContext": "F13E",
        },
        "Targets": [{"EniIp": dns.ip, "Port": dns.port}],
    }
    rules = [
        rule("kill", [a1, a2]),
        rule(
            "code",
            [b1, b2],
            HttpCode=2,
            HttpCheckMethod="HEAD",
            HttpCheckDomain="check.health.test",
            HttpCheckPath="/hz?deep=1",
        ),
        rule("slow", [c1, c2], TimeOut=TIMEOUT),
        rule("all", [d1, d2], HttpCode=2),
    ]
    host.write("lb.yaml", document(rules, udp))
    host.start_agent()
    with Traffic([f"/{r['LocationId']}" for r in rules]) as traffic:  # new targets are Unknown, and served
        wait_for(
            lambda: health(host)["Summary"] == {"Alive": 9, "Dead": 0, "Unknown": 0}, 3 * INTERVAL, "every target Alive"
        )
        # What the backends saw: the rule's method, Host and path; GET by default; the VIP as source.
        assert {p[:3] for p in b1.probes} == {("HEAD", "/hz?deep=1", "check.health.test")}
        assert {p[:3] for p in a1.probes} == {("GET", "/", DOMAIN)}
        assert {p[3] for p in a1.probes + b1.probes} == {VIP}

        failed = time.monotonic()
        a1.stop()
        b1.status = 500
        c1.delay = TIMEOUT + 1
        d1.status = d2.status = 503
        dns.wrong = True
        wait_for(lambda: held_down(host, a1.endpoint), BOUND_DOWN + 5, "a1 marked down")
        assert time.monotonic() - failed <= BOUND_DOWN
        assert stops_at(b1, failed) <= BOUND_DOWN
        assert stops_at(c1, failed) <= INTERVAL * FALL + TIMEOUT
        wait_for(
            lambda: targets(health(host))[("dns", dns.endpoint)]["HealthStatusDetial"] == "Dead",
            5,
            "the UDP target Dead",
        )
        # All dead, all alive: both targets of the rule still get requests.
        dead = targets(health(host))
        assert (
            dead[("all", d1.endpoint)]["HealthStatusDetial"]
            == dead[("all", d2.endpoint)]["HealthStatusDetial"]
            == "Dead"
        )
        before = (d1.hits, d2.hits)
        time.sleep(1)
        assert d1.hits > before[0] and d2.hits > before[1]
        assert dead[("code", b1.endpoint)]["LastError"] == "HTTP 500"
        assert dead[("slow", c1.endpoint)]["LastError"] == f"timed out after {TIMEOUT}s"
        assert dead[("kill", a1.endpoint)]["LastError"] == "Connection refused"
        assert dead[("dns", dns.endpoint)]["LastError"].startswith("unexpected reply")

        # The agent restarts and nginx reloads: nothing changes state, the dead stay out.
        host.procs[0].terminate()
        host.procs[0].wait(20)
        b1_hits = b1.hits
        host.start_agent()
        host.nginx().reload()
        time.sleep(INTERVAL + 1)  # a probe round after the restart
        after = health(host)
        assert {k: (t["HealthStatusDetial"], t["Since"]) for k, t in targets(after).items()} == {
            k: (t["HealthStatusDetial"], t["Since"]) for k, t in dead.items()
        }
        assert b1.hits == b1_hits
        assert held_down(host, a1.endpoint) is True

        # Recovery: back within HealthNum intervals.
        recovered = time.monotonic()
        a1.start()
        b1.status, c1.delay, d1.status, d2.status, dns.wrong = 200, 0.0, 200, 200, False
        assert resumes_at(b1, recovered) <= BOUND_UP
        assert resumes_at(c1, recovered) <= BOUND_UP
        wait_for(lambda: held_down(host, a1.endpoint) is False, BOUND_UP, "a1 back")
        assert resumes_at(a1, recovered) <= BOUND_UP + 1
        wait_for(
            lambda: health(host)["Summary"] == {"Alive": 9, "Dead": 0, "Unknown": 0}, BOUND_UP, "every target Alive"
        )
    assert traffic.errors == [], traffic.errors[:5]  # no 502 at any point
    assert traffic.sent > 200

    # Every health apply went over the channel: no reload.
    applies = health_applies(host)
    assert len(applies) >= 2 and not any(e["reloaded"] for e in applies)
    transitions = events(host, "health")
    b1_moves = [(e["old"], e["new"]) for e in transitions if e["target"] == b1.endpoint]
    assert b1_moves == [("Unknown", "Alive"), ("Alive", "Dead"), ("Dead", "Alive")]
    sample = next(e for e in transitions if e["target"] == b1.endpoint and e["new"] == "Dead")
    assert sample["load_balancer"] == "lb-health" and sample["listener"] == "web" and sample["rule"] == "code"
    assert sample["reason"] == "HTTP 500"

    # The command: exit 0 with nothing dead, the DescribeTargetHealth shape.
    out = host.cli("health", "--json", "--config", str(host.config_path))
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    lb = report["LoadBalancers"][0]
    assert lb["LoadBalancerId"] == "lb-health"
    web = next(lis for lis in lb["Listeners"] if lis["ListenerId"] == "web")
    code = next(r for r in web["Rules"] if r["LocationId"] == "code")
    t = next(t for t in code["Targets"] if t["TargetId"] == b1.endpoint)
    assert (t["IP"], t["Port"], t["HealthStatus"], t["HealthStatusDetial"]) == (b1.ip, b1.port, True, "Alive")
    assert t["Check"] == f"http {b1.endpoint}" and t["Source"] == VIP


@pytest.mark.parametrize("host", ["static"], indirect=True)
def test_static_mode_marks_down_with_a_reload(host: Host, http_backends) -> None:  # noqa: F811
    b1, b2 = http_backends("127.0.50.21", "b1"), http_backends("127.0.50.22", "b2")
    host.write("lb.yaml", document([rule("code", [b1, b2], HttpCode=2)]))
    host.start_agent()
    with Traffic(["/code"]) as traffic:
        wait_for(lambda: b1.hits, 5, "traffic to b1 (Unknown is served)")
        failed = time.monotonic()
        b1.status = 500  # Unknown -> Dead
        assert stops_at(b1, failed) <= BOUND_DOWN
        out = host.cli("health", "--config", str(host.config_path))
        assert out.returncode == 3 and "Dead" in out.stdout and "HTTP 500" in out.stdout
        recovered = time.monotonic()
        b1.status = 200
        assert resumes_at(b1, recovered) <= BOUND_UP
    assert traffic.errors == []
    applies = health_applies(host)
    assert len(applies) >= 2 and all(e["reloaded"] for e in applies)
