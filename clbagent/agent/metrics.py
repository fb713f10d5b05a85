"""Prometheus metrics of the agent itself, served on a loopback address by default.

Labels come from configuration and fixed vocabularies only (results), never from requests, so the
number of series is bounded by the configuration.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from clbagent.agent.engine import ApplyReport


class AgentMetrics:
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

    def serve(self, host: str, port: int) -> None:
        start_http_server(port, addr=host, registry=self.registry)
