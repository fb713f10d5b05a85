"""The agent's exposition read back by Prometheus' text parser (prometheus-client's): nginx's L7
text with the agent's additions, the health families, and the endpoint on loopback (IPv4, IPv6)."""

from __future__ import annotations

import socket

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from clbagent.agent.l7_metrics import L7Metrics
from clbagent.agent.metrics import AgentMetrics
from clbagent.nginx.metrics_channel import MetricsUnavailableError, scope
from tests.metrics.conftest import wait_for

ODD_DOMAIN = '~^a"b\\c$'  # a regex domain: quotes, a backslash and a dollar survive as label text


def _samples(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text.decode())
        for s in family.samples
    }


def _get(samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def test_scope_keeps_any_domain_and_writes_no_dollar():
    text = scope("lb-1", "lbl-1", "loc-1", ODD_DOMAIN)
    assert text == "lb-1/lbl-1/loc-1/~%5Ea%22b%5Cc%24"
    assert "$" not in text and '"' not in text and "\\" not in text and text.count("/") == 3


NGINX_TEXT = (
    b"# HELP clb_http_requests_total Requests\n# TYPE clb_http_requests_total counter\n"
    b'clb_http_requests_total{load_balancer="lb-1",listener="lbl-1",rule="loc-1",domain="a",'
    b'code="2xx",source="backend"} 3\n'
    b"# HELP clb_instance_bytes_total Bytes\n# TYPE clb_instance_bytes_total counter\n"
    b'clb_instance_bytes_total{load_balancer="lb-1",layer="l7",direction="in"} 100\n'
)
L4 = {"lb-1": {"bytes_in": 5, "bytes_out": 7, "packets_in": 1, "packets_out": 2}, "lb-4": {"bytes_in": 9}}


def test_nginx_text_with_the_l4_instance_totals_after_it():
    got = _samples(L7Metrics(lambda: NGINX_TEXT, lambda: L4).text())
    assert _get(got, "clb_http_metrics_available") == 1 and _get(got, "clb_http_stats_up") == 1
    assert _get(got, "clb_http_requests_total", load_balancer="lb-1", listener="lbl-1", rule="loc-1", domain="a",
                code="2xx", source="backend") == 3  # fmt: skip
    assert _get(got, "clb_instance_bytes_total", load_balancer="lb-1", layer="l7", direction="in") == 100
    assert _get(got, "clb_instance_bytes_total", load_balancer="lb-1", layer="l4", direction="out") == 7
    assert _get(got, "clb_instance_bytes_total", load_balancer="lb-4", layer="l4", direction="in") == 9
    assert _get(got, "clb_instance_packets_total", load_balancer="lb-1", direction="in") == 1


def test_static_mode_and_unreadable_nginx():
    static = _samples(L7Metrics(None, lambda: L4).text())
    assert _get(static, "clb_http_metrics_available") == 0
    assert ("clb_http_stats_up", ()) not in static
    assert _get(static, "clb_instance_bytes_total", load_balancer="lb-1", layer="l4", direction="in") == 5

    def unreadable() -> str:
        raise MetricsUnavailableError("nginx is not running")

    down = _samples(L7Metrics(unreadable).text())
    assert _get(down, "clb_http_stats_up") == 0 and _get(down, "clb_http_metrics_available") == 1


def test_health_families():
    m = AgentMetrics()
    m.observe_probe("tcp", True, 0.002)
    m.observe_probe("http", False, 1.5)
    m.observe_transition("lb-1", "lbl-1", "10.0.0.1:80", "Dead")
    rows = [{"load_balancer": "lb-1", "listener": "lbl-1", "rule": "loc-1", "target": "10.0.0.1:80", "state": "Dead"}]
    m.watch_health(lambda: rows)
    got = _samples(m.exposition())
    assert _get(got, "clbagent_health_probes_total", kind="http", result="failed") == 1
    assert _get(got, "clbagent_health_probe_duration_seconds_count", kind="tcp") == 1
    assert _get(got, "clbagent_health_transitions_total", load_balancer="lb-1", listener="lbl-1",
                target="10.0.0.1:80", state="Dead") == 1  # fmt: skip
    target = {"load_balancer": "lb-1", "listener": "lbl-1", "rule": "loc-1", "target": "10.0.0.1:80"}
    assert _get(got, "clbagent_target_health", **target, state="Dead") == 1
    assert _get(got, "clbagent_target_health", **target, state="Alive") == 0
    rows[0]["state"] = "Alive"  # read at every scrape
    assert _get(_samples(m.exposition()), "clbagent_target_health", **target, state="Alive") == 1


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.parametrize("host", ["127.0.60.20", "::1"])
def test_endpoint_serves_registry_and_l7_text(host):
    if ":" in host and not _ipv6_loopback():
        pytest.skip("no IPv6 loopback on this host")
    m = AgentMetrics()
    m.watch_l7(lambda: NGINX_TEXT)
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.bind((host, 0))
        port = probe.getsockname()[1]
    m.serve(host, port)
    url = f"http://[{host}]:{port}/metrics" if ":" in host else f"http://{host}:{port}/metrics"
    text = wait_for(lambda: _fetch(url), 10, "the endpoint")
    got = _samples(text)
    assert ("clbagent_nginx_up", ()) in got
    assert _get(got, "clb_http_requests_total", load_balancer="lb-1", listener="lbl-1", rule="loc-1",
                domain="a", code="2xx", source="backend") == 3  # fmt: skip
    assert httpx.get(url.replace("/metrics", "/other")).status_code == 404


def _fetch(url: str) -> bytes:
    try:
        return httpx.get(url, timeout=2).content
    except httpx.HTTPError:
        return b""
