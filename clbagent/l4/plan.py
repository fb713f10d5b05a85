"""The IPVS plan: what the kernel table should hold for the TCP/UDP listeners. Pure and deterministic.

One virtual service per (VIP, listener): ``VIP:Port/proto``, scheduler WRR -> ``wrr`` and
LEAST_CONN -> ``wlc``, ``SessionExpireTime`` -> persistent service with that timeout, one
destination per target with the load balancer's forwarding method (NAT, DR or TUN).

Port ranges (``EndPort``) are refused: they would need fwmark services plus packet-marking
firewall rules that this agent does not own. The listener is left out with an error, the rest of
the load balancer is planned as usual.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from ipaddress import IPv4Address, IPv6Address, ip_address
from typing import Any, Literal

from clbagent.errors import Code, Issue
from clbagent.validate import DesiredState

Protocol = Literal["tcp", "udp"]
Forward = Literal["NAT", "DR", "TUN"]

SCHEDULERS = {"WRR": "wrr", "LEAST_CONN": "wlc"}
IPVSADM_FORWARD = {"NAT": "-m", "DR": "-g", "TUN": "-i"}


def _host(address: str) -> str:
    return f"[{address}]" if ":" in address else address


@dataclass(frozen=True, order=True)
class ServiceKey:
    """Identity of a virtual service in the kernel: family, address, protocol and port."""

    family: int  # 4 or 6
    packed: bytes = field(repr=False)  # the address in network order: sorts numerically
    protocol: Protocol
    port: int

    @classmethod
    def of(cls, address: str | IPv4Address | IPv6Address, protocol: Protocol, port: int) -> ServiceKey:
        ip = ip_address(address)
        return cls(ip.version, ip.packed, protocol, port)

    @property
    def address(self) -> str:
        return str(ip_address(self.packed))

    @property
    def endpoint(self) -> str:
        return f"{_host(self.address)}:{self.port}"

    def __str__(self) -> str:
        return f"{self.protocol.upper()} {self.endpoint}"


@dataclass(frozen=True, order=True)
class Destination:
    """A real server of a virtual service. ``target`` is the health key, '' for kernel-read ones."""

    address: str
    port: int
    weight: int
    forward: Forward = "NAT"
    target: str = field(default="", compare=False)

    @property
    def key(self) -> tuple[str, int]:
        return (self.address, self.port)

    @property
    def endpoint(self) -> str:
        return f"{_host(self.address)}:{self.port}"


@dataclass(frozen=True)
class VirtualService:
    """A virtual service and its destinations, plus what the reconciler needs to know about it."""

    key: ServiceKey
    scheduler: str  # the IPVS scheduler name: wrr, wlc
    persistence: int  # seconds; 0 = not persistent
    destinations: tuple[Destination, ...] = ()
    owner: str = ""  # "<lb>/<listener>"
    deregister_rst: bool = False
    # Destinations of dead targets that must not be in the kernel at all (UDP): deleted at once,
    # not drained, so that the kernel expires their flows on the next datagram.
    evicted: tuple[Destination, ...] = ()

    @property
    def ipvsadm_key(self) -> str:
        return f"{'-t' if self.key.protocol == 'tcp' else '-u'} {self.key.endpoint}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "service": str(self.key),
            "protocol": self.key.protocol,
            "address": self.key.address,
            "port": self.key.port,
            "scheduler": self.scheduler,
            "persistence": self.persistence,
            "owner": self.owner,
            "deregister_rst": self.deregister_rst,
            "destinations": [
                {"address": d.address, "port": d.port, "weight": d.weight, "forward": d.forward, "target": d.target}
                for d in self.destinations
            ],
            "evicted": [d.endpoint for d in self.evicted],
        }


@dataclass
class IpvsPlan:
    """The whole IPVS table the valid documents ask for, sorted, with the VIPs it lives on."""

    services: tuple[VirtualService, ...] = ()
    vips: frozenset[str] = frozenset()
    warnings: list[Issue] = field(default_factory=list)

    def by_key(self) -> dict[ServiceKey, VirtualService]:
        return {s.key: s for s in self.services}

    def to_ipvsadm(self) -> str:
        """Rules in the format of ``ipvsadm -S -n``, which ``ipvsadm -R`` reads back."""
        lines: list[str] = []
        for svc in self.services:
            line = f"-A {svc.ipvsadm_key} -s {svc.scheduler}"
            if svc.persistence:  # IPv6: ipvsadm's default netmask is /128, as ours; -Sn omits it
                line += f" -p {svc.persistence}"
            lines.append(line)
            for d in svc.destinations:
                lines.append(f"-a {svc.ipvsadm_key} -r {d.endpoint} {IPVSADM_FORWARD[d.forward]} -w {d.weight}")
        return "".join(f"{line}\n" for line in lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "vips": sorted(self.vips, key=lambda a: (ip_address(a).version, ip_address(a).packed)),
            "services": [s.to_dict() for s in self.services],
        }


def target_key(lb_id: str, listener_id: str, endpoint: str) -> str:
    """The health-state key of one L4 target: ``<lb>/<listener>/<ip:port>``."""
    return f"{lb_id}/{listener_id}/{endpoint}"


def _apply_down(
    dests: list[Destination], down: frozenset[str], protocol: Protocol
) -> tuple[list[Destination], list[Destination]]:
    """(destinations, evicted) with health applied. Unless every target that takes traffic
    (weight > 0) is down (all-dead-all-alive: then none is, as on L7), a dead TCP target stays at weight 0, so that its
    established connections carry on while no new one is scheduled to it, and a dead UDP target is
    evicted: an existing UDP flow only moves once its destination is gone from the kernel."""
    serving = [d for d in dests if d.weight > 0]
    if not serving or all(d.target in down for d in serving):
        return dests, []
    if protocol == "udp":
        return [d for d in dests if d.target not in down], [d for d in dests if d.target in down]
    return [replace(d, weight=0) if d.target in down else d for d in dests], []


def _destinations(lb: Any, lis: Any, vip_family: int, issues: list[Issue]) -> list[Destination]:
    seen: set[tuple[str, int]] = set()
    dests: list[Destination] = []
    for i, t in enumerate(lis.targets or []):
        path = t.path or f"{lis.path}/Targets[{i}]"
        addr = t.address
        if addr is None:
            issues.append(
                Issue(
                    path,
                    Code.MISSING_PARAMETER,
                    "an L4 target needs an address (EniIp or PrivateIpAddresses)",
                    "warning",
                )
            )
            continue
        if addr.version != vip_family:
            issues.append(
                Issue(
                    path,
                    Code.INVALID_PARAMETER,
                    f"target {t.endpoint} is not IPv{vip_family} like the VIP; left out of that service",
                    "warning",
                )
            )
            continue
        if (str(addr), t.port) in seen:
            issues.append(
                Issue(path, Code.DUPLICATE, f"target {t.endpoint} listed twice; the first one is used", "warning")
            )
            continue
        seen.add((str(addr), t.port))
        dests.append(Destination(str(addr), t.port, t.weight, lb.forward_method, target_key(lb.id, lis.id, t.endpoint)))
    return sorted(dests)


def _services_of(lb: Any, down: frozenset[str], issues: list[Issue]) -> Iterable[VirtualService]:
    for lis in lb.listeners:
        if not lis.is_l4:
            continue
        if lis.protocol not in ("TCP", "UDP"):
            issues.append(
                Issue(lis.at("Protocol"), Code.PROTOCOL_CHECK_FAILED, f"{lis.protocol} is not served by IPVS")
            )
            continue
        if lis.end_port:
            issues.append(
                Issue(
                    lis.at("EndPort"),
                    Code.UNSUPPORTED_OPERATION,
                    f"port range {lis.port}-{lis.end_port} is not supported by the IPVS data plane "
                    "(it needs fwmark services and packet marking); listener left out",
                )
            )
            continue
        scheduler = SCHEDULERS.get(lis.effective_scheduler)
        if scheduler is None:
            issues.append(
                Issue(lis.at("Scheduler"), Code.INVALID_VALUE, f"{lis.effective_scheduler} is not an L4 scheduler")
            )
            continue
        proto: Protocol = "tcp" if lis.protocol == "TCP" else "udp"
        for vip in lb.load_balancer_vips:
            dests, evicted = _apply_down(_destinations(lb, lis, vip.version, issues), down, proto)
            yield VirtualService(
                ServiceKey.of(vip, proto, lis.port),
                scheduler,
                lis.persistence,
                tuple(dests),
                f"{lb.id}/{lis.id}",
                bool(lis.deregister_target_rst),
                tuple(evicted),
            )


def plan_ipvs(state: DesiredState, down: frozenset[str] = frozenset()) -> IpvsPlan:
    """Compile the valid load balancers' TCP/UDP listeners into an IPVS table.

    ``down`` holds target keys (see :func:`target_key`) that health checking found dead: TCP ones
    are planned with weight 0, UDP ones are evicted (see :func:`_apply_down`); the documents stay
    as they are.
    """
    issues: list[Issue] = []
    services: dict[ServiceKey, VirtualService] = {}
    vips: set[str] = set()
    for _lb_id, lb in sorted(state.load_balancers().items()):
        vips.update(str(v) for v in lb.load_balancer_vips)
        for svc in _services_of(lb, down, issues):
            other = services.get(svc.key)
            if other is not None:
                issues.append(
                    Issue(
                        lb.path or lb.id,
                        Code.PORT_CHECK_FAILED,
                        f"{svc.key} is already used by {other.owner}; {svc.owner} left out",
                    )
                )
                continue
            services[svc.key] = svc
    return IpvsPlan(tuple(services[k] for k in sorted(services)), frozenset(vips), issues)
