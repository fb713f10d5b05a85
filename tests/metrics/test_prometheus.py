"""A real Prometheus server scrapes a running agent (`clbagent run`) serving a real nginx; every
figure is read back through Prometheus' HTTP API (docs/metrics.md)."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.agent.conftest import host  # noqa: F401 - fixture
from tests.metrics.conftest import free_port, wait_for

DASHBOARD = Path(__file__).resolve().parents[2] / "dashboards" / "clbagent.json"
VIP = "127.0.60.1"
HOST = "www.example.com"
APP = '{rule="loc-app",code="2xx",source="backend"}'
MARKER = "zq-request-marker"  # sent in URIs and Host headers: must never become a label
QUIET_LISTENERS = {"lbl-n": 8081, "lbl-o": 8082}


def _doc(target: dict) -> dict:
    def rule(loc: str, url: str) -> dict:
        return {"LocationId": loc, "Domain": HOST, "Url": url, "DefaultServer": url == "/app",
                "HealthCheck": {"HealthSwitch": 0}, "Targets": [target]}  # fmt: skip

    rules = [rule("loc-app", "/app"), rule("loc-err", "/status")]
    listener = {"ListenerId": "lbl-m", "Protocol": "HTTP", "Port": 8080, "Rules": rules}
    # two more listeners that only the idle clients of the connection test use
    quiet = [
        {"ListenerId": lid, "Protocol": "HTTP", "Port": port, "Rules": [rule(f"loc-{lid}", "/app")]}
        for lid, port in QUIET_LISTENERS.items()
    ]
    return {"LoadBalancerId": "lb-m", "LoadBalancerVips": [VIP], "Listeners": [listener, *quiet]}


def _start_agent(host, doc: dict) -> str:  # noqa: F811 - the fixture
    address = f"{VIP}:{free_port(VIP)}"
    config = yaml.safe_load(host.config_path.read_text())
    host.config_path.write_text(yaml.safe_dump({**config, "metrics_address": address}))
    host.write("lb.yaml", doc)
    host.start_agent()
    wait_for(lambda: _get("/app").status_code == 200, 30, "the agent serving lb-m")
    return address


_CLIENT = httpx.Client(timeout=5, verify=False)  # plain HTTP: no TLS context per request


def _get(path: str, host_header: str = HOST) -> httpx.Response:
    try:
        return _CLIENT.get(f"http://{VIP}:8080{path}", headers={"Host": host_header})
    except httpx.HTTPError:
        return httpx.Response(0)


def _idle_client(port: int) -> socket.socket:
    """A client connection to the listener on ``port`` that made one request and stays open (keep-alive)."""
    sock = socket.create_connection((VIP, port), timeout=5)
    sock.sendall(f"GET /app HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode())
    assert sock.recv(65536).startswith(b"HTTP/1.1 200")
    return sock


def _connections(address: str) -> dict[str, float]:
    """clb_http_connections by state, read from the agent's endpoint."""
    families = text_string_to_metric_families(_scrape(address))
    return {s.labels["state"]: s.value for f in families if f.name == "clb_http_connections" for s in f.samples}


def _scrape(address: str) -> str:
    try:
        return _CLIENT.get(f"http://{address}/metrics").text
    except httpx.HTTPError:
        return ""


@pytest.mark.parametrize("host", ["dynamic"], indirect=True)
def test_prometheus_reads_rule_counters_by_source(host, status_backend, prometheus):  # noqa: F811
    backend = status_backend("127.0.60.2")
    address = _start_agent(host, _doc(backend.target()))
    prom = prometheus(address)
    wait_for(prom.scraped, 20, "a first successful scrape")
    before = wait_for(lambda: prom.value(f"clb_http_requests_total{APP}"), 20, "the first request's counter")

    for i in range(100):
        assert _get(f"/app/{MARKER}?n={i}").status_code == 200
    wait_for(lambda: prom.value(f"clb_http_requests_total{APP}") == before + 100, 20, "the counter to rise by 100")

    for _ in range(5):
        assert _get(f"/{MARKER}/missing").status_code == 404  # no rule for it: the load balancer answers
    for _ in range(3):
        assert _get("/status/502").status_code == 502  # the backend answers 502
    lb404 = 'clb_http_responses_total{code="404",source="lb"}'
    wait_for(lambda: prom.value(lb404) == 5, 20, "five load-balancer 404s")
    backend502 = 'clb_http_responses_total{code="502",rule="loc-err",source="backend"}'
    wait_for(lambda: prom.value(backend502) == 3, 20, "three backend 502s")
    assert prom.value('clb_http_responses_total{code="502",source="lb"}') is None
    assert prom.value('clb_http_responses_total{code="404",source="backend"}') is None
    assert prom.value('clb_http_requests_total{rule="loc-app",code="2xx",source="lb"}') is None
    # the 404s are the domain's own (no rule matched): no rule label (empty)
    assert prom.query(lb404) == {
        (("code", "404"), ("domain", HOST), ("instance", address), ("job", "clbagent"), ("listener", "lbl-m"),
         ("load_balancer", "lb-m"), ("source", "lb")): 5.0
    }  # fmt: skip
    assert prom.value('clb_http_request_duration_seconds_count{rule="loc-app"}') == before + 100
    assert prom.value(f'clb_http_backend_requests_total{{target="{backend.endpoint}",code="2xx"}}') == before + 100
    assert prom.value('clb_instance_bytes_total{load_balancer="lb-m",direction="in"}') > 100 * len(MARKER)
    assert prom.value("clb_http_metrics_available") == 1

    # a host nobody configured, and the marker in its name: still only configuration IDs as labels
    _get(f"/app/{MARKER}", host_header=f"{MARKER}.invalid")
    wait_for(lambda: prom.value(f"clb_http_requests_total{APP}") == before + 101, 20, "the odd host's request")
    series = prom.api("series", **{"match[]": '{__name__=~"clb_.*"}'})
    values = {v for s in series for k, v in s.items() if k != "__name__"}
    assert not [v for v in values if MARKER in v or "/" in v], values

    # a reload (a new rule) keeps the counters: no reset seen by Prometheus
    doc = _doc(backend.target())
    doc["Listeners"][0]["Rules"].append({**doc["Listeners"][0]["Rules"][1], "LocationId": "loc-new", "Url": "/new"})
    host.write("lb.yaml", doc)
    wait_for(lambda: _get("/new").status_code == 200, 30, "the reload with the new rule")
    wait_for(lambda: prom.value('clb_http_requests_total{rule="loc-new"}') == 1, 20, "the new rule counted")
    assert prom.value(f"clb_http_requests_total{APP}") == before + 101
    assert prom.value(f"resets(clb_http_requests_total{APP}[5m])") == 0

    # every query of the dashboard is valid PromQL for this Prometheus; the L7 panels show lb-m's data
    panels = json.loads(DASHBOARD.read_text())["panels"]
    for panel in panels:
        for target in panel["targets"]:
            expr = target["expr"].replace("$lb", "lb-m").replace("$__rate_interval", "1m")
            result = prom.api("query", query=expr)["result"]  # raises unless Prometheus accepts it
            if "clb_http_requests_total" in expr:
                assert result, f"{panel['title']}: no data for {expr}"

    # open connections: 3 idle keep-alive clients on lbl-n and 1 on lbl-o, counted per listener in
    # the kernel (Prometheus), new per listener by nginx, and as nginx's host-wide "waiting" gauge
    base = _connections(address)
    per_listener = 'clb_http_listener_connections{{listener="{}"}}'
    new = 'clb_http_new_connections_total{{listener="{}"}}'
    assert prom.value(per_listener.format("lbl-n")) == 0 and prom.value(new.format("lbl-n")) is None
    clients = [_idle_client(QUIET_LISTENERS[lid]) for lid in ("lbl-n", "lbl-n", "lbl-n", "lbl-o")]
    try:
        wait_for(lambda: _connections(address)["waiting"] == base["waiting"] + 4, 10, "four waiting connections")
        assert _connections(address)["active"] >= base["active"] + 4
        for lid, n in (("lbl-n", 3), ("lbl-o", 1)):
            wait_for(lambda lid=lid, n=n: prom.value(per_listener.format(lid)) == n, 20, f"{n} open on {lid}")
            wait_for(lambda lid=lid, n=n: prom.value(new.format(lid)) == n, 20, f"{n} new on {lid}")
        assert prom.query('clb_http_listener_connections{listener="lbl-n"}') == {
            (("instance", address), ("job", "clbagent"), ("listener", "lbl-n"), ("load_balancer", "lb-m")): 3.0
        }  # fmt: skip
    finally:
        for c in clients:
            c.close()
    wait_for(lambda: _connections(address)["waiting"] == base["waiting"], 10, "the connections closed")
    for lid in QUIET_LISTENERS:
        wait_for(lambda lid=lid: prom.value(per_listener.format(lid)) == 0, 20, f"no connection open on {lid}")


@pytest.mark.parametrize("host", ["static"], indirect=True)
def test_static_mode_says_l7_metrics_are_unavailable(host, status_backend):  # noqa: F811
    backend = status_backend("127.0.60.3")
    address = _start_agent(host, _doc(backend.target()))
    _get("/app")
    text = wait_for(lambda: _scrape(address), 20, "a scrape")
    assert "clb_http_metrics_available 0\n" in text
    assert "clb_http_requests_total" not in text
    # open connections per listener come from the kernel: in static mode too
    assert 'clb_http_listener_connections{listener="lbl-n",load_balancer="lb-m"} 0.0' in text
    assert 'clbagent_applies_total{result="applied"} 1.0' in text


@pytest.mark.parametrize("host", ["dynamic"], indirect=True)
def test_prometheus_sees_a_dead_target_and_one_transition(host, status_backend, prometheus):  # noqa: F811
    alive = status_backend("127.0.60.5")
    dead = {"EniIp": "127.0.60.6", "Port": free_port("127.0.60.6"), "Weight": 10}  # nothing listens there
    gone = f"{dead['EniIp']}:{dead['Port']}"
    doc = _doc(alive.target())
    check = {"HealthSwitch": 1, "IntervalTime": 5, "UnHealthNum": 2, "HealthNum": 2, "TimeOut": 2}
    doc["Listeners"][0]["Rules"][1].update(HealthCheck=check, Targets=[alive.target(), dead])
    address = _start_agent(host, doc)
    prom = prometheus(address)
    target = f'load_balancer="lb-m",listener="lbl-m",rule="loc-err",target="{gone}"'
    wait_for(lambda: prom.value(f'clbagent_target_health{{{target},state="Dead"}}') == 1, 40, "the dead target")
    assert prom.value(f'clbagent_target_health{{{target},state="Alive"}}') == 0
    healthy = f'rule="loc-err",target="{alive.endpoint}",state="Alive"'
    wait_for(lambda: prom.value(f"clbagent_target_health{{{healthy}}}") == 1, 20, "the live target")
    assert prom.query(f'clbagent_health_transitions_total{{target="{gone}"}}') == {
        (("instance", address), ("job", "clbagent"), ("listener", "lbl-m"), ("load_balancer", "lb-m"),
         ("state", "Dead"), ("target", gone)): 1.0
    }  # fmt: skip
    events = [json.loads(line) for line in host.log().splitlines() if line.startswith("{")]
    assert [e["new"] for e in events if e["event"] == "health" and e["target"] == gone] == ["Dead"]
    assert prom.value("clbagent_health_probes_total") > 2
