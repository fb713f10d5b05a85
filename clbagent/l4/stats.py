"""The traffic counters the kernel keeps for every IPVS service and destination, read in one dump.

Each GET_SERVICE and GET_DEST reply carries a nested statistics attribute: ``STATS64`` (every
counter 64 bits; kernels since 4.1) and the older ``STATS`` (connections and packets 32 bits).
The 64-bit one is used when present. Counters are cumulative from the moment the kernel created
the service or destination: they restart at 0 when it is created again (Prometheus' counter
semantics cope with that).

Parsing is pure (``parse_*``); :func:`read_stats` is the one dump: all services, then the
destinations of those on the asked VIPs (the kernel dumps destinations per service).
"""

from __future__ import annotations

import errno
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field

from clbagent.l4 import codec
from clbagent.l4.kernel import IpvsError, IpvsKernel
from clbagent.l4.plan import IpvsPlan, ServiceKey

S_STATS, S_STATS64 = 10, 12  # IPVS_SVC_ATTR_*
D_STATS, D_STATS64 = 10, 12  # IPVS_DEST_ATTR_*
# IPVS_STATS_ATTR_*: the cumulative counters (the rate estimates that follow are not read)
CONNS, INPKTS, OUTPKTS, INBYTES, OUTBYTES = 1, 2, 3, 4, 5

_INTEGER = {4: struct.Struct("=I"), 8: struct.Struct("=Q")}


@dataclass(frozen=True)
class Counters:
    """Cumulative counters of a service or destination: connections scheduled, packets and bytes
    from clients (in) and to clients (out), as IPVS counts them (IP packets, headers included)."""

    connections: int = 0
    packets_in: int = 0
    packets_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0

    def __add__(self, other: Counters) -> Counters:
        return Counters(
            self.connections + other.connections,
            self.packets_in + other.packets_in,
            self.packets_out + other.packets_out,
            self.bytes_in + other.bytes_in,
            self.bytes_out + other.bytes_out,
        )


@dataclass(frozen=True)
class DestStats:
    address: str
    port: int
    counters: Counters
    active: int  # connections established now
    inactive: int  # other connection entries (closing, UDP flows)


@dataclass(frozen=True)
class ServiceStats:
    key: ServiceKey
    counters: Counters
    dests: dict[tuple[str, int], DestStats] = field(default_factory=dict)


def parse_counters(attrs: dict[int, memoryview], wide: int, narrow: int) -> Counters:
    """The counters of a service or destination attribute set: from ``wide`` (STATS64) when the
    kernel sent it, else from ``narrow`` (STATS)."""
    nested = attrs.get(wide)
    if nested is None:
        nested = attrs.get(narrow)
    if nested is None:
        return Counters()
    values = codec.parse_attrs(nested)

    def read(kind: int) -> int:
        raw = values.get(kind)
        if raw is None or len(raw) not in _INTEGER:
            return 0
        return _INTEGER[len(raw)].unpack_from(raw, 0)[0]

    return Counters(read(CONNS), read(INPKTS), read(OUTPKTS), read(INBYTES), read(OUTBYTES))


def parse_service(payload: memoryview) -> tuple[ServiceKey | None, Counters]:
    """(key, counters) of a GET_SERVICE reply; key is None for services that are never ours."""
    key, _sched, _persistence = codec.decode_service(payload)
    attrs = codec.parse_attrs(codec.parse_attrs(payload, 4)[codec.A_SERVICE])
    return key, parse_counters(attrs, S_STATS64, S_STATS)


def parse_dest(payload: memoryview, family: int) -> DestStats:
    """A GET_DEST reply: the destination's counters and its connection entries now."""
    dest = codec.decode_dest(payload, family)
    attrs = codec.parse_attrs(codec.parse_attrs(payload, 4)[codec.A_DEST])
    return DestStats(dest.address, dest.port, parse_counters(attrs, D_STATS64, D_STATS), dest.active, dest.inactive)


def read_stats(kernel: IpvsKernel, vips: Iterable[str]) -> dict[ServiceKey, ServiceStats]:
    """One dump of the counters of the services on ``vips`` and of their destinations."""
    wanted = frozenset(vips)
    table: dict[ServiceKey, ServiceStats] = {}
    for payload in kernel.replies(codec.CMD_GET_SERVICE, b"", "dump service statistics"):
        key, counters = parse_service(payload)
        if key is not None and key.address in wanted:
            table[key] = ServiceStats(key, counters)
    for key, svc in table.items():
        attrs = codec.nla(codec.A_SERVICE, codec.service_key_attrs(key))
        try:
            replies = kernel.replies(codec.CMD_GET_DEST, attrs, f"dump statistics of {key}")
        except IpvsError as exc:
            if exc.errno in (errno.ESRCH, errno.ENOENT):  # deleted between the two dumps
                continue
            raise
        for payload in replies:
            d = parse_dest(payload, key.family)
            svc.dests[(d.address, d.port)] = d
    return table


def totals(plan: IpvsPlan, stats: dict[ServiceKey, ServiceStats]) -> dict[str, Counters]:
    """Per load balancer of the plan: the sum of its services' counters (instance totals)."""
    out: dict[str, Counters] = {}
    for svc in plan.services:
        found = stats.get(svc.key)
        if found is not None:
            lb = svc.owner.split("/", 1)[0]
            out[lb] = out.get(lb, Counters()) + found.counters
    return out
