"""Shared field types: ranges, enums and the V2 spellings accepted for them."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_network
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BeforeValidator, Field

from clbagent.errors import Code
from clbagent.model.syntax import fail

Port = Annotated[int, Field(ge=1, le=65535)]


def _listener_port(low: int) -> AfterValidator:
    """A listener's port out of range is a port check failure in the product, not a range error."""

    def check(value: int) -> int:
        if not low <= value <= 65535:
            raise fail(Code.PORT_CHECK_FAILED, "listener port must be {low}-65535 (got {value})", low=low, value=value)
        return value

    return AfterValidator(check)


ListenerPort = Annotated[int, _listener_port(1)]


def _redirect_code(value: int) -> int:
    if value not in (301, 302, 307):
        raise fail(Code.RANGE, "a redirect code is 301, 302 or 307 (got {value})", value=value)
    return value


RedirectCode = Annotated[int, AfterValidator(_redirect_code)]
ListenerEndPort = Annotated[int, _listener_port(0)]
Weight = Annotated[int, Field(ge=0, le=100)]


def _on_off(value: Any) -> Any:
    """Some Describe* outputs spell a switch ``ON``/``OFF`` (SniSwitch in ListenerAttribute)."""
    if isinstance(value, str) and value.lower() in ("on", "off"):
        return int(value.lower() == "on")
    return value


def _nodes_only(value: str) -> str:
    if value.upper() != "NODE":
        raise fail(
            Code.UNSUPPORTED_OPERATION,
            "only NODE targets (addresses in the document) are served, not {value}",
            value=value[:40],
        )
    return value.upper()


Switch = Annotated[int, BeforeValidator(_on_off), Field(ge=0, le=1)]
TargetType = Annotated[str, AfterValidator(_nodes_only)]
Ident = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]

PROTOCOL_V2 = {1: "HTTP", 2: "TCP", 3: "UDP", 4: "HTTPS"}


def _upper_enum(value: Any) -> Any:
    """V2 APIs spell enums in lower case (wrr, least_conn, ip_hash, unidirectional, mutual)."""
    return value.upper() if isinstance(value, str) else value


def _lower_enum(value: Any) -> Any:
    return value.lower() if isinstance(value, str) else value


def _protocol(value: Any) -> Any:
    if isinstance(value, int) and not isinstance(value, bool):
        return PROTOCOL_V2.get(value, value)
    if isinstance(value, str) and value.isdigit():
        return PROTOCOL_V2.get(int(value), value)
    return _upper_enum(value)


Protocol = Annotated[Literal["TCP", "UDP", "HTTP", "HTTPS", "TCP_SSL"], BeforeValidator(_protocol)]
Scheduler = Annotated[Literal["WRR", "LEAST_CONN", "IP_HASH"], BeforeValidator(_upper_enum)]
SSLMode = Annotated[Literal["UNIDIRECTIONAL", "MUTUAL"], BeforeValidator(_upper_enum)]
ForwardType = Annotated[Literal["HTTP", "HTTPS", "TRPC"], BeforeValidator(_upper_enum)]
HttpMethod = Annotated[Literal["GET", "HEAD"], BeforeValidator(_upper_enum)]
SessionExpire = Annotated[int, Field(ge=0, le=3600)]

L4_PROTOCOLS = frozenset({"TCP", "UDP", "TCP_SSL"})
L7_PROTOCOLS = frozenset({"HTTP", "HTTPS"})


V6_RESERVED = ip_network("::/8")  # unspecified, IPv4-compatible and IPv4-mapped forms; ::1 is allowed apart


def address_problem(addr: IPv4Address | IPv6Address) -> str | None:
    """Why an address cannot be a VIP or a target, or None. A wildcard would capture every other
    load balancer's traffic on the port; the other kinds cannot be bound or reached as written."""
    if isinstance(addr, IPv4Address):
        return _v4_problem(addr)
    if addr.scope_id is not None:
        return "a scoped IPv6 address (with %zone) is not allowed"
    if addr.is_unspecified:
        return f"{addr} is the wildcard address; name the load balancer's own address"
    if addr.is_multicast:
        return f"{addr} is a multicast address"
    if addr.is_link_local:
        return f"{addr} is a link-local address"
    if addr.ipv4_mapped is not None:
        return f"{addr} is an IPv4-mapped IPv6 address; write the IPv4 address"
    if addr in V6_RESERVED and not addr.is_loopback:
        return f"{addr} is a reserved IPv6 address"
    return None


def _v4_problem(addr: IPv4Address) -> str | None:
    """The IPv4 rules on the integer value (validation meets one address per target)."""
    value = int(addr)
    if value == 0:
        return f"{addr} is the wildcard address; name the load balancer's own address"
    if value >> 28 == 0xE:
        return f"{addr} is a multicast address"
    if value >> 16 == 0xA9FE:
        return f"{addr} is a link-local address"
    if value >> 28 == 0xF or value >> 24 == 0:
        return f"{addr} is a reserved or broadcast address"
    return None


def _unicast(addr: IPv4Address | IPv6Address) -> IPv4Address | IPv6Address:
    problem = address_problem(addr)
    if problem:
        raise fail(Code.INVALID_VALUE, problem)
    return addr


def _unscoped(net: IPv4Network | IPv6Network) -> IPv4Network | IPv6Network:
    if isinstance(net, IPv6Network) and net.network_address.scope_id is not None:
        raise fail(Code.INVALID_VALUE, "a scoped IPv6 network (with %zone) is not allowed")
    return net


def _written_as_text(value: Any) -> Any:
    """An address is text: a bare number (or a boolean) would be read as a packed address."""
    if isinstance(value, int | float):
        raise fail(Code.INVALID_VALUE, 'an address is written as text, e.g. "10.0.0.1" or "fd00::1"')
    return value


Unicast = Annotated[IPv4Address | IPv6Address, BeforeValidator(_written_as_text), AfterValidator(_unicast)]
Network = Annotated[IPv4Network | IPv6Network, BeforeValidator(_written_as_text), AfterValidator(_unscoped)]
