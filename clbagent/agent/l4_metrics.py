"""L4 metrics: the kernel's IPVS counters per listener (service) and per target (destination).

Read at scrape time from the kernel (one statistics dump) and mapped back to configuration IDs
with the plan the agent applied: labels are the load balancer, listener, protocol, VIP and port
of the listener, and ``target="ip:port"`` — all from configuration, so the series count is
bounded by it. A kernel service or destination that is not in the applied plan (a foreign one, a
removed target still draining) is not exported.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from clbagent.agent.l4plane import L4Plane
from clbagent.l4 import IpvsPlan, ServiceKey, VirtualService
from clbagent.l4.stats import Counters, ServiceStats, totals

SERVICE_LABELS = ["load_balancer", "listener", "protocol", "vip", "port"]
TARGET_LABELS = [*SERVICE_LABELS, "target"]


def _labels(svc: VirtualService) -> list[str]:
    lb, _, listener = svc.owner.partition("/")
    return [lb, listener, svc.key.protocol.upper(), svc.key.address, str(svc.key.port)]


class _Families:
    """The families of one scrape: connections, packets and bytes (by direction) per label set."""

    def __init__(self, prefix: str, what: str, labels: list[str]):
        self.conns = CounterMetricFamily(f"{prefix}_connections", f"Connections scheduled to the {what}", labels=labels)
        self.packets = CounterMetricFamily(
            f"{prefix}_packets",
            f"IP packets of the {what}, from clients (in) and to them (out)",
            labels=[*labels, "direction"],
        )
        self.bytes = CounterMetricFamily(
            f"{prefix}_bytes",
            f"Bytes of the {what}'s IP packets, from clients (in) and to them (out)",
            labels=[*labels, "direction"],
        )

    def add(self, labels: list[str], c: Counters) -> None:
        self.conns.add_metric(labels, c.connections)
        self.packets.add_metric([*labels, "in"], c.packets_in)
        self.packets.add_metric([*labels, "out"], c.packets_out)
        self.bytes.add_metric([*labels, "in"], c.bytes_in)
        self.bytes.add_metric([*labels, "out"], c.bytes_out)

    def __iter__(self) -> Iterator[Metric]:
        return iter((self.conns, self.packets, self.bytes))


class L4Collector(Collector):
    """A custom collector: ``plan`` gives the applied IPVS plan, ``read`` the kernel's counters.

    One read serves the families and the instance totals of the same scrape: the kernel folds its
    per-CPU counters in every 2 s, so a read younger than ``MAX_AGE`` is reused.
    """

    MAX_AGE = 1.0

    def __init__(
        self,
        plan: Callable[[], IpvsPlan],
        read: Callable[[], dict[ServiceKey, ServiceStats]],
        clock: Callable[[], float] = time.monotonic,
    ):
        self.plan = plan
        self.read = read
        self.clock = clock
        self._last: tuple[float, dict[ServiceKey, ServiceStats]] | None = None
        self._lock = threading.Lock()

    def _stats(self) -> dict[ServiceKey, ServiceStats]:
        with self._lock:
            now = self.clock()
            if self._last is None or now - self._last[0] >= self.MAX_AGE:
                self._last = (now, self.read())
            return self._last[1]

    @classmethod
    def of(cls, plane: L4Plane) -> L4Collector:
        return cls(lambda: plane.plan, plane.stats)

    def describe(self) -> list[Metric]:
        return []  # nothing to check at registration, and no kernel read then

    def collect(self) -> Iterator[Metric]:
        plan = self.plan()
        up = GaugeMetricFamily("clb_l4_stats_up", "1 when the kernel's IPVS counters could be read")
        try:
            stats = self._stats() if plan.services else {}
        except OSError:  # one failed read must not fail the whole scrape
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        services = _Families("clb_l4", "listener", SERVICE_LABELS)
        targets = _Families("clb_l4_target", "target", TARGET_LABELS)
        active = GaugeMetricFamily(
            "clb_l4_target_active_connections", "Established connections to the target now", labels=TARGET_LABELS
        )
        inactive = GaugeMetricFamily(
            "clb_l4_target_inactive_connections",
            "Other connection entries of the target now (closing TCP, UDP flows)",
            labels=TARGET_LABELS,
        )
        for svc in plan.services:
            found = stats.get(svc.key)
            if found is None:
                continue
            labels = _labels(svc)
            services.add(labels, found.counters)
            for d in svc.destinations:
                kd = found.dests.get(d.key)
                if kd is None:
                    continue
                target = [*labels, d.endpoint]
                targets.add(target, kd.counters)
                active.add_metric(target, kd.active)
                inactive.add_metric(target, kd.inactive)
        yield from services
        yield from targets
        yield active
        yield inactive

    def l4_totals(self) -> dict[str, dict[str, int]]:
        """Per load balancer: bytes and packets in and out and connections of all its listeners
        (instance totals); empty when the kernel cannot be read."""
        plan = self.plan()
        try:
            stats = self._stats() if plan.services else {}
        except OSError:
            return {}
        return {
            lb: {
                "bytes_in": c.bytes_in,
                "bytes_out": c.bytes_out,
                "packets_in": c.packets_in,
                "packets_out": c.packets_out,
                "connections": c.connections,
            }
            for lb, c in totals(plan, stats).items()
        }
