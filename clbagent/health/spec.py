"""What to probe: one :class:`Check` per distinct (endpoint, check parameters) of the served state,
with every rule and listener that uses it.

A check's identity excludes the load balancer, so two rules (even of two load balancers) that
probe the same target in the same way share one probe and one state. The source address (the VIP,
R63) is not part of the identity either: the first VIP of the users that the host holds is used.
"""

from __future__ import annotations

import functools
import hashlib
import json
import socket
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from functools import cached_property
from ipaddress import ip_address
from typing import Literal

from clbagent.l4.plan import target_key
from clbagent.l7.names import down_key
from clbagent.model import HealthCheck, Listener, LoadBalancer, Rule, Target
from clbagent.settings import Settings

Kind = Literal["tcp", "http", "https", "tcp-custom", "udp", "ping"]
DEFAULT_CHECK = HealthCheck.model_validate({})


@dataclass(frozen=True)
class Check:
    """One probe: how, where, how often, and when its result changes the state."""

    kind: Kind
    address: str
    port: int  # 0 for ping
    timeout: float
    interval: int
    rise: int  # HealthNum: consecutive successes to become Alive
    fall: int  # UnHealthNum: consecutive failures to become Dead
    host: str = ""  # HTTP: the Host header ('' = the target's address)
    path: str = ""
    method: str = ""
    version: str = ""
    codes: int = 0  # HttpCode bitmask: 1 = 1xx ... 16 = 5xx
    send: bytes = b""
    expect: bytes = b""

    @property
    def endpoint(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return host if self.kind == "ping" else f"{host}:{self.port}"

    @property
    def family(self) -> int:
        return ip_address(self.address).version

    @cached_property
    def key(self) -> str:
        """A stable name of the check, under which its state is persisted."""
        fields = {k: (v.hex() if isinstance(v, bytes) else v) for k, v in asdict(self).items()}
        digest = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:20]
        return f"{self.kind}/{self.endpoint}/{digest}"


@dataclass(frozen=True)
class Subject:
    """One target of one rule (L7) or listener (L4) that a check decides for."""

    load_balancer: str
    listener: str
    rule: str  # LocationId; '' for an L4 listener
    target: str  # ip:port as the documents give it
    down_key: str  # what the compiler takes (clbagent.l7.names.down_key / clbagent.l4.plan.target_key)
    vips: tuple[str, ...] = field(default=(), compare=False)


@dataclass
class Probes:
    """Every check of a state with its subjects, and the source address each one uses."""

    subjects: dict[Check, list[Subject]] = field(default_factory=dict)
    sources: dict[Check, str | None] = field(default_factory=dict)
    unchecked: list[Subject] = field(default_factory=list)  # HealthSwitch 0: not probed, always alive


def host_has(address: str) -> bool:
    """Whether this host holds ``address`` (binding to it succeeds: it is local, 127/8 included)."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        try:
            sock.bind((address, 0))
        except OSError:
            return False
    return True


def derive(
    load_balancers: Mapping[str, LoadBalancer], settings: Settings, local: Callable[[str], bool] = host_has
) -> Probes:
    """The checks of every target of the served load balancers with ``HealthSwitch`` 1; ``local``
    tells whether the host holds an address (a VIP it holds is the probes' source)."""
    local = functools.cache(local)
    out = Probes()
    for lb_id, lb in sorted(load_balancers.items()):
        for lis in lb.listeners:
            for check, subject in _of_listener(lb_id, lb, lis, settings):
                if check is None:
                    out.unchecked.append(subject)
                else:
                    out.subjects.setdefault(check, []).append(subject)
    for check, subjects in out.subjects.items():
        out.sources[check] = _source(check, subjects, local)
    return out


def _of_listener(
    lb_id: str, lb: LoadBalancer, lis: Listener, settings: Settings
) -> Iterator[tuple[Check | None, Subject]]:
    """(check, subject) per target; the check is None where HealthSwitch is 0."""
    vips = tuple(str(v) for v in lb.load_balancer_vips)
    if lis.is_l4:
        hc = lis.health_check or DEFAULT_CHECK
        for t in lis.targets or []:
            if t.address is not None:
                subject = Subject(lb_id, lis.id, "", t.endpoint, target_key(lb_id, lis.id, t.endpoint), vips)
                yield (_l4_check(lis, hc, t, settings) if hc.enabled else None), subject
        return
    for rule in lis.rules or []:
        for t in rule.targets:
            if t.address is not None:
                subject = Subject(
                    lb_id, lis.id, rule.id, t.endpoint, down_key(lb_id, lis.id, rule.id, t.endpoint), vips
                )
                yield (_l7_check(rule, t, settings) if rule.health_check.enabled else None), subject


def _timing(hc: HealthCheck) -> dict[str, float | int]:
    # A probe must end before the next one starts: TimeOut < IntervalTime (R41) holds for L4 by
    # validation, and L7 rules (no TimeOut in the product) get the same bound here.
    timeout = min(hc.time_out, hc.interval_time - 1)
    return {"timeout": float(timeout), "interval": hc.interval_time, "rise": hc.health_num, "fall": hc.un_health_num}


def _l7_check(rule: Rule, t: Target, settings: Settings) -> Check:
    hc = rule.health_check
    return Check(
        "https" if rule.forward_type == "HTTPS" else "http",
        str(t.address),
        hc.check_port or t.port,
        **_timing(hc),
        host=hc.http_check_domain or rule.domain,
        path=hc.http_check_path or "/",
        method=hc.http_check_method or settings.health_check_method,
        version="HTTP/1.1",
        codes=hc.http_code or settings.health_check_http_code,
    )


def _l4_check(lis: Listener, hc: HealthCheck, t: Target, settings: Settings) -> Check:
    address, port = str(t.address), hc.check_port or t.port
    if lis.protocol == "UDP":
        if hc.check_type == "CUSTOM":
            return Check(
                "udp",
                address,
                port,
                **_timing(hc),
                send=_payload(hc, hc.send_context),
                expect=_payload(hc, hc.recv_context),
            )
        return Check("ping", address, 0, **_timing(hc))
    if hc.check_type == "HTTP":
        return Check(
            "http",
            address,
            port,
            **_timing(hc),
            host=hc.http_check_domain or "",
            path=hc.http_check_path or "/",
            method=hc.http_check_method or settings.health_check_method,
            version=hc.http_version or "HTTP/1.1",
            codes=hc.http_code or 2,
        )
    if hc.check_type == "CUSTOM":
        send, expect = _payload(hc, hc.send_context), _payload(hc, hc.recv_context)
        return Check("tcp-custom", address, port, **_timing(hc), send=send, expect=expect)
    return Check("tcp", address, port, **_timing(hc))


def _payload(hc: HealthCheck, text: str | None) -> bytes:
    """SendContext/RecvContext as bytes: HEX decoded, TEXT as its ASCII."""
    if not text:
        return b""
    return bytes.fromhex(text) if hc.context_type == "HEX" else text.encode("ascii")


def _source(check: Check, subjects: list[Subject], local: Callable[[str], bool]) -> str | None:
    """The first VIP of the check's users that the host holds, of the target's family (R63)."""
    for subject in subjects:
        for vip in subject.vips:
            if ip_address(vip).version == check.family and local(vip):
                return vip
    return None
