"""L4 metrics from the kernel's IPVS counters: real TCP and UDP traffic through IPVS, then the
collector's exposition (as Prometheus would scrape it) has risen by what was sent."""

from __future__ import annotations

import socket
import time

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from clbagent.agent.l4_metrics import L4Collector
from clbagent.l4.kernel import IpvsKernel
from clbagent.l4.reconcile import Reconciler
from clbagent.l4.stats import read_stats
from tests.kernel.conftest import BACKEND_PORT, VIP4, Conn, backend_addr, client_socket
from tests.kernel.test_ipvs import doc, listener
from tests.l4.build import plan_of

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def _scrape(registry: CollectorRegistry) -> Samples:
    text = generate_latest(registry).decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value for f in text_string_to_metric_families(text) for s in f.samples
    }


def _get(samples: Samples, name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, lab), v in samples.items() if n == name and want <= lab)


def test_counters_rise_by_the_traffic_sent(kernel: IpvsKernel) -> None:
    plan = plan_of(doc(listener(80, (1, 1)), listener(53, (1, 0), protocol="UDP")))
    assert Reconciler(kernel).run(plan).ok
    registry = CollectorRegistry()
    registry.register(L4Collector(lambda: plan, lambda: read_stats(kernel, plan.vips)))
    before = _scrape(registry)
    tcp80 = {"listener": "lbl-tcp-80", "protocol": "TCP", "vip": VIP4, "port": "80", "load_balancer": "lb-l4"}
    udp53 = {"listener": "lbl-udp-53", "protocol": "UDP", "vip": VIP4, "port": "53", "load_balancer": "lb-l4"}

    conns, lines, line = 4, 25, b"x" * 99 + b"\n"
    for _ in range(conns):
        c = Conn(VIP4, 80)  # one "who" line on connect, then `lines` more
        for _ in range(lines):
            c.sock.sendall(line)
            c.file.readline()
        c.close()
    held = Conn(VIP4, 80)
    datagrams, size = 30, 200
    flow = client_socket(socket.SOCK_DGRAM)
    flow.settimeout(3)
    for _ in range(datagrams):
        flow.sendto(b"y" * size, (VIP4, 53))
        flow.recvfrom(100)
    flow.close()

    deadline = time.monotonic() + 10  # the kernel folds its per-CPU counters in every 2 s
    while True:
        after = _scrape(registry)
        udp_in = _get(after, "clb_l4_packets_total", direction="in", **udp53)
        tcp_conns = _get(after, "clb_l4_connections_total", **tcp80)
        if (udp_in >= datagrams and tcp_conns >= conns + 1) or time.monotonic() > deadline:
            break
        time.sleep(0.5)

    def rise(name: str, labels: dict[str, str], **extra: str) -> float:
        return _get(after, name, **labels, **extra) - _get(before, name, **labels, **extra)

    # UDP: exact, one flow, IPv4 + UDP headers (28 bytes) on every datagram, replies "b1\n"
    assert rise("clb_l4_connections_total", udp53) == 1
    assert rise("clb_l4_packets_total", udp53, direction="in") == datagrams
    assert rise("clb_l4_bytes_total", udp53, direction="in") == datagrams * (size + 28)
    assert rise("clb_l4_packets_total", udp53, direction="out") == datagrams
    assert rise("clb_l4_bytes_total", udp53, direction="out") == datagrams * (3 + 28)
    assert rise("clb_l4_target_bytes_total", udp53, target="10.20.1.2:8080", direction="in") == datagrams * (size + 28)
    assert rise("clb_l4_target_packets_total", udp53, target="10.20.2.2:8080", direction="in") == 0
    # TCP: connections exact; bytes = payload + 40 to 80 bytes of headers per packet
    assert rise("clb_l4_connections_total", tcp80) == conns + 1
    payload = conns * (4 + lines * len(line)) + 4
    packets = rise("clb_l4_packets_total", tcp80, direction="in")
    assert conns * (lines + 3) <= packets <= conns * (lines + 3) * 2 + 8, packets
    header = rise("clb_l4_bytes_total", tcp80, direction="in") - payload
    assert 40 * packets <= header <= 80 * packets, (header, packets)
    assert rise("clb_l4_target_connections_total", tcp80) == conns + 1  # summed over both targets
    held_target = f"{backend_addr(int(held.backend[1:]))}:{BACKEND_PORT}"
    assert _get(after, "clb_l4_target_active_connections", target=held_target, **tcp80) == 1
    held.close()
