"""Open connections per listener counted in the kernel's socket table (sock_diag) with real sockets
on loopback: only the server side of a listener's VIP and port counts, per VIP and port."""

from __future__ import annotations

import random
import socket
from collections.abc import Iterator

import pytest

from clbagent.agent.l7_connections import ListenerAddress, ListenerConnectionsCollector, port_ranges


@pytest.fixture
def sockets() -> Iterator[list[socket.socket]]:
    opened: list[socket.socket] = []
    yield opened
    for s in opened:
        s.close()


def _listen(opened: list[socket.socket], ip: str, port: int = 0) -> int:
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    s = socket.socket(family)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((ip, port))
    s.listen(64)
    opened.append(s)
    return s.getsockname()[1]


def _connect(opened: list[socket.socket], ip: str, port: int, n: int) -> None:
    opened.extend(socket.create_connection((ip, port), timeout=5) for _ in range(n))


def _gauge(addresses: list[ListenerAddress]) -> dict[tuple[str, str], float]:
    (family,) = ListenerConnectionsCollector(lambda: addresses).collect()
    return {(s.labels["load_balancer"], s.labels["listener"]): s.value for s in family.samples}


def test_counts_the_server_side_of_each_vip_and_port(sockets):
    a, b = "127.0.60.41", "127.0.60.42"
    port = _listen(sockets, a)
    _listen(sockets, b, port)  # the same port on another VIP: another listener
    other = _listen(sockets, a)
    _connect(sockets, a, port, 3)
    _connect(sockets, b, port, 1)
    _connect(sockets, a, other, 2)
    addresses = [
        ListenerAddress("lb-1", "lbl-a", a, port),
        ListenerAddress("lb-2", "lbl-b", b, port),
        ListenerAddress("lb-3", "lbl-idle", "127.0.60.43", port),
    ]
    assert _gauge(addresses) == {("lb-1", "lbl-a"): 3, ("lb-2", "lbl-b"): 1, ("lb-3", "lbl-idle"): 0}
    # one listener on two VIPs: the sum of both
    two = [ListenerAddress("lb-1", "lbl-a", a, port), ListenerAddress("lb-1", "lbl-a", b, port)]
    assert _gauge(two) == {("lb-1", "lbl-a"): 4}
    for s in sockets[3:6]:  # the clients of lbl-a close: their server sides are no longer ESTABLISHED
        s.close()
    assert _gauge(addresses) == {("lb-1", "lbl-a"): 0, ("lb-2", "lbl-b"): 1, ("lb-3", "lbl-idle"): 0}


def test_ipv6_listener(sockets):
    try:
        port = _listen(sockets, "::1")
    except OSError:
        pytest.skip("no IPv6 loopback on this host")
    _connect(sockets, "::1", port, 2)
    assert _gauge([ListenerAddress("lb-6", "lbl-6", "::1", port)]) == {("lb-6", "lbl-6"): 2}


def test_port_ranges_cover_every_port_within_the_limit():
    rng = random.Random(7)
    for _ in range(500):
        ports = sorted(set(rng.sample(range(1, 65536), rng.randint(1, 150))))
        most = rng.randint(1, 70)
        ranges = port_ranges(ports, most)
        assert len(ranges) == min(most, len(ports))
        assert all(any(lo <= p <= hi for lo, hi in ranges) for p in ports)
        assert all(ranges[i][1] < ranges[i + 1][0] for i in range(len(ranges) - 1))
