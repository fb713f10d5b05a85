"""IPVS statistics (pure): parsing the kernel's replies and the Prometheus collector built on them."""

from __future__ import annotations

import struct

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from clbagent.agent.l4_metrics import L4Collector
from clbagent.l4 import Destination, IpvsPlan, ServiceKey, VirtualService, codec
from clbagent.l4.stats import Counters, DestStats, ServiceStats, parse_dest, parse_service, totals

KEY = ServiceKey.of("10.99.0.1", "udp", 53)
DEST = Destination("10.0.0.1", 5353, 1, "NAT", "lb-a/lbl-dns/10.0.0.1:5353")


def _stats(wide: bool, values: tuple[int, ...]) -> bytes:
    """A nested statistics attribute as the kernel writes it (STATS64 with a padding attribute)."""
    if wide:
        body = codec.nla(11, b"")  # IPVS_STATS_ATTR_PAD, as nla_put_u64_64bit may add
        body += b"".join(codec.nla(kind, struct.pack("=Q", v)) for kind, v in enumerate(values, 1))
        return codec.nla(12, body)
    small = (struct.pack("=I", values[0]), struct.pack("=I", values[1]), struct.pack("=I", values[2]))
    body = b"".join(codec.nla(kind, raw) for kind, raw in enumerate(small, 1))
    body += codec.nla(4, struct.pack("=Q", values[3])) + codec.nla(5, struct.pack("=Q", values[4]))
    return codec.nla(10, body)


def _reply(attrs: bytes) -> memoryview:
    ((_kind, _flags, _seq, payload),) = list(codec.messages(codec.message(30, codec.CMD_GET_SERVICE, 1, attrs, 2)))
    return payload


def test_service_and_destination_counters_are_read_from_stats64_or_stats() -> None:
    big = (3, 10, 9, 5 << 33, 7 << 33)  # bytes beyond 32 bits
    svc = codec.service_attrs(VirtualService(KEY, "wrr", 0), full=True)
    payload = _reply(codec.nla(codec.A_SERVICE, svc[4:] + _stats(True, big) + _stats(False, (1, 1, 1, 1, 1))))
    assert parse_service(payload) == (KEY, Counters(*big))
    dest = codec.dest_attrs(4, DEST, full=True)[4:] + codec.u32(codec.D_ACTIVE, 0) + codec.u32(codec.D_INACTIVE, 2)
    payload = _reply(codec.nla(codec.A_DEST, dest + _stats(False, (4, 5, 6, 700, 800))))
    assert parse_dest(payload, 4) == DestStats("10.0.0.1", 5353, Counters(4, 5, 6, 700, 800), 0, 2)


def _plan() -> IpvsPlan:
    other = VirtualService(ServiceKey.of("10.99.0.1", "tcp", 80), "wrr", 0, (), "lb-a/lbl-web")
    dns = VirtualService(KEY, "wrr", 0, (DEST,), "lb-a/lbl-dns")
    return IpvsPlan((other, dns), frozenset({"10.99.0.1"}))


def _kernel() -> dict[ServiceKey, ServiceStats]:
    dests = {
        DEST.key: DestStats("10.0.0.1", 5353, Counters(2, 20, 19, 2000, 1900), 0, 1),
        ("10.0.0.9", 53): DestStats("10.0.0.9", 53, Counters(1, 1, 1, 1, 1), 0, 0),  # draining, not configured
    }
    foreign = ServiceKey.of("10.77.0.1", "tcp", 80)
    return {
        KEY: ServiceStats(KEY, Counters(3, 21, 20, 2001, 1901), dests),
        ServiceKey.of("10.99.0.1", "tcp", 80): ServiceStats(
            ServiceKey.of("10.99.0.1", "tcp", 80), Counters(1, 2, 3, 4, 5)
        ),
        foreign: ServiceStats(foreign, Counters(9, 9, 9, 9, 9)),
    }


def _scrape(collector: L4Collector) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    registry = CollectorRegistry()
    registry.register(collector)
    text = generate_latest(registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_collector_exports_configured_listeners_and_targets_only() -> None:
    samples = _scrape(L4Collector(_plan, _kernel))
    svc = (
        ("listener", "lbl-dns"),
        ("load_balancer", "lb-a"),
        ("port", "53"),
        ("protocol", "UDP"),
        ("vip", "10.99.0.1"),
    )
    target = tuple(sorted((*svc, ("target", "10.0.0.1:5353"))))
    assert samples[("clb_l4_connections_total", svc)] == 3
    assert samples[("clb_l4_bytes_total", tuple(sorted((*svc, ("direction", "in")))))] == 2001
    assert samples[("clb_l4_packets_total", tuple(sorted((*svc, ("direction", "out")))))] == 20
    assert samples[("clb_l4_target_connections_total", target)] == 2
    assert samples[("clb_l4_target_bytes_total", tuple(sorted((*target, ("direction", "out")))))] == 1900
    assert samples[("clb_l4_target_inactive_connections", target)] == 1
    assert samples[("clb_l4_target_active_connections", target)] == 0
    assert samples[("clb_l4_stats_up", ())] == 1
    values = {label for key in samples for label in key[1]}
    assert ("vip", "10.77.0.1") not in values and ("target", "10.0.0.9:53") not in values
    # 2 services x 5 series + 1 target x 7 series + up
    assert len(samples) == 2 * 5 + 7 + 1
    assert L4Collector(_plan, _kernel).l4_totals() == {
        "lb-a": {"bytes_in": 2005, "bytes_out": 1906, "packets_in": 23, "packets_out": 23, "connections": 4}
    }
    assert totals(_plan(), _kernel())["lb-a"] == Counters(4, 23, 23, 2005, 1906)


def test_a_failed_kernel_read_is_a_gauge_not_a_failed_scrape() -> None:
    def broken() -> dict[ServiceKey, ServiceStats]:
        raise OSError(104, "connection reset")

    assert _scrape(L4Collector(_plan, broken)) == {("clb_l4_stats_up", ()): 0}
    assert _scrape(L4Collector(IpvsPlan, broken)) == {("clb_l4_stats_up", ()): 1}  # nothing planned, nothing read


def test_one_kernel_read_serves_the_families_and_the_totals_of_a_scrape() -> None:
    reads, now = [], [100.0]

    def read() -> dict[ServiceKey, ServiceStats]:
        reads.append(now[0])
        return _kernel()

    collector = L4Collector(_plan, read, clock=lambda: now[0])
    _scrape(collector)
    collector.l4_totals()
    assert reads == [100.0]
    now[0] += L4Collector.MAX_AGE
    collector.l4_totals()
    assert reads == [100.0, 101.0]
