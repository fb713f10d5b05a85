"""Open client connections per HTTP/HTTPS listener, counted in the kernel's socket table at scrape
time (docs/metrics.md).

nginx has no per-listener connection gauge, and nothing in its Lua phases runs when a keep-alive
connection closes, so the count is taken where it is exact: the TCP sockets in state ESTABLISHED
whose local address and port are a listener's VIP and port. One netlink ``sock_diag`` dump per
address family asks the kernel for them; a bytecode filter on the local port lets the kernel skip
every other socket (the connections to the backends, the health probes), and each answer is read
from its fixed header only. pyroute2's ``DiagSocket`` has no filter and decodes every attribute
(~0.2 ms a socket: a second for 4,000 connections), which a scrape cannot afford.
"""

from __future__ import annotations

import os
import socket
import struct
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from ipaddress import ip_address
from typing import NamedTuple

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from clbagent.agent.serving import Serving
from clbagent.model.types import L7_PROTOCOLS

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300
NLMSG_ERROR, NLMSG_DONE = 2, 3
TCP_ESTABLISHED = 1
INET_DIAG_REQ_BYTECODE = 1
BC_JMP, BC_S_GE, BC_S_LE = 1, 2, 3  # enum inet_diag_bc_op_code
MAX_RANGES = 64  # of local ports in the kernel's filter; the exact match is made here
HEADER = struct.Struct("=IHHII")  # struct nlmsghdr
MSG_OFFSET = HEADER.size  # struct inet_diag_msg follows: family, state, timer, retrans, sockid


class ListenerAddress(NamedTuple):
    """One address nginx listens on for a listener: ``vip`` (IPv4 or IPv6 text) and ``port``."""

    load_balancer: str
    listener: str
    vip: str
    port: int


def listener_addresses(serving: Serving | None) -> list[ListenerAddress]:
    """Every (VIP, port) of the HTTP/HTTPS listeners that ``serving`` (the engine's last good
    apply) serves."""
    if serving is None:
        return []
    return [
        ListenerAddress(lb.id, lis.id, str(vip), lis.port)
        for lb in serving.load_balancers.values()
        for lis in lb.listeners
        if lis.protocol in L7_PROTOCOLS
        for vip in lb.load_balancer_vips
    ]


def port_ranges(ports: list[int], most: int = MAX_RANGES) -> list[tuple[int, int]]:
    """At most ``most`` ranges covering the sorted ``ports``: the widest gaps between them stay out."""
    breaks = sorted(sorted(range(1, len(ports)), key=lambda i: ports[i] - ports[i - 1])[max(0, len(ports) - most) :])
    starts = [0, *breaks]
    ends = [*breaks, len(ports)]
    return [(ports[a], ports[b - 1]) for a, b in zip(starts, ends, strict=True)]


def _filter(ranges: list[tuple[int, int]]) -> bytes:
    """sock_diag bytecode accepting a socket whose local port is in one of ``ranges``: per range,
    ``port >= low`` and ``port <= high`` fall through to a jump to the end (accept), a miss goes
    on to the next range; the last op jumps past the end (reject). The kernel checks every jump
    target by walking the program from its start, so the program stays short: ranges, not ports."""
    size = 20  # two comparisons of 8 bytes (the port rides in a second op), one jump of 4
    total, out = size * len(ranges) + 4, bytearray()
    for i, (low, high) in enumerate(ranges):
        out += struct.pack("=BBHBBH", BC_S_GE, 8, size, 0, 0, low)
        out += struct.pack("=BBHBBH", BC_S_LE, 8, size - 8, 0, 0, high)
        out += struct.pack("=BBH", BC_JMP, 4, total - size * i - 16)
    out += struct.pack("=BBH", BC_JMP, 4, 8)
    return bytes(out)


def _request(family: int, ports: list[int]) -> bytes:
    bytecode = _filter(port_ranges(ports))
    attr = struct.pack("=HH", 4 + len(bytecode), INET_DIAG_REQ_BYTECODE) + bytecode
    req = struct.pack("=BBBxI", family, socket.IPPROTO_TCP, 0, 1 << TCP_ESTABLISHED) + bytes(48) + attr
    return HEADER.pack(HEADER.size + len(req), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | NLM_F_DUMP, 1, 0) + req


def established(family: int, ports: list[int], timeout: float = 5.0) -> Counter[bytes]:
    """ESTABLISHED TCP sockets of ``family`` whose local port is in ``ports`` (sorted; a few
    others may come along), counted by local port and address: the key is the port (2 bytes,
    network order) and the packed address."""
    width = 4 if family == socket.AF_INET else 16
    counts: Counter[bytes] = Counter()
    with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_SOCK_DIAG) as nl:
        nl.settimeout(timeout)
        nl.send(_request(family, ports))
        while not _read(nl.recv(65536), width, counts):
            pass
    return counts


def _read(data: bytes, width: int, counts: Counter[bytes]) -> bool:
    """Count the sockets of one netlink datagram; True once the dump is done."""
    offset = 0
    while offset + HEADER.size <= len(data):
        length, kind = HEADER.unpack_from(data, offset)[:2]
        if kind == NLMSG_DONE:
            return True
        if kind == NLMSG_ERROR:
            (error,) = struct.unpack_from("=i", data, offset + HEADER.size)
            raise OSError(-error, f"sock_diag: {os.strerror(-error)}")
        at = offset + MSG_OFFSET
        counts[data[at + 4 : at + 6] + data[at + 8 : at + 8 + width]] += 1
        offset += (length + 3) & ~3
    return False


def _key(address: ListenerAddress) -> tuple[int, bytes]:
    ip = ip_address(address.vip)
    family = socket.AF_INET if ip.version == 4 else socket.AF_INET6
    return family, address.port.to_bytes(2, "big") + ip.packed


class ListenerConnectionsCollector(Collector):
    """``clb_http_listener_connections``: open client connections of each HTTP/HTTPS listener
    (every VIP of its load balancer together), read from the kernel at every scrape."""

    def __init__(self, addresses: Callable[[], Iterable[ListenerAddress]]) -> None:
        self.addresses = addresses

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "clb_http_listener_connections",
            "Client TCP connections open (ESTABLISHED) on the listener's VIPs and port, from the kernel",
            labels=["load_balancer", "listener"],
        )
        by_family: dict[int, dict[bytes, tuple[str, str]]] = {}
        listeners: dict[tuple[str, str], int] = {}
        for a in self.addresses():
            fam, key = _key(a)
            by_family.setdefault(fam, {})[key] = (a.load_balancer, a.listener)
            listeners[a.load_balancer, a.listener] = 0
        for fam, keys in by_family.items():
            ports = sorted({int.from_bytes(k[:2], "big") for k in keys})
            try:
                counts = established(fam, ports)
            except OSError:  # no answer from the kernel: no family at this scrape rather than zeros
                return
            for key, n in counts.items():
                owner = keys.get(key)
                if owner is not None:
                    listeners[owner] += n
        for (lb, listener), n in sorted(listeners.items()):
            family.add_metric([lb, listener], n)
        yield family
