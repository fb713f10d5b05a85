"""The agent's Prometheus endpoint, on a loopback address by default (docs/metrics.md).

One scrape holds the agent's own families (applies, reloads, health probes, target health), any
registered collector (IPVS), and the L7 text nginx writes with the instance totals (l7_metrics).
Labels come from configuration and fixed vocabularies only, never from requests, so the number of
series is bounded by the configuration.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from clbagent.agent.engine import ApplyReport
from clbagent.agent.l7_connections import ListenerAddress, ListenerConnectionsCollector
from clbagent.agent.l7_metrics import L4Totals, L7Metrics

HEALTH_STATES = ("Alive", "Dead", "Unknown")
PROBE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
HEALTH_LABELS = ("load_balancer", "listener", "rule", "target")


class TargetHealthCollector(Collector):
    """Reads the health monitor's view at scrape time, so the gauge is never stale or leaked."""

    def __init__(self, snapshot: Callable[[], Iterable[dict]]) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "clbagent_target_health",
            "1 for the health state a target is in now (one series per state)",
            labels=[*HEALTH_LABELS, "state"],
        )
        for row in self.snapshot():
            ids = [str(row[k]) for k in HEALTH_LABELS]
            for state in HEALTH_STATES:
                family.add_metric([*ids, state], 1.0 if row["state"] == state else 0.0)
        yield family


class AgentMetrics:
    """The registry and the endpoint; the daemon and the health monitor report into it."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.applies = Counter("clbagent_applies_total", "Applies by result", ["result"], registry=r)
        self.duration = Histogram(
            "clbagent_apply_duration_seconds",
            "Time of one apply, from reading the documents to the verified reload",
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=r,
        )
        self.reloads = Counter(
            "clbagent_nginx_reloads_total", "nginx reloads by verified result", ["result"], registry=r
        )
        self.tests = Counter("clbagent_nginx_config_tests_total", "nginx -t runs (bisection included)", registry=r)
        self.last_success = Gauge(
            "clbagent_last_successful_apply_timestamp_seconds", "When an apply last succeeded", registry=r
        )
        self.generation = Gauge("clbagent_config_generation", "The nginx generation being served", registry=r)
        self.quarantined = Gauge(
            "clbagent_quarantined_load_balancers", "Load balancers kept at their last good version", registry=r
        )
        self.load_balancers = Gauge("clbagent_load_balancers", "Load balancers being served", registry=r)
        self.draining = Gauge("clbagent_nginx_draining_workers", "Old nginx workers still draining", registry=r)
        self.nginx_up = Gauge("clbagent_nginx_up", "1 when the nginx master is running", registry=r)
        self.l4_totals: L4Totals | None = None
        self.l7: L7Metrics | None = None
        self.probes = Counter(
            "clbagent_health_probes", "Health probes by kind and result (ok|failed)", ["kind", "result"], registry=r
        )
        self._probe_children: dict[tuple[str, bool], tuple[Any, Any]] = {}
        self.probe_duration = Histogram(
            "clbagent_health_probe_duration_seconds",
            "Time of one health probe",
            ["kind"],
            buckets=PROBE_BUCKETS,
            registry=r,
        )
        self.transitions = Counter(
            "clbagent_health_transitions",
            "Targets entering a health state (Alive|Dead|Unknown)",
            ["load_balancer", "listener", "target", "state"],
            registry=r,
        )

    def observe(self, report: ApplyReport, seconds: float, served: int) -> None:
        self.applies.labels(report.result).inc()
        self.duration.observe(seconds)
        self.tests.inc(report.nginx_tests)
        if report.reloaded or report.result == "rolled back":
            self.reloads.labels("ok" if report.ok else "failed").inc()
        if report.ok:
            self.last_success.set_to_current_time()
        if report.generation is not None:
            self.generation.set(report.generation)
        self.quarantined.set(len(report.quarantined))
        self.load_balancers.set(served)

    def watch_nginx(self, workers: Callable[[], tuple[list[int], list[int]]]) -> None:
        """Gauges read from the running nginx at scrape time."""
        self.draining.set_function(lambda: len(workers()[1]))
        self.nginx_up.set_function(lambda: 1 if workers()[0] else 0)

    def observe_probe(self, kind: str, ok: bool, seconds: float) -> None:
        """One health probe of `kind` (tcp, http, udp, ...) finished after `seconds`."""
        children = self._probe_children.get((kind, ok))
        if children is None:  # labels() costs more than the probe itself: look each pair up once
            children = self._probe_children[kind, ok] = (
                self.probes.labels(kind, "ok" if ok else "failed"),
                self.probe_duration.labels(kind),
            )
        children[0].inc()
        children[1].observe(seconds)

    def observe_transition(self, load_balancer: str, listener: str, target: str, state: str) -> None:
        """A target (`ip:port`) of a listener entered `state` (Alive, Dead or Unknown)."""
        self.transitions.labels(load_balancer, listener, target, state).inc()

    def watch_health(self, snapshot: Callable[[], Iterable[dict]]) -> None:
        """Publish `clbagent_target_health` from `snapshot()`, called at every scrape.

        Each dict describes one target of one rule: `load_balancer`, `listener`, `rule` (the
        LocationId of an L7 rule, "" for an L4 listener) and `target` ("ip:port") are
        configuration IDs; `state` is "Alive", "Dead" or "Unknown". Extra keys are ignored.
        """
        self.registry.register(TargetHealthCollector(snapshot))

    def add_collector(self, collector: Collector) -> None:
        """Register a custom collector read at scrape time. One with an ``l4_totals()`` method (the
        IPVS collector: per load balancer ``bytes_in``, ``bytes_out``, ``packets_in``,
        ``packets_out``) also feeds the instance totals of ``watch_l7``."""
        self.registry.register(collector)
        totals = getattr(collector, "l4_totals", None)
        if callable(totals):
            self.l4_totals = totals

    def watch_listeners(self, addresses: Callable[[], Iterable[ListenerAddress]]) -> None:
        """``clb_http_listener_connections``: the open client connections of the listeners whose
        VIPs and ports ``addresses()`` gives, counted in the kernel at every scrape."""
        self.registry.register(ListenerConnectionsCollector(addresses))

    def watch_l7(self, read: Callable[[], bytes] | None) -> None:
        """The L7 families nginx writes (``read`` None: static mode, nothing counted) and the
        instance totals (docs/metrics.md)."""
        self.l7 = L7Metrics(read, lambda: self.l4_totals() if self.l4_totals else {})

    def exposition(self) -> bytes:
        """One scrape as one string (see ``exposition_parts``)."""
        return b"".join(self.exposition_parts())

    def exposition_parts(self) -> list[bytes]:
        """One scrape: the registry's families, then the L7 text in pieces (see l7_metrics)."""
        text = generate_latest(self.registry)
        return [text, *self.l7.parts()] if self.l7 else [text]

    def serve(self, host: str, port: int) -> None:
        """``GET /metrics`` on ``host:port`` from a daemon thread."""
        metrics = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.split("?")[0] not in ("/", "/metrics"):
                    self.send_error(404)
                    return
                parts = metrics.exposition_parts()
                self.send_response(200)
                self.send_header("Content-Type", CONTENT_TYPE_LATEST)
                self.send_header("Content-Length", str(sum(map(len, parts))))
                self.end_headers()
                for part in parts:  # not joined: nginx's ~10 MB go out as they came
                    self.wfile.write(part)

            def log_message(self, *args: object) -> None:  # scrapes are not events
                pass

        class Server(ThreadingHTTPServer):
            address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
            daemon_threads = True

        server = Server((host, port), Handler)
        threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
