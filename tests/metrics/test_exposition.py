"""The agent's exposition read back by Prometheus' own text parser (prometheus-client's), and the
endpoint on loopback (IPv4 and IPv6)."""

from __future__ import annotations

import socket

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from clbagent.agent.l7_metrics import exposition
from clbagent.agent.metrics import AgentMetrics
from clbagent.nginx.metrics_channel import Counters, Scope, scope
from tests.metrics.conftest import wait_for

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
ODD_DOMAIN = '~^a"b\\c$'  # a regex domain: quotes, a backslash and a dollar survive as label text


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _get(samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def test_scope_round_trip_keeps_any_domain_and_writes_no_dollar():
    text = scope("lb-1", "lbl-1", "loc-1", ODD_DOMAIN)
    assert "$" not in text and '"' not in text and "\\" not in text and text.count("/") == 3
    assert Scope.parse(text) == Scope("lb-1", "lbl-1", "loc-1", ODD_DOMAIN)
    assert Scope.parse("not-a-scope") is None


def test_rule_member_histogram_and_instance_families():
    s = scope("lb-1", "lbl-1", "loc-1", ODD_DOMAIN)
    gone = scope("lb-gone", "lbl-9", "loc-9", "x.example.com")
    values = {
        f"{s}\treq 2xx backend": 7,
        f"{s}\treq 5xx lb": 2,
        f"{s}\tcode 502 lb": 1,
        f"{s}\tcode 504 lb": 1,
        f"{s}\ttimeouts": 1,
        f"{s}\tbytes in": 900,
        f"{s}\tbytes out": 4000,
        f"{s}\tconns": 3,
        f"{s}\trt 0.005": 5,
        f"{s}\trt 1": 3,
        f"{s}\trt +Inf": 1,
        f"{s}\trt sum": 70.5,
        f"{s}\tut 0.005": 6,
        f"{s}\tut sum": 0.01,
        f"{s}\t10.0.0.1:80\treq 2xx backend": 7,
        f"{s}\t10.0.0.1:80\tut count": 8,
        f"{s}\t10.0.0.1:80\tut sum": 0.012,
        f"{gone}\treq 2xx backend": 4,  # a load balancer no longer served
    }
    l4 = {"lb-1": {"bytes_in": 100, "bytes_out": 50, "packets_in": 3, "packets_out": 2}}
    text, _ = exposition(Counters.from_keys(BUCKETS, values), True, {"lb-1"}, l4)
    got = _samples(text)
    rule = {"load_balancer": "lb-1", "listener": "lbl-1", "rule": "loc-1", "domain": ODD_DOMAIN}
    assert _get(got, "clb_http_requests_total", **rule, code="2xx", source="backend") == 7
    assert _get(got, "clb_http_requests_total", **rule, code="5xx", source="lb") == 2
    assert _get(got, "clb_http_responses_total", **rule, code="502", source="lb") == 1
    assert _get(got, "clb_http_response_timeouts_total", **rule) == 1
    assert _get(got, "clb_http_bytes_total", **rule, direction="out") == 4000
    # buckets are cumulative, +Inf is the count
    assert _get(got, "clb_http_request_duration_seconds_bucket", **rule, le="0.005") == 5
    assert _get(got, "clb_http_request_duration_seconds_bucket", **rule, le="0.5") == 5
    assert _get(got, "clb_http_request_duration_seconds_bucket", **rule, le="1.0") == 8
    assert _get(got, "clb_http_request_duration_seconds_bucket", **rule, le="+Inf") == 9
    assert _get(got, "clb_http_request_duration_seconds_count", **rule) == 9
    assert _get(got, "clb_http_request_duration_seconds_sum", **rule) == 70.5
    member = {**rule, "target": "10.0.0.1:80"}
    assert _get(got, "clb_http_backend_requests_total", **member, code="2xx", source="backend") == 7
    assert _get(got, "clb_http_backend_response_seconds_count", **member) == 8
    # instance totals: L7 bytes plus the kernel's; packets from the kernel only
    assert _get(got, "clb_instance_bytes_total", load_balancer="lb-1", direction="in") == 1000
    assert _get(got, "clb_instance_packets_total", load_balancer="lb-1", direction="out") == 2
    assert not [k for k in got if ("load_balancer", "lb-gone") in k[1]]
    assert _get(got, "clb_http_metrics_available") == 1 and _get(got, "clb_http_stats_up") == 1


def test_static_mode_and_unreadable_nginx():
    static = _samples(exposition(None, False, None, {})[0])
    assert static == {("clb_http_metrics_available", ()): 0}
    down = _samples(exposition(None, True, None, {})[0])
    assert _get(down, "clb_http_stats_up") == 0


def test_health_families():
    m = AgentMetrics()
    m.observe_probe("tcp", True, 0.002)
    m.observe_probe("http", False, 1.5)
    m.observe_transition("lb-1", "lbl-1", "10.0.0.1:80", "Dead")
    rows = [{"load_balancer": "lb-1", "listener": "lbl-1", "rule": "loc-1", "target": "10.0.0.1:80", "state": "Dead"}]
    m.watch_health(lambda: rows)
    got = _samples(m.exposition().decode())
    assert _get(got, "clbagent_health_probes_total", kind="http", result="failed") == 1
    assert _get(got, "clbagent_health_probe_duration_seconds_count", kind="tcp") == 1
    assert _get(got, "clbagent_health_transitions_total", load_balancer="lb-1", listener="lbl-1",
                target="10.0.0.1:80", state="Dead") == 1  # fmt: skip
    target = {"load_balancer": "lb-1", "listener": "lbl-1", "rule": "loc-1", "target": "10.0.0.1:80"}
    assert _get(got, "clbagent_target_health", **target, state="Dead") == 1
    assert _get(got, "clbagent_target_health", **target, state="Alive") == 0
    rows[0]["state"] = "Alive"  # read at every scrape
    assert _get(_samples(m.exposition().decode()), "clbagent_target_health", **target, state="Alive") == 1


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
    s = scope("lb-1", "lbl-1", "loc-1", "www.example.com")
    m.watch_l7(lambda: Counters.from_keys(BUCKETS, {f"{s}\treq 2xx backend": 3}), lambda: {"lb-1"})
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.bind((host, 0))
        port = probe.getsockname()[1]
    m.serve(host, port)
    url = f"http://[{host}]:{port}/metrics" if ":" in host else f"http://{host}:{port}/metrics"
    text = wait_for(lambda: _fetch(url), 10, "the endpoint")
    got = _samples(text)
    assert ("clbagent_nginx_up", ()) in got
    assert _get(got, "clb_http_requests_total", load_balancer="lb-1", listener="lbl-1", rule="loc-1",
                domain="www.example.com", code="2xx", source="backend") == 3  # fmt: skip
    assert httpx.get(url.replace("/metrics", "/other")).status_code == 404


def _fetch(url: str) -> str:
    try:
        return httpx.get(url, timeout=2).text
    except httpx.HTTPError:
        return ""


def test_unchanged_scopes_come_from_the_cache_and_changed_ones_are_new():
    s1, s2 = scope("lb-1", "lbl-1", "loc-1", "a.example.com"), scope("lb-1", "lbl-1", "loc-2", "a.example.com")
    values = {f"{s1}\treq 2xx backend": 1, f"{s2}\treq 2xx backend": 1, f"{s2}\t10.0.0.1:80\tut count": 1}
    first, cache = exposition(Counters.from_keys(BUCKETS, values), True, None, {})
    again, cache = exposition(Counters.from_keys(BUCKETS, dict(values)), True, None, {}, cache)
    assert again == first
    values[f"{s2}\treq 2xx backend"] = 5
    values[f"{s2}\t10.0.0.1:80\tut count"] = 2
    later = _samples(exposition(Counters.from_keys(BUCKETS, values), True, None, {}, cache)[0])
    rule = {"load_balancer": "lb-1", "listener": "lbl-1", "domain": "a.example.com"}
    assert _get(later, "clb_http_requests_total", **rule, rule="loc-1", code="2xx", source="backend") == 1
    assert _get(later, "clb_http_requests_total", **rule, rule="loc-2", code="2xx", source="backend") == 5
    assert _get(later, "clb_http_backend_response_seconds_count", **rule, rule="loc-2", target="10.0.0.1:80") == 2
    _, cache = exposition(Counters.from_keys(BUCKETS, {f"{s1}\treq 2xx backend": 1}), True, None, {}, cache)
    assert set(cache) == {s1}  # what nginx no longer holds leaves the cache
