"""L7 metrics: the counters nginx keeps per rule and backend member, and the instance totals.

nginx counts in its log phase (``clbagent/lua/clb/metrics.lua``); at scrape time the agent reads
every counter over the control channel and writes the Prometheus text for them. Labels are the
scope's configuration IDs (load balancer, listener, LocationId, domain as configured) and the
member's ``ip:port``: nothing from a request, so the series count is bounded by the configuration.
Scopes of load balancers the agent no longer serves are not exported (their counters stay in
nginx's shared memory until the next restart). See docs/metrics.md for the catalogue.

The text is written directly rather than through prometheus-client's metric objects: at 1,000
load balancers a scrape has ~100,000 series, and building an object per sample costs seconds.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from functools import lru_cache

from prometheus_client.utils import floatToGoString

from clbagent.nginx.metrics_channel import Counters, MetricsUnavailableError, Scope

CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")
SOURCES = ("backend", "lb")  # who answered: the backend, or the load balancer itself
CODES = ("404", "502", "504")
L4Totals = Callable[[], Mapping[str, Mapping[str, float]]]

# name → (type, help); the order of the exposition
FAMILIES = {
    "clb_http_metrics_available": (
        "gauge",
        "1 when nginx counts the L7 metrics (the Lua module is loaded); 0 in static mode: no clb_http_* families",
    ),
    "clb_http_stats_up": ("gauge", "1 when nginx's L7 counters could be read at this scrape"),
    "clb_http_requests_total": (
        "counter",
        "Requests by status class and by who answered: the backend, or the load balancer itself",
    ),
    "clb_http_responses_total": (
        "counter",
        "Responses 404, 502 and 504, by who answered: the backend, or the load balancer itself",
    ),
    "clb_http_response_timeouts_total": (
        "counter",
        "Requests the backend did not answer in time (504 from the load balancer)",
    ),
    "clb_http_bytes_total": ("counter", "Bytes of requests received (in) and responses sent (out), headers included"),
    "clb_http_new_connections_total": ("counter", "Client connections whose first request went to this scope"),
    "clb_http_request_duration_seconds": (
        "histogram",
        "Time from the first byte of the request to the last byte of the response",
    ),
    "clb_http_upstream_response_seconds": ("histogram", "Time the backend took to answer (the last try)"),
    "clb_http_backend_requests_total": (
        "counter",
        "Requests whose last try went to this target, by status class and who answered",
    ),
    "clb_http_backend_response_seconds": ("summary", "Time this target took to answer"),
    "clb_http_backend_bytes_total": (
        "counter",
        "Bytes of the requests whose last try went to this target, received (in) and sent (out)",
    ),
    "clb_instance_bytes_total": (
        "counter",
        "Bytes of the load balancer from clients (in) and to them (out): L7 requests and responses, L4 packets",
    ),
    "clb_instance_packets_total": (
        "counter",
        "IP packets of the load balancer's L4 listeners, from clients (in) and to them (out)",
    ),
}


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


@lru_cache(maxsize=1 << 16)
def _scope_labels(text: str) -> tuple[str, str] | None:
    """(load balancer ID, the label text of a scope), or None for a key that is no scope."""
    s = Scope.parse(text)
    if s is None:
        return None
    labels = (
        f'load_balancer="{_escape(s.load_balancer)}",listener="{_escape(s.listener)}",'
        f'rule="{_escape(s.rule)}",domain="{_escape(s.domain)}"'
    )
    return s.load_balancer, labels


def _value(v: float) -> str:
    return str(v) if isinstance(v, int) else floatToGoString(v)


Lines = dict[str, list[str]]  # family → sample lines
Cache = dict[str, tuple[Mapping[str, float], list[tuple[str, list[str]]]]]


def _add(out: Lines, family: str, labels: str, value: float, sample: str = "") -> None:
    series = f"{family}{sample}{{{labels}}}" if labels else family
    out[family].append(f"{series} {_value(value)}\n")


class _Text:
    """The samples of one scrape, by family. The lines of a scope or member whose counters did not
    move since the last scrape are taken from ``cache`` (an idle rule costs a dict comparison)."""

    def __init__(self, buckets: Iterable[float], cache: Cache):
        self.samples: Lines = {name: [] for name in FAMILIES}
        names = [format(b, "g") for b in buckets] + ["+Inf"]  # the Lua side's field names
        self.les = [floatToGoString(b) for b in buckets] + ["+Inf"]
        self.fields = {kind: [f"{kind} {name}" for name in names] for kind in ("rt", "ut")}
        self.cache, self.kept = cache, {}

    def add(self, family: str, labels: str, value: float) -> None:
        _add(self.samples, family, labels, value)

    def _cached(self, key: str, f: Mapping[str, float], build: Callable[[Lines], None]) -> None:
        hit = self.cache.get(key)
        if hit is None or hit[0] != f:
            out: Lines = defaultdict(list)
            build(out)
            hit = (f, list(out.items()))
        self.kept[key] = hit
        for family, lines in hit[1]:
            self.samples[family].extend(lines)

    def _histogram(self, out: Lines, family: str, labels: str, f: Mapping[str, float], kind: str) -> None:
        counts = [f.get(field, 0) for field in self.fields[kind]]
        if not any(counts):
            return
        lines, total, prefix = out[family], 0, f'{family}_bucket{{{labels},le="'
        for n, le in zip(counts, self.les, strict=True):
            total += n  # counts are integers
            lines.append(f'{prefix}{le}"}} {total}\n')
        lines.append(f"{family}_count{{{labels}}} {total}\n")
        lines.append(f"{family}_sum{{{labels}}} {_value(f.get(f'{kind} sum', 0))}\n")

    @staticmethod
    def _by_class(out: Lines, family: str, labels: str, f: Mapping[str, float]) -> None:
        for cls in CLASSES:
            for source in SOURCES:
                n = f.get(f"req {cls} {source}")
                if n:
                    _add(out, family, f'{labels},code="{cls}",source="{source}"', n)

    def rule(self, scope: str, labels: str, f: Mapping[str, float]) -> None:
        def build(out: Lines) -> None:
            self._by_class(out, "clb_http_requests_total", labels, f)
            for code in CODES:
                for source in SOURCES:
                    n = f.get(f"code {code} {source}")
                    if n:
                        _add(out, "clb_http_responses_total", f'{labels},code="{code}",source="{source}"', n)
            _add(out, "clb_http_response_timeouts_total", labels, f.get("timeouts", 0))
            _add(out, "clb_http_bytes_total", f'{labels},direction="in"', f.get("bytes in", 0))
            _add(out, "clb_http_bytes_total", f'{labels},direction="out"', f.get("bytes out", 0))
            _add(out, "clb_http_new_connections_total", labels, f.get("conns", 0))
            self._histogram(out, "clb_http_request_duration_seconds", labels, f, "rt")
            self._histogram(out, "clb_http_upstream_response_seconds", labels, f, "ut")

        self._cached(scope, f, build)

    def member(self, key: str, labels: str, f: Mapping[str, float]) -> None:
        def build(out: Lines) -> None:
            self._by_class(out, "clb_http_backend_requests_total", labels, f)
            _add(out, "clb_http_backend_response_seconds", labels, f.get("ut count", 0), "_count")
            _add(out, "clb_http_backend_response_seconds", labels, f.get("ut sum", 0), "_sum")
            _add(out, "clb_http_backend_bytes_total", f'{labels},direction="in"', f.get("bytes in", 0))
            _add(out, "clb_http_backend_bytes_total", f'{labels},direction="out"', f.get("bytes out", 0))

        self._cached(key, f, build)

    def text(self) -> str:
        out = []
        for name, (kind, doc) in FAMILIES.items():
            lines = self.samples[name]
            if lines:
                out.append(f"# HELP {name} {doc}\n# TYPE {name} {kind}\n")
                out.extend(lines)
        return "".join(out)


def exposition(
    counters: Counters | None,
    available: bool,
    served: set[str] | None,
    l4: Mapping[str, Mapping[str, float]],
    cache: Cache | None = None,
) -> tuple[str, Cache]:
    """The Prometheus text of the L7 families (``counters`` None: nginx could not be read) and of
    the instance totals; and the cache for the next scrape (pass the last one in)."""
    text = _Text(counters.buckets if counters else (), cache or {})
    text.add("clb_http_metrics_available", "", int(available))
    if available:
        text.add("clb_http_stats_up", "", int(counters is not None))
    rules = counters.scopes if counters else {}
    members = counters.members if counters else {}
    totals: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    for scope, f in rules.items():
        found = _scope_labels(scope)
        if found is None or (served is not None and found[0] not in served):
            continue
        text.rule(scope, found[1], f)
        t = totals[found[0]]
        t[0] += f.get("bytes in", 0)
        t[1] += f.get("bytes out", 0)
    for key, f in members.items():
        scope, _, member = key.partition("\t")
        found = _scope_labels(scope)
        if found is None or (served is not None and found[0] not in served):
            continue
        text.member(key, f'{found[1]},target="{_escape(member)}"', f)
    for lb, c in sorted(l4.items()):  # L4: the kernel's IP bytes and packets (nginx sees no packets)
        t = totals[lb]
        t[0] += c.get("bytes_in", 0)
        t[1] += c.get("bytes_out", 0)
        for direction in ("in", "out"):
            labels = f'load_balancer="{_escape(lb)}",direction="{direction}"'
            text.add("clb_instance_packets_total", labels, c.get(f"packets_{direction}", 0))
    for lb, (bytes_in, bytes_out) in sorted(totals.items()):
        text.add("clb_instance_bytes_total", f'load_balancer="{_escape(lb)}",direction="in"', bytes_in)
        text.add("clb_instance_bytes_total", f'load_balancer="{_escape(lb)}",direction="out"', bytes_out)
    return text.text(), text.kept


class L7Metrics:
    """``read`` gives nginx's counters (None: nginx counts nothing, static mode); ``served`` the
    IDs of the load balancers served now; ``l4_totals`` the kernel's per load balancer
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
        self._cache: Cache = {}

    def text(self) -> str:
        counters = None
        if self.read is not None:
            try:
                counters = self.read()
            except MetricsUnavailableError:
                counters = None
        try:
            l4 = self.l4_totals() if self.l4_totals else {}
        except OSError:  # the kernel's counters are read on their own (clb_l4_stats_up)
            l4 = {}
        served = self.served() if self.served else None
        text, self._cache = exposition(counters, self.read is not None, served, l4, self._cache)
        return text
