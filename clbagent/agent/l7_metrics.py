"""L7 metrics: the counters nginx keeps per rule and backend member, and the instance totals.

nginx counts in its log phase (``clbagent/lua/clb/metrics.lua``); this collector reads every
counter over the control channel at scrape time and turns it into Prometheus families. Labels are
the scope's configuration IDs (load balancer, listener, LocationId, domain as configured) and the
member's ``ip:port``: nothing from a request, so the series count is bounded by the configuration.
Scopes of load balancers the agent no longer serves are not exported (their counters stay in
nginx's shared memory until the next restart). See docs/metrics.md for the catalogue.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping
from functools import lru_cache

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
    SummaryMetricFamily,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from clbagent.nginx.metrics_channel import Counters, MetricsUnavailableError, Scope

RULE_LABELS = ["load_balancer", "listener", "rule", "domain"]
MEMBER_LABELS = [*RULE_LABELS, "target"]
CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")
SOURCES = ("backend", "lb")  # who answered: the backend, or the load balancer itself
CODES = ("404", "502", "504")
L4Totals = Callable[[], Mapping[str, Mapping[str, float]]]


@lru_cache(maxsize=1 << 16)
def _scope(text: str) -> Scope | None:
    return Scope.parse(text)


class _Rules:
    """The families of one scrape, filled from the counters of every scope and member."""

    def __init__(self, buckets: tuple[float, ...]):
        self.bucket_names = [format(b, "g") for b in buckets] + ["+Inf"]
        self.bucket_les = [floatToGoString(b) for b in buckets] + ["+Inf"]
        self.requests = CounterMetricFamily(
            "clb_http_requests",
            "Requests by status class and by who answered: the backend, or the load balancer itself",
            labels=[*RULE_LABELS, "code", "source"],
        )
        self.codes = CounterMetricFamily(
            "clb_http_responses",
            "Responses 404, 502 and 504, by who answered: the backend, or the load balancer itself",
            labels=[*RULE_LABELS, "code", "source"],
        )
        self.timeouts = CounterMetricFamily(
            "clb_http_response_timeouts",
            "Requests the backend did not answer in time (504 from the load balancer)",
            labels=RULE_LABELS,
        )
        self.bytes = CounterMetricFamily(
            "clb_http_bytes",
            "Bytes of requests received (in) and responses sent (out), headers included",
            labels=[*RULE_LABELS, "direction"],
        )
        self.conns = CounterMetricFamily(
            "clb_http_new_connections", "Client connections whose first request went to this rule", labels=RULE_LABELS
        )
        self.duration = HistogramMetricFamily(
            "clb_http_request_duration_seconds",
            "Time from the first byte of the request to the last byte of the response",
            labels=RULE_LABELS,
        )
        self.upstream = HistogramMetricFamily(
            "clb_http_upstream_response_seconds",
            "Time the backend took to answer (the last try of the request)",
            labels=RULE_LABELS,
        )
        self.member_requests = CounterMetricFamily(
            "clb_http_backend_requests",
            "Requests whose last try went to this target, by status class and who answered",
            labels=[*MEMBER_LABELS, "code", "source"],
        )
        self.member_time = SummaryMetricFamily(
            "clb_http_backend_response_seconds", "Time this target took to answer", labels=MEMBER_LABELS
        )
        self.member_bytes = CounterMetricFamily(
            "clb_http_backend_bytes",
            "Bytes of the requests whose last try went to this target",
            labels=[*MEMBER_LABELS, "direction"],
        )

    def _histogram(self, family: HistogramMetricFamily, labels: list[str], f: Mapping[str, float], kind: str) -> None:
        total, buckets = 0.0, []
        for name, le in zip(self.bucket_names, self.bucket_les, strict=True):
            total += f.get(f"{kind} {name}", 0)
            buckets.append((le, total))
        if total:
            family.add_metric(labels, buckets, f.get(f"{kind} sum", 0))

    def add_rule(self, labels: list[str], f: Mapping[str, float]) -> None:
        for cls in CLASSES:
            for source in SOURCES:
                n = f.get(f"req {cls} {source}")
                if n:
                    self.requests.add_metric([*labels, cls, source], n)
        for code in CODES:
            for source in SOURCES:
                n = f.get(f"code {code} {source}")
                if n:
                    self.codes.add_metric([*labels, code, source], n)
        self.timeouts.add_metric(labels, f.get("timeouts", 0))
        self.bytes.add_metric([*labels, "in"], f.get("bytes in", 0))
        self.bytes.add_metric([*labels, "out"], f.get("bytes out", 0))
        self.conns.add_metric(labels, f.get("conns", 0))
        self._histogram(self.duration, labels, f, "rt")
        self._histogram(self.upstream, labels, f, "ut")

    def add_member(self, labels: list[str], f: Mapping[str, float]) -> None:
        for cls in CLASSES:
            for source in SOURCES:
                n = f.get(f"req {cls} {source}")
                if n:
                    self.member_requests.add_metric([*labels, cls, source], n)
        self.member_time.add_metric(labels, f.get("ut count", 0), f.get("ut sum", 0))
        self.member_bytes.add_metric([*labels, "in"], f.get("bytes in", 0))
        self.member_bytes.add_metric([*labels, "out"], f.get("bytes out", 0))

    def __iter__(self) -> Iterator[Metric]:
        yield from (self.requests, self.codes, self.timeouts, self.bytes, self.conns, self.duration, self.upstream)
        yield from (self.member_requests, self.member_time, self.member_bytes)


def group(counters: Counters, served: set[str] | None) -> tuple[dict[Scope, dict], dict[tuple[Scope, str], dict]]:
    """The counters by scope and by (scope, member), of served load balancers only."""
    rules: dict[Scope, dict[str, float]] = defaultdict(dict)
    members: dict[tuple[Scope, str], dict[str, float]] = defaultdict(dict)
    for key, value in counters.values.items():
        parts = key.split("\t")
        scope = _scope(parts[0])
        if scope is None or (served is not None and scope.load_balancer not in served):
            continue
        if len(parts) == 2:
            rules[scope][parts[1]] = value
        elif len(parts) == 3:
            members[(scope, parts[1])][parts[2]] = value
    return rules, members


class L7Collector(Collector):
    """``read`` gives nginx's counters (None: nginx counts nothing, static mode); ``served`` the
    IDs of the load balancers served now; ``l4_totals`` (optional) the kernel's per load balancer
    ``bytes_in``/``bytes_out``/``packets_in``/``packets_out`` for the instance totals."""

    def __init__(
        self,
        read: Callable[[], Counters] | None,
        served: Callable[[], set[str]] | None = None,
        l4_totals: L4Totals | None = None,
    ):
        self.read = read
        self.served = served
        self.l4_totals = l4_totals

    def describe(self) -> list[Metric]:
        return []  # nothing to read from nginx at registration

    def collect(self) -> Iterator[Metric]:
        available = GaugeMetricFamily(
            "clb_http_metrics_available",
            "1 when nginx counts the L7 metrics (the Lua module is loaded); 0 in static mode: no clb_http_* families",
        )
        up = GaugeMetricFamily("clb_http_stats_up", "1 when nginx's L7 counters could be read at this scrape")
        available.add_metric([], 1 if self.read else 0)
        yield available
        rules: dict[Scope, dict] = {}
        members: dict[tuple[Scope, str], dict] = {}
        if self.read is not None:
            try:
                counters = self.read()
            except MetricsUnavailableError:
                counters = None
            up.add_metric([], 0 if counters is None else 1)
            yield up
            if counters is not None:
                rules, members = group(counters, self.served() if self.served else None)
                families = _Rules(counters.buckets)
                for scope, fields in rules.items():
                    families.add_rule([scope.load_balancer, scope.listener, scope.rule, scope.domain], fields)
                for (scope, member), fields in members.items():
                    families.add_member([scope.load_balancer, scope.listener, scope.rule, scope.domain, member], fields)
                yield from families
        yield from self._instance(rules)

    def _instance(self, rules: Mapping[Scope, Mapping[str, float]]) -> Iterator[Metric]:
        """Per load balancer: bytes (L7 + L4) and packets (L4 only: nginx sees no packets)."""
        byte_totals: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
        for scope, f in rules.items():
            t = byte_totals[scope.load_balancer]
            t[0] += f.get("bytes in", 0)
            t[1] += f.get("bytes out", 0)
        packets = CounterMetricFamily(
            "clb_instance_packets",
            "IP packets of the load balancer's L4 listeners, from clients (in) and to them (out)",
            labels=["load_balancer", "direction"],
        )
        try:
            l4 = self.l4_totals() if self.l4_totals else {}
        except OSError:  # the kernel's counters are read on their own (clb_l4_stats_up)
            l4 = {}
        for lb, c in l4.items():
            t = byte_totals[lb]
            t[0] += c.get("bytes_in", 0)
            t[1] += c.get("bytes_out", 0)
            packets.add_metric([lb, "in"], c.get("packets_in", 0))
            packets.add_metric([lb, "out"], c.get("packets_out", 0))
        traffic = CounterMetricFamily(
            "clb_instance_bytes",
            "Bytes of the load balancer from clients (in) and to them (out): L7 requests and responses, L4 packets",
            labels=["load_balancer", "direction"],
        )
        for lb, (bytes_in, bytes_out) in sorted(byte_totals.items()):
            traffic.add_metric([lb, "in"], bytes_in)
            traffic.add_metric([lb, "out"], bytes_out)
        yield traffic
        yield packets
