"""nginx's counters agree with its own access log, request by request: the log phase keeps each
request's values and adds them later in a batch, so a value read in the wrong place or a time
parsed wrongly would show here (docs/metrics.md, "How L7 is counted"). Both ways the log phase
reads them: from clbagent's nginx module, and from the joined variable where nginx runs without it."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from clbagent.nginx import metrics_channel
from clbagent.nginx.metrics_channel import read_text
from clbagent.nginx.upstreams_channel import SOCKET
from tests.l7.conftest import listener, load_balancer, rule
from tests.metrics.conftest import free_port, wait_for

VIP = "127.0.63.1"
REQUESTS = 1200  # more than a worker's buffer (512) over a few keep-alive connections
DEAD = 7  # requests to the rule whose target is down


def _closing_request(path: str) -> None:
    """A request on a connection of its own (a new connection for the counters)."""
    with socket.create_connection((VIP, 8080), timeout=5) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: www.example.com\r\nConnection: close\r\n\r\n".encode())
        while s.recv(65536):
            pass


def _samples(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample by name and labels (those of the one load balancer, listener and domain left out)."""
    out = {}
    for family in text_string_to_metric_families(text.decode()):
        for s in family.samples:
            labels = sorted((k, v) for k, v in s.labels.items() if k not in ("load_balancer", "listener", "domain"))
            out[(s.name, tuple(labels))] = s.value
    return out


def _last(value: str) -> str:
    """The last try of one of nginx's per-try values ("0.001, 0.002 : 0.003")."""
    return value.replace(" : ", ", ").split(", ")[-1]


@pytest.fixture(params=["module", "joined variable"])
def values_from(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Where the log phase takes the values: nginx's module (built by scripts/setup.sh), or the
    joined variable (the module left out of nginx.conf)."""
    if request.param == "module":
        assert metrics_channel.module_path(), "no module built for this nginx: scripts/build-nginx-module.sh"
    else:
        monkeypatch.setattr(metrics_channel, "MODULE", Path("/nonexistent/ngx_http_clb_metrics_module.so"))
    return request.param


def test_counters_equal_the_access_log(serve, status_backend, values_from):
    backends = [status_backend("127.0.63.2"), status_backend("127.0.63.3")]
    root = rule("loc-count", "www.example.com", "/", [b.target() for b in backends], DefaultServer=True)
    # a target nobody listens on: nginx answers 502 itself, after a try with no response header
    dead = rule("loc-dead", "www.example.com", "/dead", [{"EniIp": "127.0.63.4", "Port": free_port("127.0.63.4")}])
    served = serve([load_balancer("lb-count", VIP, [listener("lbl-count", "HTTP", 8080, [root, dead])])])
    loaded = f"load_module {metrics_channel.MODULE};" in (served.prefix / "nginx.conf").read_text()
    assert loaded == (values_from == "module")
    clients = [httpx.Client(base_url=f"http://{VIP}:8080", headers={"Host": "www.example.com"}) for _ in range(3)]
    for i in range(REQUESTS):
        path = "/status/502" if i % 10 == 3 else "/status/404" if i % 10 == 7 else f"/p/{i}"
        clients[i % 3].get(path, headers={"X-Pad": "x" * (i % 97)})  # request sizes vary
    for i in range(5):
        _closing_request(f"/closing/{i}")
    for i in range(DEAD):
        assert clients[0].get(f"/dead/{i}").status_code == 502
    for c in clients:
        c.close()
    total = REQUESTS + 5 + DEAD
    log = wait_for(lambda: len(served.access_log()) >= total and served.access_log(), 10, "the access log")
    records = [json.loads(line) for line in log]
    assert len(records) == total

    def read() -> dict:
        samples = _samples(read_text(served.prefix / SOCKET))
        counted = sum(v for (name, _), v in samples.items() if name == "clb_http_requests_total")
        return counted == total and samples

    samples = wait_for(read, 10, "every request counted")  # the workers flush once a second
    rule_labels = (("rule", "loc-count"),)
    dead_records = [r for r in records if r["request"].startswith("GET /dead/")]
    assert len(dead_records) == DEAD and all(_last(r["upstream_header_time"]) == "-" for r in dead_records)
    assert samples[("clb_http_responses_total", (("code", "502"), ("rule", "loc-dead"), ("source", "lb")))] == DEAD
    assert samples[("clb_http_requests_total", (("code", "5xx"), ("rule", "loc-dead"), ("source", "lb")))] == DEAD
    dead_upstream = sum(float(_last(r["upstream_response_time"])) for r in dead_records)
    assert abs(samples[("clb_http_upstream_response_seconds_sum", (("rule", "loc-dead"),))] - dead_upstream) < 1e-6
    records = [r for r in records if r not in dead_records]
    total -= DEAD

    def value(name: str, *labels: tuple[str, str]) -> float:
        return samples[(name, tuple(sorted(rule_labels + labels)))]

    assert value("clb_http_bytes_total", ("direction", "in")) == sum(int(r["request_length"]) for r in records)
    assert value("clb_http_bytes_total", ("direction", "out")) == sum(int(r["bytes_sent"]) for r in records)
    new = sum(r["connection_requests"] == "1" for r in records)
    assert new >= 3 + 5
    assert value("clb_http_new_connections_total") == new
    times = [float(r["request_time"]) for r in records]
    assert abs(value("clb_http_request_duration_seconds_sum") - sum(times)) < 1e-6
    for le in ("0.005", "0.025", "0.1"):
        assert value("clb_http_request_duration_seconds_bucket", ("le", le)) == sum(t <= float(le) for t in times)
    upstream = [float(_last(r["upstream_response_time"])) for r in records]
    assert abs(value("clb_http_upstream_response_seconds_sum") - sum(upstream)) < 1e-6
    assert value("clb_http_upstream_response_seconds_count") == total
    for code, cls in (("502", "5xx"), ("404", "4xx")):
        assert value("clb_http_responses_total", ("code", code), ("source", "backend")) == REQUESTS // 10
        assert value("clb_http_requests_total", ("code", cls), ("source", "backend")) == REQUESTS // 10
    for b in backends:
        mine = [r for r in records if _last(r["upstream_addr"]) == b.endpoint]
        assert mine, "both targets answered"
        answered = sum(v for (name, labels), v in samples.items()
                       if name == "clb_http_backend_requests_total" and ("target", b.endpoint) in labels)  # fmt: skip
        assert answered == len(mine)
        assert value("clb_http_backend_bytes_total", ("target", b.endpoint), ("direction", "out")) == sum(
            int(r["bytes_sent"]) for r in mine
        )
